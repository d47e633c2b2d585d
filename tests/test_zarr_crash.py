"""kill -9 of `omero export --zarr` at seeded random moments (the CLI in its own process), then
the same command again: after every kill each chunk under its final name is whole, and the
finished export is byte for byte the one an uninterrupted run writes."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time

from numcodecs import Blosc

from sim.launcher import run_cli, script_command, script_env
from test_zarr_export import add_fake, control_args, fake_name, make_world, tree



def chunk_files(dest) -> list:
    """Chunk files under their final names (level directories hold `.zarray` beside them)."""
    found = []
    for dirpath, _dirs, names in os.walk(dest):
        for name in names:
            if not name.startswith(".") and name.isdigit():
                found.append(os.path.join(dirpath, name))
    return found


def check_whole(dest) -> None:
    codec = Blosc()
    for path in chunk_files(dest):
        with open(path, "rb") as stream:
            data = stream.read()
        level_dir = path
        while not os.path.exists(os.path.join(level_dir, ".zarray")):
            level_dir = os.path.dirname(level_dir)
        with open(os.path.join(level_dir, ".zarray"), encoding="utf-8") as stream:
            meta = json.load(stream)
        expected = meta["chunks"][3] * meta["chunks"][4] * int(meta["dtype"][-1])
        assert len(codec.decode(data)) == expected, "partial chunk under its final name: " + path


def start(sim_root, dest, obj, workers):
    return subprocess.Popen(
        script_command(sim_root, ["export", "--zarr", dest, obj, "--chunk", "256", "--workers",
                                  str(workers), *control_args(sim_root)], "alice"),
        env=script_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill_when(proc, dest, target: int) -> None:
    """SIGKILL once `target` chunks are in place: a seeded moment inside the export."""
    while len(chunk_files(dest)) < target and proc.poll() is None:
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


def test_kill_9_at_ten_random_moments_then_rerun_is_byte_identical(tmp_path):
    world = make_world(tmp_path)
    for name in (fake_name(sizeX=1300, sizeY=1100, sizeC=2, pixelType="uint16", series=2),):
        add_fake(world.sim, world.src, name, target=("Dataset", world.dataset))
    obj = "Project:%d" % world.project
    reference = tmp_path / "reference"
    rc, _out, err = run_cli(world.sim.root, ["export", "--zarr", str(reference), obj,
                                             "--chunk", "256", *control_args(world.sim.root)], user="alice")
    assert rc == 0, err
    expected = tree(reference)
    total = len(chunk_files(reference))
    assert total > 300
    dest = str(tmp_path / "dest")
    rng = random.Random(20261207)
    targets = sorted(rng.sample(range(1, total), 10))
    kills = 0
    for number, target in enumerate(targets):
        proc = start(world.sim.root, dest, obj, workers=1 + number % 2)
        kill_when(proc, dest, target)
        kills += proc.returncode == -signal.SIGKILL
        check_whole(dest)
    assert kills >= 8       # (a run may finish its last chunks before the signal lands)
    rc, out, err = run_cli(world.sim.root, ["export", "--zarr", dest, obj, "--chunk", "256",
                                            "--json", *control_args(world.sim.root)], user="alice")
    assert rc == 0, err
    actions = {json.loads(line)["action"] for line in out.splitlines()
               if json.loads(line)["type"] == "image"}
    assert actions <= {"kept", "resumed", "written"}
    assert tree(dest) == expected


def test_ctrl_c_ends_cleanly_with_exit_10_and_the_rerun_completes(tmp_path):
    world = make_world(tmp_path)
    obj = "Project:%d" % world.project
    dest = str(tmp_path / "dest")
    proc = start(world.sim.root, dest, obj, workers=2)
    while len(chunk_files(dest)) < 20 and proc.poll() is None:
        time.sleep(0.001)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 10, err
    assert b"Traceback" not in err and b"rerun the same command" in err
    check_whole(dest)
    rc, _out, err = run_cli(world.sim.root, ["export", "--zarr", dest, obj, "--chunk", "256", *control_args(world.sim.root)],
                            user="alice")
    assert rc == 0, err
    reference = tmp_path / "reference"
    rc, _out, err = run_cli(world.sim.root, ["export", "--zarr", str(reference), obj,
                                             "--chunk", "256", *control_args(world.sim.root)], user="alice")
    assert rc == 0 and tree(dest) == tree(reference)
