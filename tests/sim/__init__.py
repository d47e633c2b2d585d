"""A simulated OMERO server for tests: state in SQLite, a real ManagedRepository directory on disk.

See tests/sim/README.md and docs/development.md for what it simulates and which OMERO source backs
each behaviour.
"""
from .server import SimServer, SimPort  # noqa: F401
