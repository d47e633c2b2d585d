"""The driver: claims chunks, runs up to `workers` importers at once (one per chunk), records every
result as it arrives, retries transient failures with exponential backoff, keeps its leases alive.

The driver's thread starts the importers; one reader thread per importer reads its pipes until
EOF and parses them (no polling). The journal and the server port are used from the driver's own
thread only (a port need not be thread-safe). Results that arrived together are journaled in one
commit. When an importer ends, the next chunk's importer is started before the ended chunk's
bookkeeping (server query, journal), so that bookkeeping overlaps the next import. A chunk whose
attempt died, or whose importer gave no result for some filesets, is settled by `reconcile` (the
server decides) before anything in it is imported again, so a fileset is never imported twice.
"""
from __future__ import annotations

import os
import queue
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from omero_cli_ext.fsops import process_alive
from omero_cli_ext.importing import store
from omero_cli_ext.importing.plan import client_path
from omero_cli_ext.importing.reconcile import Decision, reconcile
from omero_cli_ext.importing.results import LogReader, parse_results

STDERR_TAIL = 20


@dataclass(frozen=True)
class Settings:
    workers: int = 1
    retries: int = 3
    lease_seconds: float = 600.0
    clean_ghosts: bool = False
    backoff_base: float = 2.0
    backoff_max: float = 300.0


@dataclass
class RunSummary:
    """What this run did; the job's totals come from the journal (store.counts)."""
    imported: int = 0
    failed: int = 0
    retried: int = 0
    deleted_ghosts: list = field(default_factory=list)
    ghosts_left: list = field(default_factory=list)
    duplicates: list = field(default_factory=list)
    gave_up: list = field(default_factory=list)     # chunks still failing after --retries
    interrupted: bool = False


def backoff(attempt: int, settings: Settings) -> float:
    """Seconds to wait before retry number `attempt` (1, 2, ...): base * 2^(attempt-1), capped."""
    return min(settings.backoff_max, settings.backoff_base * (2 ** max(0, attempt - 1)))


@dataclass
class _Attempt:
    """One importer run. `failures` and `tail` are written by its reader thread and read by the
    driver's thread only after the "exit" event (which the reader sends last)."""
    chunk: int
    filesets: tuple
    process: Optional[subprocess.Popen] = None
    results: list = field(default_factory=list)
    failures: dict = field(default_factory=dict)    # main path -> message
    tail: list = field(default_factory=list)
    rc: Optional[int] = None
    ended: bool = False


class Driver:
    """Run one job's chunks to the end (or until interrupted).

    `launch(filesets) -> Popen` starts the importer for a chunk with stdout/stderr pipes;
    `report(kind, **fields)` receives progress: "chunk" (chunk, filesets, attempt), "fileset"
    (idx, main, state, fileset_id, images, plates, message, size), "retry" (chunk, attempt,
    delay, reason), "gave_up" (chunk, reason).
    """

    def __init__(self, jobs: store.JobStore, port, owner_id: int,
                 launch: Callable[[Sequence], subprocess.Popen], settings: Settings,
                 report: Callable[..., None] = lambda kind, **fields: None):
        self.jobs = jobs
        self.port = port
        self.owner_id = owner_id
        self.launch = launch
        self.settings = settings
        self.report = report
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.started = store.iso(store.utc_now())
        self.summary = RunSummary()
        self._events: queue.Queue = queue.Queue()
        self._active: dict = {}          # chunk -> _Attempt, until its bookkeeping is done
        self._failures: dict = {}        # chunk -> transient failures in this run
        self._foreign = jobs.foreign_ids()
        self._stop = threading.Event()

    # --- the loop ---
    def run(self, exclusive: bool) -> RunSummary:
        """`exclusive`: this process holds the job's writer lock (SQLite), so every running chunk
        belongs to a dead process; otherwise only chunks of dead processes on this host and
        expired leases are taken over."""
        jobs = self.jobs
        if exclusive:
            jobs.expire_leases()
        else:
            dead = [pid for host, pid in jobs.running_holders()
                    if host == self.host and not process_alive(pid)]
            jobs.expire_leases(self.host, dead)
        jobs.register_worker(self.host, self.pid, self.started, self.settings.workers)
        try:
            doubtful = jobs.doubtful_filesets()
            if self.settings.clean_ghosts:
                doubtful += jobs.with_ghosts()
            self._settle(doubtful, final=False)
            self._loop()
        except KeyboardInterrupt:
            self.summary.interrupted = True
            self._abort()
        finally:
            jobs.stop_worker(self.host, self.pid, self.started)
        return self.summary

    def stop(self) -> None:
        """Ask the loop to stop claiming and end (from a signal handler)."""
        self._stop.set()

    def _loop(self) -> None:
        beat_every = max(0.2, min(30.0, self.settings.lease_seconds / 3))
        next_beat = time.monotonic() + beat_every
        while True:
            if self._stop.is_set():
                self.summary.interrupted = True
                self._abort()
                return
            if time.monotonic() >= next_beat:
                self.jobs.heartbeat(self.host, self.pid, self.started, list(self._active),
                                    self.settings.lease_seconds)
                next_beat = time.monotonic() + beat_every
            self._fill()
            if not self._active:
                wait = self._idle_wait()
                if wait is None:
                    return
                self._stop.wait(min(wait, beat_every))
                continue
            ended = self._handle(self._next_events(max(0.05, next_beat - time.monotonic())))
            if ended:
                self._fill()
                for attempt in ended:
                    self._finish(attempt)

    def _fill(self) -> None:
        """Start chunks while fewer than `workers` importers run."""
        while (sum(not a.ended for a in self._active.values()) < self.settings.workers
               and self._start_next()):
            pass

    def _next_events(self, timeout: float) -> list:
        """The next event (waiting up to `timeout`) and all that arrived with it."""
        try:
            events = [self._events.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    def _idle_wait(self) -> Optional[float]:
        """Seconds until a chunk may become claimable (backoff, another host's lease), or None
        when nothing is left for this process."""
        opening = self.jobs.next_opening(skip=self.summary.gave_up)
        if opening is None:
            return None
        return max(0.05, (opening - store.utc_now()).total_seconds() + 0.05)

    # --- starting a chunk ---
    def _start_next(self) -> bool:
        claim = self.jobs.claim(self.host, self.pid, self.settings.lease_seconds,
                                skip=self.summary.gave_up)
        if claim is None:
            return False
        to_import = list(claim.planned)
        if claim.doubtful:
            decision = self._settle(claim.doubtful, final=False)
            replanned = set(decision.replan)
            to_import += [fs for fs in claim.doubtful if fs.idx in replanned]
            if decision.waiting:
                delay = backoff(self._count_failure(claim.chunk), self.settings)
                self.jobs.release(claim.chunk, self.host, self.pid, delay,
                                  "the server is still importing a fileset of this chunk")
                return True
        if not to_import:
            self.jobs.release(claim.chunk, self.host, self.pid)
            return True
        to_import.sort(key=lambda fs: fs.idx)
        self.jobs.start_attempt(claim.chunk, [fs.idx for fs in to_import])
        attempt = _Attempt(claim.chunk, tuple(to_import))
        self._active[claim.chunk] = attempt
        self.report("chunk", chunk=claim.chunk, filesets=len(to_import), attempt=claim.attempts)
        try:
            attempt.process = self.launch(attempt.filesets)
        except Exception as err:       # reported as a transient failure of the chunk
            attempt.tail = [f"cannot start the importer: {err}"]
            self._events.put(("exit", attempt.chunk, None))
            return True
        threading.Thread(target=self._read_importer, args=(attempt,), daemon=True,
                         name=f"import-chunk-{claim.chunk}").start()
        return True

    def _read_importer(self, attempt: _Attempt) -> None:
        """Reader thread: read the importer's pipes until EOF, forward each result, collect the
        failures it logs, then its exit code."""
        process = attempt.process

        def note_failures(events):
            for event in events:
                if event.kind == "failed":
                    attempt.failures[event.path] = event.message

        def read_stderr():
            reader = LogReader()
            for raw in process.stderr:
                line = raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else raw
                attempt.tail.append(line.rstrip("\n"))
                del attempt.tail[:-STDERR_TAIL]
                note_failures(reader.feed(line))
            note_failures(reader.close())

        err_thread = threading.Thread(target=read_stderr, daemon=True)
        err_thread.start()
        lines = (raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else raw
                 for raw in process.stdout)
        for result in parse_results(lines):
            self._events.put(("result", attempt.chunk, result))
        err_thread.join()
        self._events.put(("exit", attempt.chunk, process.wait()))

    # --- events ---
    def _handle(self, events: list) -> list:
        """Journal the results among `events` in one commit; the attempts that ended."""
        fresh, ended = [], []
        for kind, chunk, value in events:
            attempt = self._active.get(chunk)
            if attempt is None or attempt.ended:
                continue
            if kind == "result":
                attempt.results.append(value)
                fresh.append((chunk, value))
            elif kind == "exit":
                attempt.rc, attempt.ended = value, True
                ended.append(attempt)
        if fresh:
            self.jobs.add_results(fresh)
        return ended

    def _finish(self, attempt: _Attempt) -> None:
        """Map results to planned filesets (the server names each Fileset's client paths), settle
        the rest with the server, then release or retry the chunk. Until then the chunk stays
        active (its lease kept, given back by _abort)."""
        by_main = {client_path(fs.main): fs for fs in attempt.filesets}
        outcomes, mapped = [], set()
        if attempt.results:
            known = self.port.filesets([r.fileset_id for r in attempt.results])
            for result in attempt.results:
                fileset = known.get(result.fileset_id)
                paths = [e.client_path for e in fileset.entries] if fileset else []
                fs = next((by_main[p] for p in paths if p in by_main), None)
                if fs is None or fs.idx in mapped:
                    continue
                mapped.add(fs.idx)
                outcomes.append((fs.idx, "done", result.fileset_id, result.images, result.plates,
                                 None))
                self._report_fileset(fs, "done", result.fileset_id, result.images, result.plates)
        self.jobs.mark(outcomes)
        self.summary.imported += len(outcomes)
        rest = [fs for fs in attempt.filesets if fs.idx not in mapped]
        clean_exit = attempt.rc == 0
        reported = {fs.idx: attempt.failures[fs.main] for fs in rest if fs.main in attempt.failures}
        decision = self._settle(rest, final=clean_exit, reported=reported) if rest else Decision()
        if clean_exit or not (decision.replan or decision.waiting):
            self.jobs.release(attempt.chunk, self.host, self.pid)
        else:
            self._retry_later(attempt)
        del self._active[attempt.chunk]

    def _retry_later(self, attempt: _Attempt) -> None:
        """A transient failure: give the chunk back with a backoff, or give up after --retries."""
        failures = self._count_failure(attempt.chunk)
        reason = (f"importer exited with {attempt.rc}" if attempt.rc is not None
                  else "importer did not start") + (": " + attempt.tail[-1] if attempt.tail else "")
        if failures > self.settings.retries:
            self.summary.gave_up.append(attempt.chunk)
            self.jobs.release(attempt.chunk, self.host, self.pid, message=reason)
            self.report("gave_up", chunk=attempt.chunk, reason=reason)
            return
        delay = backoff(failures, self.settings)
        self.summary.retried += 1
        self.jobs.release(attempt.chunk, self.host, self.pid, delay, reason)
        self.report("retry", chunk=attempt.chunk, attempt=failures, delay=delay, reason=reason)

    def _settle(self, doubtful: Sequence, final: bool, reported=None) -> Decision:
        """Reconcile with the server and record the decision."""
        if not doubtful:
            return Decision()
        raw = self.jobs.raw_results({fs.chunk for fs in doubtful})
        decision = reconcile(self.port, self.owner_id, doubtful, foreign=self._foreign,
                             clean_ghosts=self.settings.clean_ghosts, raw_results=raw,
                             reported=reported, final=final,
                             active_within=self.settings.lease_seconds)
        by_idx = {fs.idx: fs for fs in doubtful}
        outcomes = []
        for idx, fid, images, plates, note in decision.done:
            outcomes.append((idx, "done", fid, images, plates, note))
            self._report_fileset(by_idx[idx], "done", fid, images, plates, note)
        for idx, message in decision.failed:
            outcomes.append((idx, "failed", None, None, None, message))
            self._report_fileset(by_idx[idx], "failed", None, None, None, message)
        for idx, ghosts in decision.blocked:
            message = ("ghost fileset %s of this job on the server: rerun with --clean-ghosts "
                       "to delete and re-import it" % ", ".join(map(str, ghosts)))
            outcomes.append((idx, "ghost", ghosts[0], None, None, message))
            self._report_fileset(by_idx[idx], "ghost", ghosts[0], None, None, message)
        outcomes += [(idx, "planned", None, None, None, None) for idx in decision.replan]
        with self.jobs.journal.transaction():
            self.jobs.mark(outcomes)
            self.jobs.record_ghosts(decision.deleted, "deleted")
            self.jobs.record_ghosts(decision.ghosts_left, "left")
            self.jobs.reopen_chunks(by_idx[idx].chunk for idx in decision.replan)
        self.summary.imported += len(decision.done)
        self.summary.failed += len(decision.failed)
        self.summary.deleted_ghosts += [fid for fid, _ in decision.deleted]
        self.summary.ghosts_left += [fid for fid, _ in decision.ghosts_left]
        self.summary.duplicates += decision.duplicates
        return decision

    def _report_fileset(self, fs, state, fid, images, plates, message=None) -> None:
        self.report("fileset", idx=fs.idx, main=fs.main, state=state, fileset_id=fid,
                    images=list(images) if images is not None else None,
                    plates=list(plates) if plates is not None else None, message=message,
                    size=fs.size)

    def _count_failure(self, chunk: int) -> int:
        self._failures[chunk] = self._failures.get(chunk, 0) + 1
        return self._failures[chunk]

    def _abort(self) -> None:
        """Stop the importers and give their chunks back; their filesets stay in doubt."""
        for attempt in list(self._active.values()):
            if attempt.process is not None and attempt.process.poll() is None:
                attempt.process.terminate()
        deadline = time.monotonic() + 10
        for attempt in list(self._active.values()):
            if attempt.process is not None:
                try:
                    attempt.process.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    attempt.process.kill()
                    attempt.process.wait()
            self.jobs.release(attempt.chunk, self.host, self.pid, message="interrupted")
        self._active.clear()

