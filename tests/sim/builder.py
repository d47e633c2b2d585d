"""Build repositories with many filesets fast: real original files, real links, bulk SQL.

`build_inplace_tree` writes original files under a source directory and imports them in place
(`--transfer=ln_s`: absolute symlinks in the ManagedRepository); `build_uploaded` does the same with
uploaded copies. Every fileset goes through the same SimServer import path as a single import, inside
one SQLite transaction, so thousands of links take seconds.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

from sim.server import SimServer

# Names that tools get wrong: a space, a newline, bytes that are not UTF-8 (surrogate-escaped)
ODD_NAMES = ("with space.fake", "new\nline.fake", os.fsdecode(b"latin1-\xe9.fake"))


@dataclass
class BuiltTree:
    """What a build made: fileset ids in order and, per fileset, the client paths of its files."""
    fileset_ids: list = field(default_factory=list)
    files: dict = field(default_factory=dict)   # fileset id -> [absolute client path, ...]

    @property
    def all_files(self) -> list:
        return [f for fid in self.fileset_ids for f in self.files[fid]]


def lab_server(root: str, users=("alice",)):
    """A SimServer at `root` with group `lab` (read-only, rwr---) and `users` in it."""
    sim = SimServer(root)
    sim.add_group("lab", "rwr---")
    for user in users:
        sim.add_user(user, ["lab"])
    return sim


def _content(fileset_index: int, file_index: int, size: int) -> bytes:
    seed = ("fileset %d file %d\n" % (fileset_index, file_index)).encode()
    return (seed * (size // len(seed) + 1))[:size]


def write_tree(source_dir: str, n_filesets: int, files_per_fileset: int, *,
               nested: bool = True, odd_names: bool = False, file_size: int = 64,
               per_dir: int = 100) -> list:
    """Write the original files; returns one list of absolute paths per fileset.
    Layout: `source_dir/batch_K/set_I/file_J.fake` (`nested`), else `source_dir/set_I_file_J.fake`.
    With `odd_names`, the first filesets use ODD_NAMES as their main file names."""
    source_dir = os.path.abspath(source_dir)
    groups = []
    for i in range(n_filesets):
        if nested:
            directory = os.path.join(source_dir, "batch_%d" % (i // per_dir), "set_%d" % i)
            names = ["file_%d.fake" % j for j in range(files_per_fileset)]
        else:
            directory = source_dir
            names = ["set_%d_file_%d.fake" % (i, j) for j in range(files_per_fileset)]
        if odd_names and i < len(ODD_NAMES):
            names[0] = ("set_%d_" % i if not nested else "") + ODD_NAMES[i]
        os.makedirs(directory, exist_ok=True)
        paths = []
        for j, name in enumerate(names):
            path = os.path.join(directory, name)
            with open(path, "wb") as f:
                f.write(_content(i, j, file_size))
            paths.append(path)
        groups.append(paths)
    return groups


def _import_all(sim, owner: str, groups: list, transfer: str, group: Optional[str],
                target: Optional[tuple], images: int) -> BuiltTree:
    built = BuiltTree()
    with sim.transaction():
        for paths in groups:
            fid = sim.import_fileset(owner, paths, transfer=transfer, group=group, target=target,
                                     images=images)
            built.fileset_ids.append(fid)
            built.files[fid] = paths
    return built


def build_inplace_tree(sim, owner: str, source_dir: str, n_filesets: int, files_per_fileset: int,
                       *, group: Optional[str] = None, target: Optional[tuple] = None,
                       nested: bool = True, odd_names: bool = False, file_size: int = 64,
                       images: int = 1, transfer: str = "ln_s") -> BuiltTree:
    """Originals under `source_dir`, imported in place (absolute symlinks by default)."""
    groups = write_tree(source_dir, n_filesets, files_per_fileset, nested=nested,
                        odd_names=odd_names, file_size=file_size)
    return _import_all(sim, owner, groups, transfer, group, target, images)


def build_uploaded(sim, owner: str, source_dir: str, n_filesets: int, files_per_fileset: int,
                   *, group: Optional[str] = None, target: Optional[tuple] = None,
                   nested: bool = True, odd_names: bool = False, file_size: int = 64,
                   images: int = 1) -> BuiltTree:
    """Originals under `source_dir`, uploaded (real copies in the repository)."""
    groups = write_tree(source_dir, n_filesets, files_per_fileset, nested=nested,
                        odd_names=odd_names, file_size=file_size)
    return _import_all(sim, owner, groups, "upload", group, target, images)
