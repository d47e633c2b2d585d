"""`omero mv` under `kill -9` and under concurrent readers.

Crash test: the command runs in a subprocess (tests/sim/launcher.py, --no-server) and is killed
at seeded random moments, then rerun until it finishes. After every kill each repository link
must still resolve to its original bytes (so no source went before its verified copy), and at
the end no temporary is left anywhere.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import threading
import time

import pytest

from mv_helpers import World, manifest, repo_links, tmpfs
from omero_cli_ext.fsops import is_temp_name
from omero_cli_ext.workers import MIN_ITEMS
from sim.launcher import script_env

KILLS = 20


def _temporaries(*roots) -> list:
    found = []
    for root in roots:
        for directory, dirs, files in os.walk(root):
            found += [os.path.join(directory, n) for n in files + dirs if is_temp_name(n)]
    return found


def _planned_steps(world: World, argv) -> int:
    done = subprocess.run(world.mv_command(*argv, "--dry-run", "--json"), env=script_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    plan = [json.loads(line) for line in done.stdout.splitlines() if '"type": "plan"' in line]
    return plan[0]["steps"]


def _kill_and_rerun(world: World, argv, expected: dict, seed: int) -> int:
    """Kill the command KILLS times, each after a seeded random number of finished steps (read
    from its --json stream) plus a random few milliseconds, checking every link after each
    kill; then rerun until it finishes. Returns the number of kills that landed mid-job."""
    rng = random.Random(seed)
    per_kill = _planned_steps(world, argv) / KILLS
    landed = 0
    for attempt in range(KILLS):
        proc = subprocess.Popen(world.mv_command(*argv, "--json"), env=script_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wanted = rng.randint(max(1, int(0.4 * per_kill)), max(2, int(1.4 * per_kill)))
        seen = 0
        for line in proc.stdout:
            seen += '"type": "action"' in line
            if seen >= wanted:
                time.sleep(rng.uniform(0, 0.003))
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait()
        stderr = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
        assert proc.returncode in (0, -signal.SIGKILL), stderr
        assert manifest(world.repo) == expected, f"a link lost its bytes after kill {attempt}"
        if proc.returncode == 0:
            return landed
        landed += 1
    done = subprocess.run(world.mv_command(*argv), env=script_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return landed


@pytest.mark.slow
@pytest.mark.parametrize("across", [False, True], ids=["same-fs", "cross-fs"])
def test_move_survives_kill_9(tmp_path, across):
    other = str(tmp_path / "other")
    with (tmpfs(other, "256m") if across else _nothing()):
        dst_root = other if across else None

        world = World(str(tmp_path / "w"), n_filesets=120, files_per_fileset=3, odd_names=True,
                      file_size=4096)
        expected = manifest(world.repo)
        dst = os.path.join(dst_root or world.data, "new")
        landed = _kill_and_rerun(world, [world.old, dst], expected, seed=4 + across)
        assert landed >= KILLS, f"only {landed} kills landed while the command ran"
        assert manifest(world.repo) == expected
        assert not os.path.exists(world.old)
        assert all(t.startswith(os.fsencode(dst)) for t in repo_links(world.repo).values())
        assert _temporaries(world.repo, world.data, dst) == []


@pytest.mark.slow
def test_parallel_relink_survives_kill_9(tmp_path):
    """--links-only over more links than omero_cli_ext.workers forks for: the command is
    killed while its worker processes retarget; they die with it (else the rerun would find the
    repository lock held), and reruns finish the job."""
    world = World(str(tmp_path / "w"), n_filesets=1500, files_per_fileset=3, odd_names=False)
    assert len(repo_links(world.repo)) > MIN_ITEMS
    new = os.path.join(world.data, "new")
    subprocess.run(["cp", "-al", world.old, new], check=True)   # both places resolve
    expected = manifest(world.repo)
    landed = _kill_and_rerun(world, ["--links-only", world.old, new, "--workers", "2"],
                             expected, seed=21)
    assert landed >= 1
    assert all(t.startswith(os.fsencode(new + "/")) for t in repo_links(world.repo).values())
    assert manifest(world.repo) == expected
    assert _temporaries(world.repo) == []


@pytest.mark.slow
def test_parallel_move_survives_kill_9(tmp_path):
    """Mode 1 on one filesystem with more files than the workers fork for: hard links, retargets
    and removals run in worker processes, killed with the command at any of those moments."""
    world = World(str(tmp_path / "w"), n_filesets=1400, files_per_fileset=3, odd_names=False)
    assert len(repo_links(world.repo)) > MIN_ITEMS
    expected = manifest(world.repo)
    dst = os.path.join(world.data, "new")
    landed = _kill_and_rerun(world, [world.old, dst, "--workers", "2"], expected, seed=31)
    assert landed >= 1
    assert manifest(world.repo) == expected
    assert not os.path.exists(world.old)
    assert all(t.startswith(os.fsencode(dst + "/")) for t in repo_links(world.repo).values())
    assert _temporaries(world.repo, world.data) == []


@pytest.mark.slow
def test_offload_survives_kill_9(tmp_path):
    with tmpfs(str(tmp_path / "tier"), "256m") as tier:
        world = World(str(tmp_path / "w"), n_filesets=2, files_per_fileset=1, odd_names=False)
        up = world.uploaded(100, 3)
        up_expected = manifest(world.repo)
        user_dir = os.path.dirname(os.path.dirname(os.path.dirname(os.path.join(
            world.repo, world.sim.port("root").filesets([up.fileset_ids[0]])[
                up.fileset_ids[0]].template_prefix))))
        contents = _contents(user_dir)
        dst = os.path.join(tier, "offloaded")
        landed = _kill_and_rerun(world, [user_dir, dst], up_expected, seed=11)
        assert landed >= KILLS
        assert _contents(user_dir) == contents   # every repository name still reads the same
        assert _temporaries(world.repo, tier) == []


def _contents(root: str) -> dict:
    found = {}
    for directory, dirs, files in os.walk(root):
        for name in files:
            with open(os.path.join(directory, name), "rb") as f:
                found[os.path.join(directory, name)] = hashlib.sha1(f.read()).hexdigest()
    return found


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_concurrent_reader_never_sees_a_dangling_link(tmp_path):
    """Mode 1 on one filesystem while a reader walks every affected link: never a miss."""
    world = World(str(tmp_path), n_filesets=200, files_per_fileset=3, odd_names=False)
    links = list(repo_links(world.repo))
    misses, reads = [], [0]
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            for link in links:
                try:
                    with open(link, "rb") as f:
                        f.read(1)
                    reads[0] += 1
                except OSError as exc:
                    misses.append((link, exc.errno))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        rc, out, err = world.mv(world.old, os.path.join(world.data, "new"), server=False)
    finally:
        stop.set()
        thread.join()
    assert rc == 0, err
    assert misses == []
    assert reads[0] > len(links)
