"""Benchmarks of `omero import --resume` (ratios and timings printed, nothing asserted).

1. Resume decision on a large journal: the time a rerun needs to decide what remains (load the
   job, find the filesets in doubt, count states, claim the next chunk) on journals of 25k, 50k
   and 100k filesets (half done, one chunk in doubt). Target: <= 2 s at 100k, linear.
2. Driver overhead: one `--resume` run of N filesets in chunks of 50 against the simulated
   server, in-process (tests/sim/launcher.py run_cli) in a fresh Python process per run, so that
   every run pays every import. The fake importer's own time is the lifetime of its processes in
   that same run (planning listing included); the rest of the wall time is split into:
   - omero CLI start-up: `import omero.cli`, CLI(), loading every plugin, parsing the command line
     (omero-py's own cost, the same for plain `omero import`; reported, not counted as driver);
   - the driver: importing omero-cli-ext's modules, the work before the listing (arguments,
     session, importer options), planning (reading the listing, stat of every file, the plan
     written), the time between chunk importers (claim, journal, server query), the end.
   Target: <= 5 % at chunks of 50. Run with the fake's bare cost (~4 ms per fileset, far below a
   real import) and with 50 ms of busy time per fileset (still below a real import).

Run: .venv/bin/python benchmarks/import_resume.py [--filesets 1000] [--skip-decision]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]


# omero-cli-ext is imported in the functions: a part 2 run times its import
def build_journal(path: str, n: int) -> None:
    from omero_cli_ext.importing import store
    from omero_cli_ext.journal import open_journal

    journal = open_journal(path)
    store.ensure_schema(journal)
    plan = [store.PlannedFileset(idx=i, main=f"/data/plate{i // 1000}/img{i:06d}.fake",
                                 files=(f"/data/plate{i // 1000}/img{i:06d}.fake",),
                                 size=1000 + i, reader="loci.formats.in.FakeReader",
                                 chunk=i // 50) for i in range(n)]
    record = store.JobRecord(job="bench", created=store.iso(store.utc_now()), user_name="u",
                             owner_id=1, paths=("/data",), target="", options=(),
                             command="", chunk_size=50, chunk_bytes=None, filesets=n,
                             bytes=sum(f.size for f in plan), chunks=n // 50)
    jobs = store.JobStore(journal, "bench")
    jobs.create(record, plan)
    half = n // 2
    journal.execute("UPDATE import_fileset SET state = 'done', fileset_id = idx WHERE idx < ?",
                    (half,))
    journal.execute("UPDATE import_chunk SET state = 'done' WHERE chunk < ?", (half // 50,))
    doubt = half // 50
    journal.execute("UPDATE import_fileset SET state = 'running' WHERE chunk = ?", (doubt,))
    journal.execute("UPDATE import_chunk SET state = 'running', host = 'h', pid = 1, "
                    "lease_until = '2000-01-01T00:00:00.000+00:00' WHERE chunk = ?", (doubt,))
    journal.close()


def decide(path: str) -> tuple:
    from omero_cli_ext.importing import store
    from omero_cli_ext.journal import open_journal

    start = time.perf_counter()
    journal = open_journal(path)
    store.ensure_schema(journal)
    jobs = store.JobStore(journal, "bench")
    jobs.load()
    jobs.expire_leases()
    doubtful = jobs.doubtful_filesets()
    counts = jobs.counts()
    claim = jobs.claim("bench-host", os.getpid(), 600)
    elapsed = time.perf_counter() - start
    journal.close()
    return elapsed, len(doubtful), counts, claim.chunk


def bench_decision() -> None:
    print("1. resume decision (journal only; the doubtful filesets then cost 3 batched server "
          "calls)")
    results = []
    for n in (25_000, 50_000, 100_000):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "bench.sqlite")
            t0 = time.perf_counter()
            build_journal(path, n)
            build = time.perf_counter() - t0
            elapsed, doubtful, counts, chunk = decide(path)
            results.append((n, elapsed))
            print(f"   {n:>7} filesets: decide {elapsed:.3f} s ({doubtful} in doubt, "
                  f"{counts['planned'][0]} to import, next chunk {chunk}); "
                  f"plan written in {build:.2f} s")
    base_n, base_t = results[0]
    for n, t in results[1:]:
        print(f"   ratio {n // 1000}k/{base_n // 1000}k: time x{t / base_t:.2f} for size "
              f"x{n / base_n:.0f}")


def overhead_run(n: int, busy: float) -> dict:
    """One timed run (in this fresh process); the phase boundaries as seconds since the start."""
    os.environ["OMERO_CLI_EXT_SIM_SECONDS_PER_FILESET"] = str(busy)
    from sim import launcher
    from sim.server import SimServer

    tmp = tempfile.mkdtemp(prefix="bench-import-")
    os.environ["OMERO_USERDIR"] = os.path.join(tmp, "userdir")
    sim = SimServer(os.path.join(tmp, "sim"))
    sim.add_group("lab", "rwr---")
    sim.add_user("alice", ["lab"])
    src = os.path.join(tmp, "src")
    os.makedirs(src)
    for i in range(n):
        with open(os.path.join(src, f"img{i:05d}.fake"), "wb") as out:
            out.write(b"x" * 256)
    sim.close()
    marks: dict = {}
    spans: list = []            # (spawned, exited) of every importer process
    fake = launcher.fake_spawn(sim.root, {"user": "alice"})

    def timed_spawn(argv, **kwargs):
        start = time.perf_counter()
        process = fake(argv, **kwargs)
        original_wait = process.wait

        def wait(timeout=None):
            rc = original_wait(timeout)
            if not getattr(process, "_timed", False):
                process._timed = True
                spans.append((start, time.perf_counter()))
            return rc
        process.wait = wait
        return process

    def marked(name, function):
        def wrapper(*args, **kwargs):
            marks.setdefault(name + ">", time.perf_counter())
            try:
                return function(*args, **kwargs)
            finally:
                marks[name + "<"] = time.perf_counter()
        return wrapper

    launcher.fake_spawn = lambda *a, **k: timed_spawn
    t0 = time.perf_counter()
    import omero.cli  # noqa: F401  (omero-py's start-up)
    marks["omero.cli"] = time.perf_counter()
    # imported here (they would be during plugin loading) to hook the phase boundaries; their
    # import time is charged to the driver
    from omero_cli_ext.cli import import_resume
    from omero_cli_ext.importing import driver
    marks["ours"] = time.perf_counter()
    import_resume.run_resume = marked("command", import_resume.run_resume)
    driver.Driver.run = marked("driver", driver.Driver.run)
    rc, out, err = launcher.run_cli(sim.root, ["import", "--resume", "--chunk-size", "50", src],
                                    user="alice")
    marks["end"] = time.perf_counter()
    assert rc == 0, err[-2000:]
    shutil.rmtree(tmp, ignore_errors=True)
    return {"marks": {k: v - t0 for k, v in marks.items()},
            "spans": sorted((a - t0, b - t0) for a, b in spans)}


def bench_overhead(n: int, busy: float) -> None:
    print(f"2. driver overhead: {n} filesets, chunks of 50, 1 worker, simulated server, "
          f"fake importer busy {busy:g} s per fileset")
    child = subprocess.run([sys.executable, os.path.abspath(__file__), "--overhead-run",
                            "--filesets", str(n), "--busy", str(busy)],
                           capture_output=True, text=True, check=True)
    run = json.loads(child.stdout.splitlines()[-1])
    m, spans = run["marks"], run["spans"]
    listing, chunks = spans[0], spans[1:]
    own = sum(b - a for a, b in spans)
    wall = m["end"]
    cli = m["omero.cli"] + (m["command>"] - m["ours"])
    ours = m["ours"] - m["omero.cli"]
    before = listing[0] - m["command>"]
    planning = m["driver>"] - listing[1]
    chunk_time = (m["driver<"] - m["driver>"]) - sum(b - a for a, b in chunks)
    end = m["end"] - m["driver<"]
    driver = ours + before + planning + chunk_time + end
    print(f"   wall {wall:.2f} s = fake importer {own:.2f} s ({len(spans)} runs incl. the -f "
          f"listing) + omero CLI start-up {cli:.2f} s + driver {driver:.2f} s")
    print(f"   omero CLI start-up {cli:.2f} s: import omero.cli, load all plugins, parse "
          "(the same for plain `omero import`)")
    print(f"   driver {driver:.3f} s: import omero-cli-ext {ours:.3f}, before the listing "
          f"{before:.3f}, planning {planning:.3f}, between {len(chunks)} chunk importers "
          f"{chunk_time:.3f} ({1000 * chunk_time / max(1, len(chunks)):.1f} ms per chunk), "
          f"end {end:.3f}")
    print(f"   driver overhead {100 * driver / own:.1f} % of the importer's own time "
          f"(with the omero CLI start-up: {100 * (wall - own) / own:.1f} %)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--filesets", type=int, default=1000)
    parser.add_argument("--skip-decision", action="store_true", help="run part 2 only")
    parser.add_argument("--overhead-run", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--busy", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.overhead_run:
        print(json.dumps(overhead_run(args.filesets, args.busy)))
        return
    if not args.skip_decision:
        bench_decision()
    for busy in (0.0, 0.05):
        bench_overhead(args.filesets, busy)


if __name__ == "__main__":
    main()
