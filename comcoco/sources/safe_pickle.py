"""A restricted unpickler for REFER's ``refs(<split_by>).p``: plain builtins only, nothing is called.

REFER ships its refs as a pickle, and a pickle can run any code while it loads. This unpickler
resolves no global and no persistent id, so only builtin opcodes can make objects, and a check of
the loaded tree refuses anything that is not a dict, list, tuple, str, int, float, bool or None.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

from comcoco.sources.format import SourceError, UnsafePickleError


class _Refused(Exception):
    """Raised inside the unpickler; carries what the pickle asked for."""


class _PlainUnpickler(pickle.Unpickler):
    """Resolves no global and no persistent id: only builtin opcodes can produce objects."""

    def find_class(self, module: str, name: str) -> Any:
        raise _Refused(f"it asks for the global {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("it uses a persistent id")


_PLAIN_TYPES = frozenset({dict, list, tuple, str, int, float, bool, type(None)})


def _check_plain(obj: Any, path: Path) -> None:
    """Refuse any object in the tree that is not a plain builtin (e.g. bytes, set, frozenset).

    Containers are visited once each, so shared or self-referencing ones cannot make this loop.
    """
    stack = [obj]
    seen: set[int] = set()
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind not in _PLAIN_TYPES:
            raise UnsafePickleError(
                f"{path}: refused: the pickle holds a {kind.__name__}; only dict, list, tuple, str, "
                "int, float, bool and None are allowed"
            )
        if kind is dict or kind is list or kind is tuple:
            if id(item) in seen:
                continue
            seen.add(id(item))
        if kind is dict:
            stack.extend(item.keys())
            stack.extend(item.values())
        elif kind is list or kind is tuple:
            stack.extend(item)


def load_plain_pickle(path: str | os.PathLike[str]) -> Any:
    """Unpickle ``path`` admitting only plain builtins; nothing from the file is ever called.

    Python 2 byte strings are decoded as UTF-8, or as Latin-1 when they are not valid UTF-8.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"{path}: cannot read ({exc.strerror or exc})") from None
    obj: Any = None
    for encoding in ("utf-8", "latin-1"):
        try:
            obj = _PlainUnpickler(io.BytesIO(data), fix_imports=True, encoding=encoding).load()
            break
        except _Refused as exc:
            raise UnsafePickleError(f"{path}: refused: {exc}; nothing from the pickle was run") from None
        except UnicodeDecodeError:
            continue
        except RecursionError:
            raise SourceError(f"{path}: not a readable pickle (nested too deeply)") from None
        except Exception as exc:  # a malformed stream can raise almost anything; none of it ran code
            raise SourceError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from None
    _check_plain(obj, path)
    return obj

