"""Packing a release into deterministic, checksummed tar shards and the ``dist/index.json`` that lists them.

Users get a release as ``dist/index.json`` plus ``dist/*.tar`` shards (``comcoco.release.download``
fetches, verifies and extracts them). The same files always give the same bytes: sorted order, fixed
owner, mode and time in every header.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from comcoco.io import write_text_atomic
from comcoco.progress import Progress

INDEX_NAME = "index.json"
DEFAULT_SHARD_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class ShardInfo:
    name: str
    size: int
    sha256: str
    files: int


def _normalized_info(path: Path, arcname: str) -> tarfile.TarInfo:
    """A tar header with fixed owner, mode and time, so the same files give the same bytes."""
    info = tarfile.TarInfo(arcname)
    info.size = path.stat().st_size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class _HashingWriter:
    """A file written once, front to back, hashed on the way: a shard's sha256 without reading it back
    (which doubled the stage's disk reads)."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh, self.digest, self.size = fh, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.fh.write(data)

    def tell(self) -> int:
        return self.size


class _HashingReader:
    """A file read once, front to back, hashed on the way: tar reads it, the digest checks it."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh, self.digest = fh, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        self.digest.update(data)
        return data


def file_mismatch(rel: str, size: int, sha256: Callable[[], str], meta: Mapping[str, Any]) -> str | None:
    """How a file of ``size`` bytes differs from its manifest entry ``meta`` ({size, sha256}), or None;
    ``sha256`` is only asked for when the sizes agree. The words of ``verify`` and ``release pack``."""
    if size != meta["size"]:
        return f"{rel}: size {size} != {meta['size']}"
    if sha256() != meta["sha256"]:
        return f"{rel}: sha256 mismatch"
    return None


def pack_release(
    root: str | os.PathLike[str],
    files: Sequence[str],
    dist_dir: str | os.PathLike[str],
    version: str,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    prefix: str = "comcoco",
    progress: bool = False,
    expected: Mapping[str, Mapping[str, Any]] | None = None,
    problems: list[str] | None = None,
) -> list[ShardInfo]:
    """Pack ``files`` (paths relative to ``root``) into deterministic tar shards plus ``index.json``.

    Files are taken in sorted order and a new shard starts when the current one would pass
    ``shard_bytes`` (a single larger file gets a shard of its own). With ``expected`` (a manifest's
    ``{rel: {sha256, size}}``) each listed file is checked as it is packed, in the same read, and what
    does not match goes to ``problems`` (as ``verify`` words it); the shards are then not to be used.
    """
    root, dist = Path(root), Path(dist_dir)
    dist.mkdir(parents=True, exist_ok=True)
    ordered = sorted(set(files))
    if expected is not None:
        problems = [] if problems is None else problems
        present = [rel for rel in ordered if rel not in expected or (root / rel).is_file()]
        problems += [f"{rel}: missing" for rel in ordered if rel not in present]
        ordered = present
    batches: list[list[str]] = [[]]
    size = 0
    for rel in ordered:
        n = (root / rel).stat().st_size
        if batches[-1] and size + n > shard_bytes:
            batches.append([])
            size = 0
        batches[-1].append(rel)
        size += n
    if batches == [[]]:
        batches = []
    shards: list[ShardInfo] = []
    bar = Progress("packing", len(ordered), unit="file") if progress else None
    for i, batch in enumerate(batches):
        name = f"{prefix}-{version}-{i:05d}.tar"
        tmp = dist / f".{name}.tmp"
        with open(tmp, "wb") as raw:
            out = _HashingWriter(raw)
            with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                for rel in batch:
                    p = root / rel
                    with open(p, "rb") as fh:
                        info = _normalized_info(p, rel)
                        meta = None if expected is None else expected.get(rel)
                        if meta is None:
                            tar.addfile(info, fh)
                            continue
                        reader = _HashingReader(fh)
                        tar.addfile(info, reader)
                    problem = file_mismatch(rel, info.size, reader.digest.hexdigest, meta)
                    if problem is not None:
                        problems.append(problem)
                    if bar is not None:
                        bar.advance()
        os.replace(tmp, dist / name)
        shards.append(ShardInfo(name, out.size, out.digest.hexdigest(), len(batch)))
    if bar is not None:
        bar.close()
    index = {
        "version": version,
        "shards": [{"name": s.name, "size": s.size, "sha256": s.sha256, "files": s.files} for s in shards],
    }
    write_text_atomic(dist / INDEX_NAME, json.dumps(index, indent=2, sort_keys=True) + "\n")
    return shards
