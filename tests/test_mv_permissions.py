"""`omero mv` as a real unprivileged POSIX user (`nobody`, through setpriv): the pre-flight
refuses before anything changes when the job would have to change directories the user cannot
write, and the journal and lock are shared by root's runs and the repository owner's."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

from mv_helpers import World, manifest, repo_links, snapshot
from omero_cli_ext.mv import errors
from omero_cli_ext.mv.locations import repo_place
from sim.launcher import run_cli, script_env
from unprivileged import NOBODY, nobody_command, require_unprivileged_python


@pytest.fixture
def owned_by_nobody():
    """A world whose every file belongs to `nobody` (the repository's owner here)."""
    require_unprivileged_python()
    base = tempfile.mkdtemp(prefix="mv-owner-", dir="/tmp")
    try:
        os.chmod(base, 0o755)
        world = World(base, n_filesets=6, files_per_fileset=2, odd_names=False)
        for directory, dirs, files in os.walk(base):
            os.lchown(directory, NOBODY, NOBODY)
            for name in files + dirs:
                os.lchown(os.path.join(directory, name), NOBODY, NOBODY)
        yield world
    finally:
        shutil.rmtree(base, ignore_errors=True)


def as_nobody(world: World, *argv) -> subprocess.CompletedProcess:
    return subprocess.run(nobody_command(world.mv_command(*argv)), capture_output=True, text=True,
                          env=script_env(HOME=world.base), timeout=300)


def test_a_repository_directory_the_user_cannot_write_is_refused_before_any_copy(owned_by_nobody):
    world = owned_by_nobody
    links = sorted(repo_links(world.repo))
    foreign = os.path.dirname(links[0])        # another user's directory of links
    os.chown(foreign, 0, 0)
    os.chmod(foreign, 0o755)
    before = snapshot(world.repo, world.data)
    done = as_nobody(world, world.old, os.path.join(world.data, "new"))
    assert done.returncode == errors.EXIT_REPO_PERMISSION, done.stderr
    assert "cannot write" in done.stderr and os.fsdecode(foreign) in done.stderr
    assert "nothing was changed" in done.stderr
    assert snapshot(world.repo, world.data) == before   # no copy, no DST
    # no job was journaled: once fixed, the same command runs (not refused as another's job)
    os.chown(foreign, NOBODY, NOBODY)
    done = as_nobody(world, world.old, os.path.join(world.data, "new"))
    assert done.returncode == 0, done.stderr


def test_root_and_the_repository_owner_share_one_journal_and_lock(owned_by_nobody):
    world = owned_by_nobody
    expected = manifest(world.repo)
    new = os.path.join(world.data, "new")
    rc, out, err = run_cli(world.sim_root, ["mv", "--no-server", "--repo", world.repo,
                                            "--dry-run", world.old, new])
    assert rc == 0, err
    # root runs a job first: the control directory it makes belongs to the repository's owner
    rc, out, err = run_cli(world.sim_root, ["mv", "--no-server", "--repo", world.repo,
                                            world.old, new])
    assert rc == 0, err
    control = repo_place(os.fsencode(world.repo)).control_dir
    st = os.stat(control)
    assert (st.st_uid, st.st_mode & 0o777) == (NOBODY, 0o700)
    assert {os.stat(os.path.join(control, n)).st_uid for n in os.listdir(control)} == {NOBODY}
    # the owner's run sees root's finished job (and so would see an unfinished one)
    done = as_nobody(world, world.old, new)
    assert done.returncode == 0, done.stderr
    assert "finished this already" in done.stdout + done.stderr
    assert manifest(world.repo) == expected


def test_a_control_directory_the_user_cannot_use_is_refused_with_where_it_must_be(owned_by_nobody):
    world = owned_by_nobody
    control = repo_place(os.fsencode(world.repo)).control_dir
    os.mkdir(control, 0o700)   # root's, not handed over
    before = snapshot(world.repo, world.data)
    done = as_nobody(world, world.old, os.path.join(world.data, "new"))
    assert done.returncode == errors.EXIT_JOURNAL, done.stderr
    assert os.fsdecode(control) in done.stderr and "must be in" in done.stderr
    assert snapshot(world.repo, world.data) == before


def test_root_never_writes_through_a_link_planted_as_the_journal(tmp_path):
    """The repository's owner can write the control directory; a symlink or hard link planted
    there as the journal must not make root's run write to another file."""
    world = World(str(tmp_path / "w"), n_filesets=2, files_per_fileset=1, odd_names=False)
    place = repo_place(os.fsencode(world.repo))
    os.makedirs(place.control_dir, mode=0o700)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    os.symlink(str(victim), place.default_journal)
    rc, out, err = run_cli(world.sim_root, ["mv", "--no-server", "--repo", world.repo,
                                            world.old, os.path.join(world.data, "new")])
    assert rc == errors.EXIT_JOURNAL and "not a plain file of its own" in err
    assert victim.read_bytes() == b"precious"
    os.unlink(place.default_journal)
    os.link(str(victim), place.default_journal)
    rc, out, err = run_cli(world.sim_root, ["mv", "--no-server", "--repo", world.repo,
                                            world.old, os.path.join(world.data, "new")])
    assert rc == errors.EXIT_JOURNAL and victim.read_bytes() == b"precious"
