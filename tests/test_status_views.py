"""The views of `omero status imports`: rich renderables on a recording console, --watch in
process (the refresh wait moves the simulated clock) and once through a real terminal (a pty)."""
from __future__ import annotations

import datetime as dt
import fcntl
import io
import json
import os
import pty
import select
import struct
import sys
import termios

import pytest
from rich.console import Console

from omero_cli_ext.cli import status_run
from omero_cli_ext.importing.progress import JobProgress
from omero_cli_ext.server import Fileset, FilesetActivity, ImportLog, Job
from omero_cli_ext.status import classify as c
from omero_cli_ext.status.jobs import job_status
from omero_cli_ext.status.snapshot import ServerView, Snapshot
from sim.builder import lab_server
from sim.launcher import run_cli, script_command, script_env

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.timezone.utc)
STALL = 900.0


def snapshot(n_done=2, n_active=1, n_stalled=1, with_job=True, unlisted=0):
    filesets, acts = [], {}
    fid = 0
    for kind, count in (("done", n_done), ("active", n_active), ("stalled", n_stalled)):
        for _ in range(count):
            fid += 1
            last = NOW - dt.timedelta(seconds=2 * STALL if kind == "stalled" else 30)
            steps = 5 if kind == "done" else 1
            filesets.append(Fileset(id=fid, template_prefix="alice_2/2026-11/27/%05d/" % fid,
                                    owner_id=2, owner_name="alice", group_id=3, group_name="lab",
                                    group_perms="rwr---", created=last - dt.timedelta(minutes=5)))
            acts[fid] = FilesetActivity(
                fileset_id=fid, image_count=1, last_event=last,
                jobs=(Job(id=fid, fileset_id=fid, kind="UploadJob", status="Finished",
                          finished=last),),
                log=ImportLog(fileset_id=fid, original_file_id=fid, size=10, updated=last,
                              updates=steps))
    imports = c.classify(filesets, acts, [], now=NOW, stalled_after=STALL, viewer_id=2)
    jobs = ()
    if with_job:
        progress = JobProgress(job="nightly", journal="/j/nightly.sqlite", state="running",
                               filesets_total=10, filesets_done=5, filesets_failed=1,
                               filesets_running=2, bytes_total=8 << 30, bytes_done=4 << 30,
                               workers=3, hosts=("h1",), started=NOW - dt.timedelta(hours=2),
                               last_activity=NOW - dt.timedelta(seconds=20),
                               rate_bytes_per_s=50 << 20, eta_seconds=90.0)
        jobs = (job_status(progress, NOW, STALL),)
    return Snapshot(local_time=NOW, stalled_after=STALL, jobs=jobs,
                    server=ServerView(server_time=NOW, imports=tuple(imports),
                                      unlisted_processes=unlisted))


def render(renderable, width=220, height=60) -> tuple:
    """(plain text, segments) of a renderable on a recording console."""
    console = Console(record=True, width=width, height=height, file=io.StringIO(),
                      force_terminal=True, color_system="truecolor")
    console.print(renderable)
    segments = list(console.render(renderable))
    return console.export_text(), segments


def styles_of(segments, text) -> set:
    return {str(s.style) for s in segments if s.text.strip() == text}


def test_rich_view_shows_header_job_bar_and_coloured_states():
    text, segments = render(status_run._rich_view(snapshot(unlisted=2), None))
    lines = text.splitlines()
    assert lines[0] == "omero status imports: server time 2026-11-27 12:00Z, stalled after 15m"
    assert lines[1].startswith("imports: 1 stalled 1 active 2 done")
    assert "local jobs: 1 active" in lines[1]
    assert "Local jobs" in text and "nightly" in text and "5/1/10" in text
    assert "4.0 GiB / 8.0 GiB" in text and "50.0 MiB/s" in text and "1m30s" in text
    assert "━" in text                                    # the job's progress bar
    assert "Server imports (4)" in text
    assert "pixel data running: 1 of 3 steps ended" in text
    assert "no activity for 30m" in text
    assert "2 live import processes of this session are not listed" in text
    assert styles_of(segments, "stalled") == {"bold yellow"}
    assert styles_of(segments, "active") == {"green"}
    assert styles_of(segments, "done") == {"None", "dim"}     # the stage cell, the state cell


def test_one_shot_view_lists_unfinished_imports_and_fifty_done_ones():
    text, _ = render(status_run._rich_view(snapshot(n_done=70, n_stalled=3, with_job=False), None))
    assert "Server imports (74)" in text
    assert text.count(" stalled ") >= 3
    assert "… and 20 more imports (--json lists them all)" in text


def test_live_view_fits_the_terminal_height():
    snap = snapshot(n_done=200, with_job=True)
    text, _ = render(status_run._rich_view(snap, 40), height=40)
    assert len(text.splitlines()) <= 40
    assert "more imports (--json lists them all)" in text
    assert text.index(" stalled ") < text.index(" done ")      # worst first


def test_problems_are_shown_in_red():
    snap = Snapshot(local_time=NOW, stalled_after=STALL, problems=("server: refused",))
    text, segments = render(status_run._rich_view(snap, None))
    assert "server unreadable" in text.splitlines()[0]
    assert styles_of(segments, "problem: server: refused") == {"red"}


# --- --watch in process ---------------------------------------------------------------------------

@pytest.fixture
def sim(tmp_path, monkeypatch):
    monkeypatch.setenv("OMERO_USERDIR", str(tmp_path / "userdir"))
    s = lab_server(str(tmp_path / "sim"))
    source = tmp_path / "busy.fake"
    source.write_bytes(b"x" * 100)
    s.fid = s.import_fileset("alice", [str(source)], steps=1)
    return s


def test_watch_without_a_terminal_prints_snapshots_until_ctrl_c(sim, monkeypatch):
    waits = []

    def wait(seconds):
        waits.append(seconds)
        if len(waits) == 3:
            raise KeyboardInterrupt
        sim.advance(10 * 60)
    monkeypatch.setattr(status_run, "wait_between_refreshes", wait)
    rc, out, err = run_cli(sim.root, ["status", "imports", "--watch", "7"], user="alice")
    assert (rc, err, waits) == (0, "", [7.0, 7.0, 7.0])
    snapshots = out.split("omero status imports: server time ")[1:]
    assert len(snapshots) == 3
    assert [s.splitlines()[1] for s in snapshots] == [
        "imports: 1 active; local jobs: none", "imports: 1 active; local jobs: none",
        "imports: 1 stalled; local jobs: none"]
    assert "\x1b[" not in out


def test_watch_json_repeats_records_with_a_summary_per_refresh(sim, monkeypatch):
    calls = []

    def wait(seconds):
        calls.append(seconds)
        if len(calls) == 2:
            raise KeyboardInterrupt
    monkeypatch.setattr(status_run, "wait_between_refreshes", wait)
    rc, out, err = run_cli(sim.root, ["status", "imports", "--watch", "--json"], user="alice")
    types = [json.loads(line)["type"] for line in out.splitlines() if line]
    assert (rc, types) == (0, ["import", "summary", "import", "summary"])
    assert calls == [2.0, 2.0]


def test_watch_rewrites_the_metrics_file_at_each_refresh(sim, monkeypatch, tmp_path):
    target = tmp_path / "omero.prom"
    seen = []

    def wait(seconds):
        seen.append(target.read_text())
        sim.advance(20 * 60)
        if len(seen) == 2:
            raise KeyboardInterrupt
    monkeypatch.setattr(status_run, "wait_between_refreshes", wait)
    rc, _, err = run_cli(sim.root, ["status", "imports", "--watch", "--prometheus", str(target)],
                         user="alice")
    assert rc == 0, err
    assert 'omero_status_imports{state="active"} 1.0' in seen[0]
    assert 'omero_status_imports{state="stalled"} 1.0' in seen[1]


# --- --watch in a real terminal ---------------------------------------------------------------------

def _read_until(fd, wanted: bytes, seen: bytearray, deadline_s: float = 60.0) -> None:
    """Read the pty until `wanted` appeared (a deadline guards a hung child; nothing is timed)."""
    while wanted not in seen:
        ready, _, _ = select.select([fd], [], [], deadline_s)
        assert ready, "no %r from the terminal; got %r" % (wanted, bytes(seen[-2000:]))
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen.extend(chunk)


def test_watch_in_a_real_terminal_redraws_and_leaves_cleanly_on_ctrl_c(sim, tmp_path):
    env = script_env(TERM="xterm-256color", OMERO_USERDIR=str(tmp_path / "userdir"))
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    pid, fd = pty.fork()
    if pid == 0:   # the child: the CLI on the pty, as a user would run it
        os.execve(sys.executable, script_command(sim.root, ["status", "imports", "--watch", "0.2"],
                                                 "alice"), env)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 250, 0, 0))
    seen = bytearray()
    try:
        _read_until(fd, b"Server imports (1)", seen)
        _read_until(fd, b"active", seen)
        sim.advance(20 * 60)                      # the next refresh shows it stalled
        _read_until(fd, b" 1 stalled", seen)
        os.write(fd, b"\x03")                     # Ctrl-C from the keyboard
        _read_until(fd, b"\x00never", seen, deadline_s=60)   # read to the end
    finally:
        _, wait_status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.WIFEXITED(wait_status) and os.WEXITSTATUS(wait_status) == 0, bytes(seen[-3000:])
    text = bytes(seen).decode("utf-8", "replace")
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    assert "\x1b[" in text                        # drawn with terminal control sequences
    assert text.count("omero status imports: server time") >= 2   # redrawn, not appended once
    assert "no activity for 20m" in text

