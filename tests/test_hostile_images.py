"""Hostile images: files that are not where they belong, not files, too big, bombs, truncated, undecodable.

Every case is a real file on disk (a FIFO, a sparse file, a crafted PNG header, a JPEG cut short with
its end marker put back, a symlink out of the image folder). `inspect` must report each with its kind,
the build must turn each into the failure row of the samples that use it (the shard completes), and
nothing may block, crash or take memory beyond the build's normal envelope.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from comcoco.build import build_inline, match_stage, plan_stage, prepare_workdir
from comcoco.plan import BuildConfig, SourceSpec
from comcoco.sources.images import (
    MAX_IMAGE_BYTES,
    ImageReadError,
    ImageTooLarge,
    UnsafeImagePath,
    decode_image,
)
from comcoco.sources.paths import trusted_image_file
from comcoco.sources.refer import load_source
from comcoco.sources.validate import inspect_source
from comcoco.workdir import Workdir

IMAGES = Path("images/mscoco/images/train2014")


def png_header(width: int, height: int, rows: int = 1) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` but whose data holds ``rows`` zero rows."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * (1 + 3 * width) * rows)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def png_bomb(path: Path, side: int) -> None:
    """A real decompression bomb: a complete ``side`` x ``side`` RGB PNG of zeros, a few hundred kB."""
    comp = zlib.compressobj(9)
    row = b"\0" * (1 + 3 * side)
    parts = [comp.compress(row) for _ in range(side)] + [comp.flush()]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    idat = b"".join(parts)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def noisy_jpeg(width: int = 320, height: int = 240, progressive: bool = False) -> bytes:
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur((rng.random((height, width, 3)) * 255).astype(np.uint8), (0, 0), 2)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90, cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)])
    assert ok
    return buf.tobytes()


# --- the decoder ---------------------------------------------------------------------------------------


def test_a_good_jpeg_and_png_decode_exactly_as_opencv_decodes_them(coco_real_dir):
    for name in ("000000000785.jpg", "000000040083.jpg", "000000039769.png"):
        path = coco_real_dir / name
        plain = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(decode_image(path), plain)


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("cut", [0.3, 0.6, 0.9])
def test_a_truncated_jpeg_with_its_end_marker_put_back_is_refused(tmp_path, progressive, cut):
    data = noisy_jpeg(progressive=progressive)
    good = tmp_path / "good.jpg"
    good.write_bytes(data)
    decode_image(good)  # the whole file decodes
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(data[: int(len(data) * cut)] + b"\xff\xd9")
    assert cv2.imdecode(np.frombuffer(bad.read_bytes(), np.uint8), cv2.IMREAD_COLOR) is not None  # OpenCV paints it
    with pytest.raises(ImageReadError, match="truncated JPEG"):
        decode_image(bad)
    bare = tmp_path / "bare.jpg"
    bare.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(ImageReadError, match="truncated JPEG"):
        decode_image(bare)


def test_files_that_are_not_regular_files_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)  # opening it for reading would block forever without O_NONBLOCK
    with pytest.raises(ImageReadError, match="a FIFO"):
        decode_image(fifo)
    (tmp_path / "dir.jpg").mkdir()
    with pytest.raises(ImageReadError, match="a folder"):
        decode_image(tmp_path / "dir.jpg")
    with pytest.raises(ImageReadError, match="character device"):
        decode_image("/dev/zero")
    with pytest.raises(ImageReadError, match="missing file"):
        decode_image(tmp_path / "nothing.jpg")


def test_size_cap_and_pixel_limit_come_before_any_decoding(tmp_path):
    sparse = tmp_path / "huge.jpg"
    with open(sparse, "wb") as fh:
        fh.write(b"\xff\xd8")
        fh.truncate(MAX_IMAGE_BYTES + 1)  # sparse: no disk used
    with pytest.raises(ImageTooLarge, match="bytes, more than"):
        decode_image(sparse)
    claim = tmp_path / "claim.png"
    claim.write_bytes(png_header(9000, 9000))  # 81 megapixels claimed by a 100-byte file
    with pytest.raises(ImageTooLarge, match="decompression bomb"):
        decode_image(claim)
    with pytest.raises(ImageTooLarge, match="decompression bomb"):
        decode_image(claim, expected=(9000, 9000))
    small = tmp_path / "small.png"
    small.write_bytes(png_header(64, 48, rows=48))
    with pytest.raises(ImageReadError, match="differs from the recorded 640x480"):
        decode_image(small, expected=(640, 480))  # the record's size is checked against the header first
    assert decode_image(small, expected=(64, 48)).shape == (48, 64, 3)


def test_every_decoder_failure_is_an_image_read_error(tmp_path):
    cases = {
        "garbage.jpg": b"\xff\xd8\xff\xe0" + os.urandom(3000) + b"\xff\xd9",
        "empty.png": b"",
        "lying.png": png_header(64, 48, rows=2),  # the header promises 48 rows, the data holds 2
        "text.jpg": b"not an image at all",
        "gif.gif": b"GIF89a\x01\x00\x01\x00\x00\x00\x00;",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ImageReadError) as info:
            decode_image(tmp_path / name)
        assert str(tmp_path / name) in str(info.value)


def test_a_decompression_bomb_keeps_memory_within_bounds(tmp_path):
    """A 12,000 x 12,000 PNG of zeros (432 MB decoded, under 1 MB on disk) decoded in a process of its
    own: refused before any pixel buffer exists, the process stays near its baseline."""
    bomb = tmp_path / "bomb.png"
    png_bomb(bomb, 12000)
    assert bomb.stat().st_size < 2_000_000
    code = ("import sys\nfrom comcoco.sources.images import decode_image, ImageTooLarge\n"
            f"try:\n    decode_image({str(bomb)!r})\nexcept ImageTooLarge as e:\n    print('refused', e)\n"
            # this process's own peak: ru_maxrss would count the forking test process's peak too
            "print([line for line in open('/proc/self/status') if line.startswith('VmHWM:')][0].split()[1])\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    _, _, usage = os.wait4(proc.pid, 0)
    out = proc.stdout.read().decode()
    assert out.startswith("refused"), (out, proc.stderr.read().decode())
    peak_kb = int(out.split()[-1])
    assert peak_kb * 1024 < 350e6, (peak_kb, usage.ru_maxrss)  # the decoded bomb alone would be 432 MB


# --- where an image may be read from ---------------------------------------------------------------


@pytest.mark.parametrize("name, why", [
    ("/etc/passwd", "absolute"),
    ("../../../etc/passwd", "'..'"),
    ("sub/../../x.jpg", "'..'"),
    ("..\\..\\x.jpg", "'..'"),
    ("C:\\windows\\x.jpg", "absolute"),
    ("x\x1b[31m.jpg", "control character"),
    ("x\ud800.jpg", "lone surrogate"),
    ("", "empty"),
])
def test_file_names_that_leave_the_image_folder_are_refused(tmp_path, name, why):
    with pytest.raises(UnsafeImagePath, match=why):
        trusted_image_file(tmp_path, name)


def test_symlinks_stay_inside_the_image_folder_unless_a_root_is_declared(tmp_path):
    images, store = tmp_path / "images", tmp_path / "store"
    images.mkdir()
    store.mkdir()
    (store / "a.jpg").write_bytes(noisy_jpeg())
    (images / "a.jpg").symlink_to(store / "a.jpg")
    (images / "sub").symlink_to(store)
    (images / "b.jpg").write_bytes(b"x")
    (images / "inner.jpg").symlink_to(images / "b.jpg")  # a link that stays inside is fine
    assert trusted_image_file(images, "inner.jpg") == images / "inner.jpg"
    for name in ("a.jpg", "sub/a.jpg"):
        with pytest.raises(UnsafeImagePath, match="symlink leading outside"):
            trusted_image_file(images, name)
        assert trusted_image_file(images, name, image_root=store) == images / name
    with pytest.raises(UnsafeImagePath):
        trusted_image_file(images, "a.jpg", image_root=tmp_path / "elsewhere")
    linked_dir = tmp_path / "linked"
    linked_dir.symlink_to(images)  # the image folder itself may be a symlink
    assert trusted_image_file(linked_dir, "b.jpg") == linked_dir / "b.jpg"


# --- inspect and build on a source full of them ----------------------------------------------------


def _hostile_source(source: Path, ids: list[int], outside: Path) -> dict[int, str]:
    """Turn the images ``ids`` of a demo source copy into one hostile case each; returns id → kind."""
    inst_path = source / "refcoco+" / "instances.json"
    inst = json.loads(inst_path.read_text())
    by_id = {im["id"]: im for im in inst["images"]}
    folder = source / IMAGES
    kinds = ["fifo", "symlink_out", "truncated", "bomb_header", "absolute", "dotdot"]
    made = {}
    for image_id, kind in zip(ids, kinds, strict=False):
        im = by_id[image_id]
        path = folder / im["file_name"]
        if kind == "fifo":
            path.unlink()
            os.mkfifo(path)
        elif kind == "symlink_out":
            shutil.move(path, outside / im["file_name"])
            path.symlink_to(outside / im["file_name"])
        elif kind == "truncated":
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2] + b"\xff\xd9")
        elif kind == "bomb_header":
            path.write_bytes(png_header(im["width"] * 40, im["height"] * 40))
            im["width"], im["height"] = im["width"] * 40, im["height"] * 40
        elif kind == "absolute":
            im["file_name"] = str(outside / "stolen.jpg")
        elif kind == "dotdot":
            im["file_name"] = "../../" + im["file_name"]
        made[image_id] = kind
    inst_path.write_text(json.dumps(inst))
    return made


EXPECTED_KIND = {"fifo": "unreadable_image", "symlink_out": "unsafe_image_path", "truncated": "unreadable_image",
                 "bomb_header": "image_too_large", "absolute": "unsafe_image_path", "dotdot": "unsafe_image_path"}


def test_inspect_and_build_survive_a_source_of_hostile_images(demo_source_copy, tmp_path):
    """Plan once (planning reads no pixel), make the images the plan uses hostile, then inspect and
    build: every case is a reported problem and the failure row of its samples; every shard completes."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "stolen.jpg").write_bytes(noisy_jpeg())
    spec, config = SourceSpec(root=str(demo_source_copy)), BuildConfig(limit=24, shard_size=8, seed=0)
    scout = Workdir(tmp_path / "scout")
    prepare_workdir(scout, config, spec)
    match_stage(spec, scout, config)
    plan_stage(spec, scout, config)
    rows = scout.plan_rows()
    backgrounds = sorted({r.bg_image_id for r in rows})
    objects = sorted({r.fg_image_id for r in rows} - set(backgrounds))
    made = _hostile_source(demo_source_copy, (backgrounds + objects)[:6], outside)
    assert len(made) == 6

    report = inspect_source(load_source(demo_source_copy), deep=True)
    image_kinds = set(EXPECTED_KIND.values())
    found = {p.id: p for p in report.problems if p.id in made and p.kind in image_kinds}
    for image_id, kind in made.items():
        assert found[image_id].kind == EXPECTED_KIND[kind], (kind, found[image_id])

    wd = Workdir(tmp_path / "work")
    counts = build_inline(spec, wd, config)
    assert not json.loads(wd.path("build.json").read_text())["shard_errors"]
    assert all(wd.is_complete(s) for s in {r.shard for r in wd.plan_rows()})
    rows = wd.status()
    hit = [r for r in rows if r.bg_image_id in made or r.fg_image_id in made]
    assert hit and all(not r.ok and r.status != "not_built" for r in hit)
    for r in hit:
        print(r.status, r.reason)
        assert r.reason and any(str(i) in r.reason for i in (r.bg_image_id, r.fg_image_id) if i in made)
    assert counts["by_status"].get("ok", 0) == sum(r.ok for r in rows) > 0
