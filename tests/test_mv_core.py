"""The pure parts of the `omero mv` core: link matching, target rewriting, candidate choice,
plan order, idempotent steps."""
from __future__ import annotations

import os

import pytest

from omero_cli_ext.journal import open_journal
from omero_cli_ext.mv import engine
from omero_cli_ext.mv.execute import Executor, roll_back_copies
from omero_cli_ext.mv.plan import PHASES, Request, Scope, _closest, new_target, plan_for
from omero_cli_ext.mv.store import JobStore
from omero_cli_ext.mv.tree import below, fs_path, is_under, walk_links, walk_tree


def b(path) -> bytes:
    return os.fsencode(str(path))


@pytest.fixture
def tree(tmp_path):
    """repo/ with links into src/ (absolute, relative, through an alias) and one elsewhere."""
    src, repo, other = tmp_path / "src", tmp_path / "repo", tmp_path / "other"
    (src / "a").mkdir(parents=True)
    (src / "a" / "f1").write_bytes(b"one")
    (src / "f2").write_bytes(b"two")
    other.mkdir()
    (other / "g").write_bytes(b"g")
    (repo / "x").mkdir(parents=True)
    os.symlink(tmp_path, tmp_path / "alias")
    os.symlink(src / "a" / "f1", repo / "x" / "abs")
    os.symlink(os.path.relpath(src / "f2", repo / "x"), repo / "x" / "rel")
    os.symlink(tmp_path / "alias" / "src" / "f2", repo / "x" / "via-alias")
    os.symlink(other / "g", repo / "x" / "elsewhere")
    return tmp_path


def test_is_under_and_below():
    assert is_under(b"/a/b", b"/a") and is_under(b"/a", b"/a") and not is_under(b"/ab", b"/a")
    assert below(b"/a/b/c", b"/a") == b"b/c" and below(b"/a", b"/a") == b""


def test_scope_matches_textually_and_by_location(tree):
    src = b(tree / "src")
    scope = Scope(src, walk_tree(src))
    found = {os.path.basename(link): scope.match(link, target)
             for link, target in walk_links(b(tree / "repo"))}
    assert found == {b"abs": b"a/f1", b"rel": b"f2", b"via-alias": b"f2", b"elsewhere": None}


def test_scope_without_src_matches_by_resolved_path(tree):
    os.rename(tree / "src", tree / "moved")
    scope = Scope(b(tree / "alias" / "src"))
    found = {os.path.basename(link): scope.match(link, target)
             for link, target in walk_links(b(tree / "repo"))}
    assert found[b"abs"] == b"a/f1" and found[b"via-alias"] == b"f2"
    assert found[b"elsewhere"] is None


def test_new_target_keeps_relative_links_relative(tree):
    link = b(tree / "repo" / "x" / "rel")
    new = new_target(os.readlink(link), link, b(tree / "dst" / "f2"))
    assert new == b"../../dst/f2"
    assert new_target(b"/abs/old", link, b"/abs/new") == b"/abs/new"


def test_closest_prefers_most_shared_trailing_parts_and_refuses_ties():
    old = b"/old/run1/plate/f.tif"
    assert _closest(old, [b"/n/run1/plate/f.tif", b"/n/run2/plate/f.tif"]) == \
        b"/n/run1/plate/f.tif"
    assert _closest(old, [b"/n/run1/plate/f.tif", b"/m/run1/plate/f.tif"]) is None
    assert _closest(old, []) is None


def test_request_key_ignores_nothing_that_changes_the_plan():
    base = Request("move", b"/r", src=b"/s", dst=b"/d")
    assert base.key() == Request("move", b"/r", src=b"/s", dst=b"/d").key()
    assert base.key() != Request("move", b"/r", src=b"/s", dst=b"/e").key()
    assert base.key() != Request("move", b"/r", src=b"/s\xff", dst=b"/d").key()


def test_plan_orders_phases_so_links_change_before_sources_go(tree):
    plan = plan_for(Request("move", b(tree / "repo"), src=b(tree / "src"),
                            dst=b(tree / "dst")))
    phases = [PHASES[s.kind] for s in plan.steps]
    assert phases == sorted(phases)
    assert [s.seq for s in plan.steps] == list(range(len(plan.steps)))
    assert plan.count("retarget") == 3 and plan.count("unlink") == 2


def test_every_step_can_run_twice(tree):
    plan = plan_for(Request("move", b(tree / "repo"), src=b(tree / "src"),
                            dst=b(tree / "dst")))
    Executor(plan.steps, same_fs=True, record=lambda steps: None).run()
    for step in plan.steps:
        step.state = "pending"
    Executor(plan.steps, same_fs=True, record=lambda steps: None).run()
    assert {s.state for s in plan.steps} == {"done"}
    assert open(tree / "repo" / "x" / "rel", "rb").read() == b"two"
    assert not (tree / "src").exists()


def test_roll_back_refuses_once_links_changed(tree):
    plan = plan_for(Request("move", b(tree / "repo"), src=b(tree / "src"),
                            dst=b(tree / "dst")))
    Executor([s for s in plan.steps if PHASES[s.kind] < 3], same_fs=True,
             record=lambda steps: None).run()
    roll_back_copies(plan.steps)
    assert not (tree / "dst").exists() and (tree / "src" / "f2").exists()
    for step in plan.steps:
        step.state = "pending"
    Executor(plan.steps, same_fs=True, record=lambda steps: None).run()
    with pytest.raises(ValueError):
        roll_back_copies(plan.steps)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def journal_location(request, tree):
    """A fresh journal for `omero mv`, for each backend (--journal takes either)."""
    if request.param == "sqlite":
        return str(tree / "j.sqlite")
    return request.getfixturevalue("postgres_db_url")


def test_journal_round_trip_resumes_the_recorded_plan(tree, journal_location):
    journal = open_journal(journal_location)
    store = JobStore(journal)
    request = Request("move", b(tree / "repo"), src=b(tree / "src"), dst=b(tree / "dst"))
    first = engine.prepare(store, request, "omero mv src dst")
    again = engine.prepare(store, request, "omero mv src dst")
    assert again.resumed and again.job.id == first.job.id
    assert again.steps == first.steps   # every field of every step
    assert engine.execute(store, again, checksums=True) == []
    assert store.unfinished(os.fsdecode(request.repo)) is None
    journal.close()


def test_journal_marks_progress_and_keeps_outcomes_that_are_not_plain(tree, journal_location):
    journal = open_journal(journal_location)
    store = JobStore(journal)
    request = Request("move", b(tree / "repo"), src=b(tree / "src"), dst=b(tree / "dst"))
    job = engine.prepare(store, request, "omero mv src dst")
    steps = job.steps
    outcomes = [("done", None), ("skipped", "why"), ("done", "hard"), ("done", None),
                ("done", None)]
    for step, (state, note) in zip(steps, outcomes):
        step.state, step.note = state, note
    store.record(job.job.id, steps[:3])
    store.record(job.job.id, steps[3:5])
    assert [(s.state, s.note) for s in store.steps(job.job.id)] == \
        outcomes + [("pending", None)] * (len(steps) - 5)
    # a resumed job runs recorded steps again: the new outcome replaces the old one
    steps[1].state, steps[1].note = "done", None
    store.record(job.job.id, steps[1:2])
    assert [(s.state, s.note) for s in store.steps(job.job.id)][:5] == \
        [outcomes[0], ("done", None)] + outcomes[2:]
    journal.close()


MV_JOB_V1 = ("CREATE TABLE mv_job (id INTEGER PRIMARY KEY AUTOINCREMENT, repo TEXT NOT NULL, "
             "job_key TEXT NOT NULL, command TEXT NOT NULL, mode TEXT NOT NULL, "
             "same_fs INTEGER NOT NULL, state TEXT NOT NULL, created TEXT NOT NULL, "
             "updated TEXT NOT NULL, summary TEXT)")
MV_STEP_V1 = ("CREATE TABLE mv_step (job INTEGER NOT NULL REFERENCES mv_job (id), "
              "seq INTEGER NOT NULL, kind TEXT NOT NULL, path BLOB NOT NULL, other BLOB, "
              "old BLOB, new BLOB, size INTEGER, mode INTEGER, uid INTEGER, gid INTEGER, "
              "mtime_ns INTEGER, hasher TEXT, hash TEXT, fileset INTEGER, state TEXT NOT NULL, "
              "note TEXT, PRIMARY KEY (job, seq))")


def _legacy_job(journal, done_through=None) -> None:
    columns = "repo, job_key, command, mode, same_fs, state, created, updated"
    values = ["/r", "k", "c", "move", 1, "running", "t", "t"]
    if done_through is not None:
        columns += ", done_through"
        values.append(done_through)
    journal.execute(f"INSERT INTO mv_job ({columns}) VALUES ({', '.join('?' * len(values))})",
                    values)


def _legacy_steps(journal, rows) -> None:
    journal.executemany("INSERT INTO mv_step (job, seq, kind, path, new, state, note) "
                        "VALUES (1, ?, ?, ?, ?, ?, ?)", rows)


def test_journal_of_schema_1_is_upgraded_and_its_outcomes_kept(journal_location):
    journal = open_journal(journal_location)
    journal.ensure_schema("mv", 1, (MV_JOB_V1, MV_STEP_V1))
    _legacy_job(journal)
    _legacy_steps(journal, [(0, "retarget", b"/a", None, "done", None),
                            (1, "retarget", b"/b", None, "pending", None)])
    store = JobStore(journal)
    assert [(s.path, s.state) for s in store.steps(1)] == [(b"/a", "done"), (b"/b", "pending")]
    journal.close()


def test_unfinished_job_of_schema_2_resumes_after_the_upgrade(journal_location):
    """Schema 2 kept a row per step and done_through; schema 3 packs the steps. A job journaled
    by the older version is read from its rows, and its new outcomes recorded on top."""
    journal = open_journal(journal_location)
    journal.ensure_schema("mv", 2, (MV_JOB_V1.replace(
        ")", ", done_through INTEGER NOT NULL DEFAULT -1)", 1), MV_STEP_V1))
    _legacy_job(journal, done_through=1)
    _legacy_steps(journal, [(0, "retarget", b"/a", b"/n", "pending", None),
                            (1, "retarget", b"/b", b"/n", "skipped", "changed"),
                            (2, "unlink", b"/c", None, "pending", None)])
    store = JobStore(journal)
    steps = store.steps(1)
    assert [(s.path, s.new, s.state, s.note) for s in steps] == [
        (b"/a", b"/n", "done", None), (b"/b", b"/n", "skipped", "changed"),
        (b"/c", None, "pending", None)]
    steps[1].state, steps[1].note = "done", None
    steps[2].state, steps[2].note = "skipped", "kept"
    store.record(1, steps[1:])
    assert [(s.state, s.note) for s in store.steps(1)] == [
        ("done", None), ("done", None), ("skipped", "kept")]
    journal.close()


def test_resume_runs_the_last_recorded_phase_again(tree):
    """Links are synced when their phase ends, not per journal batch: after a power cut the
    journal may mark done a link change the disk lost. A resumed job re-checks that phase, so
    the source the link still points at is not removed."""
    journal = open_journal(str(tree / "j.sqlite"))
    store = JobStore(journal)
    request = Request("move", b(tree / "repo"), src=b(tree / "src"), dst=b(tree / "dst"))
    first = engine.prepare(store, request, "omero mv src dst")
    Executor([s for s in first.steps if PHASES[s.kind] <= 3], same_fs=True,
             record=lambda batch: store.record(first.job.id, batch)).run()
    link = tree / "repo" / "x" / "abs"
    os.unlink(link)
    os.symlink(tree / "src" / "a" / "f1", link)   # the retarget the power cut undid
    again = engine.prepare(store, request, "omero mv src dst")
    assert {s.state for s in again.steps if PHASES[s.kind] == 3} == {"pending"}
    assert again.rechecked == sum(1 for s in again.steps if PHASES[s.kind] == 3) == 3
    assert {s.state for s in again.steps if PHASES[s.kind] < 3} == {"done"}
    assert engine.execute(store, again, checksums=False) == []
    assert os.readlink(b(link)) == b(tree / "dst" / "a" / "f1")
    assert link.read_bytes() == b"one" and not (tree / "src").exists()
    journal.close()


def test_fs_path_keeps_non_utf8_bytes():
    assert fs_path(os.fsdecode(b"/tmp/x\xe9")) == b"/tmp/x\xe9"


def test_changes_are_synced_once_per_filesystem(tmp_path):
    """One syncfs for a tree on one filesystem; one per filesystem when a mount lies below."""
    from mv_helpers import tmpfs
    from omero_cli_ext.mv.execute import _one_per_filesystem
    base = tmp_path / "base"
    paths = [b(base / name / "f") for name in ("a", "b/c", "d")]
    for path in paths:
        os.makedirs(os.path.dirname(path))
    assert _one_per_filesystem(paths) == [b(base)]
    with tmpfs(str(base / "b")):
        os.makedirs(base / "b" / "c")
        found = _one_per_filesystem(paths)
        assert sorted(os.stat(d).st_dev for d in found) == \
            sorted({os.stat(os.path.dirname(p)).st_dev for p in paths})
        assert len(found) == 2
