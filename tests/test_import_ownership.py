"""`omero import --resume` beside other clients, servers and users, and with a frozen importer:
nothing that is not the job's is ever deleted or counted done, a job never continues for another
identity, and a hung importer is killed, retried and shown stalled."""
from __future__ import annotations

import datetime as _dt
import glob
import json
import os
import signal
import sqlite3
import subprocess
import time

import pytest

from import_helpers import driver_command, driver_env, fake_images, imp, import_world
from sim.builder import lab_server

from omero_cli_ext.importing import progress
from omero_cli_ext.status.jobs import job_status


@pytest.fixture
def world(tmp_path, monkeypatch):
    sim, src = import_world(tmp_path, monkeypatch)
    fake_images(src, 8)
    return sim, src, tmp_path


def journal_path(tmp_path):
    [path] = glob.glob(str(tmp_path / "userdir" / progress.JOURNAL_SUBDIR / "*.sqlite"))
    return path


def journal(tmp_path, sql, params=()):
    with sqlite3.connect(journal_path(tmp_path)) as db:
        return db.execute(sql, params).fetchall()


def wait_for(condition, timeout=60.0):
    """Poll a condition of another process's progress (not a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("condition not reached in %.0f s" % timeout)


def spawn_driver(sim, tmp_path, *argv, **env):
    return subprocess.Popen(driver_command(sim.root, *argv), env=driver_env(tmp_path, **env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def kill_driver_after_first_fileset(sim, src, tmp_path):
    """Start a job whose importer hangs after its first fileset, then kill -9 the driver (its
    importer dies with it): every other fileset stays in doubt. Returns the attempt's session."""
    driver = spawn_driver(sim, tmp_path, "--chunk-size", "20", str(src), HANG="1")
    try:
        wait_for(lambda: os.path.exists(str(tmp_path / "userdir")) and glob.glob(
            str(tmp_path / "userdir" / progress.JOURNAL_SUBDIR / "*.sqlite"))
            and sim.query("SELECT count(*) FROM Image")[0][0] >= 1)
    finally:
        driver.kill()
        driver.wait()
    [(session_id,)] = journal(tmp_path, "SELECT session_id FROM import_attempt")
    [(uuid,)] = sim.query("SELECT uuid FROM sim_session WHERE rowid = ?", (session_id,))
    return uuid


def paths_of(sim, fileset_ids):
    return {fid: path for fid, path in sim.query(
        "SELECT fileset, clientPath FROM FilesetEntry") if fid in fileset_ids}


def test_clean_ghosts_deletes_only_the_jobs_dead_filesets_beside_another_client(world):
    sim, src, tmp_path = world
    elsewhere = sim.add_dataset("elsewhere", "alice")
    files = sorted(str(p) for p in src.iterdir())
    session = kill_driver_after_first_fileset(sim, src, tmp_path)
    # the job's own importer (its session, inside its attempt): a server-side failure and a
    # client death mid-upload
    real_ghost = sim.import_fileset("alice", [files[1]], outcome="server-failure", session=session)
    half = sim.import_fileset("alice", [files[2]], outcome="client-death", session=session)
    # another client of the same user (its own session): a live upload, a metadata step with no
    # visible process, a finished import into another dataset
    live = sim.create_import("alice", [files[3]])
    sim.store_file(live, 0, partial=True)
    metadata = sim.import_fileset("alice", [files[4]], steps=0)
    finished = sim.import_fileset("alice", [files[5]], target=("Dataset", elsewhere))
    sim.advance(3600)       # an hour on the server's clock: longer than --lease
    others = {live, metadata, finished}

    rc, out, err = imp(sim, "--json", "--chunk-size", "20", str(src))
    assert rc == 5, err     # the job's ghosts are reported, nothing deleted
    assert {real_ghost, half} <= {r[0] for r in sim.query("SELECT id FROM Fileset")}
    records = [json.loads(line) for line in out.splitlines()]
    foreign = {f["fileset"]: f for f in records[-1]["foreign"]}
    assert set(foreign) == others
    assert foreign[finished]["complete"] and "elsewhere" in foreign[finished]["containers"]
    assert {r["fileset"] for r in records if r["type"] == "foreign"} == others
    rc, out, err = imp(sim, "--json", "--chunk-size", "20", "--clean-ghosts", str(src))
    assert rc == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    summary = records[-1]
    assert sorted(summary["deleted_ghosts"]) == sorted([real_ghost, half])
    left = {r[0] for r in sim.query("SELECT id FROM Fileset")}
    assert others <= left and not ({real_ghost, half} & left)
    # every planned file has exactly one fileset of the job, with its ids in the JSON lines
    done = {r["path"]: r for r in records if r["type"] == "fileset" and r["state"] == "done"}
    rows = journal(tmp_path, "SELECT main, state, fileset_id, images FROM import_fileset")
    assert {state for _, state, _, _ in rows} == {"done"} and len(rows) == len(files)
    assert all(json.loads(images) for _, _, _, images in rows)
    job_filesets = {fid for _, _, fid, _ in rows}
    assert not (job_filesets & others)
    assert all(done[p]["images"] for p in done)
    # --results re-prints every fileset line with its ids, from the journal alone
    rc, again, err = imp(sim, "--json", "--results", str(src))
    assert rc == 0, err
    lines = [json.loads(line) for line in again.splitlines() if '"fileset"' in line]
    reprinted = {r["path"]: r for r in lines if r["type"] == "fileset"}
    assert len(reprinted) == len(files)
    assert all(r["images"] and r["fileset"] in job_filesets for r in reprinted.values())


def test_the_jobs_own_metadata_step_is_server_processing_until_the_step_timeout(world):
    sim, src, tmp_path = world
    files = sorted(str(p) for p in src.iterdir())
    session = kill_driver_after_first_fileset(sim, src, tmp_path)
    busy = sim.import_fileset("alice", [files[1]], steps=0, session=session)
    sim.advance(3600)
    rc, out, err = imp(sim, "--clean-ghosts", "--retries", "0", "--chunk-size", "20", str(src))
    assert rc == 4, err
    assert "still processing" in err and busy in {r[0] for r in sim.query("SELECT id FROM Fileset")}
    sim.advance(12 * 3600)          # past --server-step-timeout (default 12h): dead
    rc, out, err = imp(sim, "--clean-ghosts", "--chunk-size", "20", str(src))
    assert rc == 0, err
    assert busy not in {r[0] for r in sim.query("SELECT id FROM Fileset")}
    assert len(sim.query("SELECT DISTINCT clientPath FROM FilesetEntry")) == len(files)


@pytest.mark.parametrize("repository", ["readable here", "on the server only"])
def test_a_metadata_step_still_writing_its_log_outlives_the_step_timeout(world, repository):
    """Step 1 (setId + saveToDB) records nothing in the database for hours on a big plate; only
    its import log grows. --clean-ghosts must not delete such a fileset at the step timeout:
    the log's mtime (repository readable here), else its size through RawFileStore compared with
    an earlier look, in this run or a remembered one (a first look gives it a full timeout)."""
    sim, src, tmp_path = world
    if repository != "readable here":
        sim.set_reported_root(str(tmp_path / "server-host" / "ManagedRepository"))
    files = sorted(str(p) for p in src.iterdir())
    session = kill_driver_after_first_fileset(sim, src, tmp_path)
    busy = sim.import_fileset("alice", [files[1]], steps=0, session=session)
    present = lambda: busy in {r[0] for r in sim.query("SELECT id FROM Fileset")}  # noqa: E731
    args = ("--clean-ghosts", "--retries", "0", "--chunk-size", "20", str(src))
    if repository != "readable here":     # a first look, 13 h in: no past can be told from it
        sim.advance(13 * 3600)
        rc, out, err = imp(sim, *args)
        assert rc == 4 and "still processing" in err and present(), err
    sim.advance(11 * 3600)
    sim.grow_import_log(busy, ["Reading plate 512 of 1536..."])
    sim.advance(2 * 3600)                 # 13 h without a database sign, the log grew 2 h ago
    rc, out, err = imp(sim, *args)
    assert rc == 4 and "still processing" in err and present(), err
    sim.advance(12 * 3600)                # the step stopped writing 14 h ago: dead
    rc, out, err = imp(sim, *args)
    assert rc == 0, err
    assert not present()


def test_a_log_mtime_later_than_the_servers_clock_is_no_sign_of_life(world):
    """The repository is readable here, but the log's mtime lies ahead of the server's clock (an
    NFS server with another clock, a restored or touched file): a time that has not come proves
    nothing. It must not keep a dead metadata step alive for ever: its size is looked at instead
    (a first look gives it a full step timeout, then no growth: dead)."""
    sim, src, tmp_path = world
    files = sorted(str(p) for p in src.iterdir())
    session = kill_driver_after_first_fileset(sim, src, tmp_path)
    busy = sim.import_fileset("alice", [files[1]], steps=0, session=session)
    present = lambda: busy in {r[0] for r in sim.query("SELECT id FROM Fileset")}  # noqa: E731
    args = ("--clean-ghosts", "--retries", "0", "--chunk-size", "20", str(src))
    on_disk = sim._import_log(busy)[2]
    ahead = sim.now().timestamp() + 10 * 365 * 86400
    os.utime(on_disk, (ahead, ahead))
    sim.advance(13 * 3600)
    rc, out, err = imp(sim, *args)
    assert rc == 4 and "still processing" in err and present(), err
    sim.advance(13 * 3600)                # its size has not changed for 13 h: dead
    rc, out, err = imp(sim, *args)
    assert rc == 0, err
    assert not present()


@pytest.mark.parametrize("memory", ["[]", "null", "\"x\"", "{\"k\": 5}", "a directory"])
def test_a_damaged_or_unwritable_log_size_memory_changes_no_outcome(world, memory):
    """The remembered import log sizes are hints: a damaged file starts afresh, one that cannot
    be written is warned about on stderr; the exit code and the --json lines are unchanged."""
    sim, src, tmp_path = world
    sim.set_reported_root(str(tmp_path / "server-host" / "ManagedRepository"))
    files = sorted(str(p) for p in src.iterdir())
    session = kill_driver_after_first_fileset(sim, src, tmp_path)
    busy = sim.import_fileset("alice", [files[1]], steps=0, session=session)
    path = tmp_path / "userdir" / "omero-cli-ext" / "import-log-sizes.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if memory == "a directory":
        path.mkdir()
    else:
        path.write_text(memory)
    sim.advance(13 * 3600)
    rc, out, err = imp(sim, "--json", "--clean-ghosts", "--retries", "0", "--chunk-size", "20",
                       str(src))
    assert rc == 4 and busy in {r[0] for r in sim.query("SELECT id FROM Fileset")}, err
    assert all(json.loads(line) for line in out.splitlines())
    assert ("cannot remember import log sizes" in err) == (memory == "a directory"), err


# --- identity -----------------------------------------------------------------------------------

def test_another_server_is_refused_and_never_reported_done(world, tmp_path):
    sim, src, _ = world
    assert imp(sim, "--chunk-size", "4", str(src))[0] == 0
    other = lab_server(str(tmp_path / "other"))
    rc, out, err = imp(other, "--chunk-size", "4", str(src))
    assert rc == 19, err
    assert "another server" in err and "--job NEW_NAME" in err
    assert other.query("SELECT count(*) FROM Fileset") == [(0,)]
    rc, out, err = imp(other, "--job", "on-other", str(src))
    assert rc == 0, err     # a separate job, on request
    assert other.query("SELECT count(*) FROM Fileset") == [(8,)]


def test_another_user_cannot_continue_a_job_in_a_shared_journal(world, tmp_path):
    sim, src, _ = world
    shared = str(tmp_path / "shared.sqlite")
    rc, _, err = imp(sim, "--journal", shared, "--job", "run3", str(src))
    assert rc == 0, err
    rc, out, err = imp(sim, "--journal", shared, "--job", "run3", str(src), user="bob")
    assert rc == 19 and "belongs to user alice" in err, err
    assert sim.query("SELECT count(*) FROM Fileset f JOIN Experimenter e ON e.id = f.owner_id "
                     "WHERE e.omeName = 'bob'") == [(0,)]


@pytest.mark.parametrize("first, second", [
    (["--transfer=ln_s"], []),
    ([], ["--transfer=ln_s"]),
    (["--checksum-algorithm=MD5-128"], []),
])
def test_changed_importer_options_are_refused(world, first, second):
    sim, src, tmp_path = world
    rc, _, err = imp(sim, "--job", "j1", "--retries", "0", *first, str(src),
                     **{})
    assert rc == 0, err
    rc, _, err = imp(sim, "--job", "j1", *second, str(src))
    assert rc == 12 and "importer options" in err, err


def test_neutral_options_and_a_bare_job_name_continue_the_job(world):
    sim, src, tmp_path = world
    did = sim.add_dataset("d", "alice")
    assert imp(sim, "--job", "j1", "-d", str(did), "--transfer=ln_s", str(src))[0] == 0
    rc, out, err = imp(sim, "--job", "j1", "--parallel-upload", "4")
    assert rc == 0, err
    rc, _, err = imp(sim, "--job", "j1", "-d", "999")
    assert rc == 12 and "its target is Dataset:" in err, err


# --- a frozen importer --------------------------------------------------------------------------

def test_a_hung_importer_is_shown_stalled_then_killed_and_retried(world):
    sim, src, tmp_path = world
    driver = spawn_driver(sim, tmp_path, "--chunk-size", "20", "--lease", "1", "--retries", "1",
                          "--importer-timeout", "6", str(src), HANG="1")
    try:
        def stalled():
            try:
                rows = journal(tmp_path, "SELECT heartbeat, progress FROM import_worker "
                                         "WHERE stopped IS NULL")
            except (ValueError, sqlite3.OperationalError):   # no journal, or no tables yet
                return []
            return [r for r in rows if r[1] and (_dt.datetime.fromisoformat(r[0])
                                                 - _dt.datetime.fromisoformat(r[1])).total_seconds() >= 3]
        [(beat, _)] = wait_for(stalled)
        # per-fileset progress: the fileset imported before the hang is done while its chunk runs
        assert journal(tmp_path, "SELECT count(*) FROM import_fileset WHERE state = 'done'") \
            == [(1,)]
        assert journal(tmp_path, "SELECT state FROM import_chunk") == [("running",)]
        [job] = progress.read_jobs(journal_path(tmp_path))
        # the result was matched within MAP_EVERY (1 s) of the importer's last line
        status = job_status(job, _dt.datetime.fromisoformat(beat), stalled_after=1.5)
        assert (job.state, status.state) == ("running", "stalled")
        assert "no importer progress" in status.reason
        _, err = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.send_signal(signal.SIGKILL)
            driver.wait()
    err = err.decode()
    assert driver.returncode == 4, err
    assert err.count("importer killed: no output and no upload progress") == 2
    assert "giving up for this run" in err


def test_an_importer_silently_uploading_a_big_file_is_not_killed(world, monkeypatch):
    """The Java importer prints nothing while one file uploads and a real server gives other
    processes no upload offsets: the watchdog must see the file growing on the server."""
    sim, src, tmp_path = world
    big = tmp_path / "big"
    big.mkdir()
    for i in range(2):
        (big / f"big{i}.fake").write_bytes(b"y" * 1000)
    monkeypatch.setenv("OMERO_CLI_EXT_SIM_UPLOAD_SECONDS", "6")
    rc, out, err = imp(sim, "--lease", "1", "--importer-timeout", "2", str(big))
    assert "importer killed" not in err
    assert rc == 0 and "2/2 filesets done" in out, err


def test_a_schema_1_job_is_upgraded_and_bound_to_its_planner(world, tmp_path):
    sim, src, _ = world
    shared = str(tmp_path / "old.sqlite")
    assert imp(sim, "--journal", shared, "--job", "old", str(src))[0] == 0
    with sqlite3.connect(shared) as db:       # back to what omero-cli-ext wrote before
        db.execute("ALTER TABLE import_job DROP COLUMN identity")
        db.execute("ALTER TABLE import_worker DROP COLUMN progress")
        db.execute("DROP TABLE import_attempt")
        db.execute("DROP TABLE import_announced")
        db.execute("UPDATE journal_schema SET version = 1 WHERE component = 'import'")
    rc, out, err = imp(sim, "--journal", shared, "--job", "old")
    assert rc == 0 and "8/8 filesets done" in out, err
    with sqlite3.connect(shared) as db:
        [(identity,)] = db.execute("SELECT identity FROM import_job").fetchall()
    assert json.loads(identity)["user"]["name"] == "alice"
    rc, _, err = imp(sim, "--journal", shared, "--job", "old", user="bob")
    assert rc == 19 and "belongs to user alice" in err, err
