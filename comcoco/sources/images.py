"""Image decoding and instance masks: the one decoder every stage uses, and COCO masks.

``decode_image`` is the only way comcoco turns an image file into pixels: ``inspect --deep`` checks
files with it and the build composes from it, so a file that passes inspection decodes the same way
in the build. Before any pixel is decoded it is bounded: the path must be a regular file (a FIFO,
device or folder is refused without blocking), at most ``MAX_IMAGE_BYTES`` long, and its header's
size must match the record and stay within ``MAX_IMAGE_PIXELS`` (so a small file that claims a huge
canvas, a decompression bomb, is refused before it takes memory). It decodes with OpenCV
(libjpeg-turbo, fast) and refuses what OpenCV would silently paint grey: a JPEG without its
end-of-image marker, a JPEG whose scan data stops early (with or without an end marker appended; see
``_scan_is_complete``), or bytes OpenCV cannot read. Every decoder failure is an ``ImageReadError``
naming the file, which the build turns into that sample's failure row. EXIF orientation is
deliberately ignored, since COCO polygons are drawn on the stored pixel grid. Masks go through
pycocotools so polygons rasterise exactly as COCO and REFER rasterise them.
"""

from __future__ import annotations

import io
import math
import os
import re
import stat
import struct
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils

from comcoco.errors import ComcocoError
from comcoco.records import ImageInfo

MAX_IMAGE_BYTES = 64 << 20  # a COCO image is about 160 kB; the largest plausible photo a few tens of MB
MAX_IMAGE_PIXELS = 40_000_000  # about 7,700 x 5,200; COCO's largest is 640 x 640 (0.4 megapixels)
CACHE_BYTES = 256 << 20  # decoded images an ImageCache keeps at most (besides its count limit)

# Pillow only reads headers here (and decodes JPEGs for the scan check); the pixel limit above is
# stricter than Pillow's own, so its warning about large images would only repeat it.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageReadError(ComcocoError):
    """An image file that is missing, not an image, truncated, or not the size its record says."""

    def __init__(self, path: str | os.PathLike[str], reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class UnsafeImagePath(ImageReadError):
    """A record's ``file_name`` that points outside the image folder (absolute, ``..``, a symlink out)."""


class ImageTooLarge(ImageReadError):
    """A file above the byte limit, or a header above the pixel limit (a decompression bomb)."""


ImageLoadError = ImageReadError  # the name the compose stage has always caught

_HEADER_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError, TypeError, IndexError,
                  KeyError, struct.error)
_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


HEADER_BYTES = 8192  # image_size reads this much first: PNG's header is in its first 33 bytes
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_image_bytes(path: str | os.PathLike[str], max_bytes: int = MAX_IMAGE_BYTES, head: int | None = None) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (only its first ``head`` bytes when given);
    anything else is refused without blocking."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not block the open
    except FileNotFoundError:
        raise ImageReadError(path, "missing file") from None
    except OSError as exc:
        raise ImageReadError(path, f"unreadable ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
            raise ImageReadError(path, f"{kind}, not an image file; refused")
        if st.st_size > max_bytes:
            raise ImageTooLarge(path, f"{st.st_size} bytes, more than the {max_bytes} an image may have; refused")
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(max_bytes + 1 if head is None else min(head, max_bytes + 1))
    except OSError as exc:
        raise ImageReadError(path, f"unreadable ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise ImageTooLarge(path, f"more than the {max_bytes} bytes an image may have (it grew while read); refused")
    return data


def header_size(data: bytes, path: str | os.PathLike[str], max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """``(width, height)`` from an image's header alone, refused above ``max_pixels``."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = int(im.size[0]), int(im.size[1])
    except Image.DecompressionBombError:
        raise ImageTooLarge(path, f"its header claims more than {max_pixels} pixels (a decompression bomb?); "
                                  "refused before decoding") from None
    except _HEADER_ERRORS as exc:
        raise ImageReadError(path, f"not a readable image ({type(exc).__name__}: {_short(exc)})") from None
    return _checked_size(w, h, path, max_pixels)


def _checked_size(w: int, h: int, path: str | os.PathLike[str], max_pixels: int) -> tuple[int, int]:
    if w < 1 or h < 1:
        raise ImageReadError(path, f"its header says {w}x{h}")
    if w * h > max_pixels:
        raise ImageTooLarge(path, f"its header says {w}x{h} = {w * h} pixels, more than the {max_pixels} "
                                  "allowed (a decompression bomb?); refused before decoding")
    return w, h


def _short(exc: BaseException, limit: int = 200) -> str:
    """A decoder's message, on one line, bounded, and without object addresses (Pillow names its
    ``<_io.BytesIO object at 0x…>``), so a report says the same bytes for the same file every time."""
    text = re.sub(r" at 0x[0-9a-fA-F]+>", ">", " ".join(str(exc).split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"


# Bytes put before a JPEG's last end marker by the scan check: a complete scan ignores them (they
# stand between its last block and the marker), a scan cut short decodes them as blocks.
_FILLER = bytes(range(1, 255, 3)) * 4


# OpenCV ≥ 4.10 decodes to RGB itself (libjpeg-turbo writes that order: the same bytes as BGR swapped)
_IMREAD_COLOR_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)


def imdecode_rgb(buf: np.ndarray, flags: int = 0) -> np.ndarray | None:
    """``cv2.imdecode`` to an RGB ``uint8`` array (None when OpenCV cannot read the bytes)."""
    if _IMREAD_COLOR_RGB is not None:
        return cv2.imdecode(buf, _IMREAD_COLOR_RGB | flags)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR | flags)
    return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=img)


def _pil_rgb(data: bytes) -> np.ndarray | None:
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.mode == "RGB":  # convert would only copy the decoded picture
                im.load()
                return np.asarray(im)
            return np.asarray(im.convert("RGB"))
    except Exception:  # noqa: BLE001 (any failure of this second decoder only means "cannot tell")
        return None


def _scan_is_complete(data: bytes, decoded: np.ndarray) -> bool:
    """Whether a JPEG's entropy-coded data reaches its end marker.

    A JPEG cut short and given an end marker decodes without error, the missing blocks painted flat
    (grey, or the last colour). Decoding it again with filler bytes before the end marker tells them
    apart: a complete scan never reads the filler, so the picture is the same; a short one reads it as
    blocks, so it changes. The second decode is Pillow's, which reports nothing on stderr; it is
    compared with OpenCV's picture, and only where the two decoders differ with Pillow's own.
    """
    pos = data.rfind(b"\xff\xd9")
    filled = _pil_rgb(data[:pos] + _FILLER + data[pos:])
    if filled is not None and filled.shape == decoded.shape and np.array_equal(filled, decoded):
        return True
    plain = _pil_rgb(data)
    if plain is None:
        return True  # Pillow cannot read this JPEG at all: OpenCV's decode stands
    return filled is not None and np.array_equal(plain, filled)


def decode_image(path: str | os.PathLike[str], expected: tuple[int, int] | None = None,
                 max_bytes: int = MAX_IMAGE_BYTES, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode a file to an RGB ``uint8`` array of shape H×W×3 (grey and RGBA become RGB).

    ``expected`` is the record's ``(width, height)``: a header that says otherwise is refused before
    decoding. Raises ``ImageReadError`` (or its kinds ``ImageTooLarge``) for every failure.
    """
    path = Path(path)
    data = read_image_bytes(path, max_bytes)
    jpeg = data[:2] == b"\xff\xd8"
    if jpeg and b"\xff\xd9" not in data[-1024:]:
        raise ImageReadError(path, "truncated JPEG (no end-of-image marker)")
    w, h = header_size(data, path, max_pixels)
    if expected is not None and (w, h) != tuple(expected):
        raise ImageReadError(path, f"decoded size {w}x{h} differs from the recorded {expected[0]}x{expected[1]}")
    try:
        img = imdecode_rgb(np.frombuffer(data, np.uint8), cv2.IMREAD_IGNORE_ORIENTATION)
    except Exception as exc:  # noqa: BLE001 (cv2.error and anything else a decoder raises on hostile bytes)
        raise ImageReadError(path, f"undecodable image ({len(data)} bytes): {type(exc).__name__}: {_short(exc)}") from None
    if img is None:
        raise ImageReadError(path, f"undecodable image ({len(data)} bytes)")
    if img.shape[:2] != (h, w):
        raise ImageReadError(path, f"decoded as {img.shape[1]}x{img.shape[0]} but its header says {w}x{h}")
    if jpeg and not _scan_is_complete(data, img):
        raise ImageReadError(path, "truncated JPEG (its scan data stops before the end marker)")
    return img


read_image = decode_image  # the name inspection used


def image_size(path: str | os.PathLike[str], max_bytes: int = MAX_IMAGE_BYTES,
               max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """``(width, height)`` from the file header only (cheap: no pixel decoding), within the same bounds.

    Only the file's first ``HEADER_BYTES`` are read (a release reads the size of every composite: whole
    files were most of its selection's time); a header further in (a JPEG after large metadata) is
    read from the whole file."""
    path = Path(path)
    data = read_image_bytes(path, max_bytes, head=HEADER_BYTES)
    if data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR" and len(data) >= 33:  # PNG: the IHDR chunk
        return _checked_size(*struct.unpack(">II", data[16:24]), path, max_pixels)
    if len(data) == HEADER_BYTES:  # the file may go on: a header cut off here is read again whole
        try:
            return header_size(data, path, max_pixels)
        except ImageTooLarge:
            raise
        except ImageReadError:
            data = read_image_bytes(path, max_bytes)
    return header_size(data, path, max_pixels)


class ImageCache:
    """A small LRU of decoded images by image id (backgrounds are reused); failures are cached too.

    At most ``maxsize`` images and ``max_bytes`` of pixels are kept, whatever their size. Cached arrays
    are read-only so no stage can alter a shared background by accident.
    """

    def __init__(self, resolve: Callable[[int], Path], maxsize: int = 16, max_bytes: int = CACHE_BYTES):
        self._resolve = resolve
        self._maxsize = maxsize
        self._max_bytes = max_bytes
        self._bytes = 0
        self._items: OrderedDict[int, np.ndarray | ImageReadError] = OrderedDict()

    def path(self, image_id: int) -> Path:
        return Path(self._resolve(image_id))

    def get(self, info: ImageInfo) -> np.ndarray:
        """The decoded image of ``info``; raises ImageReadError (also if the size disagrees)."""
        hit = self._items.get(info.image_id)
        if hit is None:
            try:
                img = decode_image(self.path(info.image_id), expected=(info.width, info.height))
                img.flags.writeable = False
                hit = img
            except ImageReadError as exc:
                hit = exc
            self._items[info.image_id] = hit
            self._bytes += hit.nbytes if isinstance(hit, np.ndarray) else 0
            while len(self._items) > 1 and (len(self._items) > self._maxsize or self._bytes > self._max_bytes):
                _, old = self._items.popitem(last=False)
                self._bytes -= old.nbytes if isinstance(old, np.ndarray) else 0
        else:
            self._items.move_to_end(info.image_id)
        if isinstance(hit, ImageReadError):
            raise hit
        return hit


# --- segmentation ------------------------------------------------------------------------------


def is_rle(segmentation: Any) -> bool:
    """True for a COCO RLE dict (compressed string or uncompressed list of counts)."""
    return isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation


def is_rle_like(segmentation: Any) -> bool:
    """True for a dict that means to be an RLE (it has ``counts``), with or without a usable ``size``:
    one without is a problem of that annotation (``inspect`` reports it), not of the whole source."""
    return isinstance(segmentation, dict) and "counts" in segmentation


def usable_polygons(segmentation: Sequence[Any]) -> list[list[float]]:
    """Polygons with at least three finite points, as float lists (a trailing odd coordinate is dropped).

    pycocotools reads a 4-number "polygon" as a bounding box, so shorter polygons must never reach it.
    """
    out: list[list[float]] = []
    for poly in segmentation:
        if not isinstance(poly, list | tuple | np.ndarray):
            raise ValueError(f"polygon must be a list of numbers, got {type(poly).__name__}")
        coords = list(map(float, poly))
        if len(coords) % 2:
            coords = coords[:-1]
        if len(coords) >= 6 and all(map(math.isfinite, coords)):
            out.append(coords)
    return out


def segmentation_rles(segmentation: Any, height: int, width: int) -> list[dict[str, Any]]:
    """One pycocotools RLE per part of the segmentation (per polygon, or the single RLE)."""
    height, width = int(height), int(width)
    if is_rle_like(segmentation):
        size_value = segmentation.get("size")
        if not isinstance(size_value, list | tuple) or len(size_value) != 2:
            raise ValueError("RLE without a [height, width] size")
        size = [int(v) for v in size_value]
        if size != [height, width]:
            raise ValueError(f"RLE size {size} does not match image size [{height}, {width}]")
        counts = segmentation["counts"]
        if isinstance(counts, list) and all(type(c) is int and c >= 0 for c in counts):
            return [mask_utils.frPyObjects({"size": size, "counts": counts}, height, width)]
        if isinstance(counts, str) and counts.isascii():
            counts = counts.encode("ascii")
        if not isinstance(counts, bytes):
            raise ValueError("RLE counts are neither a compressed string nor a list of counts")
        return [{"size": size, "counts": counts}]
    if isinstance(segmentation, list | tuple):
        if segmentation and all(is_rle_like(part) for part in segmentation):
            return [rle for part in segmentation for rle in segmentation_rles(part, height, width)]
        polys = usable_polygons(segmentation)
        if not polys:
            return []
        return list(mask_utils.frPyObjects(polys, height, width))
    raise ValueError(f"unsupported segmentation of type {type(segmentation).__name__}")


def annotation_rle(segmentation: Any, height: int, width: int) -> dict[str, Any] | None:
    """The segmentation as one pycocotools RLE (the union of its parts); None when it has no part.

    Area (``mask_utils.area``) and box (``mask_utils.toBbox``) come from it without drawing the frame.
    """
    rles = segmentation_rles(segmentation, int(height), int(width))
    if not rles:
        return None
    return mask_utils.merge(rles) if len(rles) > 1 else rles[0]


def annotation_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Binary ``uint8`` mask (values 0/1, H×W): the union of all polygons, or the decoded RLE."""
    height, width = int(height), int(width)
    merged = annotation_rle(segmentation, height, width)
    if merged is None:
        return np.zeros((height, width), dtype=np.uint8)
    return np.ascontiguousarray(mask_utils.decode(merged), dtype=np.uint8)


def polygon_area(coords: Sequence[float]) -> float:
    """Absolute shoelace area of a flat ``[x0, y0, x1, y1, ...]`` polygon."""
    n = len(coords) // 2
    if n < 3:
        return 0.0
    xs = [float(v) for v in coords[0 : 2 * n : 2]]
    ys = [float(v) for v in coords[1 : 2 * n : 2]]
    # plain Python beats numpy for the few dozen points a COCO polygon has
    twice = sum(x0 * y1 - x1 * y0 for x0, y0, x1, y1 in zip(xs, ys, xs[1:] + xs[:1], ys[1:] + ys[:1], strict=True))
    return abs(twice) / 2.0
