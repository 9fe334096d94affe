"""Is the source still what the plan was made from? Its fingerprint, recorded at planning, checked on resume.

``plan.json`` records the size and SHA-256 of the refs file, ``instances.json`` and every image the plan
uses; a resume compares them again and refuses, naming the files, when any changed (a retry may use an
image repaired since, when every composite that uses it holds a failed sample). Hashes are kept by stat
in ``STAMP_CACHE`` so an unchanged source is not read again.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from comcoco.config import SourceSpec
from comcoco.io import write_text_atomic
from comcoco.plan import PLAN_META, STATUS_FILE, PlanMismatchError, PlanRow, read_plan

STAMP_CACHE = ".source-stamps.json"  # hashes of the source's files by stat (comcoco.sources.fingerprint)


def source_fingerprint_of(workdir: str | Path, source: Any, rows: Sequence[PlanRow]) -> dict[str, Any]:
    """Size and SHA-256 of the refs file, ``instances.json`` and every image the plan's rows use."""
    from comcoco.sources.fingerprint import StampCache, source_fingerprint
    from comcoco.sources.images import ImageReadError

    ids = sorted({int(r.fg_image_id) for r in rows} | {int(r.bg_image_id) for r in rows})
    names: dict[int, str] = {}
    for i in ids:
        try:
            names[i] = source.image(i).file_name
        except KeyError:  # an image the plan names but instances.json lacks: its samples fail anyway
            continue

    def path(i: int) -> Path | None:
        try:
            return source.image_path(i)
        except ImageReadError:  # a refused file name: never read, recorded as refused
            return None

    cache = StampCache(Path(workdir) / STAMP_CACHE)
    fp = source_fingerprint(Path(source.refs_file), Path(source.instances_file), Path(source.ROOT_DIR), names,
                            path, cache)
    cache.save()
    return fp


def check_source_unchanged(workdir: str | Path, meta: dict[str, Any], spec: SourceSpec,
                           retry_failed: bool = False) -> None:
    """Refuse to resume when a source file the plan recorded changed since (naming the files).

    With ``retry_failed``, an image whose every composite holds a failed sample (a missing or broken
    image, repaired so the retry can use it) is no refusal: those composites are made again whole, and
    the image's new stamp is recorded in ``plan.json``.
    """
    from comcoco.sources.fingerprint import StampCache, changed_files, stamp_files
    from comcoco.sources.format import DEFAULT_IMAGE_SUBDIR
    from comcoco.sources.images import MAX_IMAGE_BYTES, ImageReadError
    from comcoco.sources.paths import short, trusted_image_file

    recorded = meta.get("source_fingerprint")
    if not isinstance(recorded, dict):
        return  # planned before plans recorded the source: nothing to compare with
    root = Path(spec.root)
    image_dir = Path(spec.images) if spec.images else root / DEFAULT_IMAGE_SUBDIR

    def image(name: str) -> Path | None:
        try:
            return trusted_image_file(image_dir, name, spec.image_root)
        except ImageReadError:
            return None

    cache = StampCache(Path(workdir) / STAMP_CACHE)
    current = {"files": stamp_files({n: root / n for n in recorded.get("files") or {}}, cache),
               "images": stamp_files({n: image(n) for n in recorded.get("images") or {}}, cache,
                                     max_bytes=MAX_IMAGE_BYTES)}
    cache.save()
    changed = changed_files(recorded, current)
    repaired = _repaired_images(workdir, spec, changed, current) if retry_failed and changed else []
    changed = [n for n in changed if n not in repaired]
    if repaired and not changed:
        images = {**recorded["images"], **{n: current["images"][n] for n in repaired}}
        meta = {**meta, "source_fingerprint": {**recorded, "images": images}}
        write_text_atomic(Path(workdir) / PLAN_META, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    if changed:
        shown = ", ".join(short(n) for n in changed[:10]) + (f" and {len(changed) - 10} more" if len(changed) > 10 else "")
        raise PlanMismatchError(
            f"{Path(workdir) / PLAN_META}: the source changed since this work directory was planned "
            f"({len(changed)} file(s): {shown}); what is built would no longer match it: restore those files, "
            "or build into a new work directory")


def _repaired_images(workdir: str | Path, spec: SourceSpec, changed: Sequence[str], current: dict[str, Any]) -> list[str]:
    """The changed images a retry may use: each composite that uses one holds a failed sample."""
    names = set(changed) & set(current["images"])
    if not names or not (Path(workdir) / STATUS_FILE).is_file():
        return []
    rows = pq.read_table(Path(workdir) / STATUS_FILE, columns=["composite_id", "status"]).to_pylist()
    failed = {r["composite_id"] for r in rows if r["status"] != "ok"}
    images = {i.image_id: i.file_name for i in spec.load().images()}
    unsafe = {images.get(int(i)) for r in read_plan(workdir) if r.composite_id not in failed
              for i in (r.fg_image_id, r.bg_image_id)}
    return sorted(names - unsafe)
