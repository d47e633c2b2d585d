"""`omero import --resume` against the simulated server and its fake importer (in-process CLI)."""
from __future__ import annotations

import json
import os
import sqlite3

import pytest

from import_helpers import driver_command, fake_images, imp, import_world

from omero_cli_ext.importing import progress


@pytest.fixture
def world(tmp_path, monkeypatch):
    sim, src = import_world(tmp_path, monkeypatch)
    fake_images(src, 12)
    plate = src / "plate1"
    plate.mkdir()
    (plate / "p.screen").write_text("screen")
    for w in range(3):
        (plate / f"w{w}.tif").write_text("well")
    (src / "notes.txt").write_text("not importable")
    return sim, str(src), tmp_path


def fileset_paths(sim):
    """clientPath of every fileset's first entry -> number of filesets using it."""
    rows = sim.query("SELECT fe.clientPath FROM FilesetEntry fe WHERE fe.id IN "
                     "(SELECT min(id) FROM FilesetEntry GROUP BY fileset)")
    counts = {}
    for (path,) in rows:
        counts[path] = counts.get(path, 0) + 1
    return counts


def ghosts(sim):
    return sim.query("SELECT f.id FROM Fileset f WHERE NOT EXISTS "
                     "(SELECT 1 FROM Image i WHERE i.fileset = f.id)")


def journal_rows(tmp_path):
    [path] = progress.find_journals(str(tmp_path / "userdir" / progress.JOURNAL_SUBDIR))
    with sqlite3.connect(path) as db:
        return path, db.execute("SELECT main, state, fileset_id, images FROM import_fileset "
                                "ORDER BY idx").fetchall()


def assert_journal_matches_server(sim, tmp_path):
    _, rows = journal_rows(tmp_path)
    server = {fid: path for fid, path in sim.query(
        "SELECT fe.fileset, fe.clientPath FROM FilesetEntry fe WHERE fe.id IN "
        "(SELECT min(id) FROM FilesetEntry GROUP BY fileset)")}
    for main, state, fid, _ in rows:
        assert state == "done", (main, state)
        assert server[fid] == main.lstrip("/")
    assert len(server) == len(rows)


def test_imports_every_fileset_once_in_chunks_with_json_results(world):
    sim, src, tmp_path = world
    did = sim.add_dataset("d", "alice")
    rc, out, err = imp(sim, "--json", "--chunk-size", "5", "-d", str(did), src)
    assert rc == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    results = [r for r in records if r["type"] == "fileset"]
    assert len(results) == 13 and all(r["state"] == "done" and r["images"] for r in results)
    plate = next(r for r in results if r["path"].endswith("p.screen"))
    assert plate["plates"] and len(plate["images"]) == 3
    summary = records[-1]
    assert (summary["type"], summary["done"], summary["exit_code"]) == ("summary", 13, 0)
    assert set(fileset_paths(sim).values()) == {1} and len(fileset_paths(sim)) == 13
    linked = sim.query("SELECT count(*) FROM DatasetImageLink WHERE parent = ?", (did,))[0][0]
    assert linked == 12
    assert_journal_matches_server(sim, tmp_path)
    # rerunning the finished job imports nothing
    rc, out, _ = imp(sim, "--chunk-size", "5", "-d", str(did), src)
    assert rc == 0 and "13/13 filesets done" in out
    assert len(fileset_paths(sim)) == 13


@pytest.mark.parametrize("workers", [1, 2])
def test_importers_running_at_once_never_exceed_workers(world, monkeypatch, workers):
    """The next chunk's importer starts before the ended chunk's bookkeeping, never before the
    ended importer has exited."""
    import threading

    from sim import launcher
    sim, src, tmp_path = world
    lock, running, peak = threading.Lock(), [0], [0]
    real_fake_spawn = launcher.fake_spawn

    def counting_fake_spawn(*args, **kwargs):
        spawn = real_fake_spawn(*args, **kwargs)

        def counted(argv, **popen_kwargs):
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            process = spawn(argv, **popen_kwargs)
            real_wait, waited = process.wait, []

            def wait(timeout=None):
                rc = real_wait(timeout)
                with lock:
                    if not waited:
                        waited.append(rc)
                        running[0] -= 1
                return rc
            process.wait = wait
            return process
        return counted

    monkeypatch.setattr(launcher, "fake_spawn", counting_fake_spawn)
    rc, _, err = imp(sim, "--chunk-size", "2", "--workers", str(workers), src)
    assert rc == 0, err
    assert peak[0] == workers and running[0] == 0
    assert set(fileset_paths(sim).values()) == {1} and len(fileset_paths(sim)) == 13
    assert_journal_matches_server(sim, tmp_path)


def test_progress_reads_the_journal_of_a_finished_job(world):
    sim, src, tmp_path = world
    assert imp(sim, "--chunk-size", "4", src)[0] == 0
    path, _ = journal_rows(tmp_path)
    [job] = progress.read_jobs(path)
    assert (job.state, job.filesets_total, job.filesets_done, job.filesets_failed) == \
        ("done", 13, 13, 0)
    assert job.bytes_done == job.bytes_total > 0 and job.workers == 0


def test_importer_crash_leaves_a_half_upload_that_clean_ghosts_deletes_and_reimports(
        world, monkeypatch):
    sim, src, tmp_path = world
    monkeypatch.setenv("OMERO_CLI_EXT_SIM_CRASH_AFTER", "2")
    rc, out, err = imp(sim, "--chunk-size", "5", "--retries", "0", src)
    assert rc == 4, err
    assert "rerun to resume" in err and "omero import --resume --job src-" in err
    assert len(ghosts(sim)) == 3              # each of the 3 chunks died on its third fileset
    monkeypatch.delenv("OMERO_CLI_EXT_SIM_CRASH_AFTER")
    rc, out, err = imp(sim, "--chunk-size", "5", "--clean-ghosts", src)
    assert rc == 4, err                       # quiet for less than --lease: maybe still uploading
    assert "upload may still be in progress" in err and len(ghosts(sim)) == 3
    sim.advance(601)                          # the server's clock passes the lease
    rc, out, err = imp(sim, "--chunk-size", "5", src)
    assert rc == 5, err                       # the half uploads are reported, not touched
    assert "--clean-ghosts" in err and len(ghosts(sim)) == 3
    rc, out, err = imp(sim, "--chunk-size", "5", "--clean-ghosts", src)
    assert rc == 0, err
    assert ghosts(sim) == []
    assert set(fileset_paths(sim).values()) == {1} and len(fileset_paths(sim)) == 13
    assert_journal_matches_server(sim, tmp_path)


def test_failed_filesets_are_recorded_with_the_message_and_not_retried(world, monkeypatch):
    sim, src, tmp_path = world
    monkeypatch.setenv("OMERO_CLI_EXT_SIM_FAIL_PATTERN", "img003.fake")
    rc, out, err = imp(sim, "--json", "--clean-ghosts", src)
    assert rc == 3, err
    failed = [json.loads(line) for line in out.splitlines()
              if json.loads(line).get("state") == "failed"]
    assert [f["path"].rsplit("/", 1)[1] for f in failed] == ["img003.fake"]
    assert "INTERNAL_EXCEPTION" in failed[0]["message"] and "deleted" in failed[0]["message"]
    assert ghosts(sim) == []
    before = len(fileset_paths(sim))
    monkeypatch.delenv("OMERO_CLI_EXT_SIM_FAIL_PATTERN")
    assert imp(sim, src)[0] == 3
    assert len(fileset_paths(sim)) == before == 12


def test_dry_run_shows_chunks_and_writes_nothing(world):
    sim, src, tmp_path = world
    rc, out, err = imp(sim, "--dry-run", "--chunk-size", "5", src)
    assert rc == 0, err
    assert "13 filesets in 3 chunks" in out
    assert not (tmp_path / "userdir").exists()
    assert sim.query("SELECT count(*) FROM Fileset")[0][0] == 0


# --- bad input: message, exit code, nothing on disk, no server objects --------------------------

def assert_untouched(sim, tmp_path):
    assert sim.query("SELECT count(*) FROM Fileset")[0][0] == 0
    assert not (tmp_path / "userdir").exists()


def test_missing_path(world):
    sim, src, tmp_path = world
    rc, _, err = imp(sim, src, os.path.join(src, "nope"))
    assert rc == 10 and "no such file or directory" in err and "nope" in err
    assert_untouched(sim, tmp_path)


def test_unreadable_path(world):
    """As root the check runs the command as `nobody` (setpriv): root itself reads everything."""
    sim, src, tmp_path = world
    os.chmod(os.path.join(src, "img000.fake"), 0)
    if os.geteuid() != 0:
        rc, _, err = imp(sim, os.path.join(src, "img000.fake"))
    else:
        rc, err = import_as_nobody(sim, tmp_path, os.path.join(src, "img000.fake"))
    assert rc == 10 and "img000.fake (permission denied)" in err, err
    assert "Traceback" not in err
    assert_untouched(sim, tmp_path)


def import_as_nobody(sim, tmp_path, *paths):
    import subprocess
    from unprivileged import nobody_command, require_unprivileged_python
    require_unprivileged_python()
    for directory in tmp_path.parents:
        if str(directory) != "/":
            os.chmod(directory, os.stat(directory).st_mode | 0o711)
    os.chmod(tmp_path, 0o777)   # the OMERO user directory (temp files) is created in here
    for directory, _, files in os.walk(sim.root):
        os.chmod(directory, 0o777)
        for name in files:
            os.chmod(os.path.join(directory, name), 0o666)
    # omero's own temp directory (created by any CLI start) kept apart from the journal's user dir
    env = dict(os.environ, HOME=str(tmp_path), OMERO_TMPDIR=str(tmp_path / "omero-tmp"))
    done = subprocess.run(nobody_command(driver_command(sim.root, *paths)),
                          capture_output=True, text=True, env=env, timeout=120)
    return done.returncode, done.stderr


def test_nothing_importable(world):
    sim, src, tmp_path = world
    rc, _, err = imp(sim, os.path.join(src, "notes.txt"))
    assert rc == 11 and "no importable files" in err
    assert_untouched(sim, tmp_path)


def test_target_missing_or_not_writable(world):
    sim, src, tmp_path = world
    rc, _, err = imp(sim, "-d", "999", src)
    assert rc == 22 and "Dataset:999 not found" in err
    theirs = sim.add_dataset("bobs", "bob")
    rc, _, err = imp(sim, "-T", f"Dataset:{theirs}", src)
    assert rc == 21 and f"cannot import into Dataset:{theirs}" in err
    assert_untouched(sim, tmp_path)


def test_bulk_is_refused(world):
    sim, src, tmp_path = world
    bulk = tmp_path / "bulk.yml"
    bulk.write_text("path: files.txt\n")
    rc, _, err = imp(sim, "--bulk", str(bulk))
    assert rc == 10 and "--resume does not drive --bulk" in err
    assert_untouched(sim, tmp_path)


@pytest.mark.parametrize("value", ["0", "-3"])
def test_chunk_size_must_be_positive(world, value):
    sim, src, tmp_path = world
    rc, _, err = imp(sim, "--chunk-size", value, src)
    assert rc == 2 and "must be 1 or more" in err
    assert_untouched(sim, tmp_path)


def test_unknown_job(world):
    sim, src, tmp_path = world
    rc, _, err = imp(sim, "--job", "nightly")
    assert rc == 13 and "unknown job 'nightly'" in err
    assert_untouched(sim, tmp_path)


def test_corrupt_journal_is_left_as_it_is(world):
    sim, src, tmp_path = world
    journal = tmp_path / "broken.sqlite"
    journal.write_bytes(b"this is not a database" * 100)
    rc, _, err = imp(sim, "--journal", str(journal), src)
    assert rc == 15 and "not a journal" in err
    assert journal.read_bytes() == b"this is not a database" * 100
    assert sorted(os.listdir(tmp_path)) == ["broken.sqlite", "sim", "src"]
    assert sim.query("SELECT count(*) FROM Fileset")[0][0] == 0


def test_locked_journal(world):
    sim, src, tmp_path = world
    from omero_cli_ext.journal import open_journal
    assert imp(sim, "--dry-run", src)[0] == 0
    journal_path = str(tmp_path / "jobs.sqlite")
    holder = open_journal(journal_path)
    name = json.loads(imp(sim, "--json", "--dry-run", src)[1].splitlines()[-1])["job"]
    try:
        with holder.writer_lock(f"omero import --resume job {name}"):
            rc, _, err = imp(sim, "--journal", journal_path, src)
    finally:
        holder.close()
    assert rc == 14 and f"job {name}" in err and "in use by process" in err
    assert sim.query("SELECT count(*) FROM Fileset")[0][0] == 0


def test_plan_mismatch_names_the_job(world):
    sim, src, tmp_path = world
    assert imp(sim, "--chunk-size", "20", os.path.join(src, "img000.fake"), "--job", "one")[0] == 0
    rc, _, err = imp(sim, "--job", "one", os.path.join(src, "img001.fake"))
    assert rc == 12 and "job one differs from this command: its paths are" in err \
        and "--job NEW_NAME" in err
    assert len(fileset_paths(sim)) == 1


def test_unreachable_postgresql(world):
    sim, src, tmp_path = world
    rc, _, err = imp(sim, "--journal", "postgresql://nobody@127.0.0.1:1/none", src)
    assert rc == 16 and "cannot connect to the PostgreSQL journal" in err
    assert_untouched(sim, tmp_path)


def test_no_importer_jars_says_how_to_fetch_them(world, monkeypatch, omero_cli, tmp_path):
    """The real spawn (no launcher swap): no jars under the OMERO user dir or lib/client."""
    sim, src, _ = world
    from omero.cli import NonZeroReturnCode

    from omero_cli_ext import server
    monkeypatch.setattr(server, "connect", lambda ctx, args: sim.port("alice"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr("omero.util.get_omero_user_cache_dir", lambda: tmp_path / "cache")
    with pytest.raises(NonZeroReturnCode) as raised:
        omero_cli.invoke(["import", "--resume", "--clientdir", str(tmp_path / "nojars"), src],
                         strict=True)
    assert raised.value.rv == 17
    assert sim.query("SELECT count(*) FROM Fileset")[0][0] == 0
