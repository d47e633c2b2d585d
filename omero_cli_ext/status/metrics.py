"""Prometheus metrics of a snapshot, for node-exporter's textfile collector.

prometheus_client's `write_to_textfile` writes a temporary file beside the target and renames it,
so the collector never reads half a file.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

from omero_cli_ext.status.jobs import JOB_STATES
from omero_cli_ext.status.snapshot import Snapshot, summarize

PREFIX = "omero_status_"


def registry_of(snapshot: Snapshot) -> CollectorRegistry:
    """Every gauge of docs/status.md, set from one snapshot."""
    registry = CollectorRegistry()

    def gauge(name, doc, labels=()):
        return Gauge(PREFIX + name, doc, labelnames=labels, registry=registry)

    summary = summarize(snapshot)
    gauge("snapshot_timestamp_seconds", "When this snapshot was taken (local clock, Unix time)"
          ).set(snapshot.local_time.timestamp())
    if snapshot.asked_server:
        gauge("server_up", "1 when the server answered, 0 when it could not be read"
              ).set(1 if snapshot.server else 0)
    if snapshot.server:
        imports = gauge("imports", "Server-side imports by state", ("state",))
        for state, count in summary.imports_by_state.items():
            imports.labels(state=state).set(count)
        gauge("import_bytes_in_flight", "Used-file bytes of imports neither done nor failed"
              ).set(summary.bytes_in_flight)
        gauge("import_oldest_activity_age_seconds",
              "Seconds since the least recent activity of an import neither done nor failed"
              ).set(summary.oldest_activity_age)
        gauge("import_processes_unlisted",
              "Live import processes whose fileset is not listed (still uploading, or out of scope)"
              ).set(snapshot.server.unlisted_processes)
        gauge("import_processes_other_sessions",
              "Import processes listImports lists for other sessions (not visible from this one)"
              ).set(snapshot.server.other_sessions_processes)
    if snapshot.jobs:
        labels = ("job", "journal")
        state = gauge("job_state", "1 for the local job's current state", labels + ("state",))
        filesets = gauge("job_filesets", "Filesets of a local job by outcome", labels + ("outcome",))
        job_bytes = gauge("job_bytes", "Bytes of a local job", labels + ("kind",))
        rate = gauge("job_rate_bytes_per_second", "Recent transfer rate of a local job", labels)
        eta = gauge("job_eta_seconds", "Estimated seconds left of a local job", labels)
        idle = gauge("job_last_activity_age_seconds",
                     "Seconds since a local job's journal last recorded progress", labels)
        for job in snapshot.jobs:
            p = job.progress
            key = {"job": str(p.job), "journal": str(p.journal)}
            for s in JOB_STATES:
                state.labels(state=s, **key).set(1 if job.state == s else 0)
            for outcome, n in (("total", p.filesets_total), ("done", p.filesets_done),
                               ("failed", p.filesets_failed), ("running", p.filesets_running)):
                filesets.labels(outcome=outcome, **key).set(n)
            job_bytes.labels(kind="total", **key).set(p.bytes_total)
            job_bytes.labels(kind="done", **key).set(p.bytes_done)
            rate.labels(**key).set(p.rate_bytes_per_s or 0)
            if p.eta_seconds is not None:
                eta.labels(**key).set(p.eta_seconds)
            if job.idle_seconds is not None:
                idle.labels(**key).set(job.idle_seconds)
    return registry


def write_metrics(path: str, snapshot: Snapshot) -> None:
    """Replace `path` atomically with the snapshot's metrics (raises OSError when it cannot)."""
    write_to_textfile(path, registry_of(snapshot))
