"""`omero import --resume`: bad input, pipelines and the smaller defects (each a decided, documented
behaviour): targets, bounds, --results, --retry-failed, --rescan, vanished files, a full journal
disk, `--json | head -1`, --fetch-jars, importer output and locale."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from import_helpers import driver_env, fake_images, imp, import_world
from sim.launcher import SCRIPT

from omero_cli_ext.importing import importer, progress, results, store
from omero_cli_ext.journal import JournalError, open_journal


@pytest.fixture
def world(tmp_path, monkeypatch):
    sim, src = import_world(tmp_path, monkeypatch, users=("alice",))
    fake_images(src, 4, name="img{}.fake", size=10)
    return sim, src, tmp_path


def filesets(sim):
    return sim.query("SELECT count(*) FROM Fileset")[0][0]


@pytest.mark.parametrize("argv, rc, text", [
    (["-T", "foo"], 10, "not an import target: foo"),
    (["-T", "Project:1"], 10, "not an import target: Project:1"),
    (["-T", "Dataset:id:x"], 10, "not an import target"),
    (["-d", "99999999999999999999999"], 10, "not an import target"),
    (["-T", "Screen:id:9223372036854775808"], 10, "not an import target"),
    (["-T", "Dataset:\u00b2"], 10, "not an import target: Dataset:\u00b2"),
    (["--dry-run", "-d", "999"], 22, "Dataset:999 not found"),
    (["--workers", "500"], 10, "more than 32"),
    (["--importer-timeout", "soon"], 10, "not a duration"),
    (["--results", "--clean-ghosts"], 10, "--results only re-prints"),
    (["--results"], 13, "unknown job"),
])
def test_bad_input_is_refused_before_anything_is_written(world, argv, rc, text):
    sim, src, tmp_path = world
    got, out, err = imp(sim, *argv, str(src))
    assert (got, text in err) == (rc, True), err
    assert filesets(sim) == 0
    assert not (tmp_path / "userdir" / progress.JOURNAL_SUBDIR).exists()



@pytest.mark.parametrize("argv", [["--dry-run"], ["--json"], []])
def test_ctrl_c_while_the_importer_lists_the_files_ends_with_exit_4(world, monkeypatch, argv):
    """Ctrl-C during the listing (minutes for a big tree, the likeliest moment to press it): exit 4,
    one line, no traceback, no journal, nothing on the server."""
    sim, src, tmp_path = world
    from omero_cli_ext.importing import job

    def interrupted(lines):
        raise KeyboardInterrupt
    monkeypatch.setattr(job, "parse_groups", interrupted)
    try:
        rc, out, err = imp(sim, *argv, str(src))
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped the command (a traceback for the user)")
    assert (rc, out) == (4, "") and len(err.splitlines()) == 1 and "interrupted" in err, err
    assert filesets(sim) == 0
    assert not (tmp_path / "userdir" / progress.JOURNAL_SUBDIR).exists()


def test_retry_failed_imports_the_failed_filesets_again(world, monkeypatch):
    sim, src, _ = world
    monkeypatch.setenv("OMERO_CLI_EXT_SIM_FAIL_PATTERN", "img2.fake")
    assert imp(sim, "--clean-ghosts", str(src))[0] == 3
    monkeypatch.delenv("OMERO_CLI_EXT_SIM_FAIL_PATTERN")
    assert imp(sim, str(src))[0] == 3              # not retried without being asked
    rc, out, err = imp(sim, "--retry-failed", str(src))
    assert rc == 0, err
    assert "1 failed filesets planned again" in out and filesets(sim) == 4


def test_files_added_later_are_imported_only_with_rescan(world):
    sim, src, _ = world
    assert imp(sim, str(src))[0] == 0
    (src / "late.fake").write_bytes(b"late")
    rc, out, _ = imp(sim, str(src))
    assert rc == 0 and filesets(sim) == 4
    rc, out, err = imp(sim, "--rescan", str(src))
    assert rc == 0, err
    assert "1 new filesets found by --rescan" in out and "5/5 filesets done" in out
    assert filesets(sim) == 5
    assert imp(sim, "--rescan", str(src))[0] == 0 and filesets(sim) == 5


def test_files_gone_since_the_plan_fail_instead_of_retrying_forever(world, monkeypatch):
    sim, src, _ = world
    monkeypatch.setenv("OMERO_CLI_EXT_SIM_CRASH_AFTER", "0")    # planned, nothing imported
    assert imp(sim, "--retries", "0", str(src))[0] == 4
    monkeypatch.delenv("OMERO_CLI_EXT_SIM_CRASH_AFTER")
    for path in src.iterdir():
        path.unlink()
    sim.advance(700)                                            # the half upload is dead
    rc, out, err = imp(sim, "--json", "--clean-ghosts", str(src))
    assert rc == 3, err
    failed = [r for r in map(json.loads, out.splitlines())
              if r["type"] == "fileset" and r["state"] == "failed"]
    assert len(failed) == 4 and all("No imports found" in f["message"] for f in failed)
    assert "; retry" not in err and filesets(sim) == 0


def test_a_full_journal_disk_stops_cleanly_with_exit_16(world, monkeypatch):
    sim, src, _ = world

    def full(self, results):
        raise JournalError("cannot write the journal x: database or disk is full")
    monkeypatch.setattr(store.JobStore, "add_results", full)
    rc, out, err = imp(sim, str(src))
    assert rc == 16 and "database or disk is full" in err and "Traceback" not in err


def test_sqlite_full_is_a_journal_error(tmp_path):
    journal = open_journal(str(tmp_path / "j.sqlite"))
    try:
        journal.execute("CREATE TABLE t (x TEXT)")
        journal.execute("PRAGMA max_page_count = 3")
        with pytest.raises(JournalError, match="database or disk is full"):
            for _ in range(100):
                journal.execute("INSERT INTO t VALUES (?)", ("x" * 4000,))
    finally:
        journal.close()


def test_json_into_head_stops_like_ctrl_c_without_a_traceback(world):
    sim, src, tmp_path = world
    for i in range(4, 40):
        (src / f"img{i}.fake").write_bytes(b"y")
    env = driver_env(tmp_path, SECONDS_PER_FILESET="0.05")
    head = subprocess.run(
        f"{sys.executable} {SCRIPT} --sim-root {sim.root} --sim-user alice import --resume "
        f"--json --chunk-size 5 {src} 2>{tmp_path}/err | head -1; exit ${{PIPESTATUS[0]}}",
        shell=True, executable="/bin/bash", env=env, capture_output=True, text=True, timeout=120)
    err = (tmp_path / "err").read_text()
    assert json.loads(head.stdout)["type"] == "job"
    assert head.returncode == 4, err
    assert "Traceback" not in err and "rerun to resume" in err
    rc, out, err = imp(sim, str(src))
    assert rc == 0, err
    per_path = sim.query("SELECT count(*) FROM FilesetEntry GROUP BY clientPath")
    assert len(per_path) == 40 and {n for (n,) in per_path} == {1}


def test_fetch_jars_with_resume_is_the_builtin_download(world, monkeypatch):
    sim, src, _ = world
    from omero_cli_ext.cli.import_ext import ImportControl
    fetched = []
    monkeypatch.setattr(ImportControl, "download_omero_java",
                        lambda self, version: fetched.append(version), raising=False)
    rc, out, err = imp(sim, "--fetch-jars", "latest")
    assert rc == 0 and fetched == ["latest"], err


def test_importer_failures_name_missing_libraries_and_import_logs():
    reader = results.LogReader()
    events = []
    for line in ["2024 INFO  ...LoggingImportMonitor  - IMPORT_STARTED Logfile: 4711",
                 "2024 ERROR ...ErrorHandler  - MISSING_LIBRARY: /d/a.nd2",
                 "java.lang.UnsatisfiedLinkError: no nd2 in java.library.path",
                 "No imports found"]:
        events += reader.feed(line)
    events += reader.close()
    assert [(e.kind, e.log_id, e.path) for e in events] == [
        ("started", 4711, ""), ("failed", 0, "/d/a.nd2"), ("nothing", 0, "")]
    assert "MISSING_LIBRARY" in events[1].message and "UnsatisfiedLinkError" in events[1].message


@pytest.mark.parametrize("environ, expected", [
    ({"LANG": "C"}, "C.UTF-8"),
    ({}, "C.UTF-8"),
    ({"LC_ALL": "POSIX", "LANG": "en_US.UTF-8"}, "C.UTF-8"),
    ({"LANG": "de_DE.utf8"}, None),
    ({"LC_ALL": "en_US.UTF-8"}, "en_US.UTF-8"),
])
def test_the_importer_gets_a_utf8_locale(environ, expected):
    env = importer.utf8_environment(environ)
    assert env.get("LC_ALL") == expected
    assert {"-Dfile.encoding=UTF-8", "-Dsun.jnu.encoding=UTF-8"} <= set(importer.JAVA_UTF8)


def test_an_upload_failure_of_a_used_file_fails_its_fileset(world, monkeypatch):
    sim, src, _ = world
    (src / "img1.fake.ini").write_text("[companion]")
    monkeypatch.setenv("OMERO_CLI_EXT_SIM_UPLOAD_FAIL_PATTERN", "img1.fake.ini")
    rc, out, err = imp(sim, "--json", "--clean-ghosts", str(src))
    assert rc == 3, err
    failed = [r for r in map(json.loads, out.splitlines())
              if r["type"] == "fileset" and r["state"] == "failed"]
    assert [f["path"] for f in failed] == [str(src / "img1.fake")]
    assert "FILE_EXCEPTION" in failed[0]["message"] and "deleted" in failed[0]["message"]
    assert filesets(sim) == 3          # its half upload was the job's and is gone


def test_help_names_every_exit_code_of_the_manual():
    """`omero import -h` and docs/import.md's table name the same --resume exit codes."""
    import os
    import re
    from omero_cli_ext.cli.import_ext import RESUME_HELP
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                           "import.md"), encoding="utf-8") as stream:
        manual = stream.read()
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", manual, re.M)}
    documented |= {20, 21, 22}   # docs/index.md's codes shared by every command
    text = RESUME_HELP[RESUME_HELP.index("Exit codes"):]
    named = {int(code) for code in re.findall(r"\b(\d+) ", text)} | {20, 21, 22}
    assert "20-22 server errors" in text and named == documented
