"""Release packing, download over HTTP on 127.0.0.1 and from a path, verification, safe extraction."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import tarfile
import threading
from pathlib import Path

import pytest

from comcoco.release.download import (
    DownloadError,
    ReleaseIntegrityError,
    download_release,
    pack_release,
    read_index,
    verify_files,
)


def _make_release(root: Path) -> list[str]:
    """A small release: a few files and the manifest that lists them (as a real release's does)."""
    files = {
        "images/a.png": bytes(range(256)) * 40,
        "images/b.png": b"b" * 5000,
        "ComCOCO/refs(unc).p": b"\x80\x02]q\x00.",
        "masks/a.png": b"m" * 3000,
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    listed = {rel: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)} for rel, data in files.items()}
    (root / "manifest.json").write_text(json.dumps({"version": "1.0.0", "files": listed}))
    return sorted([*files, "manifest.json"])


@pytest.fixture()
def release(tmp_path):
    root = tmp_path / "rel"
    files = _make_release(root)
    shards = pack_release(root, files, root / "dist", "1.0.0", shard_bytes=8000)
    return root, files, shards


@pytest.fixture()
def http_root(tmp_path):
    """Serve a folder over HTTP on 127.0.0.1 (supports Range via a small handler)."""
    served = tmp_path / "www"
    served.mkdir()

    class RangeHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def send_head(self):
            rng = self.headers.get("Range")
            path = Path(self.translate_path(self.path))
            if not rng or not path.is_file():
                return super().send_head()
            start = int(rng.split("=")[1].split("-")[0])
            data = path.read_bytes()[start:]
            self.send_response(206)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Content-Range", f"bytes {start}-{start + len(data) - 1}/{path.stat().st_size}")
            self.end_headers()
            return io.BytesIO(data)

    handler = functools.partial(RangeHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _copy_dist(root: Path, dest: Path) -> None:
    for p in (root / "dist").iterdir():
        (dest / p.name).write_bytes(p.read_bytes())


def test_pack_is_deterministic_and_sharded(release, tmp_path):
    root, files, shards = release
    assert len(shards) >= 2
    assert sum(s.files for s in shards) == len(files)
    again = pack_release(root, files, tmp_path / "dist2", "1.0.0", shard_bytes=8000)
    assert [s.sha256 for s in again] == [s.sha256 for s in shards]
    index = json.loads((root / "dist" / "index.json").read_text())
    assert index["version"] == "1.0.0"
    for s in index["shards"]:
        data = (root / "dist" / s["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == s["sha256"] and len(data) == s["size"]


def test_download_over_http_and_verify(release, http_root, tmp_path):
    root, files, _ = release
    served, url = http_root
    _copy_dist(root, served)
    out = download_release(url + "/", tmp_path / "got")
    for rel in files:
        assert (out / rel).read_bytes() == (root / rel).read_bytes()
    meta = {rel: {"sha256": hashlib.sha256((root / rel).read_bytes()).hexdigest(),
                  "size": (root / rel).stat().st_size} for rel in files}
    assert verify_files(out, meta) == []
    (out / "images" / "b.png").write_bytes(b"tampered")
    problems = verify_files(out, meta)
    assert len(problems) == 1 and "images/b.png" in problems[0]


def test_download_from_path_and_index_file(release, tmp_path):
    root, files, _ = release
    out = download_release(str(root / "dist" / "index.json"), tmp_path / "a")
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and "dist" not in p.parts) == files
    out2 = download_release(str(root / "dist"), tmp_path / "b")
    assert (out2 / "manifest.json").exists()


def test_resume_partial_shard(release, http_root, tmp_path):
    root, files, shards = release
    served, url = http_root
    _copy_dist(root, served)
    cache = tmp_path / "got.download"
    cache.mkdir()
    first = (root / "dist" / shards[0].name).read_bytes()
    (cache / shards[0].name).write_bytes(first[: len(first) // 2])
    out = download_release(url, tmp_path / "got")
    assert (out / files[0]).read_bytes() == (root / files[0]).read_bytes()
    assert not cache.exists()


def test_tampered_shard_is_refused_and_nothing_extracted(release, tmp_path):
    root, _, shards = release
    dist = tmp_path / "dist"
    dist.mkdir()
    _copy_dist(root, dist)
    p = dist / shards[-1].name
    data = bytearray(p.read_bytes())
    data[600] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(ReleaseIntegrityError, match="checksum mismatch"):
        download_release(str(dist), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.*"))


@pytest.mark.parametrize("kind", ["abs", "dotdot", "symlink", "device"])
def test_unsafe_archives_are_refused(tmp_path, kind):
    dist = tmp_path / "dist"
    dist.mkdir()
    tar_path = dist / "evil-0.tar"
    with tarfile.open(tar_path, "w") as tar:
        good = tarfile.TarInfo("ok.txt")
        good.size = 2
        tar.addfile(good, io.BytesIO(b"ok"))
        if kind == "abs":
            ti = tarfile.TarInfo("/tmp/comcoco-evil.txt")
            ti.size = 1
            tar.addfile(ti, io.BytesIO(b"x"))
        elif kind == "dotdot":
            ti = tarfile.TarInfo("../escape.txt")
            ti.size = 1
            tar.addfile(ti, io.BytesIO(b"x"))
        elif kind == "symlink":
            ti = tarfile.TarInfo("link")
            ti.type = tarfile.SYMTYPE
            ti.linkname = "/etc/passwd"
            tar.addfile(ti)
        else:
            ti = tarfile.TarInfo("dev")
            ti.type = tarfile.CHRTYPE
            tar.addfile(ti)
    data = tar_path.read_bytes()
    index = {"version": "0.0.1", "shards": [{"name": tar_path.name, "size": len(data),
                                             "sha256": hashlib.sha256(data).hexdigest(), "files": 2}]}
    (dist / "index.json").write_text(json.dumps(index))
    with pytest.raises(ReleaseIntegrityError, match="refused"):
        download_release(str(dist), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "escape.txt").exists()


def test_bad_locations(tmp_path, http_root):
    with pytest.raises(DownloadError, match="no release index"):
        read_index(str(tmp_path / "nothing"))
    _, url = http_root
    with pytest.raises(DownloadError, match="HTTP 404"):
        read_index(url + "/missing/index.json")
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(DownloadError, match="not a comcoco release index"):
        read_index(str(tmp_path))
