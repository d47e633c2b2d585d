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
