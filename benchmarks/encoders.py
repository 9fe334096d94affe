"""Lossless PNG writers compared on real COCO photos: time per image and file size, in one run.

Each writer encodes the same RGB images (the real photos in ../shared/fixtures/coco_real and, for a
composite-like case, each photo with a block of another pasted in) and a 0/255 mask of the same size.
Every output is decoded again with OpenCV and Pillow and must equal the input pixel for pixel (a writer
that is not lossless, or writes a file one of them cannot read, is reported as failing). One thread;
rounds alternate the writers and the best round of each counts, so the ratios hold on a busy machine.

Writers: ``opencv`` (libpng through OpenCV at zlib level 1, comcoco's writer before encoders could be
chosen, and at level 0), ``fpng`` (the robust profile's default), and — when the optional ``imagecodecs`` package is
installed — its libpng (``png``), libspng (``spng``) and zlib-ng based writers at level 1. comcoco does
not depend on imagecodecs; install it (``pip install imagecodecs``) to see those rows.

    python benchmarks/encoders.py [--rounds 5] [--repeat 4]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures" / "coco_real"

Encoder = Callable[[np.ndarray], bytes]


def _comcoco(encoder: str, level: int = 1) -> Encoder:
    """comcoco's own writer with the given encoder (masks included: fpng writes colour only)."""
    sys.path.insert(0, str(REPO))
    from comcoco.compose.writer import encode_image
    from comcoco.config import ComposeConfig

    config = ComposeConfig(encoder=encoder, png_compression=level)
    return lambda img: encode_image(img, config)


def writers() -> dict[str, Encoder]:
    out: dict[str, Encoder] = {"opencv level 1 (before)": _comcoco("opencv"), "opencv level 0": _comcoco("opencv", 0),
                               "fpng (default)": _comcoco("fpng")}
    try:
        import imagecodecs as ic
    except ImportError:
        print("imagecodecs not installed: its libpng, libspng and zlib-ng rows are left out")
        return out
    out["imagecodecs png level 1"] = lambda img: ic.png_encode(img, level=1)
    if ic.SPNG.available:
        out["imagecodecs spng level 1"] = lambda img: ic.spng_encode(img, level=1)
    if ic.ZLIBNG.available and ic.APNG.available:  # libpng's writer over zlib-ng where the build has it
        out["imagecodecs apng level 1"] = lambda img: ic.apng_encode(img, level=1)
    return out


def images(repeat: int) -> list[np.ndarray]:
    """The fixture photos, and each with a block of the next pasted in (a composite's statistics)."""
    photos = []
    for p in sorted(FIXTURES.glob("*.jpg")) + sorted(FIXTURES.glob("*.png")):
        bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if bgr is not None:
            photos.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    if not photos:
        raise SystemExit(f"no images in {FIXTURES}")
    pasted = []
    for i, a in enumerate(photos):
        b = photos[(i + 1) % len(photos)]
        c = a.copy()
        h, w = min(a.shape[0], b.shape[0]) // 2, min(a.shape[1], b.shape[1]) // 2
        c[:h, :w] = b[:h, :w]
        pasted.append(c)
    return (photos + pasted) * repeat


def lossless(img: np.ndarray, data: bytes) -> bool:
    flag = cv2.IMREAD_GRAYSCALE if img.ndim == 2 else cv2.IMREAD_COLOR
    back = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if back is None:
        return False
    if img.ndim == 3:
        back = cv2.cvtColor(back, cv2.COLOR_BGR2RGB)
    with Image.open(io.BytesIO(data)) as im:
        pil = np.asarray(im.convert("L" if img.ndim == 2 else "RGB"))
    return np.array_equal(back, img) and np.array_equal(pil, img)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=4, help="times each image is encoded per round")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    rgbs = images(args.repeat)
    masks = [((img[..., 0] > 128).astype(np.uint8) * 255) for img in rgbs]
    pixels = sum(img.shape[0] * img.shape[1] for img in rgbs)
    ws = writers()
    best: dict[str, dict[str, float]] = {name: {"rgb": float("inf"), "mask": float("inf")} for name in ws}
    size: dict[str, dict[str, int]] = {}
    ok: dict[str, bool] = {}
    for _ in range(args.rounds):
        for name, enc in ws.items():
            for kind, batch in (("rgb", rgbs), ("mask", masks)):
                t0 = time.process_time()
                out = [enc(img) for img in batch]
                best[name][kind] = min(best[name][kind], time.process_time() - t0)
                size.setdefault(name, {})[kind] = sum(len(b) for b in out)
                ok[name] = ok.get(name, True) and all(lossless(i, b) for i, b in zip(batch[:4], out[:4], strict=True))
    base = "opencv level 1 (before)"
    n = len(rgbs)
    mpix = pixels / n / 1e6
    print(f"{n} RGB images of {mpix:.2f} Mpixel on average and as many masks, one thread, best of {args.rounds} rounds")
    print(f"{'writer':<26} {'RGB ms':>7} {'speed-up':>8} {'size':>6} {'mask ms':>8} {'speed-up':>8} {'size':>6} lossless")
    for name in ws:
        r, m = best[name]["rgb"] / n * 1e3, best[name]["mask"] / n * 1e3
        print(f"{name:<26} {r:7.2f} {best[base]['rgb'] / best[name]['rgb']:7.2f}x "
              f"{size[name]['rgb'] / size[base]['rgb']:5.2f}x {m:8.2f} {best[base]['mask'] / best[name]['mask']:7.2f}x "
              f"{size[name]['mask'] / size[base]['mask']:5.2f}x {'yes' if ok[name] else 'NO'}")
    print("speed-up and size are against opencv level 1; sizes are total bytes over the same images")


if __name__ == "__main__":
    main()
