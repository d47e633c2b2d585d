"""`omero mv` without a usable session, through the real adapter's login (`ctx.conn`): modes
that need no server go on with a note when `--repo` names the repository, never prompt and never
end with omero's login codes (52, 42, 43, 12 clash with ours); modes that need the server end
with exit 20."""
from __future__ import annotations

import json
import os

import pytest

from mv_helpers import World

LOGINS = {
    "no stored session": [],
    "server down": ["-s", "localhost", "-p", "1", "-u", "alice", "-w", "secret"],
    "bad host": ["-s", "no-such-host.invalid", "-u", "alice", "-w", "secret"],
}


@pytest.fixture
def world(tmp_path, monkeypatch):
    monkeypatch.setenv("OMERO_SESSIONDIR", str(tmp_path / "sessions"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return World(str(tmp_path / "w"), n_filesets=4, files_per_fileset=2, odd_names=False)


def _invoke(argv, capsys):
    from omero.cli import CLI, NonZeroReturnCode
    cli = CLI()
    cli.loadplugins()
    try:
        cli.invoke(argv, strict=True)
        rc = cli.rv
    except NonZeroReturnCode as nzrc:
        rc = nzrc.rv
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("login", list(LOGINS))
def test_a_mode_needing_no_server_goes_on_with_a_note(world, capsys, login):
    new = os.path.join(world.data, "new")
    rc, out, err = _invoke(["mv", *LOGINS[login], "--repo", world.repo, world.old, new], capsys)
    assert rc == 0, err
    assert "note: no usable server session" in err
    assert not os.path.exists(world.old) and os.path.isdir(new)


@pytest.mark.parametrize("login", list(LOGINS))
def test_a_mode_needing_the_server_ends_with_exit_20(world, capsys, login):
    rc, out, err = _invoke(["mv", *LOGINS[login], "--json", "Fileset:1",
                            os.path.join(world.data, "x")], capsys)
    assert rc == 20, err
    assert "cannot reach the server" in err and "nothing was changed" in err
    refusal = json.loads(out.splitlines()[-1])
    assert refusal["type"] == "error" and refusal["code"] == 20


def test_without_repo_and_without_session_exit_20_says_to_name_the_repository(world, capsys):
    rc, out, err = _invoke(["mv", world.old, os.path.join(world.data, "new")], capsys)
    assert rc == 20 and "--repo DIR" in err
    assert os.path.isdir(world.old)


def test_a_server_error_during_the_run_ends_with_exit_20_and_a_json_error_line(tmp_path,
                                                                                monkeypatch):
    """docs/mv.md: with --json the last line is an "error" object whenever the code is not 0."""
    from sim import server as sim_server
    from omero_cli_ext.server import ServerError
    world = World(str(tmp_path / "w"), n_filesets=2, files_per_fileset=1, odd_names=False)

    def refuse(self, *args, **kwargs):
        raise ServerError("the server went away")
    monkeypatch.setattr(sim_server.SimPort, "current_user", refuse)   # asked once the run starts
    rc, out, err = world.mv("--json", "Fileset:1", os.path.join(world.data, "x"))
    assert rc == 20, err
    assert "server error: the server went away" in err
    refusal = json.loads(out.splitlines()[-1])
    assert refusal == {"type": "error", "code": 20,
                       "message": "server error: the server went away"}
