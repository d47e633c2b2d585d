"""Local `omero import --resume` jobs in `omero status imports`: states, --check, metrics, and a
job whose journal is written by another process while status reads it."""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap

import pytest

from omero_cli_ext.importing.progress import JobProgress
from omero_cli_ext.status import jobs as local
from omero_cli_ext.status.metrics import registry_of
from omero_cli_ext.status.snapshot import Snapshot, check
from sim.launcher import run_cli
from sim.server import SimServer

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.timezone.utc)
STALL = 900.0
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def progress(state="running", idle=10.0, failed=0, **fields):
    values = dict(job="nightly", journal="/j/nightly.sqlite", state=state, filesets_total=10,
                  filesets_done=4, filesets_failed=failed, filesets_running=2, bytes_total=10_000,
                  bytes_done=4_000, workers=2, hosts=("h1",), started=NOW - dt.timedelta(hours=1),
                  last_activity=NOW - dt.timedelta(seconds=idle), rate_bytes_per_s=100.0,
                  eta_seconds=60.0)
    values.update(fields)
    return JobProgress(**values)


@pytest.mark.parametrize("p, state", [
    (progress(), local.ACTIVE),
    (progress(failed=2), local.ACTIVE),
    (progress(idle=STALL), local.STALLED),
    (progress(state="interrupted", idle=5 * STALL), local.INTERRUPTED),
    (progress(state="failed", failed=3), local.FAILED),
    (progress(state="done", filesets_done=10, filesets_running=0), local.DONE),
])
def test_job_states(p, state):
    assert local.job_status(p, NOW, STALL).state == state


@pytest.mark.parametrize("p, code, word", [
    (progress(), 0, "OK"),
    (progress(failed=1), 2, "FAILED"),
    (progress(state="interrupted"), 1, "STALLED"),
    (progress(idle=2 * STALL), 1, "STALLED"),
    (progress(state="done", failed=0), 0, "OK"),
])
def test_check_counts_jobs(p, code, word):
    snapshot = Snapshot(local_time=NOW, stalled_after=STALL, asked_server=False,
                        jobs=(local.job_status(p, NOW, STALL),))
    got, line = check(snapshot)
    assert (got, line.split(" - ")[0]) == (code, word)
    if code:
        assert "job nightly (" in line



@pytest.mark.parametrize("p, perf", [
    (progress(state="interrupted"), "jobs_interrupted=1"),
    (progress(idle=2 * STALL), "jobs_stalled=1"),
    (progress(state="failed", failed=3), "jobs_failed=1"),
])
def test_check_performance_data_counts_the_jobs_it_alerts_on(p, perf):
    """A STALLED (or FAILED) answer about a job: the performance data a graph reads says so too,
    not only `stalled=0` of the server imports."""
    snapshot = Snapshot(local_time=NOW, stalled_after=STALL, asked_server=False,
                        jobs=(local.job_status(p, NOW, STALL),))
    _, line = check(snapshot)
    assert perf in line.split(" | ")[1].split()


def test_job_metrics():
    snapshot = Snapshot(local_time=NOW, stalled_after=STALL, asked_server=False,
                        jobs=(local.job_status(progress(), NOW, STALL),))
    registry = registry_of(snapshot)
    key = {"job": "nightly", "journal": "/j/nightly.sqlite"}
    assert registry.get_sample_value("omero_status_job_filesets", dict(key, outcome="done")) == 4
    assert registry.get_sample_value("omero_status_job_bytes", dict(key, kind="total")) == 10_000
    assert registry.get_sample_value("omero_status_job_state", dict(key, state="active")) == 1
    assert registry.get_sample_value("omero_status_job_state", dict(key, state="stalled")) == 0
    assert registry.get_sample_value("omero_status_job_eta_seconds", key) == 60
    assert registry.get_sample_value("omero_status_job_last_activity_age_seconds", key) == 10
    assert registry.get_sample_value("omero_status_server_up") is None   # --local-only


def test_an_unreadable_journal_is_a_problem_not_an_error(tmp_path):
    bad = tmp_path / "broken.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    jobs, problems = local.read_local_jobs([str(bad)], NOW, STALL)
    assert jobs == [] and len(problems) == 1 and problems[0].startswith("journal %s: " % bad)


# --- a job running in another process ------------------------------------------------------------

WRITER = textwrap.dedent("""
    import os, socket, sys
    sys.path.insert(0, %(root)r)
    from omero_cli_ext.journal import open_journal
    from omero_cli_ext.importing import store
    journal = open_journal(sys.argv[1])
    store.ensure_schema(journal)
    jobs = store.JobStore(journal, "nightly")
    now = store.iso(store.utc_now())
    jobs.create(store.JobRecord(
        job="nightly", created=now, user_name="alice", owner_id=2, paths=("/data",), target="",
        options=(), command="omero import --resume nightly", chunk_size=None, chunk_bytes=None,
        filesets=4, bytes=4000, chunks=1),
        [store.PlannedFileset(idx=i, main="/data/f%%d" %% i, files=("/data/f%%d" %% i,), size=1000)
         for i in range(4)])
    host, pid = socket.gethostname(), os.getpid()
    jobs.register_worker(host, pid, now, 2)
    print("ready", flush=True)
    for i in range(4):
        sys.stdin.readline()
        with journal.transaction():
            jobs.mark([(i, "done", 100 + i, [i], None, None)])
            print("open", flush=True)          # a write transaction is open
            sys.stdin.readline()
        print("committed", flush=True)
    sys.stdin.readline()
    jobs.stop_worker(host, pid, now)
    print("stopped", flush=True)
""") % {"root": ROOT}


def test_status_reads_a_journal_while_its_job_writes_it(tmp_path, monkeypatch):
    monkeypatch.setenv("OMERO_USERDIR", str(tmp_path / "userdir"))
    SimServer(str(tmp_path / "sim")).add_user("alice", [])
    journal = str(tmp_path / "nightly.sqlite")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, journal], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)

    def step(expected):
        writer.stdin.write("\n")
        writer.stdin.flush()
        assert writer.stdout.readline().strip() == expected

    def job():
        rc, out, err = run_cli(str(tmp_path / "sim"), ["status", "imports", "--local-only",
                                                       "--journal", journal, "--json"], user="alice")
        assert rc == 0 and err == ""
        (record,) = [json.loads(line) for line in out.splitlines()
                     if json.loads(line)["type"] == "job"]
        return record

    try:
        assert writer.stdout.readline().strip() == "ready"
        first = job()
        assert (first["state"], first["job_state"], first["filesets_done"],
                first["filesets_total"], first["workers"]) == ("active", "running", 0, 4, 2)
        for i in range(4):
            step("open")
            assert job()["filesets_done"] == i          # the open transaction is not seen
            step("committed")
            assert job()["filesets_done"] == i + 1
        assert job()["bytes_done"] == 4000
        step("stopped")
        final = job()
        assert (final["state"], final["job_state"], final["workers"]) == ("done", "done", 0)
    finally:
        writer.stdin.close()
        assert writer.wait(timeout=60) == 0


def test_jobs_of_the_default_directory_are_read(tmp_path, monkeypatch):
    from omero_cli_ext.importing.progress import default_journal_dir
    monkeypatch.setenv("OMERO_USERDIR", str(tmp_path / "userdir"))
    SimServer(str(tmp_path / "sim")).add_user("alice", [])
    directory = default_journal_dir()
    os.makedirs(directory)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, directory + "/nightly.sqlite"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        rc, out, err = run_cli(str(tmp_path / "sim"), ["status", "imports", "--local-only"],
                               user="alice")
        assert rc == 0, err
        lines = out.splitlines()
        assert lines[1] == "imports: none; local jobs: 1 active"
        row = lines[lines.index("Local jobs") + 2].split("\t")
        assert row[:3] == ["nightly", "active", "0/0/4"] and row[3] == "0 B / 3.9 KiB"
    finally:
        writer.stdin.close()
        writer.kill()
        writer.wait(timeout=60)
