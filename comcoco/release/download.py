"""Fetching, verifying and extracting a release safely (``comcoco.release.pack`` makes what this reads).

Users get a release as ``dist/index.json`` plus ``dist/*.tar`` shards, over http(s) or from a path.
Nothing is trusted beyond what the index declares: a shard is read up to its declared size and no
further, a connection that closes early leaves the partial shard to be resumed with ``Range`` (not
deleted as a checksum mismatch), and every shard is verified against its sha256 before anything is
extracted. Only plain tar is accepted (a compressed shard could expand without bound); extraction
refuses absolute paths, ``..``, links, devices, sparse members, duplicate names and names with
control characters, any member set larger than the shard, and any ``tarfile`` error, each as one
clean ``ReleaseIntegrityError``. It writes into a temporary folder, checks the release's own
``manifest.json`` there, and renames the folder into place only then: an unverified release never
sits at the final path.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import tarfile
import tempfile
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from comcoco.errors import ComcocoError
from comcoco.io import OncePerFile, sha256_file, write_text_atomic
from comcoco.locks import exclusive
from comcoco.progress import Progress, track
from comcoco.release.pack import (  # noqa: F401 (re-exported)
    DEFAULT_SHARD_BYTES,
    INDEX_NAME,
    ShardInfo,
    file_mismatch,
    pack_release,
)

_CHUNK = 1 << 20
MAX_INDEX_BYTES = 16 << 20  # an index lists shards: a few kB for the largest release
_SHARD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\.tar\Z")
_COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd",
               b"PK\x03\x04": "zip", b"\x5d\x00\x00": "lzma"}


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
                data = resp.read(MAX_INDEX_BYTES + 1)
        else:
            if Path(loc).exists() and not Path(loc).is_file():
                raise DownloadError(f"{loc}: not a file")
            with open(loc, "rb") as fh:
                data = fh.read(MAX_INDEX_BYTES + 1)
    except FileNotFoundError:
        raise DownloadError(f"{loc}: no release index found") from None
    except (OSError, http.client.HTTPException) as exc:
        raise DownloadError(f"{loc}: cannot be read ({_short(exc)})") from None
    if len(data) > MAX_INDEX_BYTES:
        raise DownloadError(f"{loc}: larger than {MAX_INDEX_BYTES} bytes; not a comcoco release index")
    try:
        index = json.loads(data)
        shards = index["shards"]
        if not isinstance(shards, list):
            raise TypeError("shards is not a list")
        for s in shards:
            if not (isinstance(s["name"], str) and type(s["size"]) is int and s["size"] >= 0
                    and isinstance(s["sha256"], str)):
                raise KeyError("shards")
            if not _SHARD_NAME.match(s["name"]):
                raise ReleaseIntegrityError(f"{loc}: unsafe shard name {_short(s['name'])} (a plain .tar name expected)")
        version = index["version"]
    except (ValueError, KeyError, TypeError) as exc:
        raise DownloadError(f"{loc}: not a comcoco release index ({_short(exc)})") from None
    if not isinstance(version, str) or not re.fullmatch(r"[0-9]{1,9}\.[0-9]{1,9}\.[0-9]{1,9}", version):
        raise ReleaseIntegrityError(f"{loc}: version {_short(version)} is not of the form X.Y.Z (ASCII digits)")
    return loc, index


def _short(value: object, limit: int = 120) -> str:
    import reprlib

    r = reprlib.Repr()
    r.maxstring = r.maxother = limit
    return r.repr(value) if not isinstance(value, BaseException) else r.repr(str(value))[1:-1]


def _copy_at_most(read: Callable[[int], bytes], out: Any, remaining: int, bar: Progress | None) -> int:
    """Copy from ``read`` until ``remaining`` bytes are written or the source ends; returns what is left."""
    while remaining > 0:
        block = read(min(_CHUNK, remaining))
        if not block:
            break
        out.write(block[:remaining])
        remaining -= len(block[:remaining])
        if bar is not None:
            bar.update(len(block))
    return remaining


def _fetch_to(src: str, dest: Path, expected_size: int, bar: Progress | None) -> None:
    """Copy or download ``src`` to ``dest`` (never more than ``expected_size`` bytes), resuming from a
    partial ``dest``; a source that ends early leaves the partial file for the next run to resume."""
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
            if have and (resp.status != 206 or not str(resp.headers.get("Content-Range", "")).startswith(
                    f"bytes {have}-")):  # the server ignored the range: start over
                have = 0
            if bar is not None:
                bar.update(have)
            with open(dest, "ab" if have else "wb") as out:
                try:
                    left = _copy_at_most(resp.read, out, expected_size - have, bar)
                except (OSError, http.client.HTTPException) as exc:  # a connection cut mid-body
                    raise DownloadError(f"{src}: the connection broke ({_short(exc)}); {dest.stat().st_size} of "
                                        f"{expected_size} bytes kept: run the download again to resume") from None
    else:
        if not Path(src).is_file():
            raise DownloadError(f"{src}: shard missing")
        with open(src, "rb") as fh, open(dest, "ab" if have else "wb") as out:
            fh.seek(have)
            if bar is not None:
                bar.update(have)
            left = _copy_at_most(fh.read, out, expected_size - have, bar)
    if left:
        raise DownloadError(f"{src}: ended after {expected_size - left} of {expected_size} bytes; the part is "
                            "kept: run the download again to resume")


def _check_member(member: tarfile.TarInfo, shard: str, seen: set[str]) -> PurePosixPath:
    name = PurePosixPath(member.name)
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in member.name) or "\\" in member.name:
        raise ReleaseIntegrityError(f"{shard}: member name {_short(member.name)} has a control character; refused")
    if member.name.startswith("/") or name.is_absolute() or ".." in name.parts or not name.parts:
        raise ReleaseIntegrityError(f"{shard}: unsafe path {_short(member.name)} refused")
    if not (member.isfile() or member.isdir()) or member.issparse():
        raise ReleaseIntegrityError(f"{shard}: {_short(member.name)} is a link, device or sparse file; refused")
    if member.isfile() and name.as_posix() in seen:
        raise ReleaseIntegrityError(f"{shard}: {_short(member.name)} appears twice; refused")
    seen.add(name.as_posix())
    return name


def _open_plain_tar(tar_path: Path) -> tarfile.TarFile:
    with open(tar_path, "rb") as fh:
        head = fh.read(8)
    for magic, kind in _COMPRESSED.items():
        if head.startswith(magic):
            raise ReleaseIntegrityError(f"{tar_path.name}: a {kind}-compressed shard; only plain tar is accepted")
    return tarfile.open(tar_path, "r:")


def safe_extract(tar_path: Path, dest: Path, max_bytes: int | None = None, seen: set[str] | None = None) -> int:
    """Extract regular files and folders of a plain tar only; anything else refuses the whole shard.

    ``max_bytes`` caps the members' total size (a plain tar is never smaller than what it holds);
    ``seen`` collects names across shards so no shard can overwrite another's file.
    """
    seen = set() if seen is None else seen
    count = 0
    try:
        with _open_plain_tar(tar_path) as tar:
            members = tar.getmembers()
            for m in members:  # check everything before writing anything
                _check_member(m, tar_path.name, seen)
            total = sum(m.size for m in members if m.isfile())
            if max_bytes is not None and total > max_bytes:
                raise ReleaseIntegrityError(f"{tar_path.name}: its files hold {total} bytes, more than the shard's "
                                            f"{max_bytes}; refused")
            for m in members:
                target = dest.joinpath(*PurePosixPath(m.name).parts)
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                if src is None:
                    raise ReleaseIntegrityError(f"{tar_path.name}: {_short(m.name)} cannot be read; refused")
                with src, open(target, "wb") as out:
                    if _copy_at_most(src.read, out, m.size, None):
                        raise ReleaseIntegrityError(f"{tar_path.name}: {_short(m.name)} is cut short; refused")
                count += 1
    except (tarfile.TarError, EOFError, UnicodeError, ValueError) as exc:
        raise ReleaseIntegrityError(f"{tar_path.name}: not a readable plain tar ({type(exc).__name__}: "
                                    f"{_short(exc)}); refused") from None
    return count


def download_release(location: str, out_dir: str | os.PathLike[str], progress: bool = False) -> Path:
    """Fetch, verify and extract a release into ``out_dir`` (which must not exist yet).

    Partially downloaded shards are kept in ``<out_dir>.download/`` so a rerun resumes them.
    """
    out = Path(out_dir).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(out.parent / f".{out.name}.download.lock", "download", f"download into {out}"):
        return _download(location, out, progress)


def _download(location: str, out: Path, progress: bool) -> Path:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DownloadError(f"{out}: already exists and is not empty")
    index_loc, index = read_index(location)
    cache = out.with_name(out.name + ".download")
    cache.mkdir(parents=True, exist_ok=True)
    total = sum(s["size"] for s in index["shards"])
    bar = Progress("downloading", total, unit="B", scale=True) if progress else None
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
        if bar is not None:
            bar.close()
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".incomplete", dir=out.parent))
    try:
        seen: set[str] = set()
        for s in index["shards"]:
            safe_extract(cache / s["name"], staging, max_bytes=s["size"], seen=seen)
        _verify_staged(staging)
        write_text_atomic(staging / "dist" / INDEX_NAME, json.dumps(index, indent=2, sort_keys=True) + "\n")
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(cache, ignore_errors=True)
    return out


def _verify_staged(staging: Path, shown: int = 5) -> None:
    """The extracted files against the release's own manifest, before the folder is renamed into place."""
    from comcoco.release.manifest import ManifestError, verify_release

    try:
        problems = verify_release(staging)
    except (ManifestError, ValueError, KeyError, TypeError) as exc:
        raise ReleaseIntegrityError(f"the release's manifest.json is missing or unreadable ({_short(exc)}); "
                                    "nothing was extracted") from None
    if problems:
        more = f" and {len(problems) - shown} more" if len(problems) > shown else ""
        raise ReleaseIntegrityError("the extracted files do not match the release's manifest.json: "
                                    + "; ".join(problems[:shown]) + more + "; nothing was extracted")


# --- verifying ----------------------------------------------------------------------------------


def verify_files(root: str | os.PathLike[str], files: dict[str, dict],
                 progress: bool = False, on_error: Callable[[str], None] | None = None) -> list[str]:
    """Check each ``{relpath: {sha256, size}}`` entry under ``root``; returns the problems found."""
    root = Path(root)
    problems: list[str] = []
    hashes = OncePerFile()  # a file under two names (a shared Parquet file) is read once
    items = sorted(files.items())
    for rel, meta in track(items, "verifying", progress, unit="file"):
        p = root / rel
        if not p.is_file():
            problem = f"{rel}: missing"
        else:
            problem = file_mismatch(rel, p.stat().st_size, lambda p=p: hashes.sha256(p), meta)
            if problem is None:
                continue
        problems.append(problem)
        if on_error is not None:
            on_error(problem)
    return problems
