"""View models of a snapshot: table rows as text and JSON records with stable keys.

The renderers (rich, plain, JSON lines) live in omero_cli_ext/cli/status_run.py and only lay
these out; every word and number a user sees is decided here.
"""
from __future__ import annotations

import datetime as _dt
from typing import Optional

from omero_cli_ext.status.classify import ImportStatus, duration_text
from omero_cli_ext.status.jobs import JobStatus
from omero_cli_ext.status.snapshot import Snapshot, summarize

IMPORT_COLUMNS = ("Fileset", "Owner/Group", "Template prefix", "Files", "Size", "Stage", "State",
                  "Started", "Last activity", "Why")
JOB_COLUMNS = ("Job", "State", "Filesets done/failed/total", "Bytes", "Rate", "ETA", "Workers",
               "Last activity", "Journal")
# JSON keys, in this order (docs/status.md)
IMPORT_KEYS = ("fileset_id", "owner", "group", "template_prefix", "files", "bytes", "images",
               "stage", "state", "reason", "started", "last_activity", "idle_seconds",
               "steps_done", "upload_finished", "process", "log_grew")
JOB_KEYS = ("job", "journal", "state", "reason", "job_state", "filesets_total", "filesets_done",
            "filesets_failed", "filesets_running", "bytes_total", "bytes_done", "workers", "hosts",
            "started", "last_activity", "idle_seconds", "rate_bytes_per_s", "eta_seconds")


def size_text(n: Optional[float]) -> str:
    """Bytes in binary units: 512 B, 1.5 KiB, 20.0 GiB."""
    if n is None:
        return ""
    if n < 1024:
        return "%d B" % n
    value, units = n / 1024.0, ["KiB", "MiB", "GiB", "TiB", "PiB"]
    while value >= 1024 and len(units) > 1:
        value, units = value / 1024.0, units[1:]
    return "%.1f %s" % (value, units[0])


def ago_text(seconds: Optional[float]) -> str:
    return "" if seconds is None else duration_text(seconds) + " ago"


def time_text(when: Optional[_dt.datetime]) -> str:
    """A UTC timestamp to the minute: 2026-11-27 15:58Z."""
    return "" if when is None else when.astimezone(_dt.timezone.utc).strftime("%Y-%m-%d %H:%MZ")


def import_row(status: ImportStatus) -> tuple:
    return (str(status.fileset_id), "%s/%s" % (status.owner, status.group), status.template_prefix,
            str(status.files), size_text(status.bytes), status.stage, status.state,
            time_text(status.started), ago_text(status.idle_seconds), status.reason)


def job_row(job: JobStatus) -> tuple:
    p = job.progress
    return (str(p.job), job.state, "%d/%d/%d" % (p.filesets_done, p.filesets_failed, p.filesets_total),
            "%s / %s" % (size_text(p.bytes_done), size_text(p.bytes_total)),
            size_text(p.rate_bytes_per_s) + "/s" if p.rate_bytes_per_s else "",
            duration_text(p.eta_seconds) if p.eta_seconds is not None else "",
            str(p.workers), ago_text(job.idle_seconds), str(p.journal))


def import_record(status: ImportStatus) -> dict:
    return {key: getattr(status, key) for key in IMPORT_KEYS}


def job_record(job: JobStatus) -> dict:
    p = job.progress
    record = {"job": p.job, "journal": p.journal, "state": job.state, "reason": job.reason,
              "job_state": p.state, "idle_seconds": job.idle_seconds}
    for key in JOB_KEYS:
        if key not in record:
            record[key] = getattr(p, key)
    return {key: record[key] for key in JOB_KEYS}


def summary_record(snapshot: Snapshot) -> dict:
    summary = summarize(snapshot)
    return {"server_time": snapshot.server.server_time if snapshot.server else None,
            "local_time": snapshot.local_time,
            "stalled_after_seconds": snapshot.stalled_after,
            "imports_by_state": summary.imports_by_state,
            "jobs_by_state": summary.jobs_by_state,
            "bytes_in_flight": summary.bytes_in_flight,
            "oldest_activity_age_seconds": summary.oldest_activity_age,
            "unlisted_processes": snapshot.server.unlisted_processes if snapshot.server else 0,
            "other_sessions_processes": (snapshot.server.other_sessions_processes
                                         if snapshot.server else 0),
            "problems": list(snapshot.problems)}


def header(snapshot: Snapshot) -> str:
    clock = ("server time %s" % time_text(snapshot.server.server_time) if snapshot.server
             else "server not asked" if not snapshot.asked_server else "server unreadable")
    return "omero status imports: %s, stalled after %s" % (
        clock, duration_text(snapshot.stalled_after))


def notes(snapshot: Snapshot) -> list:
    """Lines under the tables: problems, then the import processes no row accounts for."""
    view, notes = snapshot.server, ["problem: %s" % p for p in snapshot.problems]
    if view and view.unlisted_processes:
        notes.append("%d live import processes of this session are not listed (still uploading: "
                     "the server names no fileset before the upload is verified; or outside this "
                     "view)" % view.unlisted_processes)
    if view and view.other_sessions_processes:
        notes.append("%d import processes of other sessions: not visible from this session "
                     "(listImports lists every process since the server started, closed ones "
                     "included; only a process's own session may ask it anything)"
                     % view.other_sessions_processes)
    return notes


def progress_fraction(job: JobStatus) -> tuple:
    """(completed, total) for a job's progress bar: bytes when known, else filesets."""
    p = job.progress
    if p.bytes_total:
        return p.bytes_done, p.bytes_total
    return p.filesets_done + p.filesets_failed, max(p.filesets_total, 1)
