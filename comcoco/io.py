"""Atomic file writes, folder swaps and checksums: a file either exists whole or not at all."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def _temporary_beside(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)


@contextmanager
def _renamed_or_removed(tmp: str, path: Path) -> Iterator[None]:
    """Rename ``tmp`` over ``path`` when the block ends without error; remove it otherwise."""
    try:
        yield
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


@contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb", sync: bool = True) -> Iterator[IO]:
    """Write to a temporary file beside ``path``, fsync, then rename over it.

    ``sync=False`` skips the fsync (the rename still makes the file appear whole or not at all): for
    many small files whose writer flushes the whole filesystem once afterwards (``flush_filesystem``).
    """
    path = Path(path)
    fd, tmp = _temporary_beside(path)
    with _renamed_or_removed(tmp, path):
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            if sync:
                os.fsync(fh.fileno())


@contextmanager
def atomic_path(path: str | os.PathLike[str], sync: bool = True) -> Iterator[Path]:
    """A fresh temporary path beside ``path`` for a writer that opens files by name (a native writer
    skips Python's file object and its copy of every block); renamed over ``path`` when the block ends
    without error (fsynced first unless ``sync=False``), removed otherwise."""
    path = Path(path)
    fd, tmp = _temporary_beside(path)
    os.close(fd)
    with _renamed_or_removed(tmp, path):
        yield Path(tmp)
        if sync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, sync: bool = True) -> None:
    with atomic_write(path, "wb", sync=sync) as fh:
        fh.write(data)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    with atomic_write(path, "w") as fh:
        fh.write(text)


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_stamp(path: str | os.PathLike[str], chunk: int = 1 << 20) -> dict[str, int | str]:
    """``{"sha256", "size"}`` of a file, read once."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
            size += len(block)
    return {"sha256": h.hexdigest(), "size": size}


class OncePerFile:
    """sha256 of files, each file read once however many names it has (hard links share an inode: a
    release's ComCOCO+ Parquet files that are ComCOCO's). Keyed by device, inode, size and mtime."""

    def __init__(self) -> None:
        self._seen: dict[tuple[int, int, int, int], str] = {}

    def sha256(self, path: str | os.PathLike[str], st: os.stat_result | None = None) -> str:
        st = st if st is not None else os.stat(path)
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if key not in self._seen:
            self._seen[key] = sha256_file(path)
        return self._seen[key]


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _libc()


def _renameat2() -> object | None:
    try:
        fn = _LIBC.renameat2  # type: ignore[union-attr]
    except AttributeError:
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_EXCHANGE = _renameat2()


def flush_filesystem(path: str | os.PathLike[str]) -> None:
    """Write every file of the filesystem holding ``path`` to disk (Linux ``syncfs``; ``sync`` elsewhere).

    One call instead of an fsync per file: ext4 commits its journal on each fsync, which costs more
    than writing a small file.
    """
    syncfs = getattr(_LIBC, "syncfs", None)
    if syncfs is not None:
        fd = os.open(path, os.O_RDONLY)
        try:
            if syncfs(ctypes.c_int(fd)) == 0:
                return
        finally:
            os.close(fd)
    os.sync()  # no syncfs here, or it failed: flush every filesystem


def exchange(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Swap two existing paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``): at every moment each
    path holds one of the two. False where the system or filesystem cannot (nothing was changed)."""
    if _EXCHANGE is None:
        return False
    rc = _EXCHANGE(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)  # type: ignore[operator]
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), os.fspath(a), None, os.fspath(b))
