"""One look at every import: the server's (a fixed number of paged port calls, however many
imports there are) and the local jobs'; plus the summaries that views, `--check` and metrics share."""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Optional

from omero_cli_ext.server import FilesetQuery, ServerPort
from omero_cli_ext.status.classify import (
    DONE, FAILED, IN_PROGRESS, LIVE, STALLED, STATES, UNATTRIBUTED, UPLOADING, classify,
    needs_log_probe,
)
from omero_cli_ext.status.logwatch import SizeMemory, probe_logs
from omero_cli_ext.status.jobs import INTERRUPTED, JOB_STATES

# `--check` exit codes (docs/status.md); worst first: failed, unknown, stalled
# (the Nagios plugin convention: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN)
EXIT_CHECK_STALLED = 1
EXIT_CHECK_FAILED = 2
EXIT_CHECK_UNKNOWN = 3
NAMED_IN_CHECK = 5       # imports/jobs named per category in the one-line summary


@dataclass(frozen=True)
class ServerScope:
    """Which server imports to look at."""
    owner_id: Optional[int]      # None: every user's (admins)
    group_name: Optional[str]    # None: every group
    since_seconds: float         # filesets created this recently


@dataclass(frozen=True)
class ServerView:
    server_time: _dt.datetime
    imports: tuple               # ImportStatus, worst first
    unlisted_processes: int      # live ImportProcesses of this session matched to none of `imports`
    # processes listImports lists for other sessions: not reachable from this one (live or closed)
    other_sessions_processes: int = 0


@dataclass(frozen=True)
class Snapshot:
    local_time: _dt.datetime
    stalled_after: float
    server: Optional[ServerView] = None   # None: not asked (--local-only) or unreachable
    jobs: tuple = ()                      # JobStatus, worst first
    problems: tuple = ()                  # sources that could not be read, in words
    asked_server: bool = True

    @property
    def imports(self) -> tuple:
        return self.server.imports if self.server else ()


def read_server(port: ServerPort, scope: ServerScope, stalled_after: float,
                viewer_id: int, memory: Optional[SizeMemory] = None) -> ServerView:
    """Four port calls (clock, filesets, activity, processes), the middle two paged by the port;
    listImports costs one call plus, for this session's own processes only, two pipelined ones.
    Imports in a server step get a look at their import log (logwatch: on disk, else through
    RawFileStore, bounded), with `memory` the sizes seen before."""
    now = port.server_time()
    since = now - _dt.timedelta(seconds=scope.since_seconds)
    filesets = list(port.find_filesets(FilesetQuery(owner_id=scope.owner_id, since=since)))
    if scope.group_name is not None:
        filesets = [f for f in filesets if f.group_name == scope.group_name]
    activities = port.activity([f.id for f in filesets]) if filesets else {}
    running = port.running_imports()
    candidates = [(f.id, activities[f.id].log) for f in sorted(filesets, key=lambda f: -f.id)
                  if needs_log_probe(activities.get(f.id))]
    probes = (probe_logs(port, port.repository(), candidates, now,
                         memory if memory is not None else SizeMemory())
              if candidates else {})
    imports = classify(filesets, activities, running, now=now, stalled_after=stalled_after,
                       viewer_id=viewer_id, probes=probes)
    own = [r for r in running if r.own_session]
    listed = {f.id for f in filesets} | {UNATTRIBUTED}
    matched = sum(1 for i in imports if i.stage == UPLOADING and i.process == LIVE)
    unattributed = sum(1 for r in own if r.fileset_id == UNATTRIBUTED)
    return ServerView(server_time=now, imports=tuple(imports),
                      unlisted_processes=sum(1 for r in own if r.fileset_id not in listed)
                      + unattributed - matched,
                      other_sessions_processes=len(running) - len(own))


@dataclass(frozen=True)
class Summary:
    imports_by_state: dict = field(default_factory=dict)   # every state of STATES, in that order
    jobs_by_state: dict = field(default_factory=dict)      # every state of JOB_STATES
    bytes_in_flight: int = 0          # used-file bytes of imports not done nor failed
    oldest_activity_age: float = 0.0  # seconds since the least recent activity of those imports


def summarize(snapshot: Snapshot) -> Summary:
    in_progress = [i for i in snapshot.imports if i.state in IN_PROGRESS]
    return Summary(
        imports_by_state={s: sum(1 for i in snapshot.imports if i.state == s) for s in STATES},
        jobs_by_state={s: sum(1 for j in snapshot.jobs if j.state == s) for s in JOB_STATES},
        bytes_in_flight=sum(i.bytes for i in in_progress),
        oldest_activity_age=max((i.idle_seconds for i in in_progress), default=0.0))


def check(snapshot: Snapshot) -> tuple:
    """(exit code, one line) for cron/Nagios: failed beats unknown beats stalled beats OK.
    A job counts as failed as soon as one of its filesets failed; an interrupted job as stalled."""
    failed = (["fileset %d (%s: %s)" % (i.fileset_id, i.owner, i.reason)
               for i in snapshot.imports if i.state == FAILED]
              + ["job %s (%s)" % (j.progress.job, j.reason) for j in snapshot.jobs
                 if j.state == FAILED or (j.progress.filesets_failed and j.state != DONE)])
    stalled = (["fileset %d (%s: %s)" % (i.fileset_id, i.owner, i.reason)
                for i in snapshot.imports if i.state == STALLED]
               + ["job %s (%s)" % (j.progress.job, j.reason) for j in snapshot.jobs
                  if j.state in (STALLED, INTERRUPTED)])
    if failed:
        code, word = EXIT_CHECK_FAILED, "FAILED"
    elif snapshot.problems:
        code, word = EXIT_CHECK_UNKNOWN, "UNKNOWN"
    elif stalled:
        code, word = EXIT_CHECK_STALLED, "STALLED"
    else:
        code, word = 0, "OK"
    summary = summarize(snapshot)
    parts = [counts_text(summary)]
    for label, items in (("failed", failed), ("unknown", list(snapshot.problems)),
                         ("stalled", stalled)):
        if items:
            shown = items[:NAMED_IN_CHECK]
            more = len(items) - len(shown)
            parts.append("%s: %s%s" % (label, "; ".join(shown), " and %d more" % more if more else ""))
    perfdata = " ".join("%s=%d" % (s, n) for s, n in summary.imports_by_state.items())
    perfdata += " oldest_activity_age=%ds bytes_in_flight=%dB" % (summary.oldest_activity_age,
                                                                   summary.bytes_in_flight)
    perfdata += "".join(" jobs_%s=%d" % (s, n) for s, n in summary.jobs_by_state.items())
    return code, "%s - %s | %s" % (word, "; ".join(parts), perfdata)


def counts_text(summary: Summary) -> str:
    """"imports: 2 active, 1 stalled; jobs: 1 active" (zero counts left out)."""
    def part(label, counts):
        shown = ", ".join("%d %s" % (n, s) for s, n in counts.items() if n)
        return "%s: %s" % (label, shown or "none")
    return "%s; %s" % (part("imports", summary.imports_by_state),
                       part("local jobs", summary.jobs_by_state))
