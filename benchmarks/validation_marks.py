"""What a validated release's full model and blind twin mark: their masks against the referred target
and against all of the composite's targets, on the test split.

    python benchmarks/validation_marks.py RELEASE RUN [--split test]

``RUN`` is the folder ``comcoco validate`` trained (the full model; its blind twin in ``RUN/blind``).
For each model it prints, averaged over the split's items: the predicted mask's area over the target's,
the share of the target it covers, and the shares of the predicted mask that lie on the referred target
and on any target of the composite (the others of a composite are in the same split, so their masks are
read from the release). A model that finds pasted objects without reading puts much of its mask on
targets but only about one in K on the referred one; one that reads puts most of it on the right one.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("release", type=Path)
    ap.add_argument("run", type=Path)
    ap.add_argument("--split", default="test")
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    from comcoco.sahm.data import ReleaseSamples, TextSubstitute, make_collate
    from comcoco.sahm.runs import Runtime, load_run

    torch.set_num_threads(1)
    runtime = Runtime(device="cpu", progress=False)
    full = load_run(args.run, "last", runtime)[0]
    test = ReleaseSamples(args.release, args.split, full.cfg.image_size, False, "ComCOCO")
    refs, ids = test.base.refer.Refs, test.ref_ids()
    masks: dict[int, np.ndarray] = {}
    for i, r in enumerate(ids):
        if r not in masks:
            masks[r] = (test[i]["mask"][0] > 0.5).numpy()
    composite = {r: refs[r]["comcoco"]["composite_id"] for r in masks}
    members: dict[str, list[int]] = defaultdict(list)
    for r in sorted(masks):
        members[composite[r]].append(r)
    targets = {c: np.logical_or.reduce([masks[o] for o in rs]) for c, rs in members.items()}  # once per composite
    union = {r: targets[composite[r]] for r in masks}
    print(f"{args.release} {args.split}: {len(ids)} items of {len(masks)} objects in {len(members)} composites")
    print(f"{'model':<7}{'area/target':>13}{'target covered':>16}{'on the target':>15}{'on any target':>15}{'empty':>7}")
    for name, trainer, mode in (("full", full, "original"), ("blind", None, "null")):
        t = trainer if trainer is not None else load_run(args.run / "blind", "last", runtime)[0]
        t.collate = make_collate(t.tokenizer, t.cfg.max_text_len, test.category_names())
        g = t.generator.eval()
        data = TextSubstitute(test, mode, [], 0)
        rows = []
        with torch.no_grad():
            for start in range(0, len(data), args.batch):
                idx = range(start, min(start + args.batch, len(data)))
                b = t.to_device(t.collate([data[i] for i in idx]))
                pred = (g(b["image"], b["input_ids"], b["attention_mask"]).mask_logits.float() > 0).cpu().numpy()[:, 0]
                for p, i in zip(pred, idx, strict=True):
                    m, u, area = masks[ids[i]], union[ids[i]], int(p.sum())
                    size, on_target, on_any = max(int(m.sum()), 1), int((p & m).sum()), int((p & u).sum())
                    rows.append((area / size, on_target / size, on_target / area if area else np.nan,
                                 on_any / area if area else np.nan, float(area == 0)))
        v = np.nanmean(np.array(rows, dtype=np.float64), axis=0)
        print(f"{name:<7}{v[0]:>13.2f}{v[1]:>16.3f}{v[2]:>15.3f}{v[3]:>15.3f}{v[4]:>7.3f}")


if __name__ == "__main__":
    main()
