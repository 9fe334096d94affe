"""A release's per-sample files: composites, ground truths, masks and effect masks under release names.

Each sample is handled once, whole: its composite (once per composite) and ground truth are copied,
its placed polygon is rasterised by pycocotools (so ``COCO.annToMask`` and REFER's ``getMask`` give
exactly the mask file), mask and effect mask are encoded, and what the other exports need is returned
(``ExportedSample``: box, area, the effect mask's RLE, agreement with the build's mask), so nothing
is drawn or decoded twice. Samples go to a process pool in chunks (``comcoco.pool``): paths and
entries in, those small records out; the files are the same whatever the number of workers.

Files are written beside their name and renamed into place without an fsync each: the release
builder flushes the whole staging folder once before it publishes it.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from comcoco.io import write_bytes_atomic
from comcoco.pool import INLINE, Jobs, WorkerPool
from comcoco.progress import Progress
from comcoco.release.export import (
    EFFECTS_DIR,
    GT_DIR,
    IMAGES_DIR,
    MASKS_DIR,
    ExportError,
    ReleaseEntry,
    placed_rle,
    rle_geometry,
)

# Masks are 0/255: zlib's run-length matching on unfiltered rows writes them in a sixth of the time of
# level 6 with adaptive filters, and smaller (the demo's masks: docs/release.md, *Masks*).
MASK_PNG = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
            cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]
MIN_CHUNK, MAX_CHUNK = 8, 64  # samples per job: enough to hide the pool's overhead, small to balance
_FICLONE = 0x40049409  # Linux ioctl: share the source's blocks copy-on-write (btrfs, XFS, bcachefs)


@dataclass(frozen=True)
class ExportedSample:
    """What exporting one sample's files found, small enough to cross processes (no pixels)."""

    sample_id: str
    bbox: tuple[float, float, float, float]
    area: float
    effect_rle: dict[str, Any]  # {"size": [h, w], "counts": str}: the effect mask file, as COCO RLE
    effect_area: int
    mask_iou: float | None  # IoU of the released mask with the build's own (None: no build mask)


def encode_mask(mask: np.ndarray) -> bytes:
    """A 0/255 single-channel mask as PNG."""
    ok, buf = cv2.imencode(".png", mask, MASK_PNG)
    if not ok:
        raise ExportError("could not encode a mask as PNG")
    return buf.tobytes()


def released_mask(rle: dict[str, Any]) -> np.ndarray:
    """The rasterised RLE as a 0/255 ``uint8`` H×W array in C order, scaled and reordered in one pass."""
    decoded = mask_utils.decode(rle)  # 0/1, column-major
    out = np.empty(decoded.shape, dtype=np.uint8)
    np.multiply(decoded, np.uint8(255), out=out)
    return out


def copy_file(src: Path, dst: Path) -> None:
    """A copy that shares no inode with ``src``: a reflink where the filesystem has them (instant, and
    copy-on-write, so editing either side never changes the other), else a plain copy (``sendfile``).
    Never a hard link, which would let an edit in the work directory change a published release."""
    import fcntl

    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        try:
            fcntl.ioctl(fout.fileno(), _FICLONE, fin.fileno())
            return
        except OSError:
            pass  # no reflinks here (ext4, tmpfs, another filesystem): copy the bytes
    shutil.copyfile(src, dst)


def _rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's compressed RLE of a 0/255 mask (runs of equal values: the same counts as its 0/1 form)."""
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _effect(workdir: Path, e: ReleaseEntry, mask: np.ndarray) -> np.ndarray:
    """The released effect mask (0/255): the build's effect mask ∪ the released mask (the mask alone for
    a paper-profile build), so it always covers the object as released."""
    if not e.src_effect_mask:
        return mask
    built = cv2.imread(str(workdir / e.src_effect_mask), cv2.IMREAD_GRAYSCALE)
    if built is None or built.shape != mask.shape:
        raise ExportError(f"sample {e.sample_id}: effect mask {workdir / e.src_effect_mask} is missing or "
                          f"not {mask.shape[1]}x{mask.shape[0]}")
    return np.bitwise_or(mask, (built > 127).view(np.uint8) * np.uint8(255))


def _build_mask_iou(workdir: Path, e: ReleaseEntry, mask: np.ndarray, area: int) -> float | None:
    """IoU of the released mask (``area`` pixels) with the build's own (anti-aliased, cut at 0.5)."""
    build_mask_rel = e.provenance.get("build_mask")
    if not build_mask_rel or not (workdir / build_mask_rel).is_file():
        return None
    built = cv2.imread(str(workdir / build_mask_rel), cv2.IMREAD_GRAYSCALE)
    if built is None or built.shape != mask.shape:
        return None
    b = built > 127
    inter = np.count_nonzero(b & (mask > 0))
    union = np.count_nonzero(b) + area - inter
    return float(inter / union) if union else 1.0


def export_sample(workdir: Path, release: Path, e: ReleaseEntry, copy_composite: bool) -> ExportedSample:
    """One sample's files written under their release names; ``copy_composite`` for the first sample of
    each composite (a composite is copied once, whoever holds its other samples)."""
    for rel in (e.src_composite, e.src_ground_truth):
        if not (workdir / rel).is_file():
            raise ExportError(f"sample {e.sample_id}: {workdir / rel} is missing")
    if copy_composite:
        copy_file(workdir / e.src_composite, release / IMAGES_DIR / e.image_file_name)
    copy_file(workdir / e.src_ground_truth, release / GT_DIR / e.gt_file_name)
    rle = placed_rle(e)
    bbox, area = rle_geometry(e, rle)
    mask = released_mask(rle)
    effect = _effect(workdir, e, mask)
    write_bytes_atomic(release / MASKS_DIR / e.mask_file_name, encode_mask(mask), sync=False)
    write_bytes_atomic(release / EFFECTS_DIR / e.effect_file_name, encode_mask(effect), sync=False)
    return ExportedSample(sample_id=e.sample_id, bbox=bbox, area=area, effect_rle=_rle(effect),
                          effect_area=int(np.count_nonzero(effect)),
                          mask_iou=_build_mask_iou(workdir, e, mask, int(area)))


def export_chunk(workdir: str, release: str, jobs: Sequence[tuple[ReleaseEntry, bool]]) -> list[ExportedSample]:
    """``export_sample`` for each (entry, copy_composite) of a chunk, in order (one pool job).

    A failure names its sample; an operating-system error passes unchanged (it names the file).
    """
    out = []
    for e, first in jobs:
        try:
            out.append(export_sample(Path(workdir), Path(release), e, first))
        except (ExportError, OSError):
            raise
        except Exception as exc:
            raise ExportError(f"sample {e.sample_id}: {type(exc).__name__}: {exc}") from exc
    return out


def chunk_size(n: int, workers: int) -> int:
    """About four jobs per worker (a slow one does not hold the rest back), within the chunk bounds."""
    return max(MIN_CHUNK, min(MAX_CHUNK, math.ceil(n / (max(1, workers) * 4))))


def export_files(workdir: str | os.PathLike[str], release: str | os.PathLike[str], entries: Sequence[ReleaseEntry],
                 pool: WorkerPool = INLINE, progress: bool = False,
                 chunk: int | None = None) -> tuple[dict[str, Any], dict[str, ExportedSample]]:
    """Every entry's files under ``release``; returns mask agreement stats and each sample's record.

    The agreement is the IoU between the build's mask and the released (polygon) mask per sample.
    ``pool`` is a ``comcoco.pool.worker_pool`` (default: this process); ``chunk`` samples per job.
    """
    seen: set[int] = set()
    flagged = []
    for e in entries:
        flagged.append((e, e.image_id not in seen))
        seen.add(e.image_id)
    size = chunk or chunk_size(len(entries), pool.workers)
    chunks = [flagged[i:i + size] for i in range(0, len(flagged), size)]

    def lost(k: int) -> Exception:
        first, last = chunks[k][0][0].sample_id, chunks[k][-1][0].sample_id
        return ExportError(f"a worker process ended abruptly (killed, or out of memory) while exporting "
                           f"samples {first} to {last}")

    with Progress("exporting files", len(entries), unit="sample", enabled=progress) as bar:
        done = Jobs(pool, export_chunk, [(str(workdir), str(release), c) for c in chunks], lost).results(
            lambda k: bar.advance(len(chunks[k])))
    exported = {x.sample_id: x for part in done for x in part}
    ious = [x.mask_iou for part in done for x in part if x.mask_iou is not None]
    stats = {
        "samples": len(entries),
        "composites": len(seen),
        "mask_iou_min": round(min(ious), 4) if ious else None,
        "mask_iou_mean": round(float(np.mean(ious)), 4) if ious else None,
    }
    return stats, exported
