"""Integration tests against a real OMERO server: skipped unless ICE_CONFIG or OMERO_HOST is set.

Conventions of ome/omero-test-infra: the server runs with root password `omero` (its .env ROOTPASS),
and its `cli` stage runs the tests inside the server container with
ICE_CONFIG=$OMERO_DIST/etc/ice.config. Outside it, set OMERO_HOST (and OMERO_PORT, OMERO_USER,
OMERO_ROOT_PASS when they differ from 4064, root, omero).
"""
from __future__ import annotations

import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ENABLED = bool(os.environ.get("ICE_CONFIG") or os.environ.get("OMERO_HOST"))


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a real OMERO server: set ICE_CONFIG or OMERO_HOST")
    for item in items:
        if str(item.fspath).startswith(HERE + os.sep):
            item.add_marker(pytest.mark.integration)
            if not ENABLED:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def root_client():
    """A root session (omero-test-infra: root/omero), closed at the end of the run."""
    import omero.clients  # noqa: F401
    import omero
    host = os.environ.get("OMERO_HOST")
    port = int(os.environ.get("OMERO_PORT", "4064"))
    client = omero.client(host, port) if host else omero.client()
    client.createSession(os.environ.get("OMERO_USER", "root"),
                         os.environ.get("OMERO_ROOT_PASS", "omero"))
    yield client
    client.closeSession()


@pytest.fixture
def omero_port(root_client):
    """The adapter on the root session (the session stays open for the other tests)."""
    from omero_cli_ext.omero_adapter import OmeroPort
    return OmeroPort(root_client)
