"""A source's fingerprint: the size and SHA-256 of its refs file, ``instances.json`` and every image a
plan uses, so a resumed build can tell whether what it composes from is still what it planned from.

Hashing every image again at each resume would cost a full read of the images; instead each file's
hash is kept in a stamp cache beside the plan, keyed by what the filesystem says about the file
(device, inode, size, modification and change times). The change time (``ctime``) cannot be set
back by a user: any write, ``touch`` or rename moves it, so a file whose stamp is unchanged has not
been written since it was hashed, and only files whose stamp moved are hashed again.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from comcoco.io import file_stamp, write_text_atomic
from comcoco.sources.images import MAX_IMAGE_BYTES

Stamp = dict[str, Any]  # {"size": int, "sha256": str}, or {"missing": reason}


def _key(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class StampCache:
    """SHA-256 of files by absolute path, valid while the file's stat key is unchanged."""

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, list[Any]] = {}
        if path is not None and path.is_file():
            try:
                data = json.loads(path.read_text())
                if isinstance(data, dict):
                    self.entries = {k: v for k, v in data.items() if isinstance(v, list) and len(v) == 6}
            except (OSError, ValueError, UnicodeDecodeError):
                self.entries = {}  # a damaged cache only costs hashing again

    def stamp(self, path: Path, max_bytes: int | None = None) -> Stamp:
        """The file's stamp; a FIFO, device or folder (which would block or never end) and a file over
        ``max_bytes`` are recorded as refused, never read."""
        try:
            st = os.stat(path)
        except OSError as exc:
            return {"missing": exc.strerror or str(exc)}
        if not stat.S_ISREG(st.st_mode):
            return {"missing": "not a regular file"}
        if max_bytes is not None and st.st_size > max_bytes:
            return {"missing": f"larger than {max_bytes} bytes"}
        key = str(path)
        hit = self.entries.get(key)
        if hit is not None and hit[:5] == _key(st):
            return {"size": st.st_size, "sha256": hit[5]}
        try:
            stamp = file_stamp(path)
        except OSError as exc:
            return {"missing": exc.strerror or str(exc)}
        after = os.stat(path)
        if _key(after) == _key(st):  # unchanged while hashed: safe to remember
            self.entries[key] = _key(st) + [stamp["sha256"]]
        return stamp

    def save(self) -> None:
        if self.path is not None:
            write_text_atomic(self.path, json.dumps(self.entries, sort_keys=True) + "\n")


def stamp_files(paths: Mapping[str, Path | None], cache: StampCache, threads: int = 4,
                max_bytes: int | None = None) -> dict[str, Stamp]:
    """Stamps of ``{name: path}`` (a None path is a file that may not be read: recorded as refused)."""
    names = sorted(paths)

    def one(name: str) -> Stamp:
        p = paths[name]
        return {"missing": "refused"} if p is None else cache.stamp(p, max_bytes)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:  # hashing releases the GIL
        return dict(zip(names, pool.map(one, names), strict=True))


def source_fingerprint(refs_file: Path, instances_file: Path, root: Path, image_names: Mapping[int, str],
                       image_file: Callable[[int], Path | None], cache: StampCache) -> dict[str, Any]:
    """``{"files": {name: stamp}, "images": {file_name: stamp}}`` for a source and the images used.

    ``image_file`` gives an image's trusted path, or None when its name was refused (never read).
    """
    files = stamp_files({refs_file.relative_to(root).as_posix(): refs_file,
                         instances_file.relative_to(root).as_posix(): instances_file}, cache)
    images = stamp_files({image_names[i]: image_file(i) for i in sorted(image_names)}, cache,
                         max_bytes=MAX_IMAGE_BYTES)
    return {"files": files, "images": images}


def changed_files(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Names whose stamps differ between two fingerprints (files and images, in that order)."""
    out = []
    for part in ("files", "images"):
        a, b = recorded.get(part) or {}, current.get(part) or {}
        out += [name for name in sorted(set(a) | set(b)) if a.get(name) != b.get(name)]
    return out


__all__ = ["StampCache", "changed_files", "source_fingerprint", "stamp_files"]
