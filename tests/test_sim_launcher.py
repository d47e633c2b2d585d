"""The launcher runs the real omero CLI (real plugin loader) against the simulated server."""
import os
import subprocess
import sys
import types

import pytest
import yaml

from sim import launcher
from sim.builder import lab_server
from sim.server import SimServer

PROBE = '''
from omero.cli import BaseControl


class Probe(BaseControl):
    """Opens the port like our controls do and prints who it is logged in as."""

    def _configure(self, parser):
        parser.add_login_arguments()
        parser.add_argument("--fail", action="store_true")
        parser.set_defaults(func=self.probe)

    def probe(self, args):
        from omero_cli_ext import server
        port = server.open_port(self.ctx, args)
        self.ctx.out("%s %s" % (port.current_user().name, port.repository().root))
        if args.fail:
            self.ctx.die(7, "probe failed")


register("simprobe", Probe, "test probe")  # noqa: F821
'''


@pytest.fixture
def sim_root(tmp_path, monkeypatch):
    plugins = tmp_path / "plugins_root" / "omero" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "simprobe_ext.py").write_text(PROBE)
    monkeypatch.syspath_prepend(str(tmp_path / "plugins_root"))
    return lab_server(str(tmp_path / "server"), ("alice", "bob")).root


def test_builtin_command_runs_in_process(sim_root):
    rc, out, err = launcher.run_cli(sim_root, ["version"])
    assert rc == 0 and out.strip()


def test_port_is_the_simulated_server_as_the_chosen_user(sim_root):
    repo = os.path.join(sim_root, "ManagedRepository")
    assert launcher.run_cli(sim_root, ["simprobe"], user="alice") == (0, "alice %s\n" % repo, "")
    rc, out, _ = launcher.run_cli(sim_root, ["simprobe", "-u", "bob"], user="alice")
    assert (rc, out.split()[0]) == (0, "bob")
    rc, out, _ = launcher.run_cli(sim_root, ["simprobe", "--sudo", "root", "-u", "bob"])
    assert (rc, out.split()[0]) == (0, "bob")
    from omero_cli_ext import server
    assert server.connect is server._default_connect          # swapped back afterwards


def test_exit_code_and_stderr_come_back(sim_root):
    rc, out, err = launcher.run_cli(sim_root, ["simprobe", "--fail"], user="alice")
    assert (rc, err) == (7, "probe failed\n")


def test_script_mode(sim_root, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(tmp_path / "plugins_root")] + sys.path))
    done = subprocess.run([sys.executable, launcher.__file__, "--sim-root", sim_root,
                           "--sim-user", "alice", "simprobe", "--fail"],
                          capture_output=True, text=True, env=env)
    assert (done.returncode, done.stdout.split()[0]) == (7, "alice")
    usage = subprocess.run([sys.executable, launcher.__file__, "version"], capture_output=True,
                           text=True, env=dict(env, OMERO_CLI_EXT_SIM_ROOT=""))
    assert usage.returncode == 2 and "--sim-root" in usage.stderr


def test_fake_spawn_starts_the_fake_importer_as_the_session_user(sim_root, tmp_path):
    source = tmp_path / "img.fake"
    source.write_bytes(b"pixels")
    spawn = launcher.fake_spawn(sim_root, {"user": "bob"})
    proc = spawn(["--output=yaml", str(source)], stdout=subprocess.PIPE,
                 stderr=subprocess.DEVNULL, text=True)
    out, _ = proc.communicate()
    assert proc.returncode == 0
    fid = yaml.safe_load(out)[0]["Fileset"]
    assert SimServer(sim_root).port("bob").filesets([fid])[fid].owner_name == "bob"


def test_swapped_restores_and_tolerates_missing_modules(monkeypatch):
    module = types.ModuleType("sim_swap_probe")
    module.spawn = "original"
    monkeypatch.setitem(sys.modules, "sim_swap_probe", module)
    with launcher.swapped("sim_swap_probe", "spawn", "fake"):
        assert module.spawn == "fake"
    assert module.spawn == "original"
    with launcher.swapped("omero_cli_ext.no_such_module", "spawn", "fake"):
        pass
