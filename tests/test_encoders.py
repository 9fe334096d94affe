"""The lossless writers: standard PNGs every reader decodes to the exact pixels, and ids that stay put.

fpng (the default) and opencv must both give back the exact array through Pillow and OpenCV, masks
stay single-channel 8-bit (what pycocotools encodes), and the opencv writer keeps the ids and bytes
of builds made before the encoder could be chosen.
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from typer.testing import CliRunner

from comcoco.compose.writer import encode_image
from comcoco.config import BuildConfig, ComposeConfig, ComposeConfigError

# The paper profile's and the robust profile's fingerprints before encoders existed (opencv, level 1).
PAPER_FINGERPRINT_BEFORE_ENCODERS = "b16cb9c8cd78a8dd"
ROBUST_FINGERPRINT_BEFORE_ENCODERS = "20503270273e0e63"


@pytest.fixture(scope="module")
def photo(coco_real_dir: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(coco_real_dir / "000000000785.jpg")), cv2.COLOR_BGR2RGB)


def _mask(shape: tuple[int, ...]) -> np.ndarray:
    m = np.zeros(shape[:2], np.uint8)
    cv2.ellipse(m, (shape[1] // 2, shape[0] // 2), (shape[1] // 5, shape[0] // 4), 20, 0, 360, 255, -1)
    return m


@pytest.mark.parametrize("encoder", ["fpng", "opencv"])
def test_every_encoder_writes_a_standard_lossless_png(photo, encoder):
    cfg = ComposeConfig(encoder=encoder)
    data = encode_image(photo, cfg)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        assert np.array_equal(np.asarray(im), photo)
    back = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(cv2.cvtColor(back, cv2.COLOR_BGR2RGB), photo)
    assert encode_image(photo.copy(), cfg) == data  # same pixels, same bytes

    mask = _mask(photo.shape)
    mdata = encode_image(mask, cfg)
    with Image.open(io.BytesIO(mdata)) as im:
        assert im.mode == "L"
        read = np.asarray(im)
    assert np.array_equal(read, mask)
    assert np.array_equal(cv2.imdecode(np.frombuffer(mdata, np.uint8), cv2.IMREAD_UNCHANGED), mask)
    rle = mask_utils.encode(np.asfortranarray((read > 0).astype(np.uint8)))
    assert int(mask_utils.area(rle)) == int(np.count_nonzero(mask))


def test_opencv_encoder_is_the_earlier_writer_byte_for_byte(photo):
    for level in (0, 1, 6):
        cfg = ComposeConfig(encoder="opencv", png_compression=level)
        ok, ref = cv2.imencode(".png", cv2.cvtColor(photo, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, level])
        assert ok and encode_image(photo, cfg) == ref.tobytes()
    fast, small = ComposeConfig(encoder="opencv", png_compression=1), ComposeConfig(encoder="opencv", png_compression=9)
    assert len(encode_image(photo, small)) < len(encode_image(photo, fast))
    # fpng is a different writer (other bytes, same pixels)
    assert encode_image(photo, ComposeConfig()) != encode_image(photo, fast)


def test_encoder_in_the_fingerprint_and_in_old_plans():
    assert ComposeConfig().encoder == "fpng"
    paper_opencv = ComposeConfig(profile="paper", encoder="opencv")
    assert paper_opencv.fingerprint() == PAPER_FINGERPRINT_BEFORE_ENCODERS
    # (and without decoys, which came later: --decoys 0 keeps the ids of robust builds before them)
    assert ComposeConfig(encoder="opencv", decoys=0).fingerprint() == ROBUST_FINGERPRINT_BEFORE_ENCODERS
    # the paper profile writes with opencv unless told otherwise: its samples keep their earlier ids
    assert ComposeConfig(profile="paper").encoder == "opencv"
    assert ComposeConfig(profile="paper").fingerprint() == PAPER_FINGERPRINT_BEFORE_ENCODERS
    assert ComposeConfig(profile="paper", encoder="fpng").fingerprint() != PAPER_FINGERPRINT_BEFORE_ENCODERS
    assert ComposeConfig().fingerprint() != ROBUST_FINGERPRINT_BEFORE_ENCODERS
    # plans written before encoders (with or without a profile) were written by opencv
    old = BuildConfig.from_dict({"seed": 0, "compose": {"seed": 0, "profile": "robust"}})
    assert old.compose.encoder == "opencv" and old.compose.fingerprint() == ROBUST_FINGERPRINT_BEFORE_ENCODERS
    assert BuildConfig.from_dict(BuildConfig().to_dict()).compose.encoder == "fpng"
    with pytest.raises(ComposeConfigError, match="unknown encoder 'zopfli'"):
        ComposeConfig(encoder="zopfli").validate()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--png-level", "6"], "--png-level sets the zlib level of --encoder opencv"),
        (["--encoder", "zopfli"], "unknown encoder 'zopfli'"),
    ],
)
def test_cli_refuses_an_encoder_it_cannot_use(tmp_path, extra, message):
    from comcoco.cli import app

    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["compose", str(tmp_path), "--candidates", str(tmp_path / "c.parquet"),
                                   "-o", str(out), *extra])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not out.exists()
