"""`omero status imports` through the real CLI loader on the simulated server: every state
transition (time moved by the test, never slept), the admin filters, --check, --prometheus, bad input."""
from __future__ import annotations

import json
import os
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from omero_cli_ext import server as port_api
from omero_cli_ext.cli import status_run
from omero_cli_ext.status.snapshot import EXIT_CHECK_FAILED, EXIT_CHECK_STALLED, EXIT_CHECK_UNKNOWN
from sim.launcher import run_cli, script_command
from sim.server import SimServer

MINUTE = 60.0


@pytest.fixture
def sim(tmp_path, monkeypatch):
    monkeypatch.setenv("OMERO_USERDIR", str(tmp_path / "userdir"))   # no local journals
    s = SimServer(str(tmp_path / "sim"))
    s.add_group("lab", "rwr---")
    s.add_group("other", "rwr---")
    s.add_user("alice", ["lab", "other"])
    s.add_user("bob", ["lab"])
    s.src = tmp_path / "src"
    s.src.mkdir()
    return s


def files(sim, *names, size=1000):
    paths = []
    for name in names:
        path = sim.src / name
        path.write_bytes(b"x" * size)
        paths.append(str(path))
    return paths


def status(sim, *argv, user="alice"):
    """(rc, {fileset id: import record}, records by type, stderr) of `status imports --json`."""
    rc, out, err = run_cli(sim.root, ["status", "imports", "--json", *argv], user=user)
    records = [json.loads(line) for line in out.splitlines()]
    imports = {r["fileset_id"]: r for r in records if r["type"] == "import"}
    return rc, imports, records, err


def stage_state(sim, fid, *argv, user="alice"):
    rc, imports, _, err = status(sim, *argv, user=user)
    assert rc == 0, err
    return imports[fid]["stage"], imports[fid]["state"]


def test_a_normal_import_step_by_step(sim):
    session = sim.open_session("alice")   # `omero login`, then import and status in that session
    fid = sim.create_import("alice", files(sim, "a.fake", "a.companion"), session=session)
    assert stage_state(sim, fid, "-k", session) == ("uploading", "active")
    sim.advance(MINUTE)
    sim.store_file(fid, 0)
    sim.advance(MINUTE)
    sim.store_file(fid, 1)
    rc, imports, _, _ = status(sim, "-k", session)
    assert (imports[fid]["stage"], imports[fid]["state"], imports[fid]["process"]) == (
        "uploading", "active", "live")
    assert (imports[fid]["bytes"], imports[fid]["files"]) == (2000, 2)
    assert status(sim)[1][fid]["process"] == "not visible"   # another login cannot ask it
    sim.advance(MINUTE)
    sim.verify_upload(fid)
    sim.close_import_process(fid)         # as the Java importer does at once
    assert stage_state(sim, fid) == ("processing", "active")
    for stage in ("pixel data", "thumbnails", "done"):
        sim.advance(MINUTE)
        sim.advance_import(fid)
        assert stage_state(sim, fid) == (stage, "done" if stage == "done" else "active")
    sim.advance(MINUTE)
    sim.advance_import(fid, 2)
    sim.advance(30 * MINUTE)          # done stays done: its jobs stay Submitted forever
    _, imports, _, _ = status(sim)
    assert (imports[fid]["state"], imports[fid]["images"], imports[fid]["steps_done"]) == ("done", 1, 6)
    rc, out, _ = run_cli(sim.root, ["status", "imports", "--check"], user="alice")
    assert (rc, out.split(" - ")[0]) == (0, "OK")


def test_a_client_that_died_mid_upload_stalls_after_the_delay(sim):
    fid = sim.import_fileset("alice", files(sim, "d1.fake", "d2.fake", "d3.fake"),
                             outcome="client-death")
    sim.advance(5 * MINUTE)
    assert stage_state(sim, fid) == ("uploading", "active")
    sim.advance(10 * MINUTE)
    _, imports, _, _ = status(sim)
    assert (imports[fid]["stage"], imports[fid]["state"]) == ("uploading", "stalled")
    assert imports[fid]["reason"] == "no activity for 15m (UploadJob Submitted)"
    assert stage_state(sim, fid, "--stalled-after", "1h") == ("uploading", "active")
    rc, out, err = run_cli(sim.root, ["status", "imports", "--check"], user="alice")
    assert rc == EXIT_CHECK_STALLED == 1
    assert out.startswith("STALLED - ") and "fileset %d (alice" % fid in out and out.count("\n") == 1


def test_a_long_first_step_stays_active_while_its_log_grows_and_is_never_failed(sim):
    """Step 1 records nothing in the database until it ends; the importer closed its process
    right after verifyUpload. Only the import log on disk tells the server works."""
    fid = sim.import_fileset("alice", files(sim, "plate.fake"), steps=0)
    for _ in range(6):                       # an hour and a half of setId on a big plate
        sim.advance(15 * MINUTE)
        sim.grow_import_log(fid)
        rc, imports, _, _ = status(sim)
        assert (imports[fid]["stage"], imports[fid]["state"]) == ("processing", "active")
        assert "import log" in imports[fid]["reason"] and "on disk, grew 0s ago" in imports[fid]["reason"]
    rc, out, _ = run_cli(sim.root, ["status", "imports", "--check"], user="alice")
    assert (rc, out.split(" - ")[0]) == (0, "OK")
    sim.advance(16 * MINUTE)                 # the log stops growing: stalled, not failed
    _, imports, _, _ = status(sim)
    assert (imports[fid]["stage"], imports[fid]["state"]) == ("processing", "stalled")
    sim.advance(24 * 3600)
    assert status(sim, "--since", "7d")[1][fid]["state"] == "stalled"
    sim.advance_import(fid)                  # the step ends: images, the size saved
    assert stage_state(sim, fid, "--since", "7d") == ("pixel data", "active")


def test_growth_read_through_rawfilestore_is_remembered_between_runs(sim):
    """A client that cannot read the repository compares RawFileStore sizes with its last look."""
    sim.set_reported_root("/nonexistent/ManagedRepository")
    fid = sim.import_fileset("alice", files(sim, "plate.fake"), steps=0)
    sim.advance(20 * MINUTE)
    sim.grow_import_log(fid)
    first = status(sim)[1][fid]
    assert first["state"] == "stalled" and first["reason"].endswith("via RawFileStore, first look)")
    sim.advance(5 * MINUTE)
    sim.grow_import_log(fid)                 # grew since the last look: active now
    grown = status(sim)[1][fid]
    assert grown["state"] == "active" and "via RawFileStore, grew 0s ago" in grown["reason"]
    sim.advance(16 * MINUTE)                 # unchanged since that look: stalled after the delay
    assert status(sim)[1][fid]["state"] == "stalled"


def test_a_log_unchanged_since_a_first_look_is_not_growth(sim):
    """A first look through RawFileStore sees a size, not when it was reached: the next look at
    the same size must not count the first look as growth (a stalled import flipping to active
    for another --stalled-after)."""
    sim.set_reported_root("/nonexistent/ManagedRepository")
    fid = sim.import_fileset("alice", files(sim, "plate.fake"), steps=0)
    sim.advance(120 * MINUTE)
    first = status(sim)[1][fid]
    assert first["state"] == "stalled" and first["reason"].endswith("first look)")
    sim.advance(1 * MINUTE)
    again = status(sim)[1][fid]
    assert again["state"] == "stalled", again["reason"]
    assert again["log_grew"] is None


def test_check_with_json_is_one_record(sim):
    sim.import_fileset("alice", files(sim, "ok.fake"))
    rc, out, err = run_cli(sim.root, ["status", "imports", "--check", "--json"], user="alice")
    (record,) = [json.loads(line) for line in out.splitlines()]
    assert (rc, record["type"], record["code"]) == (0, "check", 0)
    assert record["line"].startswith("OK - imports: 1 done")
    assert record["imports_by_state"]["done"] == 1


@pytest.mark.parametrize("argv, rc", [(["--json"], 0), ([], 0), (["--check", "--json"], EXIT_CHECK_FAILED),
                                      (["--check"], EXIT_CHECK_FAILED)])
def test_a_reader_gone_before_the_first_line_ends_the_command_cleanly(sim, argv, rc):
    """`status imports --json | head -1`: the reader closed the pipe; no traceback, and --check
    still answers with its exit code."""
    sim.import_fileset("alice", files(sim, "ok.fake"))
    sim.import_fileset("alice", files(sim, "bad.fake"), outcome="server-failure")
    reader, writer = os.pipe()
    os.close(reader)                      # the reader is gone before anything is written
    try:
        child = subprocess.run(script_command(sim.root, ["status", "imports", *argv], "alice"),
                               stdout=writer, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(writer)
    assert "Traceback" not in child.stderr and "Broken pipe" not in child.stderr, child.stderr
    assert child.returncode == rc


def test_a_server_side_failure_is_failed_at_once(sim):
    fid = sim.import_fileset("alice", files(sim, "ghost.fake"), outcome="server-failure")
    _, imports, _, _ = status(sim)
    assert (imports[fid]["stage"], imports[fid]["state"], imports[fid]["images"]) == (
        "failed", "failed", 0)
    assert "ghost" in imports[fid]["reason"]
    rc, out, _ = run_cli(sim.root, ["status", "imports", "--check"], user="alice")
    assert rc == EXIT_CHECK_FAILED == 2 and out.startswith("FAILED - ") and "fileset %d" % fid in out


def test_an_import_queued_behind_another_then_its_turn(sim):
    first = sim.import_fileset("alice", files(sim, "first.fake"), steps=1)
    sim.advance(MINUTE)
    second = sim.create_import("alice", files(sim, "second.fake"))
    sim.advance(MINUTE)
    _, imports, _, _ = status(sim)
    assert (imports[first]["state"], imports[second]["state"]) == ("active", "queued")
    assert imports[second]["reason"] == "not started, another import of alice is active"
    sim.advance(20 * MINUTE)          # nothing active any more: waiting that long is stalled
    _, imports, _, _ = status(sim)
    assert (imports[first]["state"], imports[second]["state"]) == ("stalled", "stalled")
    sim.advance_import(first, 4)
    sim.store_file(second, 0)
    _, imports, _, _ = status(sim)
    assert (imports[first]["state"], imports[second]["state"]) == ("done", "active")


def test_another_users_import_does_not_queue_mine(sim):
    sim.import_fileset("bob", files(sim, "bob.fake"), steps=1)
    sim.advance(MINUTE)
    mine = sim.create_import("alice", files(sim, "mine.fake"))
    assert stage_state(sim, mine) == ("uploading", "active")


def test_stalled_in_a_server_step_by_moving_the_clock(sim):
    fid = sim.import_fileset("alice", files(sim, "slow.fake"), steps=2)
    sim.advance(14 * MINUTE)
    assert stage_state(sim, fid) == ("thumbnails", "active")
    sim.advance(MINUTE)
    _, imports, records, _ = status(sim)
    assert (imports[fid]["state"], imports[fid]["idle_seconds"]) == ("stalled", 900.0)
    (summary,) = [r for r in records if r["type"] == "summary"]
    assert summary["imports_by_state"]["stalled"] == 1
    assert summary["oldest_activity_age_seconds"] == 900.0 and summary["bytes_in_flight"] == 1000


def test_since_bounds_the_finished_imports_listed(sim):
    fid = sim.import_fileset("alice", files(sim, "old.fake"))
    sim.advance(25 * 3600)
    assert fid not in status(sim)[1]
    assert status(sim, "--since", "2d")[1][fid]["state"] == "done"


def test_json_keys_are_the_documented_ones(sim):
    sim.import_fileset("alice", files(sim, "k.fake"))
    _, _, records, _ = status(sim)
    assert [r["type"] for r in records] == ["import", "summary"]
    assert list(records[0]) == ["type", *status_run.views.IMPORT_KEYS]
    assert list(records[1]) == ["type", "server_time", "local_time", "stalled_after_seconds",
                                "imports_by_state", "jobs_by_state", "bytes_in_flight",
                                "oldest_activity_age_seconds", "unlisted_processes",
                                "other_sessions_processes", "problems"]


def test_plain_text_when_not_a_terminal(sim):
    fid = sim.import_fileset("alice", files(sim, "p.fake"), steps=1)
    rc, out, err = run_cli(sim.root, ["status", "imports"], user="alice")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("omero status imports: server time 2026-11-27 ")
    assert lines[1] == "imports: 1 active; local jobs: none"
    header = lines.index("Fileset\tOwner/Group\tTemplate prefix\tFiles\tSize\tStage\tState\t"
                         "Started\tLast activity\tWhy")
    row = lines[header + 1].split("\t")
    assert row[0] == str(fid) and row[1] == "alice/lab" and row[5:7] == ["pixel data", "active"]
    assert "\x1b[" not in out


# --- who sees what -------------------------------------------------------------------------------

def test_users_see_their_own_imports_and_admins_choose(sim):
    mine = sim.import_fileset("alice", files(sim, "a.fake"))
    bobs = sim.import_fileset("bob", files(sim, "b.fake"))
    assert set(status(sim)[1]) == {mine}
    assert set(status(sim, user="root")[1]) == set()
    assert set(status(sim, "--all-users", user="root")[1]) == {mine, bobs}
    assert set(status(sim, "--owner", "bob", user="root")[1]) == {bobs}
    assert status(sim, "--all-users", user="root")[1][bobs]["process"] == "not visible"


@pytest.mark.parametrize("flags", [["--all-users"], ["--owner", "bob"]])
def test_admin_filters_are_refused_to_non_admins(sim, flags):
    sim.import_fileset("bob", files(sim, "b.fake"))
    rc, out, err = run_cli(sim.root, ["status", "imports", *flags], user="alice")
    assert rc == 21 and out == ""
    assert "is for administrators; alice is not one" in err


def test_an_unknown_owner_is_not_found(sim):
    rc, out, err = run_cli(sim.root, ["status", "imports", "--owner", "nobody"], user="root")
    assert (rc, out) == (22, "") and "no user named nobody" in err


@pytest.mark.parametrize("argv, message", [
    (["--in-group", "nowhere"], "no group named nowhere"),
    (["--owner", "nobody"], "no user named nobody"),
    (["--journal", "/nonexistent/job.sqlite"], "no journal /nonexistent/job.sqlite"),
])
def test_unknown_filters_are_errors_and_unknown_for_check(sim, argv, message):
    """Never OK: a check watching a misspelt group or journal would stay green forever."""
    rc, out, err = run_cli(sim.root, ["status", "imports", *argv], user="root")
    assert (rc, out) == (22, "") and message in err
    rc, out, err = run_cli(sim.root, ["status", "imports", "--check", *argv], user="root")
    assert (rc, out) == (EXIT_CHECK_UNKNOWN, "UNKNOWN - %s\n" % message)


def test_check_refuses_watch_and_answers_unknown_for_a_refusal(sim):
    rc, out, _ = run_cli(sim.root, ["status", "imports", "--check", "--watch"], user="alice")
    assert rc == EXIT_CHECK_UNKNOWN and out.startswith("UNKNOWN - --watch and --check exclude")
    rc, out, _ = run_cli(sim.root, ["status", "imports", "--check", "--all-users"], user="alice")
    assert rc == EXIT_CHECK_UNKNOWN and out.startswith("UNKNOWN - --all-users is for administrators")
    rc, out, _ = run_cli(sim.root, ["status", "imports", "--check", "--json", "--in-group", "x"],
                         user="alice")
    assert rc == EXIT_CHECK_UNKNOWN and [json.loads(line) for line in out.splitlines()] == [
        {"type": "check", "code": 3, "line": "UNKNOWN - no group named x"}]


@pytest.mark.parametrize("argv, message", [
    (["--stalled-after", "15min"], "argument --stalled-after: not a duration"),
    (["--since", "abc", "--json"], "argument --since: not a duration"),
    (["--stalled-afer", "15m"], "unrecognized arguments: --stalled-afer 15m"),
])
def test_check_answers_unknown_for_arguments_argparse_refuses(sim, argv, message):
    """A Nagios check with a typo in its command line is UNKNOWN (3), never CRITICAL (2)."""
    rc, out, err = run_cli(sim.root, ["status", "imports", *argv], user="alice")
    assert (rc, out) == (2, "") and message in err
    rc, out, err = run_cli(sim.root, ["status", "imports", "--check", *argv], user="alice")
    assert rc == EXIT_CHECK_UNKNOWN and len(out.splitlines()) == 1 and "usage" not in out
    line = json.loads(out)["line"] if "--json" in argv else out.rstrip("\n")
    assert line.startswith("UNKNOWN - ") and message in line


def test_in_group_filters_by_group_name(sim):
    in_lab = sim.import_fileset("alice", files(sim, "l.fake"), group="lab")
    in_other = sim.import_fileset("alice", files(sim, "o.fake"), group="other")
    assert set(status(sim, "--in-group", "other")[1]) == {in_other}
    assert set(status(sim)[1]) == {in_lab, in_other}


def test_round_trips_do_not_grow_with_the_number_of_imports(sim):
    def trips(*argv):
        sim.reset_round_trips()
        assert status(sim, *argv)[0] == 0
        return sim.round_trips
    sim.import_fileset("alice", files(sim, "one.fake"))
    few = trips()
    for i in range(40):
        sim.import_fileset("alice", files(sim, "many%d.fake" % i))
    # user, clock, filesets (the id query, then 1 page: filesets, transfers, entry counts, one
    # page of entries, image counts), activity (1 page: 8 queries and the logs' updates),
    # listImports (every process since the server started: 41 of other sessions, never asked), close
    assert trips() == few == 19
    # imports in a server step: one call for the repository root, their logs are read on disk
    for i in range(5):
        sim.import_fileset("alice", files(sim, "running%d.fake" % i), steps=i % 4)
    assert trips() == few + 1
    # a repository not readable here: RawFileStore.size of each log in a step (4 of them), one
    # store for all: 2 + 2 per log
    sim.set_reported_root("/nonexistent/ManagedRepository")
    assert trips() == few + 1 + 2 + 2 * 4
    # this session's own processes: one pipelined getHandle round trip, one getRequest round trip
    # (and their logs, in the processing stage, three more looks)
    session = sim.open_session("alice")
    for i in range(3):
        own = sim.create_import("alice", files(sim, "own%d.fake" % i), session=session)
        sim.store_file(own, 0)
        sim.verify_upload(own)            # a client that does not close its process
    assert trips("-k", session) == few + 1 + 2 + 2 * (4 + 3) + 2


def test_log_looks_through_rawfilestore_are_bounded(sim, monkeypatch):
    from omero_cli_ext.status import logwatch
    monkeypatch.setattr(logwatch, "MAX_SERVER_PROBES", 3)
    sim.set_reported_root("/nonexistent/ManagedRepository")
    for i in range(6):
        sim.import_fileset("alice", files(sim, "s%d.fake" % i), steps=0)
    sim.reset_round_trips()
    _, imports, _, _ = status(sim)
    assert sim.round_trips == 19 + 1 + 2 + 2 * 3
    looked = sorted(f for f, r in imports.items() if "via RawFileStore" in r["reason"])
    assert looked == sorted(imports)[-3:]          # the newest


def test_local_only_never_contacts_the_server(sim):
    sim.import_fileset("alice", files(sim, "x.fake"))
    sim.reset_round_trips()
    rc, imports, records, err = status(sim, "--local-only")
    assert (rc, imports, sim.round_trips) == (0, {}, 0), err
    assert records[-1]["server_time"] is None


# --- server unreachable ---------------------------------------------------------------------------

@pytest.fixture
def unreachable(monkeypatch):
    def refuse(self, user, group=None):
        raise port_api.ServerError("cannot connect to sim: connection refused")
    monkeypatch.setattr(SimServer, "port", refuse)


def test_an_unreachable_server_is_exit_20(sim, unreachable):
    rc, out, err = run_cli(sim.root, ["status", "imports"], user="alice")
    assert (rc, out) == (20, "") and "server error: cannot connect to sim" in err


def test_check_reports_an_unreachable_server_as_unknown(sim, unreachable):
    rc, out, err = run_cli(sim.root, ["status", "imports", "--check"], user="alice")
    assert rc == EXIT_CHECK_UNKNOWN == 3
    assert out.startswith("UNKNOWN - ") and "server: cannot connect to sim" in out


def test_prometheus_records_an_unreachable_server_as_down(sim, unreachable, tmp_path):
    target = tmp_path / "omero.prom"
    rc, out, err = run_cli(sim.root, ["status", "imports", "--prometheus", str(target)], user="alice")
    assert rc == 20 and "server error" in err
    assert metric_values(target.read_text())["omero_status_server_up"] == 0


# --- prometheus -----------------------------------------------------------------------------------

def metric_values(text: str) -> dict:
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.name + ("{%s}" % ",".join("%s=%s" % kv for kv in sorted(sample.labels.items()))
                                 if sample.labels else "")
            values[key] = sample.value
    return values


def test_prometheus_metrics_are_written_atomically(sim, tmp_path):
    sim.import_fileset("alice", files(sim, "done.fake"))
    sim.import_fileset("alice", files(sim, "busy.fake", size=4096), steps=1)
    sim.import_fileset("alice", files(sim, "ghost.fake"), outcome="server-failure")
    sim.advance(5 * MINUTE)
    target = tmp_path / "metrics" / "omero.prom"
    target.parent.mkdir()
    rc, out, err = run_cli(sim.root, ["status", "imports", "--prometheus", str(target)], user="alice")
    assert (rc, out) == (0, ""), err
    values = metric_values(target.read_text())
    assert values["omero_status_imports{state=active}"] == 1
    assert values["omero_status_imports{state=done}"] == 1
    assert values["omero_status_imports{state=failed}"] == 1
    assert values["omero_status_imports{state=stalled}"] == 0
    assert values["omero_status_import_bytes_in_flight"] == 4096
    assert values["omero_status_import_oldest_activity_age_seconds"] == 300
    assert values["omero_status_server_up"] == 1
    assert os.listdir(target.parent) == ["omero.prom"]     # no temporary file left


def test_prometheus_into_a_missing_directory_is_refused_before_anything(sim, tmp_path):
    sim.reset_round_trips()
    target = tmp_path / "missing" / "omero.prom"
    rc, out, err = run_cli(sim.root, ["status", "imports", "--prometheus", str(target)], user="alice")
    assert (rc, out) == (13, "") and "cannot write metrics to" in err and "no directory" in err
    assert not (tmp_path / "missing").exists() and sim.round_trips == 0


# --- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--all-users", "--owner", "bob"], "--all-users and --owner exclude each other"),
    (["--local-only", "--all-users"], "do not go with --local-only"),
    (["--watch", "0"], "--watch SECONDS must be positive"),
    (["--since", "0"], "--since must be positive"),
    (["--stalled-after=-5m"], "--stalled-after must be positive"),
    (["--since", "yesterday"], "not a duration"),
])
def test_bad_arguments_are_refused_with_rc_2_and_change_nothing(sim, tmp_path, argv, message):
    target = tmp_path / "omero.prom"
    sim.reset_round_trips()
    rc, out, err = run_cli(sim.root, ["status", "imports", "--prometheus", str(target), *argv],
                           user="root")
    assert (rc, out) == (2, "") and message in err
    assert not target.exists() and sim.round_trips == 0


def test_help_names_every_exit_code_of_the_manual(sim):
    """`-h` is what a script writer reads: every code of docs/status.md's two tables is in it."""
    import re
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                           "status.md"), encoding="utf-8") as stream:
        manual = stream.read()
    section = manual[manual.index("## Monitoring"):manual.index("## Prometheus")]
    documented = {int(code) for cell in re.findall(r"^\| ([\d, ]+) \|", section, re.M)
                  for code in cell.split(",")}
    assert documented == {0, 1, 2, 3, 13, 20, 21, 22, 130}
    rc, out, _ = run_cli(sim.root, ["status", "imports", "-h"], user="alice")
    codes = out[out.index("Exit codes"):out.index("Optional Arguments")]
    assert rc == 0 and {int(code) for code in re.findall(r"\b(\d+) ", codes)} == documented


@pytest.mark.parametrize("argv, rc, out_lines", [
    ([], 130, []), (["--json"], 130, []), (["--check"], EXIT_CHECK_UNKNOWN, ["UNKNOWN - interrupted"]),
    (["--watch", "5"], 0, []),
])
def test_ctrl_c_while_the_server_is_read_ends_cleanly(sim, monkeypatch, argv, rc, out_lines):
    """Ctrl-C during a slow server read: no traceback; a one-shot run is not a success (130, as a
    shell reports SIGINT), a check is UNKNOWN, --watch leaves with 0."""
    def interrupted(*_, **__):
        raise KeyboardInterrupt
    monkeypatch.setattr(status_run, "read_server", interrupted)
    try:
        got, out, err = run_cli(sim.root, ["status", "imports", *argv], user="alice")
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped the command (a traceback for the user)")
    assert (got, out.splitlines()) == (rc, out_lines)
    assert "Traceback" not in err and ("interrupted" in err) == (rc == 130)
