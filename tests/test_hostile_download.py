"""Hostile downloads: a real HTTP server on 127.0.0.1 that lies, floods, cuts connections and serves bombs.

`comcoco download` must never read more than the index declares, accept only plain tar, refuse any
member whose name holds a control character or whose size exceeds the shard, resume a shard cut short
with `Range`, verify the release's manifest in its staging folder before it takes the final path,
and accept only ASCII X.Y.Z versions. Every refusal is one `ReleaseIntegrityError` (or `DownloadError`)
and leaves nothing at the final path. The plain cases (absolute paths, `..`, links, devices, a
tampered shard) are in tests/test_download.py.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import http.server
import io
import json
import lzma
import os
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from comcoco.release.download import DownloadError, ReleaseIntegrityError, download_release, read_index
from comcoco.release.options import ReleaseError, check_version
from comcoco.release.pack import pack_release


def make_release(root: Path, n: int = 6, version: str = "1.0.0") -> Path:
    """A release folder (files and the manifest listing them) packed into ``root/dist`` in 8 kB shards."""
    files = {f"images/{i:04d}.png": hashlib.sha256(str(i).encode()).digest() * (40 + i) for i in range(n)}
    files["ComCOCO/refs(unc).p"] = b"\x80\x02]q\x00."
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    listed = {rel: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for rel, d in files.items()}
    (root / "manifest.json").write_text(json.dumps({"version": version, "files": listed}))
    pack_release(root, sorted([*files, "manifest.json"]), root / "dist", version, shard_bytes=8000)
    return root / "dist"


def one_shard_dist(dist: Path, data: bytes, name: str = "rel-0.tar", version: str = "0.0.1") -> Path:
    """A dist folder whose index declares ``data`` exactly (size and sha256) as its only shard."""
    dist.mkdir(parents=True, exist_ok=True)
    (dist / name).write_bytes(data)
    index = {"version": version, "shards": [{"name": name, "size": len(data),
                                             "sha256": hashlib.sha256(data).hexdigest(), "files": 1}]}
    (dist / "index.json").write_text(json.dumps(index))
    return dist


def plain_tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def nothing_left(out: Path) -> None:
    assert not out.exists(), f"{out} exists after a refusal"
    assert not list(out.parent.glob(f".{out.name}.*.incomplete")), "a staging folder remains"


class Server:
    """A real HTTP server over a folder; ``mode`` says how it misbehaves, ``seen`` what it was asked."""

    def __init__(self, root: Path):
        self.root, self.mode, self.seen, self.sent = root, "honest", [], {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                path = server.root / self.path.lstrip("/")
                rng = self.headers.get("Range")
                server.seen.append((self.path, rng))
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start = int(rng.split("=")[1].split("-")[0]) if rng and server.mode != "ignore-range" else 0
                body = data[start:]
                shard = path.suffix == ".tar"
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                if shard and server.mode == "flood":  # the shard, then bytes without end
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self._send(path.name, body)
                    junk = b"\0" * (1 << 16)
                    while server.sent[path.name] < 1 << 30:
                        if not self._send(path.name, junk):
                            return
                    return
                if shard and server.mode == "overlong":  # a Content-Length beyond the index's size
                    body = body + b"\0" * (1 << 20)
                self.send_header("Content-Length", str(len(body)))
                if shard and server.mode == "cut" and not start:  # half the shard, then hang up
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self._send(path.name, body[: len(body) // 2])
                    self.close_connection = True
                    return
                self.end_headers()
                self._send(path.name, body)

            def _send(self, name: str, data: bytes) -> bool:
                try:
                    self.wfile.write(data)
                    self.wfile.flush()
                except OSError:
                    return False
                server.sent[name] = server.sent.get(name, 0) + len(data)
                return True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def served(tmp_path):
    dist = make_release(tmp_path / "release")
    server = Server(dist)
    yield server, tmp_path / "release"
    server.close()


def same_release(out: Path, release: Path) -> None:
    got = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and "dist" not in p.parts)
    want = sorted(p.relative_to(release).as_posix() for p in release.rglob("*") if p.is_file() and "dist" not in p.parts)
    assert got == want
    for rel in got:
        assert (out / rel).read_bytes() == (release / rel).read_bytes(), rel


# --- never more than declared ---------------------------------------------------------------------------


def test_a_server_that_never_stops_sending_is_read_only_as_far_as_declared(served, tmp_path):
    server, release = served
    server.mode = "flood"
    t0 = time.monotonic()
    out = download_release(server.url + "/", tmp_path / "got")
    assert time.monotonic() - t0 < 60
    same_release(out, release)
    shards = json.loads((release / "dist" / "index.json").read_text())["shards"]
    for s in shards:  # what the server got out before the client hung up: the shard and socket buffers
        assert server.sent[s["name"]] < s["size"] + (32 << 20), (s, server.sent[s["name"]])


def test_a_content_length_beyond_the_declared_size_is_not_read(served, tmp_path):
    server, release = served
    server.mode = "overlong"
    out = download_release(server.url + "/", tmp_path / "got")
    same_release(out, release)


# --- connection cut, then resumed with Range ------------------------------------------------------------


def test_a_shard_cut_short_is_kept_and_resumed_with_range(served, tmp_path):
    server, release = served
    server.mode = "cut"
    out = tmp_path / "got"
    with pytest.raises(DownloadError, match="run the download again to resume"):
        download_release(server.url + "/", out)
    nothing_left(out)
    first = json.loads((release / "dist" / "index.json").read_text())["shards"][0]
    part = tmp_path / "got.download" / first["name"]
    assert part.stat().st_size == first["size"] // 2, "the partial shard was not kept"
    server.mode, server.seen = "honest", []
    download_release(server.url + "/", out)
    same_release(out, release)
    ranged = [(p, r) for p, r in server.seen if r]
    assert ranged == [(f"/{first['name']}", f"bytes={first['size'] // 2}-")], server.seen
    assert not (tmp_path / "got.download").exists()


def test_a_server_that_ignores_range_is_read_again_from_the_start(served, tmp_path):
    server, release = served
    server.mode = "cut"
    with pytest.raises(DownloadError):
        download_release(server.url + "/", tmp_path / "got")
    server.mode = "ignore-range"
    same_release(download_release(server.url + "/", tmp_path / "got"), release)


# --- what a shard may hold ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gzip", "bzip2", "xz"])
def test_a_compressed_shard_is_refused_before_it_is_opened(tmp_path, kind):
    compress = {"gzip": gzip.compress, "bzip2": bz2.compress, "xz": lzma.compress}[kind]
    bomb = compress(plain_tar({"images/zeros.png": b"\0" * (8 << 20)}))
    assert len(bomb) < 100_000  # 8 MB of zeros in a few kB: what a bomb looks like
    dist = one_shard_dist(tmp_path / "dist", bomb)
    with pytest.raises(ReleaseIntegrityError, match=f"a {kind}-compressed shard; only plain tar is accepted"):
        download_release(str(dist), tmp_path / "out")
    nothing_left(tmp_path / "out")


@pytest.mark.parametrize("name", ["images/a\x1b[2Jb.png", "images/a\nb.png", "images/a\rb.png", "a\x7fb",
                                  "a\x85b", "a\udcffb.png", "images\\..\\..\\evil"])
def test_member_names_with_control_characters_are_refused(tmp_path, name):
    dist = one_shard_dist(tmp_path / "dist", plain_tar({"ok.txt": b"ok", name: b"x"}))
    with pytest.raises(ReleaseIntegrityError, match="control character") as info:
        download_release(str(dist), tmp_path / "out")
    assert "\x1b" not in str(info.value) and "\n" not in str(info.value), "the hostile name was quoted raw"
    nothing_left(tmp_path / "out")


def test_a_member_larger_than_its_shard_is_refused(tmp_path):
    head = tarfile.TarInfo("images/huge.png")
    head.size = 10 << 30  # claims 10 GB; the shard holds 1 kB of it
    data = head.tobuf(format=tarfile.GNU_FORMAT) + b"\1" * 1024 + b"\0" * 1024
    dist = one_shard_dist(tmp_path / "dist", data)
    with pytest.raises(ReleaseIntegrityError, match="refused"):
        download_release(str(dist), tmp_path / "out")
    nothing_left(tmp_path / "out")
    assert not list(tmp_path.rglob("huge.png"))


def test_a_member_repeated_in_a_later_shard_cannot_overwrite_the_first(tmp_path):
    dist = tmp_path / "dist"
    dist.mkdir()
    shards = []
    for i, payload in enumerate((b"good", b"evil")):
        data = plain_tar({"images/a.png": payload})
        (dist / f"rel-{i}.tar").write_bytes(data)
        shards.append({"name": f"rel-{i}.tar", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    (dist / "index.json").write_text(json.dumps({"version": "1.0.0", "shards": shards}))
    with pytest.raises(ReleaseIntegrityError, match="appears twice"):
        download_release(str(dist), tmp_path / "out")
    nothing_left(tmp_path / "out")


# --- the manifest is checked in staging ---------------------------------------------------------------


def test_an_unverified_release_never_sits_at_the_final_path(tmp_path):
    """The release's own manifest lists a wrong hash: the download is refused, and a watcher that looks
    at the final path all along never sees it (verification happens before the rename)."""
    root = tmp_path / "release"
    dist = make_release(root, n=400)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["files"]["images/0399.png"]["sha256"] = "0" * 64
    (root / "manifest.json").write_text(json.dumps(manifest))
    pack_release(root, sorted([*manifest["files"], "manifest.json"]), dist, "1.0.0", shard_bytes=1 << 20)
    out = tmp_path / "out"
    seen, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            if os.path.lexists(out):
                seen.append(time.monotonic())

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with pytest.raises(ReleaseIntegrityError, match="images/0399.png") as info:
            download_release(str(dist), out)
    finally:
        stop.set()
        watcher.join()
        sys.setswitchinterval(old)
    assert "do not match the release's manifest.json" in str(info.value)
    assert seen == [], "the final path existed during the download"
    nothing_left(out)


# --- versions -------------------------------------------------------------------------------------------

HOSTILE_VERSIONS = ["1.0", "1.0.0\n", " 1.0.0", "1.0.0-rc1", "\u0661.\u0660.\u0660", "１.0.0", "1.0.0/../x",
                    "1.0.0\x00", "9" * 100_000 + ".0.0"]


@pytest.mark.parametrize("version", HOSTILE_VERSIONS, ids=range(len(HOSTILE_VERSIONS)))
def test_versions_that_are_not_ascii_x_y_z_are_refused(tmp_path, version):
    dist = one_shard_dist(tmp_path / "dist", plain_tar({"ok.txt": b"ok"}), version=version)
    with pytest.raises(ReleaseIntegrityError, match="X.Y.Z") as info:
        read_index(str(dist))
    assert len(str(info.value)) < 400, "a hostile version was quoted whole"
    with pytest.raises(ReleaseError, match="X.Y.Z") as info:
        check_version(version)
    assert len(str(info.value)) < 400, "a hostile version was quoted whole"
