"""The server decides what happened to filesets in doubt (an attempt died, or gave no result).

Ownership is proven, never assumed. A server fileset using all of a doubtful fileset's files
(clientPath, owner) is this job's only when one of the job's importer attempts announced it (its
Fileset id in a result, its import log id in `IMPORT_STARTED`), or when it was created in the
session an attempt of its chunk joined, within that attempt's span on the server's clock, in the
job's group. Every other candidate is **foreign**: reported with its containers, never deleted,
and counted done only when it is complete and already in the job's target.

Of the job's own candidates:
- one with images: the fileset is imported (its ids are recorded);
- upload verified, no images: the server's metadata step may run for hours without a visible
  process, an EventLog or an import log update (DESIGN.md §3), so it is **server processing**
  (wait) until the import log shows an error, the UploadJob is `Error`/`Cancelled`, or
  `server_step_timeout` passed since the last sign of it — the database's, and the import log
  file's own growth (`log_quiet_since`: the server writes it as a step runs); only then dead;
- upload not verified: dead when the UploadJob is `Error`/`Cancelled` or nothing of it moved for
  `lease` on the server's clock; waiting before that;
- dead ones are ghosts: deleted (and the fileset re-imported) with `clean_ghosts`, reported
  (state `ghost`) otherwise.
All ages are on the server's clock (`server_now`). A bounded number of batched server calls,
whatever the number of filesets.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence

from omero_cli_ext.pathrules import client_path
from omero_cli_ext.importing.store import Ownership
from omero_cli_ext.server import UPLOAD_JOB

FINISHED = "Finished"
DEAD_JOB_STATUSES = ("Error", "Cancelled")
SPAN_MARGIN = _dt.timedelta(seconds=5)   # the driver's estimate of the server clock may lag this
LOG_TAIL = 64 * 1024                     # bytes of an import log read for an error


@dataclass
class Decision:
    """What to record; idx = the fileset's index in the plan."""
    done: list = field(default_factory=list)        # (idx, fileset id, images, plates, note)
    replan: list = field(default_factory=list)      # idx: import (again)
    failed: list = field(default_factory=list)      # (idx, message)
    blocked: list = field(default_factory=list)     # (idx, ghost ids): waits for --clean-ghosts
    ghosts_left: list = field(default_factory=list)  # (fileset_id, idx) ghosts not deleted
    deleted: list = field(default_factory=list)     # (fileset_id, idx) deleted ghosts
    waiting: list = field(default_factory=list)     # (idx, reason): the server may still import it
    duplicates: list = field(default_factory=list)  # (idx, (extra fileset ids with images...))
    foreign: list = field(default_factory=list)     # (idx, fileset id, complete, containers)


@dataclass(frozen=True)
class Limits:
    lease: float = 600.0                   # seconds without upload progress: a dead upload
    server_step_timeout: float = 12 * 3600  # seconds a verified, image-less fileset may take


def _aware(when: Optional[_dt.datetime]) -> Optional[_dt.datetime]:
    if when is not None and when.tzinfo is None:
        return when.replace(tzinfo=_dt.timezone.utc)
    return when


def _upload_job(activity):
    return next((job for job in activity.jobs if job.kind == UPLOAD_JOB), None)


def log_says_error(text: str) -> bool:
    """An import log with an ERROR line (logback `%-5p`: the level between spaces)."""
    return any(" ERROR " in line for line in text.splitlines())


def read_log_tail(port, original_file_id: int) -> str:
    reader = port.open_original_file(original_file_id)
    try:
        start = max(0, reader.size - LOG_TAIL)
        return reader.read(start, reader.size - start).decode("utf-8", "replace")
    finally:
        reader.close()


def reconcile(port, owner_id: int, group_id: Optional[int], doubtful: Sequence, *,
              ownership: Ownership, clean_ghosts: bool, server_now: _dt.datetime,
              limits: Limits = Limits(),
              raw_results: Optional[Mapping[int, tuple]] = None,
              reported: Optional[Mapping[int, str]] = None, final: bool = False,
              target_filesets: Optional[Callable[[], set]] = None,
              log_quiet_since: Optional[Callable] = None) -> Decision:
    """Decide every doubtful PlannedFileset against the server.

    `raw_results`: importer results already journaled (fileset id -> (images, plates)).
    `reported`: idx -> message for filesets the importer said it failed (these end `failed`).
    `final`: the importer ran to its end, so a fileset with no trace of this job on the server
    failed (or, skipped by `--exclude`, is done when a complete foreign one is in the target).
    `target_filesets()`: ids of the filesets already in the job's target, None for a job without
    a target (asked only when a complete fileset not announced by the job is found).
    `log_quiet_since(logs)`: per ImportLog (OriginalFile id), since when its file has not grown
    (None: unknown); asked once, for every image-less verified fileset the database's signals
    would declare dead by the step timeout.
    """
    decision = Decision()
    if not doubtful:
        return decision
    raw_results = raw_results or {}
    reported = reported or {}
    paths = sorted({client_path(f) for fs in doubtful for f in fs.files})
    by_path = port.filesets_by_client_paths(paths, owner_id)
    candidates = {}
    for fs in doubtful:
        sets = [set(by_path.get(client_path(f), ())) for f in fs.files]
        candidates[fs.idx] = set.intersection(*sets) if sets else set()
    everything = sorted(set().union(*candidates.values()))
    activity = port.activity(everything) if everything else {}
    unannounced = [fid for fid in everything if fid not in ownership.filesets]
    info = port.filesets(unannounced, image_counts=False) if unannounced else {}
    sessions = port.fileset_sessions(unannounced) if unannounced else {}

    def announced(fid: int) -> bool:
        act = activity.get(fid)
        return fid in ownership.filesets or (act is not None and act.log is not None
                                             and act.log.original_file_id in ownership.logs)

    def ours(fid: int, chunk: int) -> bool:
        if announced(fid):
            return True
        fileset = info.get(fid)
        if fileset is None or fid not in sessions or (group_id is not None
                                                      and fileset.group_id != group_id):
            return False
        created = _aware(fileset.created)
        for attempt in ownership.attempts_of(chunk):
            if attempt.session_id != sessions[fid] or created is None:
                continue
            end = attempt.server_end + SPAN_MARGIN if attempt.server_end else None
            if attempt.server_start - SPAN_MARGIN <= created and (end is None or created <= end):
                return True
        return False

    def quiet_for(act, *also) -> float:
        stamps = [_aware(t) for t in (act.last_event, act.log.updated if act.log else None, *also)
                  if t is not None]
        return (server_now - max(stamps)).total_seconds() if stamps else float("inf")

    log_errors: dict = {}

    def server_failed(act) -> bool:
        if act.log is None:
            return False
        if act.log.original_file_id not in log_errors:
            try:
                log_errors[act.log.original_file_id] = log_says_error(
                    read_log_tail(port, act.log.original_file_id))
            except Exception:      # an unreadable log proves nothing
                log_errors[act.log.original_file_id] = False
        return log_errors[act.log.original_file_id]

    def quiet_past_timeout(act) -> bool:
        upload = _upload_job(act)
        return (act.log is not None and not act.image_count and upload is not None
                and upload.status == FINISHED
                and quiet_for(act, upload.finished) >= limits.server_step_timeout)

    files_quiet: Optional[Mapping] = None

    def file_quiet_since(act) -> Optional[_dt.datetime]:
        """The import log file's own last growth, looked at once for all that need it."""
        nonlocal files_quiet
        if files_quiet is None:
            files_quiet = log_quiet_since(
                [a.log for a in activity.values() if quiet_past_timeout(a)])
        return files_quiet.get(act.log.original_file_id)

    def dead(fid: int, failed_upload: bool) -> tuple:
        """(dead?, reason) for an image-less fileset of this job; `failed_upload`: its importer
        reported it failed and ended, so an unverified upload of it moves no more."""
        act = activity[fid]
        upload = _upload_job(act)
        if upload is not None and upload.status in DEAD_JOB_STATUSES:
            return True, f"its UploadJob is {upload.status}"
        if upload is not None and upload.status == FINISHED:
            if server_failed(act):
                return True, "the server import failed (its import log has an ERROR)"
            quiet = quiet_for(act, upload.finished)
            if quiet >= limits.server_step_timeout and log_quiet_since and act.log is not None:
                quiet = quiet_for(act, upload.finished, file_quiet_since(act))
            if quiet >= limits.server_step_timeout:
                return True, (f"no images, and no sign of the server for {quiet / 3600:.1f} h "
                              "since its upload was verified (--server-step-timeout)")
            return False, "the server is still processing it (upload verified, no images yet)"
        if failed_upload:
            return True, "its importer reported the failure before the upload was verified"
        quiet = quiet_for(act, _aware(info[fid].created) if fid in info else None)
        if quiet >= limits.lease:
            return True, f"upload never verified and quiet for {quiet:.0f} s (--lease)"
        return False, "its upload may still be in progress"

    owned = {}
    for fs in doubtful:
        present = sorted(fid for fid in candidates[fs.idx] if fid in activity)
        owned[fs.idx] = [fid for fid in present if ours(fid, fs.chunk)]
    # a complete fileset proven only by session and time (not announced) is the job's only in
    # its target: another import in the same session may have put the same files elsewhere
    unproven = {fid for mine in owned.values() for fid in mine
                if activity[fid].image_count and not announced(fid)}
    maybe_target = {fid for fs in doubtful for fid in candidates[fs.idx]
                    if fid in activity and activity[fid].image_count}
    target = target_filesets() if (maybe_target - {f for m in owned.values() for f in m}
                                   or unproven) and target_filesets is not None else None
    for fs in doubtful:
        if target is not None:
            owned[fs.idx] = [fid for fid in owned[fs.idx] if fid not in unproven or fid in target]
        present = sorted(fid for fid in candidates[fs.idx] if fid in activity)
        decision.foreign += [(fs.idx, fid, bool(activity[fid].image_count), ())
                             for fid in present if fid not in owned[fs.idx]]
    foreign_complete = sorted({fid for _, fid, complete, _ in decision.foreign if complete})
    in_target = (target or set()) & set(foreign_complete)
    to_delete = []
    for fs in doubtful:
        mine = owned[fs.idx]
        complete = [fid for fid in mine if activity[fid].image_count]
        ghosts, waits = [], []
        for fid in mine:
            if fid not in complete:
                is_dead, reason = dead(fid, fs.idx in reported)
                (ghosts if is_dead else waits).append((fid, reason))
        ghost_ids = tuple(fid for fid, _ in ghosts)
        if clean_ghosts:
            to_delete += [(fid, fs.idx) for fid in ghost_ids]
        else:
            decision.ghosts_left += [(fid, fs.idx) for fid in ghost_ids]
        theirs_in_target = [fid for idx, fid, c, _ in decision.foreign
                            if idx == fs.idx and fid in in_target]
        message = reported.get(fs.idx)
        if complete:
            images, plates = raw_results.get(complete[0], (None, None))
            decision.done.append((fs.idx, complete[0], images, plates, None))
            if complete[1:]:
                decision.duplicates.append((fs.idx, tuple(complete[1:])))
        elif waits:
            decision.waiting.append((fs.idx, f"Fileset {waits[0][0]}: {waits[0][1]}"))
        elif message is not None:
            note = (f" (ghost fileset {', '.join(map(str, ghost_ids))} "
                    f"{'deleted' if clean_ghosts else 'left on the server'})") if ghost_ids else ""
            decision.failed.append((fs.idx, message + note))
        elif ghost_ids and not clean_ghosts:
            decision.blocked.append((fs.idx, ghost_ids, ghosts[0][1]))
        elif theirs_in_target:
            decision.done.append((fs.idx, theirs_in_target[0], None, None,
                                  f"already in the target as Fileset {theirs_in_target[0]}, "
                                  "imported by another client"))
        elif final:
            theirs = [fid for idx, fid, c, _ in decision.foreign if idx == fs.idx and c]
            decision.failed.append((fs.idx, "the importer reported no result for it" + (
                f" (complete Fileset {theirs[0]} of another client uses its files: an importer "
                "with --exclude=clientpath skips it)" if theirs else "")))
        else:
            decision.replan.append(fs.idx)
    if foreign_complete:
        containers = port.containers_of(foreign_complete)
        decision.foreign = [(idx, fid, c, containers.get(fid, ()) if c else ())
                            for idx, fid, c, _ in decision.foreign]
    if to_delete:
        port.delete_filesets(sorted({fid for fid, _ in to_delete}))
        decision.deleted = to_delete
    return decision
