"""Read the progress of `omero import --resume` jobs from their journals (for `omero status imports`).

Reading takes no writer lock: SQLite in WAL mode lets readers see the last commit while the job
writes, and PostgreSQL readers never block writers. A job is `running` while one of its driver
processes has beaten its heartbeat within the lease (and, on this host, is still alive).
"""
from __future__ import annotations

import datetime as _dt
import glob
import os
import socket
from dataclasses import dataclass
from typing import Optional

from omero_cli_ext.fsops import process_alive
from omero_cli_ext.importing import store

JOURNAL_SUBDIR = os.path.join("omero-cli-ext", "import-jobs")
JOURNAL_SUFFIX = ".sqlite"
DEFAULT_LEASE_SECONDS = 600


def default_journal_dir() -> str:
    """<OMERO user dir>/omero-cli-ext/import-jobs (OMERO_USERDIR moves the OMERO user dir)."""
    from omero.util import get_omero_userdir
    return os.path.join(str(get_omero_userdir()), JOURNAL_SUBDIR)


def default_journal_path(job: str) -> str:
    return os.path.join(default_journal_dir(), job + JOURNAL_SUFFIX)


def find_journals(directory: Optional[str] = None) -> list:
    """The SQLite job journals in `directory` (default: default_journal_dir()), sorted."""
    directory = directory or default_journal_dir()
    return sorted(glob.glob(os.path.join(glob.escape(directory), "*" + JOURNAL_SUFFIX)))


@dataclass(frozen=True)
class JobProgress:
    job: str
    journal: str
    state: str                  # "running", "interrupted", "done", "failed"
    filesets_total: int
    filesets_done: int
    filesets_failed: int        # failed by the importer, or ghosts waiting for --clean-ghosts
    filesets_running: int
    bytes_total: int
    bytes_done: int
    workers: int
    hosts: tuple
    started: Optional[_dt.datetime]
    last_activity: Optional[_dt.datetime]
    rate_bytes_per_s: Optional[float]
    eta_seconds: Optional[float]


def _alive(host: str, pid: int) -> bool:
    """A process on another host counts as alive (its heartbeat decides)."""
    return host != socket.gethostname() or process_alive(pid)


def job_progress(journal, job: str, now: Optional[_dt.datetime] = None,
                 lease_seconds: float = DEFAULT_LEASE_SECONDS) -> JobProgress:
    """The progress of one job in an open journal."""
    now = now or store.utc_now()
    jobs = store.JobStore(journal, job)
    record = jobs.load()
    counts = jobs.counts()

    def count(*states):
        return sum(counts.get(s, (0, 0))[0] for s in states)

    def size(*states):
        return sum(counts.get(s, (0, 0))[1] for s in states)

    fresh = store.iso(now - _dt.timedelta(seconds=lease_seconds))
    live = [(host, pid, workers, store.parse_iso(started))
            for host, pid, workers, started in journal.query(
                "SELECT host, pid, workers, started FROM import_worker WHERE job = ? "
                "AND stopped IS NULL AND heartbeat >= ?", (job, fresh))
            if _alive(host, pid)]
    first = journal.query_one("SELECT min(started) FROM import_worker WHERE job = ?", (job,))
    started = store.parse_iso(first[0]) if first and first[0] else store.parse_iso(record.created)
    last = journal.query_one("SELECT max(updated) FROM import_fileset WHERE job = ? "
                             "AND state != 'planned'", (job,))
    # the importers' last progress (an output line, an upload byte), not the driver's heartbeat:
    # a driver alive beside a frozen importer is a stalled job
    beat = journal.query_one("SELECT max(coalesce(progress, heartbeat)) FROM import_worker "
                             "WHERE job = ?", (job,))
    stamps = [store.parse_iso(t) for t in (last[0] if last else None,
                                           beat[0] if beat else None) if t]
    last_activity = max(stamps) if stamps else None

    unresolved = count("planned", "running")
    if live:
        state = "running"
    elif unresolved:
        state = "interrupted"
    elif count("failed", "ghost"):
        state = "failed"
    else:
        state = "done"

    rate = eta = None
    if live:
        since = min(w[3] for w in live)
        done_since = journal.query_one(
            "SELECT sum(size) FROM import_fileset WHERE job = ? AND state = 'done' "
            "AND updated >= ?", (job, store.iso(since)))[0] or 0
        elapsed = (now - since).total_seconds()
        if elapsed > 0 and done_since:
            rate = done_since / elapsed
            eta = size("planned", "running") / rate
    return JobProgress(
        job=job, journal=journal.location, state=state,
        filesets_total=record.filesets, filesets_done=count("done"),
        filesets_failed=count("failed", "ghost"), filesets_running=count("running"),
        bytes_total=record.bytes, bytes_done=size("done"),
        workers=sum(w[2] for w in live), hosts=tuple(sorted({w[0] for w in live})),
        started=started, last_activity=last_activity, rate_bytes_per_s=rate, eta_seconds=eta)


def read_jobs(location: str) -> list:
    """Progress of every job in the journal at `location` (an SQLite path or a postgresql:// URL);
    an empty list when it holds no import job."""
    from omero_cli_ext.journal import open_journal
    if not journal_exists(location):
        return []
    journal = open_journal(location)
    try:
        if not has_import_schema(journal):
            return []
        return [job_progress(journal, job) for job in store.job_names(journal)]
    finally:
        journal.close()


def journal_exists(location: str) -> bool:
    """A PostgreSQL journal is taken to exist; an SQLite one is a file."""
    return location.startswith(("postgresql://", "postgres://")) or os.path.exists(location)


def has_import_schema(journal) -> bool:
    """The journal holds the import tables (a journal of another command may not)."""
    return _has_schema_table(journal) and bool(journal.query_one(
        "SELECT version FROM journal_schema WHERE component = ?", (store.COMPONENT,)))


def _has_schema_table(journal) -> bool:
    if journal.backend == "sqlite":
        return bool(journal.query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                  ("journal_schema",)))
    return bool(journal.query("SELECT 1 FROM information_schema.tables WHERE table_name = ?",
                              ("journal_schema",)))
