"""A restricted unpickler for REFER's ``refs(<split_by>).p``: plain builtins only, nothing is called.

REFER ships its refs as a pickle, and a pickle can run any code while it loads. This unpickler
resolves no global and no persistent id, so only builtin opcodes can make objects, and a check of
the loaded tree refuses anything that is not a dict, list, tuple, str, int, float, bool or None.
"""

from __future__ import annotations

import io
import os
import pickle
from itertools import chain, compress
from pathlib import Path
from typing import Any

from comcoco.sources.allocation import paused_gc
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
_CONTAINERS = frozenset({dict, list, tuple})


def all_plain(root: Any) -> bool:
    """Whether every object reachable from ``root`` is a plain builtin.

    Walks the tree a level at a time so that type checks and child gathering run in C over whole
    levels (a RefCOCO+ refs list holds about 3 million objects); each container is expanded once,
    so shared or self-referencing ones cannot make this loop.
    """
    seen: set[int] = set()
    level = [root]
    while level:
        if not _PLAIN_TYPES.issuperset(map(type, level)):
            return False
        containers = compress(level, map(_CONTAINERS.__contains__, map(type, level)))
        fresh = {id(c): c for c in containers}
        if seen:
            for key in seen.intersection(fresh):
                del fresh[key]
        seen.update(fresh)
        dicts = [c for c in fresh.values() if type(c) is dict]
        seqs = [c for c in fresh.values() if type(c) is not dict]
        level = list(chain(chain.from_iterable(dicts), chain.from_iterable(d.values() for d in dicts),
                           chain.from_iterable(seqs)))
    return True


MAX_DEPTH = 32  # REFER refs nest 5 deep (list, ref, sentences, sentence, tokens); COCO instances 5
MAX_ELEMENTS = 200_000_000  # values reachable from the root, counting shared ones as often as reached


class TreeTooLarge(SourceError):
    """A value nested deeper, or reaching more values (through shared references), than any source has."""


def _containers(level: list[Any]) -> list[Any]:
    return list(compress(level, map(_CONTAINERS.__contains__, map(type, level))))


def _children(containers: Any) -> list[Any]:
    dicts = [c for c in containers if type(c) is dict]
    seqs = [c for c in containers if type(c) is not dict]
    return list(chain(chain.from_iterable(dicts), chain.from_iterable(d.values() for d in dicts),
                      chain.from_iterable(seqs)))


def check_tree(root: Any, path: Path, max_depth: int = MAX_DEPTH, max_elements: int = MAX_ELEMENTS) -> None:
    """Refuse a tree nested deeper than ``max_depth`` or reaching more than ``max_elements`` values.

    A pickle can reference one container from many places (its memo), so a file of a few kB can
    reach billions of values: every later walk over it would take that long. The walk goes a level at
    a time over distinct containers (as ``all_plain``); only when a container is reached twice are the
    values counted with their multiplicities, which a plain source never needs.
    """
    seen: set[int] = set()
    level, depth, total, shared = [root], 0, 1, False
    while level:
        containers = _containers(level)
        fresh = {id(c): c for c in containers}
        shared |= len(fresh) < len(containers) or not seen.isdisjoint(fresh)
        for key in seen.intersection(fresh):
            del fresh[key]
        if not fresh:
            break
        depth += 1
        if depth > max_depth:
            raise TreeTooLarge(f"{path}: refused: values nested more than {max_depth} deep")
        seen.update(fresh)
        level = _children(fresh.values())
        total += len(level)
        if total > max_elements:
            raise TreeTooLarge(f"{path}: refused: more than {max_elements} values")
    if shared:
        _count_with_sharing(root, path, max_elements)


def _count_with_sharing(root: Any, path: Path, max_elements: int) -> None:
    """Count every value as often as it is reached (a container's count is computed once, children
    first); a container that holds itself is refused (every walk over it would never end)."""
    size: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        obj, done = stack.pop()
        key = id(obj)
        if key in size:
            continue
        kids = list(obj.keys()) + list(obj.values()) if type(obj) is dict else list(obj)
        if not done:
            if key in open_:
                raise TreeTooLarge(f"{path}: refused: a value contains itself; nothing from it was used")
            open_.add(key)
            stack.append((obj, True))
            stack.extend((k, False) for k in kids if type(k) in _CONTAINERS and id(k) not in size)
            continue
        open_.discard(key)
        n = sum(size.get(id(k), 0) + 1 for k in kids)
        if n > max_elements:
            raise TreeTooLarge(f"{path}: refused: shared references reach more than {max_elements} values "
                               "(a pickle that fans out); nothing from it was used")
        size[key] = n


def _first_not_plain(obj: Any, path: Path) -> None:
    """Raise for the first non-plain object in depth-first order (the error names its type)."""
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


def check_plain(obj: Any, path: Path) -> None:
    """Refuse any object in the tree that is not a plain builtin (e.g. bytes, set, frozenset)."""
    if not all_plain(obj):
        _first_not_plain(obj, path)


def unpickle_restricted(path: Path, data: bytes | None = None) -> Any:
    """Unpickle ``path`` (or its bytes, already read) with the restricted unpickler; the caller
    checks the tree (``check_plain``).

    Python 2 byte strings are decoded as UTF-8, or as Latin-1 when they are not valid UTF-8.
    """
    try:
        if data is None:
            data = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"{path}: cannot read ({exc.strerror or exc})") from None
    obj: Any = None
    with paused_gc():
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
    return obj


def load_plain_pickle(path: str | os.PathLike[str]) -> Any:
    """Unpickle ``path`` admitting only plain builtins; nothing from the file is ever called.

    Python 2 byte strings are decoded as UTF-8, or as Latin-1 when they are not valid UTF-8.
    """
    path = Path(path)
    obj = unpickle_restricted(path)
    check_plain(obj, path)
    return obj
