"""Fetching, verifying and extracting a release safely (``comcoco.release.pack`` makes what this reads).

Users get a release as ``dist/index.json`` plus ``dist/*.tar`` shards, over http(s) or from a path.
Every shard is verified against its sha256 before anything is extracted; extraction refuses absolute
paths, ``..``, links and device files, writes into a temporary directory and renames it into place
only when every shard has been extracted, so a failure never leaves a half-extracted release.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from comcoco.errors import ComcocoError
from comcoco.io import sha256_file, write_text_atomic
from comcoco.release.pack import DEFAULT_SHARD_BYTES, INDEX_NAME, ShardInfo, pack_release  # noqa: F401 (re-exported)

_CHUNK = 1 << 20


class ReleaseIntegrityError(ComcocoError):
    """A shard or file does not match its recorded checksum, or an archive is unsafe."""


class DownloadError(ComcocoError):
    """A release could not be fetched (unreachable, missing index, bad response)."""


# --- fetching -----------------------------------------------------------------------------------


def _is_url(location: str) -> bool:
    return urllib.parse.urlparse(location).scheme in ("http", "https")


def _index_location(location: str) -> str:
    """Accept the index itself or the folder that holds it (URL or path)."""
    if _is_url(location):
        return location if location.endswith(".json") else location.rstrip("/") + "/" + INDEX_NAME
    p = Path(location)
    return str(p / INDEX_NAME) if p.is_dir() else str(p)


def _sibling(index_location: str, name: str) -> str:
    if _is_url(index_location):
        return urllib.parse.urljoin(index_location, name)
    return str(Path(index_location).parent / name)


def _open_url(url: str, headers: dict[str, str] | None = None, timeout: float = 60.0):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 (http/https only, checked)
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(f"{url}: {getattr(exc, 'reason', exc)}") from None


def read_index(location: str) -> tuple[str, dict]:
    """The release index as a dict, and where it was read from."""
    loc = _index_location(str(location))
    try:
        if _is_url(loc):
            with _open_url(loc) as resp:
                data = resp.read()
        else:
            data = Path(loc).read_bytes()
    except FileNotFoundError:
        raise DownloadError(f"{loc}: no release index found") from None
    try:
        index = json.loads(data)
        for s in index["shards"]:
            if not (isinstance(s["name"], str) and isinstance(s["size"], int) and isinstance(s["sha256"], str)):
                raise KeyError("shards")
            if "/" in s["name"] or "\\" in s["name"] or s["name"].startswith("."):
                raise ReleaseIntegrityError(f"{loc}: unsafe shard name {s['name']!r}")
        index["version"]
    except (ValueError, KeyError, TypeError) as exc:
        raise DownloadError(f"{loc}: not a comcoco release index ({exc})") from None
    return loc, index


def _fetch_to(src: str, dest: Path, expected_size: int, bar: tqdm | None) -> None:
    """Copy or download ``src`` to ``dest``, resuming from a partial ``dest`` when possible."""
    have = dest.stat().st_size if dest.exists() else 0
    if have > expected_size:
        dest.unlink()
        have = 0
    if have == expected_size:
        if bar is not None:
            bar.update(have)
        return
    if _is_url(src):
        headers = {"Range": f"bytes={have}-"} if have else {}
        with _open_url(src, headers) as resp:
            if have and resp.status != 206:  # server ignored the range: start over
                have = 0
            mode = "ab" if have else "wb"
            if bar is not None:
                bar.update(have)
            with open(dest, mode) as out:
                while block := resp.read(_CHUNK):
                    out.write(block)
                    if bar is not None:
                        bar.update(len(block))
    else:
        if not Path(src).is_file():
            raise DownloadError(f"{src}: shard missing")
        with open(src, "rb") as fh, open(dest, "ab" if have else "wb") as out:
            fh.seek(have)
            if bar is not None:
                bar.update(have)
            while block := fh.read(_CHUNK):
                out.write(block)
                if bar is not None:
                    bar.update(len(block))


def _check_member(member: tarfile.TarInfo, shard: str) -> PurePosixPath:
    name = PurePosixPath(member.name)
    if member.name.startswith("/") or name.is_absolute() or ".." in name.parts or not name.parts:
        raise ReleaseIntegrityError(f"{shard}: unsafe path {member.name!r} refused")
    if not (member.isfile() or member.isdir()):
        raise ReleaseIntegrityError(f"{shard}: {member.name!r} is a link or device; refused")
    return name


def safe_extract(tar_path: Path, dest: Path) -> int:
    """Extract regular files and folders only; anything else refuses the whole shard."""
    count = 0
    with tarfile.open(tar_path, "r:*") as tar:
        members = tar.getmembers()
        for m in members:  # check everything before writing anything
            _check_member(m, tar_path.name)
        for m in members:
            target = dest.joinpath(*PurePosixPath(m.name).parts)
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(m)
            assert src is not None
            with src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, _CHUNK)
            count += 1
    return count


def download_release(location: str, out_dir: str | os.PathLike[str], progress: bool = False) -> Path:
    """Fetch, verify and extract a release into ``out_dir`` (which must not exist yet).

    Partially downloaded shards are kept in ``<out_dir>.download/`` so a rerun resumes them.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise DownloadError(f"{out}: already exists and is not empty")
    index_loc, index = read_index(location)
    cache = out.with_name(out.name + ".download")
    cache.mkdir(parents=True, exist_ok=True)
    total = sum(s["size"] for s in index["shards"])
    bar = tqdm(total=total, desc="downloading", unit="B", unit_scale=True, disable=not progress, leave=False)
    try:
        for s in index["shards"]:
            dest = cache / s["name"]
            _fetch_to(_sibling(index_loc, s["name"]), dest, s["size"], bar)
            digest = sha256_file(dest)
            if digest != s["sha256"] or dest.stat().st_size != s["size"]:
                dest.unlink()
                raise ReleaseIntegrityError(
                    f"{s['name']}: checksum mismatch (expected {s['sha256'][:16]}…, got {digest[:16]}…); "
                    "the shard was deleted, run the download again"
                )
    finally:
        bar.close()
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".incomplete", dir=out.parent))
    try:
        for s in index["shards"]:
            safe_extract(cache / s["name"], staging)
        write_text_atomic(staging / "dist" / INDEX_NAME, json.dumps(index, indent=2, sort_keys=True) + "\n")
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(cache, ignore_errors=True)
    return out


# --- verifying ----------------------------------------------------------------------------------


def verify_files(root: str | os.PathLike[str], files: dict[str, dict],
                 progress: bool = False, on_error: Callable[[str], None] | None = None) -> list[str]:
    """Check each ``{relpath: {sha256, size}}`` entry under ``root``; returns the problems found."""
    root = Path(root)
    problems: list[str] = []
    items: Iterable = sorted(files.items())
    for rel, meta in tqdm(items, desc="verifying", unit="file", disable=not progress, leave=False):
        p = root / rel
        if not p.is_file():
            problem = f"{rel}: missing"
        elif p.stat().st_size != meta["size"]:
            problem = f"{rel}: size {p.stat().st_size} != {meta['size']}"
        elif sha256_file(p) != meta["sha256"]:
            problem = f"{rel}: sha256 mismatch"
        else:
            continue
        problems.append(problem)
        if on_error is not None:
            on_error(problem)
    return problems
