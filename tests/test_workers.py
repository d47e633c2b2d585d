"""omero_cli_ext.workers: forked map with streamed, ordered results and clean failure."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from omero_cli_ext.mv.errors import MvError
from omero_cli_ext.workers import WorkerFailed, parallel_map

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _no_children_left():
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


def test_forked_results_equal_a_plain_map_and_come_from_workers():
    items = list(range(10_000))
    mapping = parallel_map(lambda n: (n * n, os.getpid()), items, workers=2, chunk=700)
    results = mapping.results()
    assert [r[0] for r in results] == [n * n for n in items]
    pids = {r[1] for r in results}
    # chunks go to whichever worker asks first: a busy machine may start one late
    assert 1 <= len(pids) <= 2 and os.getpid() not in pids
    _no_children_left()


def test_a_slowed_worker_takes_fewer_chunks():
    """Chunks are dealt as workers ask for them: the worker stuck on the first chunk does not
    also get every other chunk after it."""
    def work(item):
        if item == 0:
            time.sleep(1.0)
        return os.getpid()

    by_chunk = dict(parallel_map(work, range(400), 2, min_items=2, chunk=10))
    slow = by_chunk[0][0]
    assert sum(1 for pids in by_chunk.values() if pids[0] == slow) < 10
    assert sorted(by_chunk) == list(range(0, 400, 10))


def test_more_chunks_than_the_queue_holds_are_all_dealt():
    """160 KB of chunk starts: more than a pipe holds, dealt as the workers drain it."""
    assert parallel_map(lambda n: -n, range(20_000), 2, min_items=2, chunk=1).results() == \
        [-n for n in range(20_000)]
    _no_children_left()


def test_a_refused_fork_stops_the_workers_already_started(monkeypatch):
    real_fork, forks = os.fork, []

    def fork_once():
        if forks:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        forks.append(1)
        return real_fork()

    monkeypatch.setattr(os, "fork", fork_once)
    opened = len(os.listdir("/proc/self/fd"))
    with pytest.raises(BlockingIOError):
        parallel_map(lambda n: n, range(10_000), 2)
    _no_children_left()
    assert len(os.listdir("/proc/self/fd")) == opened


def test_in_order_yields_contiguous_chunks_from_the_first():
    starts = [start for start, _ in parallel_map(lambda n: n, range(9_000), 2, chunk=1000).in_order()]
    assert starts == list(range(0, 9_000, 1000))


def test_few_items_or_one_worker_run_here():
    for items, workers in ((range(10), 4), (range(10_000), 1)):
        pids = {pid for pid in parallel_map(lambda n: os.getpid(), items, workers).results()}
        assert pids == {os.getpid()}


def test_forks_even_with_other_threads_running():
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        pids = set(parallel_map(lambda n: os.getpid(), range(5000), 2, chunk=500).results())
    finally:
        stop.set()
        thread.join()
    assert os.getpid() not in pids


def test_an_error_in_a_worker_is_raised_here_after_what_finished_before_it():
    def square_or_fail(n):
        if n == 5_500:
            raise MvError(11, "permission denied on item 5500")
        return n * n

    seen = []
    with pytest.raises(MvError) as raised:
        for start, results in parallel_map(square_or_fail, range(10_000), 2, chunk=1000).in_order():
            seen.append((start, len(results)))
    assert raised.value.code == 11 and "5500" in str(raised.value)
    # an unbroken run from item 0 (the other worker may have been stopped part-way), never
    # reaching past the failed item
    assert [start for start, _ in seen] == [k * 1000 for k in range(len(seen))]
    assert all(length == 1000 for _, length in seen[:-1])
    assert sum(length for _, length in seen) <= 5500
    _no_children_left()


def test_an_exception_that_cannot_travel_becomes_worker_failed():
    class Local(Exception):   # not importable by name, so not picklable
        pass

    def fail(n):
        if n == 4999:
            raise Local("local")
        return n

    with pytest.raises(WorkerFailed, match="Local"):
        parallel_map(fail, range(5000), 2, chunk=100).results()
    _no_children_left()


def test_workers_die_with_a_killed_parent(tmp_path):
    """kill -9 of the command leaves no worker changing files behind a rerun."""
    pids_file = tmp_path / "pids"
    script = textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {ROOT!r})
        from omero_cli_ext.workers import parallel_map

        def slow(n):
            if n % 1000 == 0:
                with open({str(pids_file)!r}, "a") as f:
                    f.write(f"{{os.getpid()}}\\n")
            time.sleep(0.01)
            return n

        print("parent", os.getpid(), flush=True)
        parallel_map(slow, range(5000), 2, chunk=1000).results()
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    proc.stdout.readline()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not pids_file.exists()
                                           or len(set(pids_file.read_text().split())) < 2):
        time.sleep(0.05)
    children = {int(p) for p in pids_file.read_text().split()}
    assert len(children) == 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    deadline = time.monotonic() + 10
    alive = children
    while alive and time.monotonic() < deadline:
        alive = {pid for pid in alive if _running(pid)}
        time.sleep(0.05)
    assert not alive, f"workers {alive} outlived their parent"


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_close_stops_and_reaps_workers_whose_results_are_not_wanted():
    mapping = parallel_map(lambda n: time.sleep(0.001) or n, range(20_000), 2, chunk=100)
    started = time.monotonic()
    mapping.close()
    assert time.monotonic() - started < 5   # they stopped at the flag, not after 10 s of work
    _no_children_left()


def _run_script(body: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`body` in a fresh interpreter (a hang there fails the test instead of the suite)."""
    script = f"import os, sys, time, signal\nsys.path.insert(0, {ROOT!r})\n" + textwrap.dedent(body)
    try:
        return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as hung:
        pytest.fail(f"hung: {hung.stderr!r}")


def test_leaving_the_iteration_early_with_full_pipes_does_not_hang():
    """Results bigger than a pipe holds, the reader gone after the first chunk: every worker
    sees its pipe closed (no worker holds another's pipe end) and the parent reaps them."""
    done = _run_script("""
        from omero_cli_ext.workers import parallel_map
        mapping = parallel_map(lambda n: "x" * 20_000, range(10_000), 4, chunk=50)
        chunks = iter(mapping)
        next(chunks)     # one message of 1 MB read; the other workers are writing theirs
        chunks.close()   # the reader leaves (a closed stdout, an error elsewhere)
        print("left", flush=True)
    """)
    assert done.returncode == 0 and "left" in done.stdout, done.stderr


def test_workers_hold_no_pipe_end_but_their_own_and_the_queue():
    """Each worker's open file descriptors: its own result pipe, the shared queue, and what the
    parent had before the map started (nothing of the other workers)."""
    done = _run_script("""
        from omero_cli_ext.workers import parallel_map
        before = set(os.listdir("/proc/self/fd"))
        def fds(n):
            return sorted(set(os.listdir("/proc/self/fd")) - before)
        result = parallel_map(fds, range(8000), 3, chunk=100).results()
        print(max(len(r) for r in result))
    """)
    assert done.returncode == 0, done.stderr
    # the listing fd of os.listdir itself, the result pipe's write end, the queue's read end
    assert int(done.stdout.split()[-1]) <= 3


def test_sigint_while_workers_start_and_run_stops_everything():
    """Ctrl-C reaches the whole process group: the workers ignore it, the parent raises
    KeyboardInterrupt wherever it is (forking included), stops and reaps them."""
    done = _run_script("""
        from omero_cli_ext.workers import parallel_map
        real_fork = os.fork
        def fork_then_interrupt():
            pid = real_fork()
            if pid:
                os.kill(os.getpid(), signal.SIGINT)   # arrives between two forks
            return pid
        os.fork = fork_then_interrupt
        try:
            parallel_map(lambda n: time.sleep(0.001) or n, range(50_000), 3, chunk=100).results()
        except KeyboardInterrupt:
            print("interrupted", os.getpid(), flush=True)
        try:
            os.waitpid(-1, os.WNOHANG)
            print("children left")
        except ChildProcessError:
            print("none left")
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0].startswith("interrupted") and "none left" in done.stdout
    assert done.stdout.count("interrupted") == 1, "a worker ran the parent's code"
