"""`omero mv` refusals: each with its message, its documented exit code, and no change on disk."""
from __future__ import annotations

import os
import shutil
import subprocess

from unprivileged import nobody_command, require_unprivileged_python
from mv_helpers import World, snapshot, tmpfs, world  # noqa: F401
from omero_cli_ext.journal import open_journal
from omero_cli_ext.mv import errors
from sim.launcher import run_cli, script_env


def refused(world, argv, code, words, server=False, user="root", extra_roots=()):
    before = snapshot(world.repo, world.data, *extra_roots)
    rc, out, err = world.mv(*argv, server=server, user=user)
    assert rc == code, (rc, out, err)
    for word in words:
        assert word in err, err
    assert snapshot(world.repo, world.data, *extra_roots) == before
    return err


def test_src_missing(world):
    refused(world, [os.path.join(world.data, "nope"), os.path.join(world.data, "new")],
            errors.EXIT_SRC_MISSING, ["does not exist"])



def test_a_mistyped_fileset_ref_is_named_as_such(world):
    """`Fileset:abc`, `Fileset:-1`, `fileset:3`: a Fileset:ID gone wrong, not a missing path in the
    current directory."""
    for ref in ("Fileset:abc", "Fileset:-1", "fileset:3", "Fileset:99999999999999999999999",
                "Fileset:\u0663", "Fileset:1_0", "Fileset: 3"):
        for argv in ([ref, os.path.join(world.data, "off")], ["--inline", ref]):
            err = refused(world, argv, errors.EXIT_USAGE, [f"{ref} is not Fileset:ID"])
            assert len(err.strip().splitlines()) == 1, err


def test_what_argparse_refuses_leaves_stdout_empty_with_json(world):
    """docs/mv.md: no "error" record then, only argparse's usage on stderr (exit 2)."""
    rc, out, err = world.mv("--json", "--workers", "abc", world.old, world.old + "-new")
    assert (rc, out) == (errors.EXIT_USAGE, "") and "--workers" in err


def test_dst_exists_and_is_not_a_directory(world):
    """(An existing directory is merged into: tests/test_mv_second_pass.py.)"""
    with open(os.path.join(world.data, "there"), "wb") as f:
        f.write(b"a file")
    refused(world, [world.old, os.path.join(world.data, "there")], errors.EXIT_DST_EXISTS,
            ["exists and is not a directory"])
    os.symlink(world.base, os.path.join(world.data, "alias"))
    refused(world, [world.old, os.path.join(world.data, "alias")], errors.EXIT_DST_EXISTS,
            ["a symlink"])


def test_dst_inside_src(world):
    refused(world, [world.old, os.path.join(world.old, "sub")], errors.EXIT_BAD_RELATION,
            ["inside SRC"])


def test_src_equals_dst(world):
    refused(world, [world.old, world.old + "/"], errors.EXIT_BAD_RELATION, ["same place"])


def test_src_is_or_contains_the_repository(world):
    refused(world, [world.base, os.path.join(world.data, "new")], errors.EXIT_REPO_OVERLAP,
            ["contains the repository root"])
    refused(world, [world.repo, os.path.join(world.data, "new")], errors.EXIT_REPO_OVERLAP,
            ["repository root"])


def test_no_links_into_src_unless_forced(world):
    lonely = os.path.join(world.data, "lonely")
    os.makedirs(lonely)
    with open(os.path.join(lonely, "f"), "wb") as f:
        f.write(b"data")
    refused(world, [lonely, os.path.join(world.data, "moved")], errors.EXIT_NO_LINKS,
            ["no repository link points into", "--force"])
    rc, out, err = world.mv(lonely, os.path.join(world.data, "moved"), "--force", server=False)
    assert rc == 0, err
    assert os.path.exists(os.path.join(world.data, "moved", "f")) and not os.path.exists(lonely)


def test_symlink_loop_in_scope_is_refused_and_elsewhere_ignored(world):
    elsewhere = os.path.join(world.repo, "loops")
    os.makedirs(elsewhere)
    os.symlink("..", os.path.join(elsewhere, "up"))          # a directory loop
    os.symlink("self", os.path.join(elsewhere, "self"))      # a link loop
    looping = os.path.join(world.old, "loop.fake")
    os.symlink(looping, looping)
    os.symlink(looping, os.path.join(world.repo, "into-loop.fake"))
    refused(world, [world.old, os.path.join(world.data, "new")], errors.EXIT_SYMLINK_LOOP,
            ["symlink loop", "into-loop.fake"])
    os.unlink(os.path.join(world.repo, "into-loop.fake"))
    rc, out, err = world.mv(world.old, os.path.join(world.data, "new"), server=False)
    assert rc == 0, err
    assert os.readlink(os.path.join(elsewhere, "up")) == ".."
    assert os.readlink(os.path.join(elsewhere, "self")) == "self"


def test_destination_read_only(world, tmp_path):
    with tmpfs(str(tmp_path / "ro"), "1m", "ro") as ro:
        refused(world, [world.old, os.path.join(ro, "new")], errors.EXIT_DST_UNWRITABLE,
                ["read-only"])


def test_destination_full_is_refused_before_copying(tmp_path):
    w = World(str(tmp_path), n_filesets=12, files_per_fileset=2, odd_names=False,
              file_size=200_000)
    with tmpfs(str(tmp_path / "small"), "2m") as small:
        refused(w, [w.old, os.path.join(small, "new")], errors.EXIT_NO_SPACE,
                ["not enough space"], extra_roots=(small,))


def test_destination_full_during_copy_removes_partial_copies(tmp_path, monkeypatch):
    """The free-space estimate is fooled (another writer took the space after the check): the
    copy fails with ENOSPC, every copy made is removed, the sources and links are intact."""
    from omero_cli_ext.mv import preflight
    monkeypatch.setattr(preflight, "free_space", lambda path: (4096, 1 << 40, None))
    w = World(str(tmp_path), n_filesets=12, files_per_fileset=2, odd_names=False,
              file_size=200_000)
    with tmpfs(str(tmp_path / "small"), "2m") as small:
        err = refused(w, [w.old, os.path.join(small, "new")], errors.EXIT_NO_SPACE,
                      ["copies made so far were removed"], extra_roots=(small,))
        assert os.listdir(small) == []
    # the failed job is closed: a different command is not refused because of it
    rc, out, err = w.mv(w.old, os.path.join(w.data, "new"), server=False)
    assert rc == 0, err


def test_permission_denied_on_a_repository_directory():
    """Run as `nobody` (setpriv): a repository directory it cannot read stops the scan."""
    require_unprivileged_python()
    import tempfile
    base = tempfile.mkdtemp(prefix="mv-perm-", dir="/tmp")
    try:
        os.chmod(base, 0o755)
        world = World(base, n_filesets=5, files_per_fileset=2, odd_names=False)
        locked = os.path.join(world.repo, "locked")
        os.makedirs(locked)
        for directory, dirs, files in os.walk(base):
            os.chmod(directory, 0o777)
            for name in files:
                if not os.path.islink(os.path.join(directory, name)):
                    os.chmod(os.path.join(directory, name), 0o666)
        os.chmod(locked, 0o700)
        before = snapshot(world.repo, world.data)
        done = subprocess.run(
            nobody_command(world.mv_command(world.old, os.path.join(world.data, "new"))),
            capture_output=True, text=True, env=script_env(HOME=base), timeout=120)
        assert done.returncode == errors.EXIT_REPO_PERMISSION, done.stderr
        assert "permission denied reading" in done.stderr and "locked" in done.stderr
        assert snapshot(world.repo, world.data) == before
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_second_concurrent_mv_is_refused(world):
    from omero_cli_ext.mv.locations import ensure_control_dir, repo_place
    place = repo_place(os.fsencode(world.repo))
    journal = open_journal(os.fsdecode(place.default_journal))
    with journal.writer_lock(place.lock_name, directory=os.fsdecode(ensure_control_dir(place))):
        refused(world, [world.old, os.path.join(world.data, "new")], errors.EXIT_BUSY,
                ["another omero mv is running", f"process {os.getpid()}"])
        # the same repository through a symlinked path: the same lock
        alias = os.path.join(world.base, "repo-alias")
        os.symlink(world.repo, alias)
        rc, out, err = run_cli(world.sim_root, ["mv", "--no-server", "--repo", alias, world.old,
                                                os.path.join(world.data, "new")])
        assert rc == errors.EXIT_BUSY, err
    journal.close()


def test_unfinished_job_with_other_arguments_is_refused_then_abandoned(world):
    from omero_cli_ext.mv import engine
    from omero_cli_ext.mv.plan import Request
    from omero_cli_ext.mv.store import JobStore
    from omero_cli_ext.mv.tree import fs_path
    journal = open_journal(os.path.join(world.sim_root, ".omero-cli-ext", "mv.sqlite"))
    request = Request("move", fs_path(world.repo), src=fs_path(world.old),
                      dst=fs_path(os.path.join(world.data, "first")))
    prepared = engine.prepare(JobStore(journal), request, "omero mv OLD first")
    journal.close()   # journaled, never run: as after a kill -9 before the first step
    err = refused(world, [world.old, os.path.join(world.data, "second")],
                  errors.EXIT_OTHER_JOB, [f"job {prepared.job.id}", "omero mv OLD first",
                                          "--abandon", "rerun exactly that command"])
    rc, out, err = world.mv("--abandon", server=False)
    assert rc == 0 and f"abandoned job {prepared.job.id}" in out
    rc, out, err = world.mv(world.old, os.path.join(world.data, "second"), server=False)
    assert rc == 0, err


def test_journal_of_another_program_is_refused(world):
    bogus = os.path.join(world.base, "bogus.sqlite")
    with open(bogus, "wb") as f:
        f.write(b"this is not a database" * 100)
    refused(world, ["--journal", bogus, world.old, os.path.join(world.data, "new")],
            errors.EXIT_JOURNAL, ["not a journal"])


def test_fileset_not_found_or_not_readable(world):
    world.sim.add_group("private", "rw----")
    world.sim.add_user("carol", ["private"])
    up = World.uploaded(world, 1, 1)
    fid = up.fileset_ids[0]
    refused(world, ["Fileset:999999", os.path.join(world.data, "x")], 22, ["not found"],
            server=True)
    # alice's fileset in "lab" is not readable by carol, and carol is no admin either way
    refused(world, [f"Fileset:{fid}", os.path.join(world.data, "x")], 21,
            ["WriteManagedRepo"], server=True, user="carol")


def test_offload_by_a_non_admin(world):
    up = World.uploaded(world, 1, 1)
    refused(world, [f"Fileset:{up.fileset_ids[0]}", os.path.join(world.data, "x")], 21,
            ["needs an administrator with the WriteManagedRepo privilege"], server=True,
            user="alice")


def test_usage_errors(world):
    refused(world, ["--repair"], 2, ["--search"])
    refused(world, ["--inline", world.old, world.data], 2, ["one repository path"])
    refused(world, [world.old], 2, ["usage"])


def test_workers_must_be_a_positive_whole_number(world):
    for bad in ("0", "-2", "two"):
        refused(world, [world.old, os.path.join(world.data, "new"), "--workers", bad],
                errors.EXIT_USAGE, ["--workers"])


def test_a_dead_worker_process_stops_the_job_for_a_rerun(world, monkeypatch):
    from omero_cli_ext.mv import execute
    from omero_cli_ext.workers import WorkerFailed, parallel_map

    def dying(func, items, workers, **kw):
        if items and getattr(items[0], "kind", None) == "retarget":
            raise WorkerFailed("a worker process ended with status -9")
        return parallel_map(func, items, workers, **kw)

    monkeypatch.setattr(execute, "parallel_map", dying)
    new = os.path.join(world.data, "new")
    rc, out, err = world.mv(world.old, new, "--workers", "2", server=False)
    assert rc == errors.EXIT_INTERRUPTED, err
    assert "status -9" in err and "rerun the same command" in err
    monkeypatch.undo()
    rc, out, err = world.mv(world.old, new, "--workers", "2", server=False)
    assert rc == 0, err
    assert not os.path.exists(world.old)
