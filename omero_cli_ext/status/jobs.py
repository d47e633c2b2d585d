"""Local `omero import --resume` jobs, read from their journals while they run.

The import engine's `omero_cli_ext.importing.progress` reads a journal (SQLite or PostgreSQL)
without taking its writer lock; here each job gets the same state vocabulary as server imports,
plus "interrupted" (its process is gone before the end: `omero import --resume` continues it).
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from omero_cli_ext.journal import JournalError
from omero_cli_ext.status.classify import ACTIVE, DONE, FAILED, STALLED, duration_text

INTERRUPTED = "interrupted"
JOB_STATES = (FAILED, STALLED, INTERRUPTED, ACTIVE, DONE)   # display order: worst first


@dataclass(frozen=True)
class JobStatus:
    """A local job (progress: importing.progress.JobProgress) and what status makes of it."""
    progress: Any
    state: str                       # one of JOB_STATES
    reason: str
    idle_seconds: Optional[float]    # local clock minus the journal's last activity


def job_status(progress, now: _dt.datetime, stalled_after: float) -> JobStatus:
    """running → active, or stalled when its importers made no progress (no output line, no
    upload byte, no fileset settled) for `stalled_after`, even while the driver is alive."""
    last = progress.last_activity
    idle = max(0.0, (now - last).total_seconds()) if last is not None else None
    if progress.state == "failed":
        return JobStatus(progress, FAILED, "%d filesets failed" % progress.filesets_failed, idle)
    if progress.state == "done":
        return JobStatus(progress, DONE, "every fileset imported", idle)
    if progress.state == "interrupted":
        return JobStatus(progress, INTERRUPTED, "its process is gone: resume it with "
                                                "`omero import --resume`", idle)
    if idle is not None and idle >= stalled_after:
        return JobStatus(progress, STALLED, "no importer progress for %s" % duration_text(idle),
                         idle)
    if progress.filesets_failed:
        return JobStatus(progress, ACTIVE, "running, %d filesets failed so far"
                         % progress.filesets_failed, idle)
    return JobStatus(progress, ACTIVE, "running", idle)


def read_local_jobs(locations: Sequence[str], now: _dt.datetime, stalled_after: float) -> tuple:
    """(jobs worst first, problems): every job of every journal location; an unreadable journal
    is a problem (text), not an error, so that one bad file does not hide the others.
    No locations: the journals of the default directory."""
    from omero_cli_ext.importing import progress as journal_progress
    if not locations:
        locations = journal_progress.find_journals()
    jobs, problems = [], []
    for location in locations:
        try:
            found = journal_progress.read_jobs(location)
        except (JournalError, OSError) as err:
            problems.append("journal %s: %s" % (location, err))
            continue
        jobs.extend(job_status(p, now, stalled_after) for p in found)
    jobs.sort(key=lambda j: (JOB_STATES.index(j.state), str(j.progress.job)))
    return jobs, problems
