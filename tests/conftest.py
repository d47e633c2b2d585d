"""Test-wide fixtures. `tests/` is on sys.path (rootdir conftest), so `import sim` works."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from pg_fixture import *  # noqa: E402,F401,F403  (postgres_url: a throwaway PostgreSQL server)


@pytest.fixture
def omero_cli():
    """A real `omero.cli.CLI` with every plugin on sys.path loaded, as `bin/omero` would have it."""
    from omero.cli import CLI
    cli = CLI()
    cli.loadplugins()
    return cli


def require_unprivileged_python():
    """Skip (visibly) unless this interpreter can run as `nobody` via setpriv (root, util-linux, and an
    interpreter whose files `nobody` may read — a shared libpython under /root is not)."""
    import shutil
    import subprocess
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run a command as an unprivileged user")
    probe = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            sys.executable, "-c", "pass"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"{sys.executable} cannot run as nobody: {probe.stderr.strip()[:200]}")
