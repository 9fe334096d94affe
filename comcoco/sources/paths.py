"""Where a source's images may be read from: the image folder, and nothing a record can point past it.

An image record's ``file_name`` is data from the source, so it is checked before it is joined to the
image folder: an absolute name, a ``..`` step, a drive or backslash path, an empty name or one with
control characters is refused, and so is a name that resolves (through symlinks, anywhere along the
way) outside the folder. A symlink farm, an image folder of links into a shared image store, is
accepted only when the store is declared (``image_root``): links may then end anywhere below it.
The image folder itself may be a symlink; what counts is where it resolves.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path, PurePosixPath, PureWindowsPath

from comcoco.sources.format import short
from comcoco.sources.images import UnsafeImagePath


def name_problem(file_name: object) -> str | None:
    """Why a ``file_name`` can never be a path inside the image folder, or None."""
    if not isinstance(file_name, str) or not file_name:
        return "an empty file name"
    if any(unicodedata.category(c) == "Cc" for c in file_name):
        return "a control character in the file name"
    if any("\ud800" <= c <= "\udfff" for c in file_name):
        return "a lone surrogate in the file name"
    if PurePosixPath(file_name).is_absolute() or PureWindowsPath(file_name).drive or file_name.startswith("\\"):
        return "an absolute path"
    if ".." in file_name.replace("\\", "/").split("/"):
        return "a '..' step out of the image folder"
    return None


def _inside(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip(os.sep) + os.sep)


def trusted_image_file(image_dir: str | os.PathLike[str], file_name: object,
                       image_root: str | os.PathLike[str] | None = None) -> Path:
    """``image_dir / file_name`` when it stays inside the image folder (or, through symlinks, inside the
    declared ``image_root``); else ``UnsafeImagePath`` saying why. The file need not exist."""
    folder = Path(image_dir)
    problem = name_problem(file_name)
    if problem is not None:
        raise UnsafeImagePath(folder / "?", f"file_name {short(file_name)} refused: {problem}")
    path = folder / str(file_name)
    real = os.path.realpath(path)
    base = os.path.realpath(folder)
    if _inside(real, base):
        return path
    if image_root is not None and _inside(real, os.path.realpath(image_root)):
        return path
    where = f"the image folder {base}" + (f" and the image root {os.path.realpath(image_root)}" if image_root else "")
    raise UnsafeImagePath(path, f"file_name {short(file_name)} refused: a symlink leading outside {where} "
                                f"(to {real}); declare a folder that holds it with --image-root to allow it")


__all__ = ["name_problem", "short", "trusted_image_file"]
