"""Map a function over many items in forked worker processes, results streamed back in chunks.

Why processes: the per-item work of a relink or a verification pass is a few system calls. Two
threads of one interpreter take turns holding the GIL between those calls (measured on tmpfs,
200k relinks: 1.35x faster with 2 threads, 1.8x with 2 processes). Forked children share the
parent's memory copy-on-write, so items are never sent, only the start of each chunk: the parent
writes them into one pipe that all children read (an 8-byte read of a pipe is atomic), so a
child that is slowed down takes fewer chunks. A child applies `func` to its chunk and writes the
(small) results back through its own pipe.

Safety:
- A child runs only the interpreter and system calls: it never calls Ice, logs, prints or opens
  the journal, so a lock held at fork time by another thread (Ice's client threads, OpenBLAS's
  pool that numpy starts) is never waited for. CPython resets its own locks after fork, glibc
  its malloc. Python 3.12 warns about any fork of a multi-threaded process; that warning is
  silenced here, for this reason. For few items (or one worker) `func` runs here, in order,
  with the same streaming interface.
- Children die with the parent (PR_SET_PDEATHSIG), ignore Ctrl-C (the parent stops them), stop
  after the item in hand when the parent asks (a shared flag), and leave with os._exit (no
  atexit, no flush of the parent's buffers or database connections).
- No deadlock when the parent stops early (an error, Ctrl-C, a closed stdout): each child holds
  only its own result pipe and the queue's read end (never another child's pipe, which would
  keep that child blocked on a full pipe once the parent stops reading); the parent closes
  every result pipe before waiting, so a child blocked writing gets EPIPE and leaves, and one
  that does not leave within REAP_SECONDS is killed. Signals are blocked while forking, so a
  Ctrl-C there is taken by the parent (never by a child running on in the parent's code).
- `func` must be idempotent per item and must not touch state the parent relies on: a
  child's writes to memory are lost, only its returned results count.
"""
from __future__ import annotations

import abc
import ctypes
import mmap
import os
import pickle
import select
import signal
import struct
import sys
import time
import traceback
import warnings
from typing import Callable, Iterator, List, Sequence, Tuple

CHUNK = 2000          # items per result message
MIN_ITEMS = 4000      # fewer than this: not worth a fork
_HEADER = struct.Struct("<Q")
_TOKEN = struct.Struct("<Q")   # a chunk's start, as the parent deals it
_TOKENS_PER_WRITE = 512        # 4096 bytes: one write of at most PIPE_BUF is all or nothing
_PR_SET_PDEATHSIG = 1
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
REAP_SECONDS = 5.0    # a stopped worker that has not left by then is killed


def default_workers() -> int:
    """One worker per core, at most 4 (more rarely helps a local filesystem)."""
    return max(1, min(4, os.cpu_count() or 1))


class WorkerFailed(RuntimeError):
    """A worker process died or raised something that could not be sent back."""


def parallel_map(func: Callable, items: Sequence, workers: int,
                 min_items: int = MIN_ITEMS, chunk: int = CHUNK) -> "ChunkedMap":
    """Start mapping `func` over `items` now (children are forked at once, so the caller can do
    other work meanwhile); iterate the result for `(start, results)` chunks in completion order.
    An exception raised by `func` is raised by the iteration, after the other workers stopped
    and every chunk finished before it was yielded."""
    if workers > 1 and len(items) >= min_items and hasattr(os, "fork"):
        return _Forked(func, items, workers, chunk)
    return _InProcess(func, items, chunk)


class ChunkedMap(abc.ABC):
    """What parallel_map returns: (start, results) chunks, in completion order."""

    chunk: int
    total: int

    @abc.abstractmethod
    def __iter__(self) -> Iterator[Tuple[int, List]]:
        """The chunks as they complete."""

    def in_order(self) -> Iterator[Tuple[int, List]]:
        """The chunks in item order, each as soon as those before it are in; after a worker
        stopped part-way (an error, an interrupt), only the unbroken run of items from the first
        (so that "every item up to here is finished" holds for what was yielded)."""
        waiting: dict = {}
        expected = 0
        for start, results in self:
            waiting[start] = results
            while expected in waiting:
                results = waiting.pop(expected)
                yield expected, results
                if len(results) < self.chunk and expected + len(results) < self.total:
                    expected = -1   # a gap: nothing after it is yielded
                    break
                expected += len(results)

    def close(self) -> None:
        """Stop and reap the workers without reading what they send (after an error elsewhere)."""

    def results(self) -> List:
        """Every result, in item order."""
        ordered: List = []
        for start, chunk in sorted(self, key=lambda pair: pair[0]):
            ordered.extend(chunk)
        return ordered


class _InProcess(ChunkedMap):
    def __init__(self, func: Callable, items: Sequence, chunk: int):
        self._func, self._items, self.chunk, self.total = func, items, chunk, len(items)

    def __iter__(self):
        func, items, chunk = self._func, self._items, self.chunk
        for start in range(0, len(items), chunk):
            yield start, [func(item) for item in items[start:start + chunk]]


class _Forked(ChunkedMap):
    def __init__(self, func: Callable, items: Sequence, workers: int, chunk: int):
        self.chunk, self.total = chunk, len(items)
        self._stop = mmap.mmap(-1, 1)     # shared with the children: b"\1" asks them to stop
        self._children: dict = {}         # pipe read fd -> pid
        self._starts = list(range(0, len(items), chunk))   # chunks not dealt yet
        queue_read, self._queue = os.pipe()
        os.set_blocking(self._queue, False)
        arm = die_with_parent()
        # Signals stay blocked while forking: a Ctrl-C between fork() and the child's own
        # handlers would otherwise raise KeyboardInterrupt in the child, which would then run the
        # parent's code. The parent takes a pending signal once it unblocks them (below).
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        queue_read_open = True
        try:
            for _ in range(workers):
                read_fd, write_fd = os.pipe()
                sys.stdout.flush()
                sys.stderr.flush()
                try:
                    with warnings.catch_warnings():
                        warnings.filterwarnings("ignore", message=".*multi-threaded.*fork",
                                                category=DeprecationWarning)
                        pid = os.fork()
                except BaseException:
                    os.close(read_fd)
                    os.close(write_fd)
                    raise
                if pid == 0:   # pragma: no cover - runs in the child, which leaves by os._exit
                    # keep only the own result pipe and the queue's read end: a worker holding
                    # another's read end would keep that one blocked on a full pipe forever
                    # once the parent stops reading
                    for fd in [read_fd, self._queue, *self._children]:
                        os.close(fd)
                    _child(func, items, queue_read, chunk, write_fd, self._stop, arm, blocked)
                os.close(write_fd)
                self._children[read_fd] = pid
            os.close(queue_read)
            queue_read_open = False
            # a Ctrl-C or SIGTERM that came while forking is raised here (pthread_sigmask runs
            # the Python handlers at once)
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            self._deal()   # what the pipe holds now: the children start before the first __iter__
        except BaseException:   # a fork refused, an interrupt: the children stop and are reaped
            if queue_read_open:
                os.close(queue_read)
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            self._stop[0] = 1
            self._reap()
            raise

    def _deal(self) -> None:
        """Write chunk starts into the queue until it is full; close it once all are dealt
        (the children then read end-of-file and finish)."""
        while self._starts:
            tokens = self._starts[:_TOKENS_PER_WRITE]
            try:
                os.write(self._queue, b"".join(_TOKEN.pack(start) for start in tokens))
            except BlockingIOError:
                return
            del self._starts[:len(tokens)]
        self._close_queue()

    def _close_queue(self) -> None:
        if self._queue >= 0:
            os.close(self._queue)
            self._queue = -1

    def __iter__(self):
        buffers = {fd: bytearray() for fd in self._children}
        error = None
        try:
            while buffers:
                dealing = [self._queue] if self._queue >= 0 else []
                ready, writable, _ = select.select(list(buffers), dealing, [])
                if writable:
                    self._deal()
                for fd in ready:
                    data = os.read(fd, 1 << 20)
                    if not data:
                        del buffers[fd]
                        continue
                    buffer = buffers[fd]
                    buffer += data
                    for message in _messages(buffer):
                        kind, payload = message
                        if kind == "chunk":
                            yield payload
                        elif error is None:
                            error = payload
                            self._stop[0] = 1
        finally:
            self._stop[0] = 1
            statuses = self._reap()
        if error is not None:
            raise error
        if any(statuses):
            raise WorkerFailed(f"a worker process ended with status {max(statuses)}")

    def close(self) -> None:
        self._stop[0] = 1
        self._reap()

    def _reap(self) -> List[int]:
        """Stop the children and wait for them. Every result pipe is closed first, so a child
        blocked writing a result gets EPIPE and leaves; one that does not leave within
        `REAP_SECONDS` (stuck in a system call on a hung filesystem) is killed: every item is
        idempotent, so an item cut short is simply done again by the rerun."""
        self._close_queue()   # a child waiting for a chunk reads end-of-file and leaves
        for fd in self._children:
            os.close(fd)
        pids, self._children = list(self._children.values()), {}
        statuses = {}
        deadline = time.monotonic() + REAP_SECONDS
        pause = 0.0005   # children that read end-of-file are leaving now: look again soon
        while len(statuses) < len(pids):
            for pid in pids:
                if pid not in statuses:
                    done, status = os.waitpid(pid, os.WNOHANG)
                    if done:
                        statuses[pid] = os.waitstatus_to_exitcode(status)
            if len(statuses) == len(pids):
                break
            if time.monotonic() > deadline:
                for pid in pids:
                    if pid not in statuses:
                        os.kill(pid, signal.SIGKILL)
                        statuses[pid] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
                break
            time.sleep(pause)
            pause = min(0.05, pause * 2)
        return [statuses[pid] for pid in pids]


def _messages(buffer: bytearray) -> Iterator[tuple]:
    """Complete messages at the head of `buffer` (removed from it)."""
    while len(buffer) >= _HEADER.size:
        (length,) = _HEADER.unpack_from(buffer)
        end = _HEADER.size + length
        if len(buffer) < end:
            return
        message = pickle.loads(bytes(buffer[_HEADER.size:end]))
        del buffer[:end]
        yield message


def _child(func, items, queue: int, chunk: int, write_fd: int, stop,
           arm: Callable[[], None], mask) -> None:
    """A worker's whole life: the chunks it reads from `queue`, one message each, then os._exit.
    Ctrl-C (sent to the whole process group) is ignored: the parent stops the workers. SIGTERM
    and SIGHUP kill a worker outright (default action): its items are idempotent."""
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for kind in (signal.SIGTERM, signal.SIGHUP):   # not the parent's Python handlers
            signal.signal(kind, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        arm()
        with os.fdopen(write_fd, "wb") as out:
            while not stop[0]:
                token = os.read(queue, _TOKEN.size)
                if not token:
                    return
                (start,) = _TOKEN.unpack(token)
                results = []
                for item in items[start:start + chunk]:
                    if stop[0]:
                        break
                    try:
                        results.append(func(item))
                    except BaseException as exc:   # handed to the parent, which raises it
                        _send(out, ("chunk", (start, results)))
                        _send(out, ("error", _sendable(exc)))
                        return
                _send(out, ("chunk", (start, results)))
    except BaseException:   # pragma: no cover - a broken pipe: the parent is gone
        code = 1
    finally:
        os._exit(code)


def _send(out, message) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    out.write(_HEADER.pack(len(data)) + data)
    out.flush()


def _sendable(exc: BaseException) -> BaseException:
    """`exc` if it survives pickling, else a WorkerFailed carrying its traceback."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return WorkerFailed(f"a worker raised {type(exc).__name__}: {exc}\n{text}")


def die_with_parent() -> Callable[[], None]:
    """A function for a child to call first (a fork's child, or subprocess's preexec_fn): the
    kernel SIGKILLs the child when the thread that started it dies (Linux PR_SET_PDEATHSIG), so a
    killed command leaves no orphan (importer, worker) working behind its back. Elsewhere it does
    nothing. Call this in the parent, before the child starts."""
    parent = os.getpid()
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return lambda: None

    def in_child() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:      # the parent died before prctl took effect
            os._exit(1)
    return in_child
