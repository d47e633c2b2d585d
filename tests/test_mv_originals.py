"""Originals that no longer match the server's record, and imports still running: found before
anything changes (sizes, running imports) or at the copy (checksums), named with their
OriginalFile / Fileset ids, never blocking the repository afterwards."""
from __future__ import annotations

import json
import os

from mv_helpers import World, manifest, repo_links, snapshot, tmpfs, world  # noqa: F401
from omero_cli_ext.mv import errors


def _file_id(world: World, path: str) -> int:
    port = world.sim.port("root")
    rel = os.path.relpath(path, world.repo)
    ((fileset, original),) = port.files_by_repo_paths([rel]).values()
    return original.id


def _link_to(world: World, original: str) -> str:
    return next(os.fsdecode(link) for link, target in repo_links(world.repo).items()
                if target == os.fsencode(original))


def test_a_size_mismatch_is_refused_before_anything_changes_then_skipped(world):
    grown = world.built.all_files[4]
    with open(grown, "ab") as f:
        f.write(b"appended after the import")
    link = _link_to(world, grown)
    file_id = _file_id(world, link)
    before = snapshot(world.repo, world.data)
    new = os.path.join(world.data, "new")
    rc, out, err = world.mv(world.old, new, "--json")
    assert rc == errors.EXIT_MISMATCH, err
    assert f"OriginalFile:{file_id}" in err and "recorded by the server" in err
    assert json.loads(out.splitlines()[-1])["code"] == errors.EXIT_MISMATCH
    assert snapshot(world.repo, world.data) == before
    rc, out, err = world.mv(world.old, new, "--skip-mismatched")
    assert rc == 0, err
    assert os.path.isfile(grown) and os.readlink(link) == grown   # left where it was
    others = {l: t for l, t in repo_links(world.repo).items() if l != os.fsencode(link)}
    assert all(t.startswith(os.fsencode(new) + b"/") for t in others.values())
    assert None not in manifest(world.repo).values()


def test_a_corrupt_original_is_named_as_such_and_does_not_block(world, tmp_path):
    damaged = world.built.all_files[2]
    with open(damaged, "r+b") as f:
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 0xFF]))   # same size, other bytes
    link = _link_to(world, damaged)
    before = manifest(world.repo)
    with tmpfs(str(tmp_path / "other")) as other:
        dst = os.path.join(other, "new")
        rc, out, err = world.mv(world.old, dst)
        assert rc == errors.EXIT_MISMATCH, err
        assert f"the original {damaged}" in err and "not by this copy" in err
        assert "--skip-mismatched" in err and "the job is closed" in err
        assert manifest(world.repo) == before and os.listdir(other) == []
        # nothing blocks the repository: another command runs (no exit 13)
        rc, out, err = world.mv(world.old, os.path.join(world.data, "elsewhere"), "--dry-run")
        assert rc == 0, err
        rc, out, err = world.mv(world.old, dst, "--skip-mismatched")
        assert rc == 0, err
        assert "does not match its recorded checksum" in err
        assert os.readlink(link) == damaged and os.path.isfile(damaged)
        moved = [t for l, t in repo_links(world.repo).items() if l != os.fsencode(link)]
        assert moved and all(t.startswith(os.fsencode(dst) + b"/") for t in moved)


def test_offload_of_filesets_still_being_imported_is_refused_unless_forced(world, tmp_path):
    src = tmp_path / "uploads"
    src.mkdir()
    paths = []
    for name in ("a.fake", "b.fake", "c.fake"):
        (src / name).write_bytes(b"x" * 100)
        paths.append(str(src / name))
    running = world.sim.import_fileset("alice", [paths[0]], steps=1)
    half = world.sim.import_fileset("alice", [paths[1], paths[2]], outcome="client-death")
    user_dir = os.path.join(world.repo, "alice_2")
    assert os.path.isdir(user_dir)
    before = snapshot(world.repo, world.data)
    dst = str(tmp_path / "tier")
    rc, out, err = world.mv(user_dir, dst)
    assert rc == errors.EXIT_IMPORTING, err
    assert f"Fileset:{running}: " in err and f"Fileset:{half}: uploading" in err
    assert snapshot(world.repo, world.data) == before
    rc, out, err = world.mv(user_dir, dst, "--force")
    assert rc == 0, err
    assert "--force: 2 fileset(s) still being imported are included" in err
