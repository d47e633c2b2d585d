"""Shared set-up for the export tests (no tests here): a simulated server with a small world and
helpers to run `omero export --originals` on it and to snapshot directories."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from sim.builder import build_inplace_tree, build_uploaded, lab_server
from sim.launcher import run_cli
from sim.server import SimServer

from omero_cli_ext.export import state
from omero_cli_ext.export.manifest import MANIFEST_NAME


@dataclass
class World:
    root: str
    sim: SimServer
    project: int
    dataset: int
    inplace: object      # BuiltTree of ln_s filesets in the dataset
    uploaded: object     # BuiltTree of uploaded filesets in the dataset


def make_world(tmp_path, n_inplace: int = 3, n_uploaded: int = 2, files: int = 2) -> World:
    root = str(tmp_path / "sim")
    sim = lab_server(root, ("alice", "bob"))
    sim.add_group("other", "rw----")
    sim.add_user("carol", ["other"])
    project = sim.add_project("Proj", "alice")
    dataset = sim.add_dataset("Data", "alice", project=project)
    inplace = build_inplace_tree(sim, "alice", str(tmp_path / "src"), n_inplace, files,
                                 target=("Dataset", dataset))
    uploaded = build_uploaded(sim, "alice", str(tmp_path / "up"), n_uploaded, files,
                              target=("Dataset", dataset))
    return World(root, sim, project, dataset, inplace, uploaded)


def state_root(sim_root) -> str:
    """The --state-dir the tests give (beside the simulated server, never /var/lib)."""
    return str(sim_root).rstrip("/") + ".state"


def export(world_or_root, dest, *objects, user="alice", extra=(), owner="root"):
    """Run `omero export --originals DEST OBJ...` in-process; returns (rc, stdout, stderr)."""
    root = world_or_root.root if isinstance(world_or_root, World) else world_or_root
    argv = ["export", "--originals", str(dest), *objects]
    if owner:
        argv += ["--owner", owner]
    if "--state-dir" not in extra:
        argv += ["--state-dir", state_root(root)]
    return run_cli(root, argv + list(extra), user=user)


def state_dir(dest, root=None) -> str:
    """The state directory of DEST: under `root` (a --state-dir), or found under any test state
    root beside DEST's test directory."""
    key = state.key(os.stat(str(dest)))
    if root is None:
        base = os.path.dirname(os.path.abspath(str(dest)))
        while base != "/":
            for name in os.listdir(base):
                if name.endswith(".state") and os.path.isdir(os.path.join(base, name, key)):
                    return os.path.join(base, name, key)
            base = os.path.dirname(base)
        raise FileNotFoundError(f"no state directory for {dest}")
    return os.path.join(str(root), key)


def records(stdout: str, kind: str = None) -> list:
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return [r for r in lines if kind is None or r["type"] == kind]


def snapshot(path) -> dict:
    """Every name below `path` (not following symlinks) with its kind, inode and content digest."""
    result = {}
    path = str(path)
    if not os.path.lexists(path):
        return result
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            rel = os.path.relpath(full, path)
            if os.path.islink(full):
                result[rel] = ("link", os.readlink(full))
            elif os.path.isdir(full):
                result[rel] = ("dir", st.st_mode & 0o7777)
            else:
                with open(full, "rb") as stream:
                    result[rel] = ("file", st.st_ino, stream.read())
    return result


def exported_files(dest) -> dict:
    """DEST-relative path -> bytes of every exported file (manifest and temporaries excluded)."""
    found = {}
    for rel, info in snapshot(dest).items():
        if info[0] == "file" and not os.path.basename(rel).startswith(".omero-cli-ext"):
            found[rel] = info[2]
    return found


def manifest(dest) -> dict:
    """DEST's manifest document, its entry rows as dicts by column name."""
    with open(os.path.join(state_dir(dest), MANIFEST_NAME), encoding="utf-8") as stream:
        doc = json.load(stream)
    doc["entries"] = [dict(zip(doc["columns"], row)) for row in doc["entries"]]
    return doc
