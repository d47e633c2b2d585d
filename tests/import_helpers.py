"""Shared set-up for the `omero import --resume` tests: a simulated server with a `lab` group, a
source directory of fake images, the CLI in-process and the command and environment of a driver
in its own process (tests/sim/launcher.py as a script)."""
from __future__ import annotations

import os

from sim.builder import lab_server
from sim.launcher import CHECKOUT, run_cli, script_command

# the fake importer's fault switches (tests/sim/fake_importer.py): none leaks in from the caller
SIM_SWITCHES = ("CRASH_AFTER", "HANG", "FAIL_PATTERN", "UPLOAD_FAIL_PATTERN",
                "SECONDS_PER_FILESET", "UPLOAD_SECONDS")


def import_world(tmp_path, monkeypatch, users=("alice", "bob")) -> tuple:
    """(sim, src): `users` in group `lab` of a server under tmp_path, an empty directory `src`;
    the journals (OMERO_USERDIR) under tmp_path and no fault switch set."""
    monkeypatch.setenv("OMERO_USERDIR", str(tmp_path / "userdir"))
    for name in SIM_SWITCHES:
        monkeypatch.delenv("OMERO_CLI_EXT_SIM_" + name, raising=False)
    sim = lab_server(str(tmp_path / "sim"), users)
    src = tmp_path / "src"
    src.mkdir()
    return sim, src


def fake_images(src, count: int, name: str = "img{:03d}.fake", size: int = 100) -> None:
    """`count` single-file filesets in `src`, the i-th `name.format(i)` of `size + i` bytes."""
    for i in range(count):
        (src / name.format(i)).write_bytes(b"x" * (size + i))


def imp(sim, *argv, user="alice"):
    """`omero import --resume ARGV` in-process as `user`: (rc, stdout, stderr)."""
    return run_cli(sim.root, ["import", "--resume", *argv], user=user)


def driver_command(sim_root, *argv, user="alice") -> list:
    """`omero import --resume ARGV` as `user` in its own process."""
    return script_command(sim_root, ["import", "--resume", *argv], user)


def driver_env(tmp_path, **switches) -> dict:
    """A driver process's environment: omero_cli_ext from this work tree (as pytest imports it),
    the journals under tmp_path, and fault switches (`SECONDS_PER_FILESET="0.05"`, ...)."""
    pythonpath = os.pathsep.join(p for p in (CHECKOUT, os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=pythonpath, OMERO_USERDIR=str(tmp_path / "userdir"),
                **{"OMERO_CLI_EXT_SIM_" + k: v for k, v in switches.items()})
