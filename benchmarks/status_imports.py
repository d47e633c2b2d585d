"""`omero status imports` at scale: 1 000, 5 000 and 10 000 imports on the simulated server.

Prints, per size, the time to the first full screen (one snapshot read through the port, classified
and rendered as the `--watch` view of a 50-line terminal) and the server round trips of that snapshot.
The simulated server counts a round trip per call the real adapter makes: a few queries per page of
fileset ids, never one per import; listImports is one call (the processes of other sessions are
never asked), and imports in a server step (every 50th here) add one call for the repository root
(their logs are looked at on disk). Target: first screen < 1 s at 10 000 imports.

    .venv/bin/python benchmarks/status_imports.py [--sizes 1000,5000,10000] [--root DIR]
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from rich.console import Console  # noqa: E402

from omero_cli_ext.cli.status_run import _rich_view  # noqa: E402
from omero_cli_ext.status.snapshot import ServerScope, Snapshot, read_server  # noqa: E402
from sim.server import SimServer  # noqa: E402

DAY = 86400.0
STALLED_AFTER = 900.0
# every 50th import is still running: a mix of stages, as a busy facility has
IN_PROGRESS_EVERY = 50


def grow(sim: SimServer, source: str, have: int, want: int) -> None:
    """Import filesets `have`..`want`-1: one small file each, some left mid-import."""
    with sim.transaction():
        for i in range(have, want):
            path = os.path.join(source, "f%06d.fake" % i)
            with open(path, "wb") as f:
                f.write(b"x" * 64)
            if i % IN_PROGRESS_EVERY == 0:
                sim.import_fileset("alice", [path], steps=(i // IN_PROGRESS_EVERY) % 3)
            else:
                sim.import_fileset("alice", [path])
    sim.advance(60)


def first_screen(sim: SimServer) -> tuple:
    """(seconds, round trips, imports listed, seconds in the simulated server's port calls) of one
    snapshot rendered as the live view."""
    sim.reset_round_trips()
    console = Console(file=io.StringIO(), width=160, height=50, force_terminal=True)
    start = time.perf_counter()
    port = _TimedPort(sim.port("alice"))
    user = port.current_user()
    view = read_server(port, ServerScope(owner_id=user.id, group_name=None, since_seconds=DAY),
                       STALLED_AFTER, user.id)
    snapshot = Snapshot(local_time=view.server_time, stalled_after=STALLED_AFTER, server=view)
    console.print(_rich_view(snapshot, console.height))
    elapsed = time.perf_counter() - start
    return elapsed, sim.round_trips, len(view.imports), port.seconds


class _TimedPort:
    """The simulated port, adding up the time spent inside its calls (the server's share)."""

    def __init__(self, port):
        self._port = port
        self.seconds = 0.0

    def __getattr__(self, name):
        method = getattr(self._port, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
        return timed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,5000,10000")
    parser.add_argument("--root", help="keep the simulated server here (default: a temp dir)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or tmp
        sim = SimServer(os.path.join(root, "sim"))
        sim.add_group("lab", "rwr---")
        sim.add_user("alice", ["lab"])
        source = os.path.join(root, "src")
        os.makedirs(source, exist_ok=True)
        have, rows = 0, []
        for size in sizes:
            t0 = time.perf_counter()
            grow(sim, source, have, size)
            have = size
            build = time.perf_counter() - t0
            elapsed, trips, listed, in_port = first_screen(sim)
            rows.append((size, listed, elapsed, trips))
            print("%6d imports (built in %5.1f s): first full screen %.3f s (simulated server "
                  "%.3f s, status itself %.3f s), %d round trips"
                  % (size, build, elapsed, in_port, elapsed - in_port, trips), flush=True)
        base = rows[0]
        print("ratios against %d imports: time x%.2f for x%.0f imports; round trips %d -> %d "
              "(pages of 500: %d -> %d)" % (base[0], rows[-1][2] / base[2], rows[-1][0] / base[0],
                                             base[3], rows[-1][3], -(-base[0] // 500),
                                             -(-rows[-1][0] // 500)))
        target = "met" if rows[-1][2] < 1.0 else "NOT met"
        print("target < 1 s at %d imports: %s (%.3f s)" % (rows[-1][0], target, rows[-1][2]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
