"""Progress by phase: steps and bytes, rate and time left; JSON "phase" objects in order."""
from __future__ import annotations

import json
import os

import pytest

from mv_helpers import World, tmpfs
from omero_cli_ext.mv.progress import PhaseProgress


@pytest.fixture
def world_small(tmp_path):
    return World(str(tmp_path / "s"), n_filesets=4, files_per_fileset=2, odd_names=False)


def test_rate_and_time_left_follow_the_bytes_of_the_phase():
    now = [100.0]
    progress = PhaseProgress(clock=lambda: now[0])
    progress.phase(1, steps=10, nbytes=4 << 30)
    assert progress.rate() is None and progress.seconds_left() is None
    now[0] += 10
    progress.advance(steps=2, nbytes=1 << 30)
    assert progress.rate() == (1 << 30) / 10
    assert progress.seconds_left() == 30
    assert progress.line() == ("placing files: 2 of 10 steps, 1.0 GiB of 4.0 GiB, 102.4 MiB/s, "
                               "about 0:00:30 left")
    progress.phase(3, steps=100, nbytes=0)   # links: by steps
    now[0] += 4
    progress.advance(steps=25)
    assert progress.seconds_left() == 12 and "changing links: 25 of 100 steps" in progress.line()


def test_a_move_reports_each_phase(tmp_path):
    world = World(str(tmp_path / "w"), n_filesets=4, files_per_fileset=2, odd_names=False,
                  file_size=5000)
    with tmpfs(str(tmp_path / "other")) as other:
        rc, out, err = world.mv(world.old, os.path.join(other, "new"), "--json", server=False)
        assert rc == 0, err
    phases = [json.loads(line) for line in out.splitlines() if '"type": "phase"' in line]
    assert [p["phase"] for p in phases] == [
        "planning", "making directories", "placing files", "directory metadata",
        "changing links", "removing sources", "removing directories", "verifying links"]
    placing = phases[2]
    assert placing["steps"] == 8 and placing["bytes"] == 8 * 5000


def test_plain_output_names_the_phases_on_stderr(world_small):
    world = world_small
    rc, out, err = world.mv(world.old, os.path.join(world.data, "new"), server=False)
    assert rc == 0, err
    assert "planning: reading the tree" in err
    assert "changing links: 0 of 8 steps" in err and "verifying links: 0 of 8 steps" in err
