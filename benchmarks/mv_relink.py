"""Benchmark `omero mv --links-only` against the minimal relink loop, and our repository scan
against `find REPO -type l`, on the same generated repository, in one run.

    python benchmarks/mv_relink.py [--links 200000] [--per-dir 3] [--dir DIR]

Prints both times and their ratios (targets: relink <= 1.5x the minimal loop of os.readlink +
os.symlink + os.replace with no journal; scan <= 1.5x find). The `--links-only` run is the real
command (journal, lock, plan, batched syncs, verification pass), driven in-process through the
omero CLI with --no-server.
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

from omero_cli_ext.mv.tree import walk_links  # noqa: E402


def build(repo: bytes, old: bytes, new: bytes, links: int, per_dir: int) -> None:
    """`links` absolute symlinks, `per_dir` per directory (nested two levels, as a repository's
    user/date/time layout), pointing into `old`; the files themselves live under `new`."""
    for index in range(links):
        fileset, member = divmod(index, per_dir)
        rel = b"u_%d/%d/fs_%d/f_%d.fake" % (fileset % 7, fileset // 1000, fileset, member)
        link = os.path.join(repo, rel)
        target_file = os.path.join(new, rel)
        if member == 0:
            os.makedirs(os.path.dirname(link), exist_ok=True)
            os.makedirs(os.path.dirname(target_file), exist_ok=True)
        with open(target_file, "wb") as f:
            f.write(b"x")
        os.symlink(os.path.join(old, rel), link)


def minimal_loop(repo: bytes, old: bytes, new: bytes) -> float:
    """The floor: walk, readlink, symlink under a temporary name, replace. No journal, no sync."""
    started = time.perf_counter()
    for link, target in walk_links(repo):
        if target.startswith(old + b"/"):
            tmp = link + b".tmp"
            os.symlink(new + target[len(old):], tmp)
            os.replace(tmp, link)
    return time.perf_counter() - started


def omero_links_only(base: str, repo: bytes, old: bytes, new: bytes) -> float:
    from sim.launcher import run_cli
    started = time.perf_counter()
    rc, out, err = run_cli(os.path.join(base, "sim"),
                           ["mv", "--no-server", "--repo", os.fsdecode(repo),
                            "--journal", os.path.join(base, "journal", "mv.sqlite"),
                            "--links-only", os.fsdecode(old), os.fsdecode(new)])
    elapsed = time.perf_counter() - started
    if rc != 0:
        raise SystemExit(f"omero mv failed ({rc}): {err}")
    return elapsed


def scan(repo: bytes) -> float:
    started = time.perf_counter()
    count = sum(1 for _ in walk_links(repo))
    elapsed = time.perf_counter() - started
    assert count, "no links found"
    return elapsed


def find(repo: bytes) -> float:
    started = time.perf_counter()
    subprocess.run(["find", repo, "-type", "l"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--links", type=int, default=200_000)
    parser.add_argument("--per-dir", type=int, default=3, help="links per directory")
    parser.add_argument("--dir", help="where to build (default: a temporary directory)")
    args = parser.parse_args()
    base = tempfile.mkdtemp(prefix="mv-bench-", dir=args.dir)
    try:
        repo = os.fsencode(os.path.join(base, "sim", "ManagedRepository"))
        old = os.fsencode(os.path.join(base, "data", "old"))
        new = os.fsencode(os.path.join(base, "data", "new"))
        os.makedirs(os.path.join(base, "sim"))
        build(repo, old, new, args.links, args.per_dir)
        os.sync()
        scan_ours = min(scan(repo) for _ in range(3))
        scan_find = min(find(repo) for _ in range(3))
        # the same links go old -> new (the command), then new -> old (the loop), so each
        # relinks the same number of links in the same directories
        ours = omero_links_only(base, repo, old, new)
        os.sync()
        floor = minimal_loop(repo, new, old)
        started = time.perf_counter()
        os.sync()   # what making the loop's changes durable costs (the command syncs per batch)
        floor_synced = floor + time.perf_counter() - started
        print(f"links: {args.links} ({args.per_dir} per directory) in {base}")
        print(f"relink  omero mv --links-only: {ours:8.3f} s   minimal loop: {floor:8.3f} s   "
              f"ratio {ours / floor:5.2f}x (target <= 1.5x)")
        print(f"        (minimal loop + one final sync: {floor_synced:8.3f} s, "
              f"ratio {ours / floor_synced:5.2f}x; the command's time includes CLI start-up)")
        print(f"scan    walk_links:            {scan_ours:8.3f} s   find -type l: {scan_find:8.3f} s   "
              f"ratio {scan_ours / scan_find:5.2f}x (target <= 1.5x)")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
