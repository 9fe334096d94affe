"""Every demo image drawn, encoded and written, in this process or by a pool of processes.

An image depends only on its index, theme, split and the seed (``render_demo_image`` draws from
``rng_for(seed, ..., index)`` and nothing else), so images can be drawn in any order by any process
and the files are the same bytes. Workers write their JPEGs themselves (atomically) and send back
only the image's COCO entry and objects; the pixels never cross the pool. Ids that count across
images (refs, sentences) are given by the caller, in image order, from what comes back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from comcoco.io import write_bytes_atomic
from comcoco.pool import Jobs, available_cores, worker_pool
from comcoco.progress import Progress
from comcoco.records import ImageInfo
from comcoco.sources.demo.scene import DemoObject, demo_file_name, encode_jpeg, render_demo_image

MAX_DEFAULT_WORKERS = 8
MAX_CHUNK = 48  # images per task: a few seconds of work, so the pool's overhead stays under 1 %


@dataclass(frozen=True)
class ImageJob:
    """One image to draw: all a worker needs besides the seed and the category table."""

    index: int
    theme: str
    split: str


@dataclass(frozen=True)
class DrawnImage:
    """One image as written to disk: its COCO entry and objects (no pixels)."""

    info: ImageInfo
    objects: tuple[DemoObject, ...]


class DemoImageError(RuntimeError):
    """Drawing or encoding one demo image failed; names the image. A bug, not a bad input."""

    def __init__(self, index: int, reason: str):
        super().__init__(f"demo image {index} ({demo_file_name(index + 1)}): {reason}")
        self.index, self.reason = index, reason

    def __reduce__(self):  # rebuilt from its arguments when it crosses the pool
        return type(self), (self.index, self.reason)


def default_workers() -> int:
    """The CPU cores this process may run on, at most ``MAX_DEFAULT_WORKERS``."""
    return min(MAX_DEFAULT_WORKERS, available_cores())


def chunk_jobs(jobs: Sequence[ImageJob], workers: int) -> list[list[ImageJob]]:
    """Consecutive runs of jobs: about four per worker (so a slow one does not hold the rest back),
    at most ``MAX_CHUNK`` images each."""
    size = max(1, min(MAX_CHUNK, math.ceil(len(jobs) / (max(1, workers) * 4))))
    return [list(jobs[i:i + size]) for i in range(0, len(jobs), size)]


def draw_chunk(image_dir: str, seed: int, category_ids: dict[str, int],
               jobs: Sequence[ImageJob]) -> list[DrawnImage]:
    """Draw, encode and write each job's image into ``image_dir``; their entries, in job order.

    An operating-system error (disk full, read-only folder) passes unchanged: it names the file.
    """
    drawn: list[DrawnImage] = []
    for job in jobs:
        try:
            demo = render_demo_image(job.index, job.theme, job.split, seed, category_ids)
            data = encode_jpeg(demo.pixels)
        except Exception as exc:
            raise DemoImageError(job.index, f"{type(exc).__name__}: {exc}") from exc
        write_bytes_atomic(Path(image_dir) / demo.info.file_name, data)
        drawn.append(DrawnImage(info=demo.info, objects=demo.objects))
    return drawn


def draw_images(image_dir: Path, seed: int, category_ids: dict[str, int], jobs: Sequence[ImageJob],
                workers: int = 1, progress: Progress | None = None) -> list[DrawnImage]:
    """Every job's image written into ``image_dir``; their entries in job order, whatever ``workers``.

    ``workers`` 1 draws in this process; more use a ``comcoco.pool`` process pool. The first failure
    stops the run: chunks not started are cancelled, running ones finish, and the error is raised here;
    a worker that died names the images it left undrawn.
    """
    chunks = chunk_jobs(jobs, workers)

    def lost(k: int) -> DemoImageError:
        first, last = chunks[k][0].index, chunks[k][-1].index
        return DemoImageError(first, f"a worker process ended abruptly (killed, or out of memory) "
                                     f"before images {first}-{last} were written")

    def done(k: int) -> None:
        if progress is not None:
            progress.advance(len(chunks[k]))

    with worker_pool(min(workers, len(chunks))) as pool:
        results = Jobs(pool, draw_chunk, [(str(image_dir), seed, category_ids, c) for c in chunks], lost).results(done)
    return [image for drawn in results for image in drawn]
