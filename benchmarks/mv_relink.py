"""Benchmark `omero mv --links-only` against the minimal relink loop, and our repository scan
against `find REPO -type l`.

    python benchmarks/mv_relink.py [--links 200000] [--per-dir 3] [--rounds 5] [--dir DIR]

The relink comparison alternates on fresh trees (minimal loop, command, minimal loop, command,
...; each tree built anew and synced before it is timed), so that noise from a shared disk
falls on both sides, and reports the median of the per-round ratios (target <= 1.5x). The
command is the real one (journal, lock, plan, syncs, verification pass), run as its own process
through the omero CLI (tests/sim/launcher.py, --no-server), so its time includes the CLI
start-up; that start-up (the same `python launcher.py` running `omero version`, the same for
every omero command) is measured on its own and printed beside it, never subtracted silently.
The minimal loop is os.readlink + os.symlink + os.replace over the same links, in this
process, with no journal and no sync; the time of the `sync` it leaves undone is printed beside
it for reference (the command makes its changes durable before it reports success).

The scan is timed twice against `find REPO -type l`: walk_links in one process (the same
directory reads as find, plus a readlink per link, which find does not do), and the scan as the
command runs it (split into subtrees, walked and matched in the default number of workers).
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
LAUNCHER = os.path.join(ROOT, "tests", "sim", "launcher.py")
SEED_LINKS = 50_000   # hard links per seed file (ext4 allows 65000)

from omero_cli_ext.mv.plan import Scope, matching_links  # noqa: E402
from omero_cli_ext.mv.tree import walk_links  # noqa: E402
from omero_cli_ext.workers import default_workers  # noqa: E402


class Tree:
    """A repository of `links` absolute symlinks, `per_dir` per directory (nested as a
    repository's user/date/fileset layout), pointing into `old`; the files live under `new`
    (one-byte hard links of a few seed files, which makes building fast)."""

    def __init__(self, base: str, links: int, per_dir: int):
        self.base = tempfile.mkdtemp(prefix="tree-", dir=base)
        self.sim = os.path.join(self.base, "sim")
        self.repo = os.fsencode(os.path.join(self.sim, "ManagedRepository"))
        self.old = os.fsencode(os.path.join(self.base, "data", "old"))
        self.new = os.fsencode(os.path.join(self.base, "data", "new"))
        self.journal = os.path.join(self.base, "journal", "mv.sqlite")
        os.makedirs(self.new)
        seeds = []
        for index in range(links):
            fileset, member = divmod(index, per_dir)
            rel = b"u_%d/%d/fs_%d/f_%d.fake" % (fileset % 7, fileset // 1000, fileset, member)
            link = os.path.join(self.repo, rel)
            target_file = os.path.join(self.new, rel)
            if member == 0:
                os.makedirs(os.path.dirname(link), exist_ok=True)
                os.makedirs(os.path.dirname(target_file), exist_ok=True)
            if index % SEED_LINKS == 0:
                seeds.append(os.path.join(self.new, b"seed_%d" % len(seeds)))
                with open(seeds[-1], "wb") as f:
                    f.write(b"x")
            os.link(seeds[-1], target_file)
            os.symlink(os.path.join(self.old, rel), link)
        os.sync()

    def remove(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


def minimal_loop(tree: Tree) -> float:
    """The floor: walk, readlink, symlink under a temporary name, replace. No journal, no sync."""
    old, new = tree.old + b"/", tree.new + b"/"
    started = time.perf_counter()
    for link, target in walk_links(tree.repo):
        if target.startswith(old):
            tmp = link + b".tmp"
            os.symlink(new + target[len(old):], tmp)
            os.replace(tmp, link)
    return time.perf_counter() - started


def launcher(sim: str, *argv: str) -> float:
    """Wall time of one omero command as its own process."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, LAUNCHER, "--sim-root", sim, *argv],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"omero {' '.join(argv)} failed ({done.returncode}): {done.stderr}")
    return elapsed


def omero_links_only(tree: Tree) -> float:
    return launcher(tree.sim, "mv", "--no-server", "--repo", os.fsdecode(tree.repo),
                    "--journal", tree.journal, "--links-only", os.fsdecode(tree.old),
                    os.fsdecode(tree.new))


def check_relinked(tree: Tree, links: int) -> None:
    new = tree.new + b"/"
    moved = sum(1 for _, target in walk_links(tree.repo) if target.startswith(new))
    if moved != links:
        raise SystemExit(f"only {moved} of {links} links point into NEW")


def scan(repo: bytes) -> float:
    started = time.perf_counter()
    count = sum(1 for _ in walk_links(repo))
    elapsed = time.perf_counter() - started
    assert count, "no links found"
    return elapsed


def command_scan(repo: bytes, old: bytes) -> float:
    """The scan as `omero mv --links-only` runs it: subtrees walked and matched against OLD in
    the default number of worker processes (the new files are not stat'ed here)."""
    started = time.perf_counter()
    count = len(matching_links(repo, Scope(old), default_workers()))
    elapsed = time.perf_counter() - started
    assert count, "no links matched"
    return elapsed


def find(repo: bytes) -> float:
    started = time.perf_counter()
    subprocess.run(["find", repo, "-type", "l"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def loop_round(base: str, args, scans: list) -> tuple:
    """The minimal loop on a fresh tree: its time, and the time of the sync it leaves undone
    (what the command pays for durability; printed for reference, not in the ratio). The
    first round's tree also serves the scan comparison."""
    tree = Tree(base, args.links, args.per_dir)
    try:
        elapsed = minimal_loop(tree)
        started = time.perf_counter()
        os.sync()
        deferred_sync = time.perf_counter() - started
        check_relinked(tree, args.links)
        if not scans:
            scans.append(min(scan(tree.repo) for _ in range(3)))
            scans.append(min(find(tree.repo) for _ in range(3)))
            scans.append(min(command_scan(tree.repo, tree.new) for _ in range(3)))
        return elapsed, deferred_sync
    finally:
        tree.remove()


def command_round(base: str, args) -> float:
    tree = Tree(base, args.links, args.per_dir)
    try:
        elapsed = omero_links_only(tree)
        check_relinked(tree, args.links)
        return elapsed
    finally:
        tree.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--links", type=int, default=200_000)
    parser.add_argument("--per-dir", type=int, default=3, help="links per directory")
    parser.add_argument("--rounds", type=int, default=5,
                        help="minimal-loop/command pairs, each on fresh trees")
    parser.add_argument("--dir", help="where to build (default: a temporary directory)")
    args = parser.parse_args()
    base = tempfile.mkdtemp(prefix="mv-bench-", dir=args.dir)
    try:
        startup = statistics.median(launcher(os.path.join(base, "sim"), "version")
                                    for _ in range(5))
        print(f"links: {args.links} ({args.per_dir} per directory) in {base}")
        print(f"CLI start-up (omero version as its own process, median of 5): {startup:6.3f} s")
        floors, commands, scans = [], [], []
        for round_ in range(1, args.rounds + 1):
            floor, deferred_sync = loop_round(base, args, scans)
            floors.append(floor)
            commands.append(command_round(base, args))
            print(f"round {round_}: minimal loop {floor:7.3f} s (+ its deferred sync "
                  f"{deferred_sync:6.3f} s)   omero mv --links-only {commands[-1]:7.3f} s "
                  f"(incl. start-up)   ratio {commands[-1] / floor:5.2f}x   without start-up "
                  f"{(commands[-1] - startup) / floor:5.2f}x", flush=True)
        ratio = statistics.median(c / f for c, f in zip(commands, floors))
        ratio_no_startup = statistics.median((c - startup) / f for c, f in zip(commands, floors))
        print(f"relink  median ratio omero mv --links-only / minimal loop: {ratio:5.2f}x "
              f"(target <= 1.5x); without the CLI start-up: {ratio_no_startup:5.2f}x")
        print(f"        medians: minimal loop {statistics.median(floors):7.3f} s, "
              f"omero mv {statistics.median(commands):7.3f} s, CLI start-up {startup:6.3f} s")
        print(f"scan    walk_links, one process: {scans[0]:6.3f} s   find -type l: {scans[1]:6.3f} s"
              f"   ratio {scans[0] / scans[1]:5.2f}x (target <= 1.5x)")
        print(f"        as the command scans ({default_workers()} workers): {scans[2]:6.3f} s   "
              f"ratio {scans[2] / scans[1]:5.2f}x")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
