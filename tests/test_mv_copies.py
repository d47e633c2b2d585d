"""Copies across filesystems (ext4 /tmp to a tmpfs) keep extended attributes and holes, or warn
per file when the destination cannot hold the attributes."""
from __future__ import annotations

import errno
import os

from mv_helpers import World, manifest, repo_links, tmpfs


def _sparse_with_xattrs(path: str) -> None:
    with open(path, "r+b") as f:
        f.seek(4 << 20)
        f.write(b"tail")        # 4 MiB hole between the original bytes and this
    os.setxattr(path, "user.origin", b"microscope-3")
    os.setxattr(path, "trusted.lab", b"keep")


def test_a_cross_filesystem_move_keeps_holes_and_extended_attributes(tmp_path):
    world = World(str(tmp_path / "w"), n_filesets=3, files_per_fileset=2, odd_names=False)
    special = world.built.all_files[1]
    _sparse_with_xattrs(special)
    size = os.stat(special).st_size
    expected = manifest(world.repo)
    with tmpfs(str(tmp_path / "other"), "64m") as other:
        dst = os.path.join(other, "new")
        rc, out, err = world.mv(world.old, dst, "--verify", "checksum", server=False)
        assert rc == 0, err
        assert "extended attributes not kept" not in err
        moved = os.path.join(dst, os.path.relpath(special, world.old))
        st = os.stat(moved)
        assert st.st_size == size and st.st_blocks * 512 < 1 << 20   # the hole stayed a hole
        assert os.getxattr(moved, "user.origin") == b"microscope-3"
        assert os.getxattr(moved, "trusted.lab") == b"keep"
        assert manifest(world.repo) == expected
        assert all(t.startswith(os.fsencode(dst)) for t in repo_links(world.repo).values())


def test_attributes_the_destination_refuses_are_named_per_file(tmp_path, monkeypatch):
    world = World(str(tmp_path / "w"), n_filesets=2, files_per_fileset=1, odd_names=False)
    special = world.built.all_files[0]
    _sparse_with_xattrs(special)
    real = os.setxattr

    def refusing(target, name, value, *args, **kwargs):
        if isinstance(name, str) and name.startswith("trusted."):
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
        return real(target, name, value, *args, **kwargs)
    monkeypatch.setattr(os, "setxattr", refusing)
    with tmpfs(str(tmp_path / "other"), "64m") as other:
        dst = os.path.join(other, "new")
        rc, out, err = world.mv(world.old, dst, server=False)
        assert rc == 0, err
        moved = os.path.join(dst, os.path.relpath(special, world.old))
        assert f"warning: {moved}: extended attributes not kept (trusted.lab" in err
        assert os.getxattr(moved, "user.origin") == b"microscope-3"
