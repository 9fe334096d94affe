"""Loaders just work: docs/release.md's DataLoader example runs as written (two workers), ``collate``
pads or lists items of different sizes, and ``load`` takes every variant name the card uses."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import comcoco
from comcoco.build import build_inline
from comcoco.plan import BuildConfig, SourceSpec
from comcoco.release.builder import ReleaseOptions, build_release

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def release(demo_source_small, tmp_path_factory) -> Path:
    wd = tmp_path_factory.mktemp("loader-wd") / "wd"
    build_inline(SourceSpec(root=str(demo_source_small)), wd, BuildConfig(limit=10, shard_size=10, seed=0))
    return build_release(wd, tmp_path_factory.mktemp("loader-rel"), "1.0.0",
                         ReleaseOptions(proportions={"train": 1, "val": 0, "test": 0}))


def docs_example() -> str:
    text = (REPO / "docs" / "release.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    found = [b for b in blocks if "comcoco.collate" in b and "DataLoader" in b]
    assert len(found) == 1, "docs/release.md must show one DataLoader example with comcoco.collate"
    return found[0]


CHECKS = '''
sizes = {tuple(x["image"].shape[1:]) for x in (ds[i] for i in range(len(ds)))}
assert len(sizes) > 1, f"the release should hold composites of several sizes, got {sizes}"
seen = []
for batch in loader:
    b, _, h, w = batch["image"].shape
    assert batch["ground_truth"].shape == (b, 3, h, w) and batch["mask"].shape == (b, 1, h, w)
    assert batch["valid"].shape == (b, 1, h, w) and batch["valid"].dtype == torch.bool
    for i, (hi, wi) in enumerate(batch["size"].tolist()):
        assert batch["valid"][i, 0, :hi, :wi].all() and int(batch["valid"][i].sum()) == hi * wi
        assert int(batch["image"][i, :, hi:, :].sum()) == 0 and int(batch["image"][i, :, :, wi:].sum()) == 0
    assert max(batch["size"][:, 0].tolist()) == h and max(batch["size"][:, 1].tolist()) == w
    seen += list(zip(batch["sample_id"], batch["sent_id"].tolist()))
assert sorted(seen) == sorted((ds[i]["sample_id"], ds[i]["sent_id"]) for i in range(len(ds)))
listed = next(iter(as_lists))
assert isinstance(listed["image"], list) and all(t.ndim == 3 for t in listed["image"]) and "valid" not in listed
print("ok", len(seen), len(sizes))
'''


def test_the_docs_dataloader_example_runs_with_two_workers(release):
    code = docs_example()
    assert "num_workers=2" in code and "path/to/comcoco-1.0.0" in code
    code = code.replace("path/to/comcoco-1.0.0", str(release)).replace("    break\n", "    pass\n")
    proc = subprocess.run([sys.executable, "-c", "import torch\n" + code + CHECKS], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok ")


def test_collate_pads_to_the_largest_item_and_keeps_the_values():
    a = {"image": torch.full((3, 2, 5), 7, dtype=torch.uint8), "mask": torch.ones((1, 2, 5), dtype=torch.uint8),
         "expression": "a", "ref_id": 1, "score": 0.5}
    b = {"image": torch.full((3, 4, 3), 9, dtype=torch.uint8), "mask": torch.ones((1, 4, 3), dtype=torch.uint8),
         "expression": "b", "ref_id": 2, "score": 1.5}
    batch = comcoco.collate([a, b])
    assert batch["image"].shape == (2, 3, 4, 5) and batch["image"].dtype == torch.uint8
    assert torch.equal(batch["image"][0, :, :2, :5], a["image"]) and int(batch["image"][0, :, 2:].sum()) == 0
    assert torch.equal(batch["image"][1, :, :4, :3], b["image"]) and int(batch["image"][1, :, :, 3:].sum()) == 0
    assert batch["size"].tolist() == [[2, 5], [4, 3]] and int(batch["valid"].sum()) == 10 + 12
    assert batch["expression"] == ["a", "b"] and batch["ref_id"].tolist() == [1, 2]
    assert batch["score"].tolist() == [0.5, 1.5]
    rounded = comcoco.collate([a, b], multiple=32)
    assert rounded["image"].shape == (2, 3, 32, 32) and int(rounded["valid"].sum()) == 22
    listed = comcoco.collate([a, b], pad=False)
    assert [t.shape for t in listed["image"]] == [a["image"].shape, b["image"].shape] and "valid" not in listed
    same = comcoco.collate([torch.zeros(3, 2, 2), torch.ones(3, 2, 2)])  # a transform returned tensors
    assert same.shape == (2, 3, 2, 2)


def test_every_card_name_of_a_variant_loads(release):
    header = (release / "README.md").read_text().split("---")[1]
    names = re.findall(r"config_name: (\S+)", header)
    assert set(names) == {"ComCOCO", "ComCOCO_plus"}
    plus = comcoco.load(release, variant="ComCOCO+", split="train")
    for name in ("ComCOCO_plus", "comcoco_plus", "ComCOCO-plus", "comcoco+"):
        ds = comcoco.load(release, variant=name, split="train")
        assert ds.variant == "ComCOCO+" and len(ds) == len(plus) > 0
        assert comcoco.load_refer(release, variant=name).getRefIds() == plus.refer.getRefIds()
    for name in names:
        assert len(comcoco.load(release, variant=name, split="train")) > 0
    with pytest.raises(Exception, match="ComCOCO_plus"):
        comcoco.load(release, variant="ComCOCO-minus")
