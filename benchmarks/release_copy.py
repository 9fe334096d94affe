"""What it costs that a release shares no inode with its work directory, measured in one run.

A release copies composites and ground truths out of the work directory (``comcoco.release.files.
copy_file``: a reflink where the filesystem has them, else a byte copy) instead of hard-linking them,
so editing either side never changes the other. Three ways over the same files, rounds alternating and
the best round of each counting: a hard link (what an unsafe release would do: the floor), the copy
releases make, and reading the bytes once (the physical bound of any byte copy). Prints files/s and
MB/s for each and the copy's ratio to both.

    python benchmarks/release_copy.py [--files 400] [--kb 300] [--rounds 3] [--dir PATH]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from comcoco.release.files import copy_file  # noqa: E402


def _files(root: Path, n: int, kb: int) -> list[Path]:
    """``n`` incompressible files of ``kb`` kB, like PNG composites (written once, flushed to disk)."""
    out = []
    for i in range(n):
        p = root / "src" / f"{i:05d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(kb * 1024))
        out.append(p)
    os.sync()
    return out


def _round(files: list[Path], dest: Path, how: str) -> float:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    t0 = time.perf_counter()
    for p in files:
        if how == "hard link":
            os.link(p, dest / p.name)
        elif how == "copy (release)":
            copy_file(p, dest / p.name)
        else:
            with open(p, "rb") as fh:
                while fh.read(1 << 20):
                    pass
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=400)
    ap.add_argument("--kb", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="where to measure (default: a temporary folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        files = _files(root, args.files, args.kb)
        ways = ("hard link", "copy (release)", "read once")
        best = {w: float("inf") for w in ways}
        for _ in range(args.rounds):
            for w in ways:
                best[w] = min(best[w], _round(files, root / "dst", w))
        mb = args.files * args.kb / 1024
        for w in ways:
            print(f"{w:<15} {args.files / best[w]:>10.0f} files/s {mb / best[w]:>10.0f} MB/s")
        print(f"copy / hard link: {best['copy (release)'] / best['hard link']:.1f}x the time; "
              f"copy / read once: {best['copy (release)'] / best['read once']:.2f}x the time "
              f"({args.files} files of {args.kb} kB on {root})")


if __name__ == "__main__":
    main()
