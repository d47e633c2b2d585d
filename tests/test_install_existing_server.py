"""README "Install into an existing OMERO.server": one pip command into a virtualenv that already
has omero-py and zeroc-ice, as an OMERO.server host on the recommended platform (Rocky Linux 9,
Python 3.9) has. The pack must load its commands there and leave the server's omero-py and
zeroc-ice exactly as they were."""
import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import build_ice  # noqa: E402

# The oldest omero-py the pack supports, as an existing server virtualenv may hold it.
SERVER_OMERO_PY = "omero-py==5.19.8"
PLUGINS_LOAD = (
    "from omero.cli import CLI\n"
    "cli = CLI(); cli.loadplugins()\n"
    "for name in ('mv', 'import', 'export', 'status'):\n"
    "    assert name in cli.controls, name\n"
    "print(type(cli.controls['mv']).__module__)\n")


def server_python():
    """Python 3.9 when the machine has it (the recommended server platform), else this one."""
    found = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9.*/bin/python")))
    return found[-1] if found else sys.executable


def run(cmd, **kw):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kw)
    assert out.returncode == 0, f"{cmd}:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    return out.stdout


def versions(py):
    out = run([py, "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"])
    return dict(line.split("==", 1) for line in out.splitlines() if "==" in line)


@pytest.mark.slow
def test_one_pip_command_into_a_server_virtualenv(tmp_path):
    base = server_python()
    venv = tmp_path / "server-venv"
    run([base, "-m", "venv", str(venv)])
    py = str(venv / "bin" / "python")
    try:
        build_ice.ensure_ice(py, build_ice.default_cache())
    except build_ice.BuildError as err:
        pytest.fail(f"zeroc-ice for {base}: {err}")
    run([py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", SERVER_OMERO_PY])
    before = versions(py)

    # The README's command, with this checkout standing for the release.
    run([py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", ROOT])

    after = versions(py)
    for name in ("omero-py", "zeroc-ice"):
        assert after[name] == before[name], f"installing the pack changed {name}"
    assert "omero-cli-ext" in after
    # Outside the checkout, so the installed package (not this tree) is what loads.
    loaded = run([py, "-c", PLUGINS_LOAD], cwd=str(tmp_path))
    assert loaded.strip().startswith("omero_cli_ext.")
