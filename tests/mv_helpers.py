"""Shared fixtures for the `omero mv` tests: a simulated server with in-place imports, disk
snapshots (to prove nothing changed), content manifests, tmpfs mounts for cross-FS cases, the
command in its own process, and an interrupt mid-job."""
from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess

import pytest

from omero_cli_ext.fsops import is_temp_name
from sim.builder import build_inplace_tree, build_uploaded, lab_server
from sim.launcher import run_cli, script_command


def snapshot(*roots) -> dict:
    """Every entry under `roots`: kind, link target or content digest, mode (bytes paths)."""
    found = {}
    for root in roots:
        root = os.fsencode(root)
        if not os.path.lexists(root):
            continue
        for directory, dirs, files in os.walk(root):
            found[directory] = ("dir", os.stat(directory).st_mode)
            for name in files + [d for d in dirs if os.path.islink(os.path.join(directory, d))]:
                path = os.path.join(directory, name)
                if os.path.islink(path):
                    found[path] = ("link", os.readlink(path))
                else:
                    with open(path, "rb") as f:
                        found[path] = ("file", hashlib.sha1(f.read()).hexdigest(),
                                       os.stat(path).st_mode)
    return found


def repo_links(repo) -> dict:
    """link path -> stored target for every symlink in the repository."""
    links = {}
    for directory, dirs, files in os.walk(os.fsencode(repo)):
        for name in files + dirs:
            path = os.path.join(directory, name)
            if os.path.islink(path):
                links[path] = os.readlink(path)
    return links


def manifest(repo) -> dict:
    """link path -> sha1 of the content it resolves to (None when dangling). A killed run's
    temporary link (renamed over a repository link a moment later, swept on resume) is not a
    repository link: the crash tests check separately that none is left at the end."""
    result = {}
    for link in repo_links(repo):
        if is_temp_name(os.path.basename(link)):
            continue
        try:
            with open(link, "rb") as f:
                result[link] = hashlib.sha1(f.read()).hexdigest()
        except OSError:
            result[link] = None
    return result


class World:
    """A simulated server (admin `root`, user `alice`), originals under `data/old` imported in
    place, a second user `bob` with an uploaded fileset."""

    def __init__(self, base: str, n_filesets: int = 30, files_per_fileset: int = 3,
                 odd_names: bool = True, file_size: int = 64):
        self.base = base
        self.sim_root = os.path.join(base, "sim")
        self.sim = lab_server(self.sim_root, ("alice", "bob"))
        self.data = os.path.join(base, "data")
        self.old = os.path.join(self.data, "old")
        self.built = build_inplace_tree(self.sim, "alice", self.old, n_filesets,
                                        files_per_fileset, odd_names=odd_names,
                                        file_size=file_size)
        self.repo = self.sim.repo_dir

    def uploaded(self, n: int = 2, files: int = 2):
        return build_uploaded(self.sim, "alice", os.path.join(self.base, "up-src"), n, files)

    def mv(self, *argv, user: str = "root", server: bool = True):
        args = ["mv", *argv]
        if not server:
            args += ["--no-server", "--repo", self.repo]
        return run_cli(self.sim_root, args, user=user)

    def mv_command(self, *argv) -> list:
        """`omero mv --no-server --repo REPO ARGV` as the command line of a process of its own
        (run with `sim.launcher.script_env()`)."""
        return script_command(self.sim_root, ["mv", "--no-server", "--repo", self.repo, *argv])


def interrupt_after_retargets(monkeypatch, count: int) -> None:
    """Ctrl-C (KeyboardInterrupt) in an in-process job once `count` links point at the new place:
    an unfinished job to resume, abandon or show. `monkeypatch.undo()` lifts it."""
    from omero_cli_ext.mv import execute
    real, calls = execute.Executor._retarget, []

    def retarget_then_interrupt(self, step):
        if len(calls) == count:
            raise KeyboardInterrupt()
        calls.append(step)
        real(self, step)
    monkeypatch.setattr(execute.Executor, "_retarget", retarget_then_interrupt)


@pytest.fixture
def world(tmp_path):
    return World(str(tmp_path))


@contextlib.contextmanager
def mounted(target: str, mount_args: list, what: str):
    """`mount MOUNT_ARGS TARGET` for the duration; skips the test visibly (`cannot WHAT here`)
    when mount is refused."""
    os.makedirs(target, exist_ok=True)
    done = subprocess.run(["mount", *mount_args, target], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot {what} here (needs root): {done.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", target], check=False)


def tmpfs(path: str, size: str = "64m", options: str = ""):
    """A tmpfs at `path` (another filesystem)."""
    opts = f"size={size}" + (f",{options}" if options else "")
    return mounted(path, ["-t", "tmpfs", "-o", opts, "tmpfs"], "mount a tmpfs")


def bind(source: str, target: str):
    """`source` seen again at `target` (a bind mount)."""
    return mounted(target, ["--bind", source], "bind-mount")
