"""Does the language baseline tell a dataset with a shortcut from one without? A controlled check.

    python benchmarks/sahm_language.py [--steps 1500] [--train 2000] [--test 200] [--layouts fair,shortcut]

Two synthetic datasets (comcoco.sahm.synthetic) differ in one thing only:

- ``fair``: the referred shape is one of four same-size shapes of distinct colours at random places, and
  only the expression ("the red circle") says which. Without language the model can at best guess, so
  its IoU must collapse (the paper's Table 8 situation on RefCOCO+).
- ``shortcut``: the same, but the referred shape alone has a bright one-pixel rim, like a careless paste.
  The model can find it without reading, so its IoU must not collapse.

For each, the tiny SAHM model trains on ``--train`` items for ``--steps`` steps, and a blind twin trains
on the same items with empty expressions; the language baseline (original / random / null text, the
blind model with null text, object-level bootstrap intervals, verdict — what ``comcoco validate`` runs
on a release) is measured on ``--test`` held-out items. Printed: IoU per text, the ratios to the
original-text IoU with 95 % intervals, and the verdict. Expected: Table 8's ratios collapse on both
(a model that learned to read breaks without text), and only the blind model tells them apart.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comcoco.sahm.data import TextSubstitute  # noqa: E402
from comcoco.sahm.synthetic import SyntheticRemovalDataset  # noqa: E402
from comcoco.sahm.text import train_tokenizer  # noqa: E402
from comcoco.sahm.train import Trainer  # noqa: E402
from comcoco.sahm.validate import language_baseline  # noqa: E402
from comcoco.text.syntax import split_words  # noqa: E402


def measure(layout: str, steps: int, n_train: int, n_test: int, batch: int, seed: int) -> dict:
    train = SyntheticRemovalDataset(n_train, 64, seed=seed, layout=layout, split="train")
    test = SyntheticRemovalDataset(n_test, 64, seed=seed + 1, layout=layout, split="test")
    with tempfile.TemporaryDirectory(prefix="comcoco-bench-lang-") as tmp:
        tok = train_tokenizer(train.expressions(), Path(tmp) / "tok", vocab_size=200)
    vocab = sorted({w for e in train.expressions() for w in split_words(e)})
    trainer = Trainer("tiny", tok, device="cpu", seed=seed)
    t = time.perf_counter()
    trainer.fit(train, max_steps=steps, batch_size=batch)
    seconds = time.perf_counter() - t
    blind = Trainer("tiny", tok, device="cpu", seed=seed)
    blind.fit(TextSubstitute(train, "null"), max_steps=steps, batch_size=batch)
    out = language_baseline(trainer, test, vocab, batch_size=16, seed=seed, blind=blind)
    out["train_seconds"] = seconds
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--test", type=int, default=200)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--layouts", default="fair,shortcut")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"tiny SAHM, 64², batch {args.batch}, {args.steps} steps on {args.train} items; "
          f"baseline on {args.test} held-out items")
    for layout in args.layouts.split(","):
        r = measure(layout, args.steps, args.train, args.test, args.batch, args.seed)
        print(f"\n{layout}  (trained in {r['train_seconds']:.0f} s)")
        for mode in ("original", "random", "null"):
            print(f"   {mode:<9} text  iou_mean {r[mode]['iou_mean']:.3f}   pr@0.7 {r[mode]['pr@0.7']:.3f}")
        print(f"   trained without text, null text  iou_mean {r['blind']['iou_mean']:.3f}   "
              f"pr@0.7 {r['blind']['pr@0.7']:.3f}")
        for mode in ("random", "null", "blind"):
            if r["ratio"][mode] is None:
                continue
            lo, hi = r["ratio_ci95"][mode]
            print(f"   {mode}/original  {r['ratio'][mode]:.2f}  [{lo:.2f}, {hi:.2f}]   (95 % interval)")
        print(f"   verdict: {r['verdict']}")


if __name__ == "__main__":
    main()
