"""Run the real `omero` CLI against the simulated server.

In-process: `run_cli(sim_root, argv, user=...) -> (rc, stdout, stderr)`. As a script (for tests that
kill the CLI): `python tests/sim/launcher.py --sim-root DIR --sim-user NAME <omero args...>` exits
with the CLI's return code; `script_command(sim_root, argv, user)` is that command line and
`script_env()` its environment.

Both build `omero.cli.CLI()`, call `loadplugins()` (so our plugins load through the real loader, as
`bin/omero` does), swap `omero_cli_ext.server.connect` for one that opens `SimServer(root).port(user)`
and, when `omero_cli_ext.importing.importer` exists, swap its `spawn` (which starts the Java
importer) for one that starts tests/sim/fake_importer.py with the same arguments. Production code has
no test back door: the swap is the launcher's.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import os
import subprocess
import sys
from typing import Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "launcher.py")
CHECKOUT = os.path.dirname(os.path.dirname(HERE))
# As a script: `import sim` from tests/, and omero_cli_ext from this work tree, not an older installed copy.
for _path in (CHECKOUT, os.path.dirname(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from sim.server import SimServer  # noqa: E402

ENV_ROOT = "OMERO_CLI_EXT_SIM_ROOT"
ENV_USER = "OMERO_CLI_EXT_SIM_USER"
ENV_GROUP = "OMERO_CLI_EXT_SIM_GROUP"
FAKE_IMPORTER = os.path.join(HERE, "fake_importer.py")
DEFAULT_USER = "root"


def sim_connect(sim_root: str, default_user: str, session: dict):
    """A replacement for omero_cli_ext.server.connect. The user is the command's `-u` (with
    `--sudo ADMIN`: ADMIN's session sudo-ing as that user), else `default_user`; `-g` picks the group.
    Every invocation is a new session (a new login) unless `-k KEY` names one the simulated server
    knows (`SimServer.open_session`, `SimPort.session_login()`), which it joins."""
    def connect(ctx, args):
        user = getattr(args, "user", None) or default_user
        group = getattr(args, "group", None)
        sudoer = getattr(args, "sudo", None)
        key = getattr(args, "key", None)
        server = SimServer(sim_root)
        if sudoer:
            port = server.port(sudoer).sudo(user)
        elif key and server.query("SELECT 1 FROM sim_session WHERE uuid = ?", (key,)):
            port = server.port(user, session=key)   # `-k KEY` joins an existing session
        else:
            port = server.port(user, group)
        session["user"], session["group"] = user, group
        return port
    return connect


def fake_spawn(sim_root: str, session: dict):
    """A replacement for omero_cli_ext.importing.importer.spawn(importer_args, **popen_kwargs):
    starts the fake importer with the CommandLineImporter arguments, as the session's user."""
    def spawn(importer_args: Sequence[str], **popen_kwargs):
        env = dict(popen_kwargs.pop("env", None) or os.environ)
        popen_kwargs.pop("java", None)   # the real spawn's Java command prefix (importer.JavaLaunch)
        env[ENV_ROOT] = sim_root
        env[ENV_USER] = session.get("user", DEFAULT_USER)
        if session.get("group"):
            env[ENV_GROUP] = session["group"]
        return subprocess.Popen([sys.executable, FAKE_IMPORTER, *importer_args], env=env,
                                **popen_kwargs)
    return spawn


@contextlib.contextmanager
def swapped(module_name: str, attribute: str, replacement):
    """Set module.attribute for the duration; skip silently when the module does not exist yet."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            yield
            return
        raise
    original = getattr(module, attribute)
    setattr(module, attribute, replacement)
    try:
        yield
    finally:
        setattr(module, attribute, original)


def invoke(sim_root: str, argv: Sequence[str], user: Optional[str] = None) -> int:
    """Run one omero command line on the simulated server; output goes to sys.stdout/sys.stderr."""
    from omero.cli import CLI, NonZeroReturnCode

    sim_root = os.path.abspath(sim_root)
    default_user = user or os.environ.get(ENV_USER) or DEFAULT_USER
    session: dict = {"user": default_user}
    cli = CLI(prog="omero")
    cli.loadplugins()
    with swapped("omero_cli_ext.server", "connect", sim_connect(sim_root, default_user, session)), \
            swapped("omero_cli_ext.importing.importer", "spawn", fake_spawn(sim_root, session)):
        try:
            cli.invoke(list(argv), strict=True)
        except NonZeroReturnCode as nzrc:
            return nzrc.rv
    return cli.rv


def run_cli(sim_root: str, argv: Sequence[str], user: Optional[str] = None) -> tuple:
    """In-process run; returns (rc, stdout, stderr) as text."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = invoke(sim_root, argv, user)
    return rc, out.getvalue(), err.getvalue()


def script_command(sim_root: str, argv: Sequence[str], user: Optional[str] = None) -> list:
    """The command line of `omero ARGV` on the simulated server in a process of its own."""
    return [sys.executable, SCRIPT, "--sim-root", sim_root,
            *(["--sim-user", user] if user else []), *argv]


def script_env(**extra) -> dict:
    """The environment of a script_command: omero_cli_ext from this work tree (its processes,
    workers and importers included), and `extra` variables."""
    return dict(os.environ, PYTHONPATH=CHECKOUT, **extra)


def main(argv: Sequence[str]) -> int:
    """`launcher.py [--sim-root DIR] [--sim-user NAME] <omero args...>` (env vars as defaults)."""
    argv = list(argv)
    sim_root, user = os.environ.get(ENV_ROOT), os.environ.get(ENV_USER)
    while argv and argv[0] in ("--sim-root", "--sim-user"):
        if len(argv) < 2:
            sys.stderr.write("%s needs a value\n" % argv[0])
            return 2
        flag, value, argv = argv[0], argv[1], argv[2:]
        if flag == "--sim-root":
            sim_root = value
        else:
            user = value
    if not sim_root:
        sys.stderr.write("usage: launcher.py --sim-root DIR [--sim-user NAME] <omero args...> "
                         "(or set %s)\n" % ENV_ROOT)
        return 2
    return invoke(sim_root, argv, user)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
