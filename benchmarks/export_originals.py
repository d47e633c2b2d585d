"""Benchmark `omero export --originals --link hard` against `cp -al` of the same tree.

Builds a simulated server with N original files in N/10 in-place (ln_s) filesets and exports them
all (one Dataset) with hard links, then hard-links the same source tree with `cp -al`, on the same
filesystem, alternating the two `--repeat` times in the same run (each into a fresh directory).
Each export is a whole command in its own process (`python tests/sim/launcher.py export ...`):
interpreter and CLI start-up are included, and also shown on their own (`export -h`). Prints every
time, the medians, their ratio (target <= 1.5) and the server round trips per 500 filesets
(target <= 1). No assertion on time: the figures are the result.

It also prints a floor: the CLI start-up plus only the system calls an export cannot do without
(per directory a mkdir and a chmod; per file a link and a stat of the linked inode), made over
the same tree with nothing else (no server, no plan, no manifest), in one process and with the
files split between two. No export can beat that floor on this machine.

    .venv/bin/python benchmarks/export_originals.py [--files 100000] [--per-fileset 10]
                                                     [--repeat 3] [--keep DIR]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from sim.builder import build_inplace_tree  # noqa: E402
from sim.server import SimServer  # noqa: E402

LAUNCHER = os.path.join(ROOT, "tests", "sim", "launcher.py")


def timed(argv) -> tuple:
    began = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return time.perf_counter() - began, proc


def omero(sim_root: str, *args: str) -> list:
    return [sys.executable, LAUNCHER, "--sim-root", sim_root, "--sim-user", "alice", *args]


def required_calls(source: str, dest: str, processes: int) -> float:
    """Wall time of the bare system calls of a hard-link export of `source` into `dest`: the
    directories made here (parents first), then the files linked and stat'ed in `processes`
    forked processes (an equal share each)."""
    dirs, files = [], []
    for root, _, names in os.walk(source):
        rel = os.path.relpath(root, source)
        dirs.append(os.path.normpath(os.path.join(dest, rel)))
        files.extend((os.path.join(root, name), os.path.join(dirs[-1], name)) for name in names)
    began = time.perf_counter()
    for directory in dirs:
        os.mkdir(directory)
        os.chmod(directory, 0o750)
    children = []
    for index in range(processes):
        share = files[index::processes]
        pid = os.fork() if processes > 1 else 0
        if pid == 0:
            for src, dst in share:
                os.link(src, dst)
                os.stat(dst)
            if processes > 1:
                os._exit(0)
        else:
            children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
    return time.perf_counter() - began


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000, help="original files (default 100000)")
    parser.add_argument("--per-fileset", type=int, default=10, help="files per fileset (default 10)")
    parser.add_argument("--repeat", type=int, default=3, help="export / cp -al pairs (default 3)")
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

        exports, copies, starts, trips, bare = [], [], [], [], {1: [], 2: []}
        for run in range(args.repeat):
            sim.reset_round_trips()
            seconds, proc = timed(omero(sim.root, "export", "--originals",
                                        os.path.join(work, f"dest{run}"), f"Dataset:{dataset}",
                                        "--link", "hard", "--owner", "root",
                                        "--state-dir", os.path.join(work, "state")))
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                return proc.returncode
            exports.append(seconds)
            trips.append(sim.round_trips)
            copies.append(timed(["cp", "-al", source, os.path.join(work, f"cp-al{run}")])[0])
            starts.append(timed(omero(sim.root, "export", "-h"))[0])
            for processes in bare:
                bare[processes].append(required_calls(
                    source, os.path.join(work, f"bare{processes}-{run}"), processes))

        def show(values):
            return " ".join(f"{v:.2f}" for v in values) + f"  (median {statistics.median(values):.2f} s)"

        export_s, cp_s = statistics.median(exports), statistics.median(copies)
        print(f"omero export --originals --link hard: {show(exports)}")
        print(f"  of which CLI start-up (export -h):  {show(starts)}")
        print(f"cp -al of the same tree:              {show(copies)}")
        print(f"ratio export / cp -al (medians):      {export_s / cp_s:.2f} (target <= 1.5); "
              f"without start-up {(export_s - statistics.median(starts)) / cp_s:.2f}")
        start_s = statistics.median(starts)
        for processes, values in bare.items():
            floor = start_s + statistics.median(values)
            print(f"floor, {processes} process{'es' if processes > 1 else ''}: start-up + "
                  f"required calls {show(values)} = {floor:.2f} s = {floor / cp_s:.2f}x cp -al")
        print(f"server round trips:                   {trips[0]} for {n_filesets} filesets = "
              f"{trips[0] * 500 / n_filesets:.2f} per 500 filesets (target <= 1)")
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
