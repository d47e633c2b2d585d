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

import datetime as _dt
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
from omero_cli_ext.pathrules import client_path
from omero_cli_ext.importing.reconcile import Decision, Limits, reconcile
from omero_cli_ext.importing.results import LogReader, parse_results
from omero_cli_ext.status.logwatch import SizeMemory, logs_unchanged_since

STDERR_TAIL = 20
MAP_EVERY = 1.0      # seconds: results are matched to filesets (one server query) this often


@dataclass(frozen=True)
class Settings:
    workers: int = 1
    retries: int = 3
    lease_seconds: float = 600.0
    clean_ghosts: bool = False
    backoff_base: float = 2.0
    backoff_max: float = 300.0
    importer_timeout: float = 3600.0          # no output line and no upload byte: kill, retry
    server_step_timeout: float = 12 * 3600.0  # a verified, image-less fileset of this job
    group_id: Optional[int] = None            # the job's group (ownership proofs)
    target: Optional[tuple] = None            # ("Dataset", id) / ("Screen", id) / None


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
    waiting: list = field(default_factory=list)     # (idx, reason) the server may still import
    foreign: list = field(default_factory=list)     # (idx, fileset id, complete, containers)
    timed_out: int = 0                              # importers killed by --importer-timeout
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
    name: str = ""
    last_progress: float = field(default_factory=time.monotonic)   # written by the reader
    uploading: Optional[str] = None   # the file between FILE_UPLOAD_STARTED and _COMPLETE
    upload_size: Optional[int] = None  # its size on the server at the watchdog's last look
    timed_out: bool = False
    nothing: bool = False             # "No imports found": its files are gone
    mapped: dict = field(default_factory=dict)      # idx -> fileset id of its result


class Driver:
    """Run one job's chunks to the end (or until interrupted).

    `launch(filesets) -> Popen` starts the importer for a chunk with stdout/stderr pipes;
    `report(kind, **fields)` receives progress: "chunk" (chunk, filesets, attempt), "fileset"
    (idx, main, state, fileset_id, images, plates, message, size), "retry" (chunk, attempt,
    delay, reason), "gave_up" (chunk, reason).
    """

    def __init__(self, jobs: store.JobStore, port, owner_id: int,
                 launch: Callable[[Sequence], subprocess.Popen], settings: Settings,
                 report: Callable[..., None] = lambda kind, **fields: None,
                 session_id: Optional[int] = None, log_sizes: Optional[SizeMemory] = None):
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
        self.session_id = session_id
        # import log sizes seen through RawFileStore (a repository not readable here), so a
        # later look, in this run or the next, tells a server step still writing from a dead one
        self.log_sizes = log_sizes if log_sizes is not None else SizeMemory()
        self._clock_offset = _dt.timedelta(0)   # server clock minus local clock
        self._waits: dict = {}           # chunk -> times the server was still importing
        self._pending: list = []         # (attempt, result) journaled, not yet matched
        self._pending_since = 0.0
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
        self._clock_offset = self.port.server_time() - store.utc_now()
        try:
            doubtful = jobs.doubtful_filesets()
            if self.settings.clean_ghosts:
                doubtful += jobs.with_ghosts()
            self._settle(doubtful, final=False)
            self._loop()
        except KeyboardInterrupt:
            self.summary.interrupted = True
            self._abort()
        except BaseException:
            # e.g. the journal's disk is full: stop the importers, keep what the journal has
            self._abort(best_effort=True)
            raise
        finally:
            try:
                jobs.stop_worker(self.host, self.pid, self.started)
            except Exception:       # already failing: the worker row only feeds status views
                pass
        return self.summary

    def stop(self) -> None:
        """Ask the loop to stop claiming and end (from a signal handler): wakes it at once."""
        self._stop.set()
        self._events.put(("wake", None, None))

    def _loop(self) -> None:
        beat_every = max(0.2, min(30.0, self.settings.lease_seconds / 3))
        next_beat = time.monotonic() + beat_every
        while True:
            if self._stop.is_set():
                self.summary.interrupted = True
                self._abort()
                return
            if time.monotonic() >= next_beat:
                self._watchdog()
                self.jobs.heartbeat(self.host, self.pid, self.started, list(self._active),
                                    self.settings.lease_seconds, self._progress_time())
                next_beat = time.monotonic() + beat_every
            self._fill()
            if not self._active:
                wait = self._idle_wait()
                if wait is None:
                    return
                self._stop.wait(min(wait, beat_every))
                continue
            wake = next_beat if not self._pending else min(next_beat,
                                                           self._pending_since + MAP_EVERY)
            ended = self._handle(self._next_events(max(0.05, wake - time.monotonic())))
            if self._pending and time.monotonic() >= self._pending_since + MAP_EVERY:
                self._map_results()
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
                self._wait_for_server(claim.chunk, decision.waiting)
                return True
        if not to_import:
            self.jobs.release(claim.chunk, self.host, self.pid)
            return True
        to_import.sort(key=lambda fs: fs.idx)
        attempt = _Attempt(claim.chunk, tuple(to_import), name=f"{claim.chunk}.{claim.attempts}")
        with self.jobs.journal.transaction():
            self.jobs.start_attempt(claim.chunk, [fs.idx for fs in to_import])
            self.jobs.begin_attempt(attempt.name, claim.chunk, self.host, self.pid,
                                    self.session_id, self._server_now())
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
                elif event.kind == "started":
                    self._events.put(("log", attempt.chunk, event.log_id))
                elif event.kind == "nothing":
                    attempt.nothing = True
                elif event.kind == "uploading":
                    attempt.uploading, attempt.upload_size = event.path, None
                elif event.kind == "uploaded":
                    attempt.uploading = None

        def read_stderr():
            reader = LogReader()
            for raw in process.stderr:
                attempt.last_progress = time.monotonic()
                line = raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else raw
                attempt.tail.append(line.rstrip("\n"))
                del attempt.tail[:-STDERR_TAIL]
                note_failures(reader.feed(line))
            note_failures(reader.close())

        err_thread = threading.Thread(target=read_stderr, daemon=True)
        err_thread.start()
        def lines():
            for raw in process.stdout:
                attempt.last_progress = time.monotonic()
                yield raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else raw

        for result in parse_results(lines()):
            self._events.put(("result", attempt.chunk, result))
        err_thread.join()
        self._events.put(("exit", attempt.chunk, process.wait()))

    # --- events ---
    def _handle(self, events: list) -> list:
        """Journal the results among `events` in one commit; the attempts that ended."""
        fresh, logs, ended = [], [], []
        for kind, chunk, value in events:
            attempt = self._active.get(chunk)
            if attempt is None or attempt.ended:
                continue
            if kind == "result":
                attempt.results.append(value)
                fresh.append((attempt, value))
            elif kind == "log":
                logs.append((attempt.name, "log", value))
            elif kind == "exit":
                attempt.rc, attempt.ended = value, True
                ended.append(attempt)
        if fresh or logs:
            with self.jobs.journal.transaction():
                self.jobs.add_results([(a.chunk, r) for a, r in fresh])
                self.jobs.announce(logs + [(a.name, "fileset", r.fileset_id) for a, r in fresh])
        if fresh:
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending += fresh
        return ended

    def _map_results(self) -> None:
        """Each pending result's Fileset matched to its planned fileset by the client paths the
        server stores (one query for all), recorded done: per-fileset progress within MAP_EVERY
        of the importer's result, without a server query per fileset."""
        latest = {r.fileset_id: (a, r) for a, r in self._pending}    # later yields complete
        self._pending = []
        if not latest:
            return
        known = self.port.filesets(list(latest), image_counts=False)
        outcomes, fresh = [], 0
        for attempt, result in latest.values():
            by_main = {client_path(fs.main): fs for fs in attempt.filesets}
            fileset = known.get(result.fileset_id)
            paths = [e.client_path for e in fileset.entries] if fileset else []
            fs = next((by_main[p] for p in paths if p in by_main), None)
            if fs is None or attempt.mapped.get(fs.idx, result.fileset_id) != result.fileset_id:
                continue
            outcomes.append((fs.idx, "done", result.fileset_id, result.images, result.plates,
                             None))
            if fs.idx not in attempt.mapped:      # a later yield only completes the record
                attempt.mapped[fs.idx] = result.fileset_id
                fresh += 1
                self._report_fileset(fs, "done", result.fileset_id, result.images,
                                     result.plates)
        self.jobs.mark(outcomes)
        self.summary.imported += fresh

    def _finish(self, attempt: _Attempt) -> None:
        """Map results to planned filesets (the server names each Fileset's client paths), settle
        the rest with the server, then release or retry the chunk. Until then the chunk stays
        active (its lease kept, given back by _abort)."""
        self._map_results()
        self.jobs.end_attempt(attempt.name, self._server_now(), attempt.rc)
        rest = [fs for fs in attempt.filesets if fs.idx not in attempt.mapped]
        clean_exit = (attempt.rc == 0 or attempt.nothing) and not attempt.timed_out
        reported = {}
        for fs in rest:     # a failure names the main file or any used file (FILE_EXCEPTION)
            message = next((attempt.failures[f] for f in (fs.main, *fs.files)
                            if f in attempt.failures), None)
            if message is None and attempt.nothing:
                message = ("the importer found nothing to import (No imports found): were the "
                           "files moved or deleted since the plan?")
            if message is not None:
                reported[fs.idx] = message
        decision = self._settle(rest, final=clean_exit, reported=reported) if rest else Decision()
        if decision.waiting and not decision.replan:
            self._wait_for_server(attempt.chunk, decision.waiting)
        elif clean_exit or not (decision.replan or decision.waiting):
            self.jobs.release(attempt.chunk, self.host, self.pid)
        else:
            self._retry_later(attempt)
        del self._active[attempt.chunk]

    def _wait_for_server(self, chunk: int, waiting: list) -> None:
        """The server may still be importing filesets of this chunk: look again later (backoff),
        at most --retries times in this run, saying so each time."""
        waits = self._waits[chunk] = self._waits.get(chunk, 0) + 1
        reason = (f"{len(waiting)} fileset(s) not settled: {waiting[0][1]}"
                  + (f" (and {len(waiting) - 1} more)" if len(waiting) > 1 else ""))
        if waits > self.settings.retries:
            self.summary.gave_up.append(chunk)
            self.summary.waiting += waiting
            self.jobs.release(chunk, self.host, self.pid, message=reason)
            self.report("gave_up", chunk=chunk, reason=reason)
            return
        delay = backoff(waits, self.settings)
        self.jobs.release(chunk, self.host, self.pid, delay, reason)
        self.report("wait", chunk=chunk, attempt=waits, delay=delay, reason=reason)

    def _retry_later(self, attempt: _Attempt) -> None:
        """A transient failure: give the chunk back with a backoff, or give up after --retries."""
        failures = self._count_failure(attempt.chunk)
        if attempt.timed_out:
            reason = (f"importer killed: no output and no upload progress for "
                      f"{self.settings.importer_timeout:.0f} s (--importer-timeout)")
        else:
            reason = (f"importer exited with {attempt.rc}" if attempt.rc is not None
                      else "importer did not start") + (": " + attempt.tail[-1] if attempt.tail
                                                        else "")
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
        chunks = {fs.chunk for fs in doubtful}
        raw = self.jobs.raw_results(chunks)
        server_now = self.port.server_time()
        decision = reconcile(
            self.port, self.owner_id, self.settings.group_id, doubtful,
            ownership=self.jobs.ownership(chunks), clean_ghosts=self.settings.clean_ghosts,
            server_now=server_now, raw_results=raw, reported=reported, final=final,
            limits=Limits(self.settings.lease_seconds, self.settings.server_step_timeout),
            target_filesets=self._target_filesets,
            log_quiet_since=lambda logs: logs_unchanged_since(
                self.port, self.port.repository(), logs, self.log_sizes, server_now))
        self.log_sizes.forget_stale(server_now)
        try:
            self.log_sizes.save()
        except OSError as err:
            self.report("warning", message=f"cannot remember import log sizes in "
                                           f"{self.log_sizes.path}: {err.strerror}")
        by_idx = {fs.idx: fs for fs in doubtful}
        decision.done = self._with_ids(decision.done)
        for idx, fid, complete, containers in decision.foreign:
            self.report("foreign", idx=idx, main=by_idx[idx].main, fileset_id=fid,
                        complete=complete, containers=list(containers))
        self.summary.foreign += decision.foreign
        outcomes = []
        for idx, fid, images, plates, note in decision.done:
            outcomes.append((idx, "done", fid, images, plates, note))
            self._report_fileset(by_idx[idx], "done", fid, images, plates, note)
        for idx, message in decision.failed:
            outcomes.append((idx, "failed", None, None, None, message))
            self._report_fileset(by_idx[idx], "failed", None, None, None, message)
        for idx, ghosts, why in decision.blocked:
            message = ("ghost fileset %s of this job on the server (%s): rerun with "
                       "--clean-ghosts to delete and re-import it" % (", ".join(map(str, ghosts)),
                                                                      why))
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

    def _with_ids(self, done: list) -> list:
        """Image and Plate ids of filesets found complete without their importer's result."""
        missing = [fid for _, fid, images, _, _ in done if images is None]
        if not missing:
            return done
        images, plates = self.port.images_of(missing), self.port.plates_of(missing)
        return [(idx, fid, imgs if imgs is not None else images.get(fid, ()),
                 pls if pls is not None else plates.get(fid, ()), note)
                for idx, fid, imgs, pls, note in done]

    def _target_filesets(self) -> Optional[set]:
        if self.settings.target is None:
            return None
        return set(self.port.filesets_of([self.settings.target]).get(self.settings.target, ()))

    # --- clocks and liveness ---
    def _server_now(self) -> _dt.datetime:
        """The server's clock, estimated from the offset measured when the run started."""
        return store.utc_now() + self._clock_offset

    def _progress_time(self) -> _dt.datetime:
        """When the importers last made progress (now when none runs: the driver itself is
        then deciding or waiting, and says so)."""
        running = [a for a in self._active.values() if not a.ended and a.process is not None]
        if not running:
            return store.utc_now()
        idle = time.monotonic() - max(a.last_progress for a in running)
        return store.utc_now() - _dt.timedelta(seconds=idle)

    def _watchdog(self) -> None:
        """Kill importers with no output line and no upload byte for --importer-timeout; their
        chunk is retried (transient failure). The Java importer prints nothing while one file
        uploads, and a real server reports no upload offsets to other processes
        (`getUploadOffset` answers only the uploader's own, still-open RawFileStore), so bytes
        arriving are seen as the growing size of that file on the server (RawFileStore.size)."""
        limit = self.settings.importer_timeout
        now = time.monotonic()
        quiet = [a for a in self._active.values() if not a.ended and a.process is not None
                 and not a.timed_out and now - a.last_progress >= limit]
        for attempt in quiet:
            size = self._uploading_size(attempt)
            if size is not None and size != attempt.upload_size:
                attempt.upload_size, attempt.last_progress = size, now   # bytes still arrive
                continue
            attempt.timed_out = True
            self.summary.timed_out += 1
            if attempt.process.poll() is None:
                attempt.process.kill()

    def _uploading_size(self, attempt) -> Optional[int]:
        """The server's size of the file `attempt` is uploading (its newest fileset using that
        clientPath), or None when no upload is under way or the server cannot tell."""
        path = attempt.uploading
        if path is None:
            return None
        client = client_path(path)
        try:
            ids = self.port.filesets_by_client_paths([client], self.owner_id).get(client, ())
            if not ids:
                return None
            fileset = self.port.filesets([max(ids)], image_counts=False).get(max(ids))
            entry = next((e for e in fileset.entries if e.client_path == client), None) \
                if fileset is not None else None
            if entry is None:
                return None
            return self.port.file_sizes([entry.original_file.id]).get(entry.original_file.id)
        except Exception:       # the server does not answer: the silence decides
            return None

    def _report_fileset(self, fs, state, fid, images, plates, message=None) -> None:
        self.report("fileset", idx=fs.idx, main=fs.main, state=state, fileset_id=fid,
                    images=list(images) if images is not None else None,
                    plates=list(plates) if plates is not None else None, message=message,
                    size=fs.size)

    def _count_failure(self, chunk: int) -> int:
        self._failures[chunk] = self._failures.get(chunk, 0) + 1
        return self._failures[chunk]

    def _abort(self, best_effort: bool = False) -> None:
        """Stop the importers and give their chunks back; their filesets stay in doubt.
        `best_effort`: the journal may be failing; what cannot be written is redone by the next
        run (expired leases, filesets in doubt)."""
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
            try:
                if attempt.process is not None:
                    self.jobs.end_attempt(attempt.name, self._server_now(),
                                          attempt.process.returncode)
                self.jobs.release(attempt.chunk, self.host, self.pid, message="interrupted")
            except Exception:
                if not best_effort:
                    raise
        self._active.clear()

