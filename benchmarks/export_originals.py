"""Benchmark `omero export --originals --link hard` against `cp -al` of the same tree.

Builds a simulated server with N original files in N/10 in-place (ln_s) filesets, exports them
all (one Dataset) with hard links, then hard-links the same source tree with `cp -al`, in the same
run on the same filesystem. Prints both times, their ratio (target <= 1.5) and the server round
trips per 500 filesets (target <= 1). No assertion on time: the figures are the result.

    .venv/bin/python benchmarks/export_originals.py [--files 100000] [--per-fileset 10] [--keep DIR]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from sim.builder import build_inplace_tree  # noqa: E402
from sim.launcher import run_cli  # noqa: E402
from sim.server import SimServer  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000, help="original files (default 100000)")
    parser.add_argument("--per-fileset", type=int, default=10, help="files per fileset (default 10)")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temporary directory)")
    args = parser.parse_args(argv)
    work = args.keep or tempfile.mkdtemp(prefix="export-bench-")
    os.makedirs(work, exist_ok=True)
    try:
        n_filesets = max(1, args.files // args.per_fileset)
        began = time.perf_counter()
        sim = SimServer(os.path.join(work, "sim"))
        sim.add_group("lab", "rwr---")
        sim.add_user("alice", ["lab"])
        dataset = sim.add_dataset("D", "alice")
        source = os.path.join(work, "src")
        build_inplace_tree(sim, "alice", source, n_filesets, args.per_fileset,
                           target=("Dataset", dataset), file_size=16)
        print(f"built {n_filesets * args.per_fileset} files in {n_filesets} filesets "
              f"in {time.perf_counter() - began:.1f} s")

        sim.reset_round_trips()
        began = time.perf_counter()
        rc, _, err = run_cli(sim.root, ["export", "--originals", os.path.join(work, "dest"),
                                        f"Dataset:{dataset}", "--link", "hard", "--owner", "root"],
                             user="alice")
        export_seconds = time.perf_counter() - began
        if rc != 0:
            print(err, file=sys.stderr)
            return rc
        trips = sim.round_trips

        began = time.perf_counter()
        subprocess.run(["cp", "-al", source, os.path.join(work, "cp-al")], check=True)
        cp_seconds = time.perf_counter() - began

        print(f"omero export --originals --link hard: {export_seconds:.2f} s")
        print(f"cp -al of the same tree:              {cp_seconds:.2f} s")
        print(f"ratio export / cp -al:                {export_seconds / cp_seconds:.2f} (target <= 1.5)")
        print(f"server round trips:                   {trips} for {n_filesets} filesets = "
              f"{trips * 500 / n_filesets:.2f} per 500 filesets (target <= 1)")
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
