"""`omero import --resume` attacked as a facility would: hostile file names, killed drivers,
closed pipes and interrupts. Each test is an attack that once succeeded."""
from __future__ import annotations

import json
import os
import sqlite3

from import_helpers import imp
from sim.launcher import run_cli

from test_import_ownership import kill_driver_after_first_fileset, world  # noqa: F401

# a file name of each kind the repository path rules rewrite, and names that are not UTF-8
HOSTILE = [b"12:30:00.fake", b"what?.fake", b"CON.fake", b"CON", b"a*b.fake", b"$x.fake",
           b"tab\tname.fake", b"caf\xe9.fake", b"\xff\xfe.fake", b"ok.fake"]


def hostile_tree(root) -> str:
    src = os.path.join(str(root), "hostile")
    os.mkdir(src)
    for name in HOSTILE:
        with open(os.path.join(os.fsencode(src), name), "wb") as stream:
            stream.write(b"x" * 50)
    return src


def test_names_the_server_rewrites_or_that_are_not_utf8_import_once_and_report(world):
    sim, _, tmp_path = world
    src = hostile_tree(tmp_path)
    rc, out, err = imp(sim, "--json", "--chunk-size", "3", src)
    assert rc == 0, err
    done = [json.loads(line) for line in out.splitlines()]
    assert sum(r["type"] == "fileset" and r["state"] == "done" for r in done) == len(HOSTILE)
    rc, out, err = imp(sim, "--chunk-size", "3", src)       # the rerun finds them all done
    assert rc == 0 and f"{len(HOSTILE)}/{len(HOSTILE)} filesets done" in out, err
    rc, out, err = imp(sim, "--results", src)
    assert rc == 0 and "caf\\xe9.fake" in out and "12:30:00.fake" in out, err
    assert sim.query("SELECT count(*) FROM Fileset") == [(len(HOSTILE),)]


def test_hostile_names_after_a_killed_driver_are_imported_exactly_once(world):
    sim, _, tmp_path = world
    src = hostile_tree(tmp_path)
    kill_driver_after_first_fileset(sim, src, tmp_path)
    sim.advance(13 * 3600)
    rc, out, err = imp(sim, "--clean-ghosts", "--chunk-size", "20", src)
    assert rc == 0, err
    per_path = sim.query("SELECT fe.clientPath, count(DISTINCT fe.fileset) FROM FilesetEntry fe "
                         "JOIN Image i ON i.fileset = fe.fileset GROUP BY fe.clientPath")
    assert len(per_path) == len(HOSTILE) and {n for _, n in per_path} == {1}
    assert sim.query("SELECT count(*) FROM Fileset") == [(len(HOSTILE),)]


def test_the_same_target_spelled_otherwise_continues_the_job(world):
    sim, src, _ = world
    did = sim.add_dataset("d", "alice")
    rc, _, err = imp(sim, "--job", "j1", "-d", str(did), "--retries", "0", str(src))
    assert rc == 0, err
    for spelling in (["-T", f"Dataset:{did}"], ["-T", f"Dataset:id:{did}"], ["-d", str(did)]):
        rc, out, err = imp(sim, "--job", "j1", *spelling, str(src))
        assert rc == 0 and "8/8 filesets done" in out, (spelling, err)
    rc, _, err = imp(sim, "--job", "j1", "-T", f"Dataset:{did + 1}", str(src))
    assert rc == 12 and "its target is" in err, err
    assert sim.query("SELECT count(*) FROM Fileset") == [(8,)]


def test_dry_run_of_an_existing_job_refuses_what_the_run_would_refuse(world):
    sim, src, tmp_path = world
    did = sim.add_dataset("d", "alice")
    assert imp(sim, "--job", "j1", "-d", str(did), str(src))[0] == 0
    rc, out, err = imp(sim, "--job", "j1", "--dry-run")
    assert rc == 0, err
    for argv, user, code in ((["-d", "999"], "alice", 12),
                             ([str(tmp_path)], "alice", 12),
                             (["--transfer=ln_s", "-d", str(did), str(src)], "alice", 12),
                             ([], "bob", 19)):
        rc, out, err = imp(sim, "--job", "j1", "--dry-run", *argv, user=user)
        assert rc == code and "job j1" in err, (argv, user, rc, err)
        assert "chunk" not in out
    assert sim.query("SELECT count(*) FROM Fileset") == [(8,)]


def test_a_file_skipped_by_exclude_clientpath_names_the_fileset_that_has_it(world):
    sim, src, tmp_path = world
    first = sorted(str(p) for p in src.iterdir())[0]
    assert imp(sim, "--job", "one", first)[0] == 0
    rc, out, err = imp(sim, "--json", "--exclude", "clientpath", str(src))
    assert rc == 3, err
    records = [json.loads(line) for line in out.splitlines()]
    [failed] = [r for r in records if r["type"] == "fileset" and r["state"] == "failed"]
    assert failed["path"] == first and "complete Fileset 1 of another client" in failed["message"]
    assert sim.query("SELECT count(*) FROM Fileset") == [(8,)]


def test_files_that_reach_the_server_under_one_name_are_refused_before_anything(world):
    sim, _, tmp_path = world
    for pair in ((b"12:30.fake", b"12;30.fake"), (b"caf\xe9.fake", b"caf\xe8.fake"),
                 (b"CON", b"CON_")):
        src = os.path.join(os.fsencode(str(tmp_path)), b"pair-" + pair[1])
        os.mkdir(src)
        for name in pair:
            with open(os.path.join(src, name), "wb") as stream:
                stream.write(b"x" * 10)
        rc, out, err = imp(sim, os.fsdecode(src))
        assert rc == 10 and "reach the server under the same name" in err, (pair, err)
    assert sim.query("SELECT count(*) FROM Fileset") == [(0,)]
    assert not os.path.exists(str(tmp_path / "userdir" / "omero-cli-ext"))


def test_plain_import_refuses_every_resume_option_even_zero(world):
    sim, src, _ = world
    for option in (["--retries", "0"], ["--json"], ["--job", "x"]):
        rc, out, err = run_cli(sim.root, ["import", *option, str(src)], user="alice")
        assert rc == 2 and "only apply to resumable imports: add --resume" in err, (option, err)
    assert sim.query("SELECT count(*) FROM Fileset") == [(0,)]


def test_a_target_deleted_since_the_plan_stops_the_rerun_before_any_import(world, monkeypatch):
    sim, src, tmp_path = world
    did = sim.add_dataset("d", "alice")
    monkeypatch.setenv("OMERO_CLI_EXT_SIM_CRASH_AFTER", "2")     # the importer dies mid-job
    assert imp(sim, "--job", "j1", "-d", str(did), "--retries", "0", str(src))[0] == 4
    monkeypatch.delenv("OMERO_CLI_EXT_SIM_CRASH_AFTER")
    with sqlite3.connect(os.path.join(sim.root, "sim.sqlite")) as db:   # deleted by its owner
        db.execute("DELETE FROM DatasetImageLink WHERE parent = ?", (did,))
        db.execute("DELETE FROM Dataset WHERE id = ?", (did,))
    before = sim.query("SELECT count(*) FROM Fileset")
    rc, out, err = imp(sim, "--job", "j1")
    assert rc == 22 and f"Dataset:{did} not found" in err, err
    assert sim.query("SELECT count(*) FROM Fileset") == before


def test_results_say_whose_job_they_are(world, tmp_path):
    sim, src, _ = world
    shared = str(tmp_path / "shared.sqlite")
    assert imp(sim, "--journal", shared, "--job", "run3", str(src))[0] == 0
    rc, out, err = imp(sim, "--journal", shared, "--job", "run3", "--results", "--json",
                       user="bob")
    assert rc == 0, err
    summary = json.loads(out.splitlines()[-1])
    assert summary["identity"]["user"]["name"] == "alice"
    rc, out, err = imp(sim, "--journal", shared, "--job", "run3", "--results", user="bob")
    assert rc == 0 and "imports as alice in group lab" in out, err
