"""`omero mv` with paths spelt through symlinks: SRC, DST and --repo canonicalised for matching
and locking; --repair never choosing a file inside the ManagedRepository."""
from __future__ import annotations

import os

from mv_helpers import manifest, repo_links, world  # noqa: F401
from omero_cli_ext.mv import engine, errors
from omero_cli_ext.mv.locations import repo_place
from omero_cli_ext.mv.plan import Request
from omero_cli_ext.mv.store import JobStore
from omero_cli_ext.journal import open_journal


def test_symlinks_inside_src_by_any_spelling_follow_the_move(world):
    """SRC named through a symlinked parent; inside it, a link by SRC's real path, a relative
    link leaving the tree; a repository link through the first. All resolve after the move, to
    the moved files, and DST deeper than SRC."""
    alias = os.path.join(world.base, "alias")
    os.symlink(world.data, alias)
    real_old = os.path.realpath(world.old)
    first = world.built.all_files[0]
    inside = os.path.join(world.old, "batch_0", "by-real-path")
    os.symlink(os.path.join(real_old, os.path.relpath(first, world.old)), inside)
    outside = os.path.join(world.data, "outside.txt")
    with open(outside, "wb") as f:
        f.write(b"kept outside")
    leaving = os.path.join(world.old, "batch_0", "leaving")
    os.symlink(os.path.relpath(outside, os.path.dirname(leaving)), leaving)
    through = os.path.join(world.repo, "through-inner-link.fake")
    os.symlink(os.path.join(alias, "old", "batch_0", "by-real-path"), through)
    before = manifest(world.repo)
    os.makedirs(os.path.join(world.data, "deeper"))
    new = os.path.join(alias, "deeper", "new")
    rc, out, err = world.mv(os.path.join(alias, "old"), new, server=False)
    assert rc == 0, err
    assert not os.path.exists(world.old)
    assert manifest(world.repo) == before and None not in before.values()
    moved_inside = os.path.join(new, "batch_0", "by-real-path")
    assert os.readlink(moved_inside).startswith(new + "/")
    assert os.path.realpath(moved_inside) == os.path.realpath(
        os.path.join(new, os.path.relpath(first, world.old)))
    with open(os.path.join(new, "batch_0", "leaving"), "rb") as f:
        assert f.read() == b"kept outside"
    assert os.readlink(through).startswith(new + "/")


def test_a_job_started_through_one_spelling_of_the_repository_resumes_through_another(world):
    place = repo_place(os.fsencode(world.repo))
    journal = open_journal(os.fsdecode(place.default_journal))
    new = os.path.join(world.data, "new")
    request = Request("move", place.root, src=os.fsencode(world.old), dst=os.fsencode(new))
    prepared = engine.prepare(JobStore(journal), request, "omero mv OLD NEW")
    journal.close()   # journaled, never run: as after a kill -9 before the first step
    alias = os.path.join(world.base, "repo-alias")
    os.symlink(world.repo, alias)
    from sim.launcher import run_cli
    rc, out, err = run_cli(world.sim_root, ["mv", "--no-server", "--repo", alias, world.old, new])
    assert rc == 0, err
    assert f"resuming job {prepared.job.id}" in out
    assert not os.path.exists(world.old)


def test_repair_never_picks_a_file_inside_the_repository(world, tmp_path):
    """A search root holding the repository (through a symlink): the managed copy of the same
    name and size is skipped (counted), the real one outside is chosen."""
    up = world.uploaded(1, 1)
    fileset = world.sim.port("root").filesets([up.fileset_ids[0]])[up.fileset_ids[0]]
    managed = os.path.join(world.repo, fileset.entries[0].original_file.repo_path)
    name = os.path.basename(managed)
    elsewhere = tmp_path / "moved"
    elsewhere.mkdir()
    with open(managed, "rb") as f:
        (elsewhere / name).write_bytes(f.read())
    link = os.path.join(world.repo, "dangling", name)
    os.makedirs(os.path.dirname(link))
    os.symlink(os.path.join(str(tmp_path), "gone", name), link)
    alias = tmp_path / "sim-alias"
    os.symlink(world.sim_root, alias)
    rc, out, err = world.mv("--repair", "--search", str(alias), "--search", str(elsewhere),
                            server=False)
    assert rc == 0, err
    assert os.readlink(link) == str(elsewhere / name)
    assert "1 file(s) of the right name inside the ManagedRepository were not considered" in err
    # with only the repository to search, the link stays dangling: never a managed file
    os.unlink(str(elsewhere / name))
    os.symlink(os.path.join(str(tmp_path), "gone", name), link + ".2")
    rc, out, err = world.mv("--repair", "--search", str(alias), server=False)
    assert rc == errors.EXIT_UNRESOLVED, err
    assert not os.path.exists(link)
    assert set(repo_links(world.repo)) >= {os.fsencode(link), os.fsencode(link + ".2")}
