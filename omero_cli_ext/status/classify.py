"""Where each server-side import stands: its stage and its state, from the signals that really change.

OMERO updates only the UploadJob (to Finished, in verifyUpload); the metadata, pixel-data and
thumbnail jobs stay Submitted even after success (DESIGN.md §3). So the stage is read from:

- the UploadJob's status: ``uploading`` until it is Finished (Error/Cancelled: ``failed``);
- the import log's size updates: the server sets the log's size after each step
  (ManagedImportRequestI.step), so 0, 1, 2 updates mean the metadata, pixel-data, thumbnail step is
  running and 3 or more that the import is ``done``, as ``omero fs importtime`` reads them;
- images on the fileset: none after a step ended means the server failed (a "ghost" fileset).

and the state from time (the newest EventLog on the fileset's objects against the server clock) and
from the ImportProcesses the server lists as live. docs/status.md is the user's version of this.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, replace
from typing import Mapping, Optional, Sequence

from omero_cli_ext.server import Fileset, FilesetActivity, RunningImport

UPLOADING, METADATA, PIXEL_DATA, THUMBNAILS, DONE, FAILED = (
    "uploading", "metadata", "pixel data", "thumbnails", "done", "failed")
STAGES = (UPLOADING, METADATA, PIXEL_DATA, THUMBNAILS, DONE, FAILED)
# the stage running after n import-log updates (n = 0, 1, 2); 3 and more: done
STEP_STAGES = (METADATA, PIXEL_DATA, THUMBNAILS)

ACTIVE, QUEUED, STALLED = "active", "queued", "stalled"
STATES = (FAILED, STALLED, ACTIVE, QUEUED, DONE)   # also the display order: worst first
IN_PROGRESS = (ACTIVE, QUEUED, STALLED)

# what `process` says about the fileset's ImportProcess (ManagedRepository.listImports)
LIVE, GONE, UNKNOWN = "live", "gone", "unknown"
# RunningImport.fileset_id of a process still uploading: the server names its fileset only once
# verifyUpload made the handle (omero_adapter.UNKNOWN_FILESET)
UNATTRIBUTED = 0
UPLOAD_FAILED_STATUSES = ("Error", "Cancelled")


@dataclass(frozen=True)
class ImportStatus:
    """One fileset's import as `omero status imports` reports it (docs/status.md, JSON keys)."""
    fileset_id: int
    owner: str
    group: str
    template_prefix: str
    files: int
    bytes: int
    images: int
    stage: str                       # one of STAGES
    state: str                       # one of STATES
    reason: str                      # the signal that decided the state, in words
    started: Optional[_dt.datetime]  # the fileset's creation (importFileset)
    last_activity: Optional[_dt.datetime]
    idle_seconds: float              # server clock minus last_activity
    steps_done: int                  # import-log size updates
    upload_finished: Optional[_dt.datetime]
    process: str                     # LIVE, GONE or UNKNOWN


def classify(filesets: Sequence[Fileset], activities: Mapping[int, FilesetActivity],
             running: Sequence[RunningImport], *, now: _dt.datetime, stalled_after: float,
             viewer_id: int) -> list:
    """ImportStatus per fileset, worst state first.

    `running` covers only the viewer's own imports (listImports lists processes of the caller's
    groups whose fileset the caller may edit), so the process of someone else's fileset is UNKNOWN.
    Processes still uploading name no fileset: they are matched to the viewer's newest uploads.
    """
    live_ids = {r.fileset_id for r in running}
    first = [_first_pass(f, activities.get(f.id), live_ids, now, stalled_after, viewer_id)
             for f in filesets]
    uploading = sorted((i for i, (s, _) in enumerate(first)
                        if s.stage == UPLOADING and s.process == GONE),
                       key=lambda i: (first[i][0].started or now, first[i][0].fileset_id),
                       reverse=True)
    unattributed = sum(1 for r in running if r.fileset_id == UNATTRIBUTED)
    for i in uploading[:unattributed]:
        first[i] = (replace(first[i][0], process=LIVE), first[i][1])
    busy_owners = {status.owner for status, started in first if started and status.state == ACTIVE}
    result = [status if started or status.state not in IN_PROGRESS
              else _not_started(status, status.owner in busy_owners, stalled_after)
              for status, started in first]
    result.sort(key=sort_key)
    return result


def sort_key(status: ImportStatus) -> tuple:
    """Worst state first, then the most recently active, then the newest fileset."""
    last = status.last_activity.timestamp() if status.last_activity else 0.0
    return STATES.index(status.state), -last, -status.fileset_id


def _first_pass(fileset: Fileset, activity: Optional[FilesetActivity], live_ids: set,
                now: _dt.datetime, stalled_after: float, viewer_id: int) -> tuple:
    """(status, started): the state of an import that has not started yet is settled later,
    once it is known whether another import of the same owner is active."""
    activity = activity or FilesetActivity(fileset_id=fileset.id, image_count=fileset.image_count)
    upload = next((j for j in activity.jobs if j.kind == "UploadJob"), None)
    log = activity.log
    steps = log.updates if log is not None else 0
    last = _latest(fileset.created, activity.last_event, log.updated if log else None,
                   upload.finished if upload else None)
    idle = max(0.0, (now - last).total_seconds()) if last is not None else 0.0
    if fileset.owner_id != viewer_id:
        process = UNKNOWN
    else:
        process = LIVE if fileset.id in live_ids else GONE
    stage, reason = _stage(upload, activity.image_count, log is not None, steps, process, idle,
                           stalled_after)
    if stage in (DONE, FAILED):
        state = stage
    elif idle >= stalled_after:
        state, reason = STALLED, "no activity for %s (%s)" % (duration_text(idle), reason)
    else:
        state = ACTIVE
    received = any((e.original_file.size or 0) > 0 for e in fileset.entries)
    started = (stage != UPLOADING or received or fileset.created is None or last is None
               or last > fileset.created)
    status = ImportStatus(
        fileset_id=fileset.id, owner=fileset.owner_name, group=fileset.group_name,
        template_prefix=fileset.template_prefix, files=len(fileset.entries), bytes=fileset.size,
        images=activity.image_count, stage=stage, state=state, reason=reason,
        started=fileset.created, last_activity=last, idle_seconds=idle, steps_done=steps,
        upload_finished=upload.finished if upload and upload.status == "Finished" else None,
        process=process)
    return status, started


def _stage(upload, images: int, has_log: bool, steps: int, process: str, idle: float,
           stalled_after: float) -> tuple:
    """(stage, reason) from the UploadJob, the import log's updates and the image count."""
    if upload is not None and upload.status in UPLOAD_FAILED_STATUSES:
        return FAILED, "UploadJob %s%s" % (upload.status, ": " + upload.message if upload.message else "")
    if upload is not None and upload.status != "Finished":
        return UPLOADING, "UploadJob %s" % upload.status
    if not has_log:
        if images:
            return DONE, "%d images, no import log to follow" % images
        return FAILED, "no images and no import log"
    if images == 0 and steps >= 1:
        return FAILED, "a server step ended without creating images (ghost fileset)"
    if images == 0 and process == GONE and idle >= stalled_after:
        return FAILED, "upload verified, no images, no import process for %s" % duration_text(idle)
    if steps >= len(STEP_STAGES):
        return DONE, "%d images, thumbnail step ended" % images
    stage = STEP_STAGES[steps]
    return stage, "%s running: %d of %d steps ended" % (stage, steps, len(STEP_STAGES))


def _not_started(status: ImportStatus, owner_busy: bool, stalled_after: float) -> ImportStatus:
    """An import with no event since its rows were created waits for its turn while another
    import of the same owner is active (the importer works through filesets one or N at a time)."""
    if owner_busy:
        return replace(status, state=QUEUED,
                        reason="not started, another import of %s is active" % status.owner)
    if status.idle_seconds >= stalled_after:
        return status
    return replace(status, state=ACTIVE, reason="just created, nothing received yet")


def _latest(*times) -> Optional[_dt.datetime]:
    known = [t for t in times if t is not None]
    return max(known) if known else None


def duration_text(seconds: float) -> str:
    """A short age: 45s, 12m, 3h05m, 2d04h."""
    seconds = int(seconds)
    if seconds < 60:
        return "%ds" % seconds
    if seconds < 3600:
        return "%dm%02ds" % divmod(seconds, 60) if seconds < 600 else "%dm" % (seconds // 60)
    if seconds < 86400:
        return "%dh%02dm" % (seconds // 3600, seconds % 3600 // 60)
    return "%dd%02dh" % (seconds // 86400, seconds % 86400 // 3600)
