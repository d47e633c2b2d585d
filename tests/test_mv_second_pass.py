"""The runbook's second pass: files imported in place from OLD while (or after) it was moved
are moved by rerunning the move into the existing DST (merged, nothing overwritten), or named
by --links-only with the command that moves them."""
from __future__ import annotations

import os

from mv_helpers import World, manifest, repo_links, snapshot, world  # noqa: F401
from omero_cli_ext.mv import errors
from sim.builder import build_inplace_tree


def _import_more(world: World, name: str):
    """A user imports more data in place from OLD after the first pass."""
    return build_inplace_tree(world.sim, "alice", os.path.join(world.old, name), 3, 2,
                              odd_names=False)


def test_rerunning_the_move_merges_into_the_existing_dst(world):
    new = os.path.join(world.data, "new")
    rc, out, err = world.mv(world.old, new, server=False)
    assert rc == 0, err
    first_pass = {link: target for link, target in repo_links(world.repo).items()}
    _import_more(world, "later")
    # an identical copy of a file of the first pass sits in OLD again (someone copied it back)
    some = sorted(p for p in first_pass.values())[0]
    again = os.path.join(world.old, os.path.relpath(os.fsdecode(some), new))
    os.makedirs(os.path.dirname(again), exist_ok=True)
    with open(some, "rb") as f, open(again, "wb") as g:
        g.write(f.read())
    expected = manifest(world.repo)
    rc, out, err = world.mv(world.old, new, server=False)
    assert rc == 0, err
    assert "1 file(s) and link(s) already there and identical were adopted" in err + out
    assert not os.path.exists(world.old)
    assert manifest(world.repo) == expected and None not in expected.values()
    links = repo_links(world.repo)
    assert all(t.startswith(os.fsencode(new) + b"/") for t in links.values())
    assert all(links[link] == target for link, target in first_pass.items())


def test_a_conflict_in_the_existing_dst_refuses_before_anything_changes(world):
    new = os.path.join(world.data, "new")
    first = world.built.all_files[0]
    clash = os.path.join(new, os.path.relpath(first, world.old))
    os.makedirs(os.path.dirname(clash))
    with open(clash, "wb") as f:
        f.write(b"someone else's file")
    before = snapshot(world.repo, world.data)
    rc, out, err = world.mv(world.old, new, "--json", server=False)
    assert rc == errors.EXIT_DST_EXISTS, err
    assert "differ from what would be placed there" in err and clash in err
    assert "Nothing is ever overwritten" in err
    assert '"type": "error"' in out
    assert snapshot(world.repo, world.data) == before


def test_links_only_names_the_move_for_files_still_in_old(world):
    new = os.path.join(world.data, "moved")
    os.rename(world.old, new)
    later = _import_more(world, "later")
    rc, out, err = world.mv("--links-only", world.old, new, server=False)
    assert rc == 0, err
    assert f"{len(later.all_files)} link(s) point at files still in OLD" in err
    assert f"omero mv --repo {world.repo} {world.old} {new}" in err
    assert None not in manifest(world.repo).values()
    rc, out, err = world.mv(world.old, new, server=False)   # what the note says to run
    assert rc == 0, err
    assert None not in manifest(world.repo).values() and not os.path.exists(world.old)
