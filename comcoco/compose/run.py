"""``comcoco compose``'s path: compose a list of candidates into one output folder.

The stage-by-stage alternative to a sharded build: the same planning (``comcoco.plan.plan_groups``),
the same engine and writer, one folder and one ``samples.parquet``. Given the candidates ``build``
matched, it makes exactly the build's samples (tested).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from comcoco.compose.engine import compose_group
from comcoco.compose.models import ComposeModels, load_models
from comcoco.compose.robust import SceneCache
from comcoco.compose.samples import SampleRow, write_samples
from comcoco.compose.writer import BytesLRU, write_group
from comcoco.config import ComposeConfig
from comcoco.io import write_text_atomic
from comcoco.plan import SourceIndex, plan_groups
from comcoco.records import Candidate
from comcoco.sources.images import ImageCache


def run_compose(
    source: Any,
    candidates: Sequence[Candidate] | str | Path,
    out_dir: str | Path,
    config: ComposeConfig,
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    models: ComposeModels | None = None,
) -> list[SampleRow]:
    """Compose every planned sample into ``out_dir`` and write ``out_dir/samples.parquet``.

    ``source`` is a ReferSource (or a prebuilt SourceIndex); ``candidates`` a list or a Parquet path.
    Returns the rows sorted by sample_id.
    """
    config.validate()
    if isinstance(candidates, str | Path):
        from comcoco.matching.candidates import read_candidates

        candidates = read_candidates(candidates)
    index = source if isinstance(source, SourceIndex) else SourceIndex.from_source(source)
    models = models if models is not None else load_models(config)
    groups = plan_groups(candidates, index, config, limit)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = ImageCache(index.image_path)
    encoded = BytesLRU()
    scenes = SceneCache()
    rows: list[SampleRow] = []
    for i, g in enumerate(groups):
        rows.extend(write_group(out_dir, compose_group(g, cache, config, models, scenes=scenes), config, encoded))
        if progress is not None:
            progress(i + 1, len(groups))
    os.sync()  # one flush for every image written above, before the table that lists them
    write_samples(out_dir / "samples.parquet", rows, config.robust)
    meta = {"config": asdict(config), "fingerprint": config.fingerprint(), "samples": len(rows)}
    write_text_atomic(out_dir / "compose.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return sorted(rows, key=lambda r: r.sample_id)
