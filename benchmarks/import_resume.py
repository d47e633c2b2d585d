"""Benchmarks of `omero import --resume` (ratios and timings printed, nothing asserted).

1. Resume decision on a large journal: the time a rerun needs to decide what remains (load the
   job, find the filesets in doubt, count states, claim the next chunk) on journals of 25k, 50k
   and 100k filesets (half done, one chunk in doubt). Target: <= 2 s at 100k, linear.
2. Driver overhead: one `--resume` run of N filesets in chunks of 50 against the simulated
   server; the fake importer's own time is the lifetime of its processes in that same run
   (planning listing included), the driver's overhead is the rest of the wall time.
   Target: <= 5 % at chunks of 50. Run with the fake's bare cost (~4 ms per fileset, far below a
   real import) and with 50 ms of busy time per fileset (still below a real import).

Run: .venv/bin/python benchmarks/import_resume.py [--filesets 1000]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from omero_cli_ext.importing import store  # noqa: E402
from omero_cli_ext.journal import open_journal  # noqa: E402


def build_journal(path: str, n: int) -> None:
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
    jobs.create(record, plan, ())
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


def bench_overhead(n: int, busy: float) -> None:
    from sim import launcher
    from sim.server import SimServer

    print(f"2. driver overhead: {n} filesets, chunks of 50, 1 worker, simulated server, "
          f"fake importer busy {busy:g} s per fileset")
    os.environ["OMERO_CLI_EXT_SIM_SECONDS_PER_FILESET"] = str(busy)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["OMERO_USERDIR"] = os.path.join(tmp, "userdir")
        sim = SimServer(os.path.join(tmp, "sim"))
        sim.add_group("lab", "rwr---")
        sim.add_user("alice", ["lab"])
        src = os.path.join(tmp, "src")
        os.makedirs(src)
        for i in range(n):
            with open(os.path.join(src, f"img{i:05d}.fake"), "wb") as out:
                out.write(b"x" * 256)
        lifetimes = []
        fake = launcher.fake_spawn(sim.root, {"user": "alice"})

        def timed_spawn(argv, **kwargs):
            start = time.perf_counter()
            process = fake(argv, **kwargs)
            original_wait = process.wait

            def wait(timeout=None):
                rc = original_wait(timeout)
                if not getattr(process, "_timed", False):
                    process._timed = True
                    lifetimes.append(time.perf_counter() - start)
                return rc
            process.wait = wait
            return process

        original = launcher.fake_spawn
        launcher.fake_spawn = lambda *a, **k: timed_spawn
        try:
            t0 = time.perf_counter()
            rc, out, err = launcher.run_cli(sim.root, ["import", "--resume", "--chunk-size", "50",
                                                       src], user="alice")
            wall = time.perf_counter() - t0
        finally:
            launcher.fake_spawn = original
        assert rc == 0, err[-2000:]
        own = sum(lifetimes)
        print(f"   wall {wall:.2f} s, fake importer processes {own:.2f} s "
              f"({len(lifetimes)} runs incl. the -f listing)")
        print(f"   driver overhead {wall - own:.2f} s = {100 * (wall - own) / own:.1f} % of the "
              "importer's own time")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--filesets", type=int, default=1000)
    args = parser.parse_args()
    bench_decision()
    for busy in (0.0, 0.05):
        bench_overhead(args.filesets, busy)


if __name__ == "__main__":
    main()
