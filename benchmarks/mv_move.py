"""Benchmark a same-filesystem `omero mv OLD NEW` (mode 1) with one process against worker processes.

    python benchmarks/mv_move.py [--files 100000] [--per-dir 3] [--rounds 2] [--workers 2] [--dir DIR]

Builds, for each run, the repository of benchmarks/mv_relink.py (FILES in-place links, PER_DIR per
directory) with its files under OLD, then runs the whole command as its own process (CLI start-up
included) with `--workers 1` and with `--workers N`, alternating, and prints every time, the
medians and their ratio. No target: the figures show what the worker processes buy on this
machine (docs/mv.md, Measures).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks")]

from mv_relink import Tree, launcher  # noqa: E402


def move(base: str, args, workers: int) -> float:
    tree = Tree(base, args.files, args.per_dir)
    try:
        os.rename(tree.new, tree.old)   # the files are where the links point
        elapsed = launcher(tree.sim, "mv", "--no-server", "--repo", os.fsdecode(tree.repo),
                           "--journal", tree.journal, "--workers", str(workers),
                           os.fsdecode(tree.old), os.fsdecode(tree.new))
        if os.path.exists(tree.old):
            raise SystemExit("OLD is still there after the move")
        return elapsed
    finally:
        tree.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--per-dir", type=int, default=3, help="files per directory")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="worker processes to compare")
    parser.add_argument("--dir", help="where to build (default: a temporary directory)")
    args = parser.parse_args()
    base = tempfile.mkdtemp(prefix="mv-move-", dir=args.dir)
    try:
        one, many = [], []
        for round_ in range(1, args.rounds + 1):
            one.append(move(base, args, 1))
            many.append(move(base, args, args.workers))
            print(f"round {round_}: --workers 1 {one[-1]:7.3f} s   --workers {args.workers} "
                  f"{many[-1]:7.3f} s", flush=True)
        print(f"medians: --workers 1 {statistics.median(one):7.3f} s, --workers {args.workers} "
              f"{statistics.median(many):7.3f} s; speed-up "
              f"{statistics.median(one) / statistics.median(many):.2f}x "
              f"({args.files} files, CLI start-up included)")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
