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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

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
    """The rasterised RLE as a 0/255 ``uint8`` H×W array in C order. pycocotools decodes column-major:
    OpenCV's blocked transpose reorders it in half the time numpy's strided copy takes."""
    decoded = mask_utils.decode(rle)  # 0/1, column-major: its transpose is a C-order W×H array
    out = cv2.transpose(decoded.T)
    np.multiply(out, np.uint8(255), out=out)
    return out


def copy_file(src: Path, dst: Path) -> None:
    """A copy that shares no inode with ``src``: a reflink where the filesystem has them (instant, and
    copy-on-write, so editing either side never changes the other), else a plain copy in the kernel
    (``copy_file_range``, ``sendfile`` where that is refused). Never a hard link, which would let an edit
    in the work directory change a published release; a file already at ``dst`` is replaced, not
    written through (it may be a link to another file)."""
    import fcntl

    try:
        os.unlink(dst)
    except FileNotFoundError:
        pass
    with open(src, "rb", buffering=0) as fin:
        fout = _create(dst)
        try:
            try:
                fcntl.ioctl(fout, _FICLONE, fin.fileno())
                return
            except OSError:
                pass  # no reflinks here (ext4, tmpfs, another filesystem): copy the bytes
            _copy_range(fin.fileno(), fout, os.fstat(fin.fileno()).st_size, src)
        except BaseException:
            os.close(fout)
            fout = -1
            os.unlink(dst)
            raise
        finally:
            if fout >= 0:
                os.close(fout)


def _create(path: Path, mode: int = 0o666) -> int:
    """A new file's descriptor, its folder made on the first file written into it."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(path, flags, mode)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, flags, mode)


def _copy_range(fin: int, fout: int, size: int, src: Path) -> None:
    """``size`` bytes from ``fin`` to ``fout`` without passing them through this process."""
    copied = 0
    kernel_range = hasattr(os, "copy_file_range")  # Linux
    while copied < size:
        if kernel_range:
            try:
                n = os.copy_file_range(fin, fout, size - copied)
            except OSError:  # across filesystems on an older kernel, or not supported here
                kernel_range = False
                continue
        else:
            n = os.sendfile(fout, fin, copied, size - copied)
        if n == 0:
            raise ExportError(f"{src}: shrank while it was copied ({copied} of {size} bytes)")
        copied += n
    if os.fstat(fin).st_size != size:
        raise ExportError(f"{src}: changed size while it was copied")


def write_new(path: Path, data: bytes) -> None:
    """``data`` as the file ``path``, written under a temporary name beside it and renamed into place
    (so it is whole or absent), without an fsync: the release builder flushes the staging folder once.
    The temporary name is fixed (each release file is written by one job): no random name to draw and
    retry, which a sample's two mask files paid for on every write."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    fd = _create(tmp, 0o600)  # as the atomic writes of the release's other files (``tempfile.mkstemp``)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)


def _rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's compressed RLE of a 0/255 mask (runs of equal values: the same counts as its 0/1 form)."""
    rle = mask_utils.encode(cv2.transpose(mask).T)  # column-major, reordered by OpenCV (see released_mask)
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
    _, over = cv2.threshold(built, 127, 255, cv2.THRESH_BINARY)  # 255 where > 127
    return cv2.bitwise_or(mask, over, dst=over)


def _build_mask_iou(workdir: Path, e: ReleaseEntry, mask: np.ndarray, area: int) -> float | None:
    """IoU of the released mask (``area`` pixels) with the build's own (anti-aliased, cut at 0.5)."""
    build_mask_rel = e.provenance.get("build_mask")
    if not build_mask_rel or not (workdir / build_mask_rel).is_file():
        return None
    built = cv2.imread(str(workdir / build_mask_rel), cv2.IMREAD_GRAYSCALE)
    if built is None or built.shape != mask.shape:
        return None
    _, b = cv2.threshold(built, 127, 255, cv2.THRESH_BINARY)
    union = cv2.countNonZero(b) + area
    inter = cv2.countNonZero(cv2.bitwise_and(b, mask, dst=b))
    union -= inter
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
    mask_png = encode_mask(mask)
    write_new(release / MASKS_DIR / e.mask_file_name, mask_png)
    write_new(release / EFFECTS_DIR / e.effect_file_name, mask_png if effect is mask else encode_mask(effect))
    return ExportedSample(sample_id=e.sample_id, bbox=bbox, area=area, effect_rle=_rle(effect),
                          effect_area=cv2.countNonZero(effect),
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
                 pool: WorkerPool = INLINE, progress: bool = False, chunk: int | None = None,
                 meanwhile: Callable[[], None] | None = None) -> tuple[dict[str, Any], dict[str, ExportedSample]]:
    """Every entry's files under ``release``; returns mask agreement stats and each sample's record.

    The agreement is the IoU between the build's mask and the released (polygon) mask per sample.
    ``pool`` is a ``comcoco.pool.worker_pool`` (default: this process); ``chunk`` samples per job.
    ``meanwhile`` runs in this process once the jobs are handed out (before them without a pool):
    work that needs none of their results, done while this process would only wait.
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
        jobs = Jobs(pool, export_chunk, [(str(workdir), str(release), c) for c in chunks], lost)
        if meanwhile is not None:
            try:
                meanwhile()
            except BaseException:
                jobs.cancel()
                raise
        done = jobs.results(lambda k: bar.advance(len(chunks[k])))
    exported = {x.sample_id: x for part in done for x in part}
    ious = [x.mask_iou for part in done for x in part if x.mask_iou is not None]
    stats = {
        "samples": len(entries),
        "composites": len(seen),
        "mask_iou_min": round(min(ious), 4) if ious else None,
        "mask_iou_mean": round(float(np.mean(ious)), 4) if ious else None,
    }
    return stats, exported
