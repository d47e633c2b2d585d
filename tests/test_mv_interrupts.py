"""`omero mv` interrupted while its worker processes run: Ctrl-C (SIGINT to the process group,
as a terminal sends it), SIGTERM, and a closed stdout (`| head`), on a job of 10 000 links.

Each case must end on its own (the subprocess wait has a generous bound only so that a hang
fails the test instead of the suite), without a traceback, with the documented exit code, leave
every repository link resolving to its original bytes, and let a rerun finish the job.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from mv_helpers import World, interrupt_after_retargets, manifest, repo_links, tmpfs
from omero_cli_ext.mv import errors
from omero_cli_ext.workers import MIN_ITEMS
from sim.launcher import script_env

HANG = 300   # seconds: far beyond any run here; reaching it means the command hung


@pytest.fixture
def big(tmp_path):
    """10 000 in-place links (2000 filesets of 5 files) on a tmpfs."""
    with tmpfs(str(tmp_path / "fs"), "512m") as base:
        world = World(base, n_filesets=2000, files_per_fileset=5, odd_names=False, file_size=16)
        assert len(repo_links(world.repo)) >= 10_000 > 2 * MIN_ITEMS
        yield world


def _start(world: World, *argv) -> subprocess.Popen:
    return subprocess.Popen(
        world.mv_command("--workers", "2", *argv),
        env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True)


def _group_gone(pgid: int) -> bool:
    """No process of the command's process group is left (workers included)."""
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                return False
    return True


def _read_until_retargets(proc: subprocess.Popen) -> None:
    """Read --json lines until the first retarget (the phase the workers run), then stop
    reading: the command soon blocks writing to the full pipe, mid-job."""
    for line in proc.stdout:
        if b'"action": "retarget"' in line:
            return
    pytest.fail("the job ended before its retarget phase")


def _finish_with_rerun(world: World, new: str, expected: dict) -> None:
    done = subprocess.run(
        world.mv_command("--workers", "2", world.old, new),
        env=script_env(), capture_output=True, text=True, timeout=HANG)
    assert done.returncode == 0, done.stderr
    assert manifest(world.repo) == expected
    assert all(t.startswith(os.fsencode(new + "/")) for t in repo_links(world.repo).values())
    assert not os.path.exists(world.old)


@pytest.mark.parametrize("how", ["SIGINT to the group", "SIGTERM"])
def test_signal_during_a_parallel_move_stops_it_for_a_rerun(big, how):
    expected = manifest(big.repo)
    new = os.path.join(big.data, "new")
    proc = _start(big, "--json", big.old, new)
    _read_until_retargets(proc)
    if how == "SIGTERM":
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=HANG)   # drains what the command still writes
    err = err.decode()
    assert proc.returncode == errors.EXIT_INTERRUPTED, err
    assert "Traceback" not in err
    assert "interrupted" in err and "rerun:" in err and "every link resolves" in err
    assert _group_gone(proc.pid)
    last = json.loads(out.decode().splitlines()[-1])
    assert last["type"] == "error" and last["code"] == errors.EXIT_INTERRUPTED
    assert manifest(big.repo) == expected   # every link still reads its original bytes
    _finish_with_rerun(big, new, expected)


def test_closed_stdout_stops_the_listing_and_the_job_finishes(big):
    """`omero mv --json OLD NEW | head -n 12000`: decided behaviour: the listing stops, a note
    goes to stderr, the job runs to its end and exits as it would have (0 here)."""
    expected = manifest(big.repo)
    new = os.path.join(big.data, "new")
    proc = _start(big, "--json", big.old, new)
    for _ in range(12_000):
        proc.stdout.readline()
    proc.stdout.close()   # head exits
    err = proc.stderr.read().decode()
    proc.wait(timeout=HANG)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "standard output was closed" in err
    assert _group_gone(proc.pid)
    assert manifest(big.repo) == expected
    assert all(t.startswith(os.fsencode(new + "/")) for t in repo_links(big.repo).values())
    assert not os.path.exists(big.old)


def test_dry_run_into_head_ends_quietly(big):
    proc = _start(big, "--json", "--dry-run", big.old, os.path.join(big.data, "new"))
    proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=HANG)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert os.path.isdir(big.old) and not os.path.exists(os.path.join(big.data, "new"))


def test_ctrl_c_while_planning_changes_nothing(tmp_path, monkeypatch):
    from mv_helpers import snapshot
    from omero_cli_ext.mv import plan
    world = World(str(tmp_path), n_filesets=5, files_per_fileset=2, odd_names=False)
    before = snapshot(world.repo, world.data)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt()
    monkeypatch.setattr(plan, "walk_tree", interrupted)
    rc, out, err = world.mv(world.old, os.path.join(world.data, "new"), server=False)
    assert rc == errors.EXIT_INTERRUPTED, err
    assert "before the job started; nothing was changed" in err and "Traceback" not in err
    assert snapshot(world.repo, world.data) == before


def test_abandon_after_an_interrupt_says_what_it_leaves(tmp_path, monkeypatch):
    from omero_cli_ext.fsops import is_temp_name
    from omero_cli_ext.mv import execute
    world = World(str(tmp_path), n_filesets=10, files_per_fileset=2, odd_names=False)
    expected = manifest(world.repo)
    real, calls = execute.Executor._retarget, []

    def retarget_then_interrupt(self, step):
        if len(calls) == 5:
            with open(os.path.join(os.path.dirname(step.path),
                                   b".omero-cli-ext.999999.abc.x"), "w"):
                pass   # a dead run's temporary beside a link
            raise KeyboardInterrupt()
        calls.append(step)
        real(self, step)
    monkeypatch.setattr(execute.Executor, "_retarget", retarget_then_interrupt)
    new = os.path.join(world.data, "new")
    rc, out, err = world.mv(world.old, new, "--workers", "1", server=False)
    assert rc == errors.EXIT_INTERRUPTED and "job 1 is unfinished" in err, err
    monkeypatch.undo()
    rc, out, err = world.mv("--abandon", server=False)
    assert rc == 0, err
    assert "5 link(s) already point at the new place, 15 still at the old one" in out
    assert "20 file(s) and link(s) placed at the destination" in out
    assert "20 source(s) not removed" in out and "1 temporary file(s) of the job removed" in out
    assert manifest(world.repo) == expected
    assert not [n for d, _, files in os.walk(world.repo) for n in files if is_temp_name(n)]


def test_status_shows_the_unfinished_job_and_who_runs_it(tmp_path, monkeypatch):
    from omero_cli_ext.journal import open_journal
    from omero_cli_ext.mv.locations import ensure_control_dir, repo_place
    world = World(str(tmp_path), n_filesets=10, files_per_fileset=2, odd_names=False)
    rc, out, err = world.mv("--status", server=False)
    assert rc == 0 and "no unfinished job" in out, err
    interrupt_after_retargets(monkeypatch, 5)
    rc, out, err = world.mv(world.old, os.path.join(world.data, "new"), "--workers", "1",
                            server=False)
    assert rc == errors.EXIT_INTERRUPTED, err
    monkeypatch.undo()
    rc, out, err = world.mv("--status", "--json", server=False)
    assert rc == 0, err
    status = json.loads(out.splitlines()[-1])
    assert status["type"] == "status" and status["job"] == 1
    assert status["phase"] == "changing links" and status["phase_steps_done"] == 5
    assert status["phase_steps"] == 20 and status["steps_done"] < status["steps"]
    assert status["started_by"]["user"] == "root" and status["running"] is None
    assert status["journal"].endswith("mv.sqlite")
    place = repo_place(os.fsencode(world.repo))
    journal = open_journal(os.fsdecode(place.default_journal))
    with journal.writer_lock(place.lock_name, directory=os.fsdecode(ensure_control_dir(place))):
        rc, out, err = world.mv("--status", server=False)
    journal.close()
    assert rc == 0 and f"running now: process {os.getpid()}" in out, err


def test_a_tree_changing_while_it_is_read_is_no_traceback(tmp_path, monkeypatch):
    """A file of SRC removed between the directory listing and its stat (another process
    cleaning up): it is not part of the plan, the rest moves."""
    from omero_cli_ext.mv import tree
    world = World(str(tmp_path), n_filesets=4, files_per_fileset=2, odd_names=False)
    extra = os.path.join(world.old, "batch_0", "scratch.tmp")
    with open(extra, "wb") as f:
        f.write(b"x")
    real = os.scandir

    class Listing:
        def __init__(self, path):
            self.entries = list(real(path))
            for entry in self.entries:
                if entry.name == b"scratch.tmp":
                    os.unlink(entry.path)   # gone between readdir and stat
            self._left = iter(self.entries)

        def __iter__(self):
            return self

        def __next__(self):
            return next(self._left)

        def close(self):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False
    monkeypatch.setattr(tree.os, "scandir", Listing)
    expected = manifest(world.repo)
    rc, out, err = world.mv(world.old, os.path.join(world.data, "new"), server=False)
    assert rc == 0 and "Traceback" not in err, err
    assert manifest(world.repo) == expected and not os.path.exists(world.old)


def test_ctrl_c_ends_the_command_even_when_its_reader_stopped_reading(big):
    """`omero mv --json OLD NEW | less`, then Ctrl-C: less ignores it and does not read. The
    command still ends (what it has left to write gets a few seconds), exit 30."""
    expected = manifest(big.repo)
    new = os.path.join(big.data, "new")
    proc = _start(big, "--json", big.old, new)
    _read_until_retargets(proc)
    proc.send_signal(signal.SIGINT)          # only the command: the "pager" keeps its pipe open
    proc.wait(timeout=HANG)                  # nothing read meanwhile
    err = proc.stderr.read().decode()
    proc.stdout.close()
    assert proc.returncode == errors.EXIT_INTERRUPTED, err
    assert "Traceback" not in err and "rerun:" in err
    assert manifest(big.repo) == expected
    _finish_with_rerun(big, new, expected)
