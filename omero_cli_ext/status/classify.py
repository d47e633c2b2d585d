"""Where each server-side import stands: its stage and its state, from the signals that really change.

OMERO updates only the UploadJob (to Finished, in verifyUpload); the metadata, pixel-data and
thumbnail jobs stay Submitted even after success (DESIGN.md §3). So the stage is read from:

- the UploadJob's status: ``uploading`` until it is Finished (Error/Cancelled: ``failed``);
- the import log's size updates: the server saves the log's size when each of its 5 steps ends
  and once more in cleanup, only when it changed (ManagedImportRequestI), so 0 updates mean no
  step has ended (``processing``: step 1, setId + saveToDB, records nothing until it ends, for
  minutes or hours on a big plate), 1 and 2 that pixel data and thumbnails run, 3 or more ``done``,
  as ``omero fs importtime`` reads them;
- images on the fileset: none after a step ended means the server failed (a "ghost" fileset).

and the state from time: the newest of the EventLogs on the fileset's objects and of the import
log's own growth on disk (its mtime, or sizes read through RawFileStore between two looks),
against the server clock. Nothing else proves a failure: the Java importer closes its
ImportProcess right after verifyUpload, so a missing process means nothing. docs/status.md is the
user's version of this.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, replace
from typing import Mapping, Optional, Sequence

from omero_cli_ext.server import Fileset, FilesetActivity, RunningImport

UPLOADING, PROCESSING, PIXEL_DATA, THUMBNAILS, DONE, FAILED = (
    "uploading", "processing", "pixel data", "thumbnails", "done", "failed")
STAGES = (UPLOADING, PROCESSING, PIXEL_DATA, THUMBNAILS, DONE, FAILED)
# the stage running after n import-log updates (n = 0, 1, 2); 3 and more: done
STEP_STAGES = (PROCESSING, PIXEL_DATA, THUMBNAILS)

ACTIVE, QUEUED, STALLED = "active", "queued", "stalled"
STATES = (FAILED, STALLED, ACTIVE, QUEUED, DONE)   # also the display order: worst first
IN_PROGRESS = (ACTIVE, QUEUED, STALLED)

# what `process` says about the fileset's ImportProcess (ManagedRepository.listImports): a
# process of this session answers (LIVE), or none does (closed after its upload, as the Java
# importer does, or of another session: either way nothing can be asked of it)
LIVE, NOT_VISIBLE = "live", "not visible"
# RunningImport.fileset_id of a process still uploading: the server names its fileset only once
# verifyUpload made the handle (omero_adapter.UNKNOWN_FILESET)
UNATTRIBUTED = 0
UPLOAD_FAILED_STATUSES = ("Error", "Cancelled")


@dataclass(frozen=True)
class LogProbe:
    """What was seen of an import log file itself (not its database row): its size now, and when
    it last grew as far as anyone can tell — the file's mtime when the repository is readable
    here, else the first look (this run or an earlier one) at the size it has now."""
    size: int
    grew: Optional[_dt.datetime]
    source: str                      # "disk" or "server" (RawFileStore.size)


def needs_log_probe(activity: Optional[FilesetActivity]) -> bool:
    """Whether the import log's growth can say something: the upload is verified and no step has
    ended with the fileset still short of done (stage processing, pixel data or thumbnails)."""
    if activity is None or activity.log is None:
        return False
    upload = next((j for j in activity.jobs if j.kind == "UploadJob"), None)
    if upload is not None and upload.status != "Finished":
        return False
    steps = activity.log.updates
    return steps < len(STEP_STAGES) and not (steps and not activity.image_count)


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
    process: str                     # LIVE or NOT_VISIBLE
    log_grew: Optional[_dt.datetime] = None   # the import log file's last growth (LogProbe.grew)


def classify(filesets: Sequence[Fileset], activities: Mapping[int, FilesetActivity],
             running: Sequence[RunningImport], *, now: _dt.datetime, stalled_after: float,
             viewer_id: int, probes: Optional[Mapping[int, LogProbe]] = None) -> list:
    """ImportStatus per fileset, worst state first.

    Only this session's processes answer (`RunningImport.own_session`); those still uploading
    name no fileset: they are matched to the viewer's newest uploads. `probes`: per fileset id,
    what was seen of its import log file (`needs_log_probe` says which are worth a look).
    """
    own = [r for r in running if r.own_session]   # others' cannot be asked anything
    live_ids = {r.fileset_id for r in own}
    probes = probes or {}
    first = [_first_pass(f, activities.get(f.id), probes.get(f.id), live_ids, now, stalled_after)
             for f in filesets]
    uploading = sorted((i for i, (s, _) in enumerate(first)
                        if s.stage == UPLOADING and s.process != LIVE
                        and filesets[i].owner_id == viewer_id),
                       key=lambda i: (first[i][0].started or now, first[i][0].fileset_id),
                       reverse=True)
    unattributed = sum(1 for r in own if r.fileset_id == UNATTRIBUTED)
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


def _first_pass(fileset: Fileset, activity: Optional[FilesetActivity], probe: Optional[LogProbe],
                live_ids: set, now: _dt.datetime, stalled_after: float) -> tuple:
    """(status, started): the state of an import that has not started yet is settled later,
    once it is known whether another import of the same owner is active."""
    activity = activity or FilesetActivity(fileset_id=fileset.id, image_count=fileset.image_count)
    upload = next((j for j in activity.jobs if j.kind == "UploadJob"), None)
    log = activity.log
    steps = log.updates if log is not None else 0
    grew = probe.grew if probe is not None else None
    last = _latest(fileset.created, activity.last_event, log.updated if log else None,
                   upload.finished if upload else None, grew)
    idle = max(0.0, (now - last).total_seconds()) if last is not None else 0.0
    process = LIVE if fileset.id in live_ids else NOT_VISIBLE
    stage, reason = _stage(upload, activity.image_count, log is not None, steps)
    if stage in STEP_STAGES:
        reason += "; " + _log_text(probe, now)
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
        process=process, log_grew=grew)
    return status, started


def _log_text(probe: Optional[LogProbe], now: _dt.datetime) -> str:
    if probe is None:
        return "import log not looked at"
    where = "on disk" if probe.source == "disk" else "via RawFileStore"
    if probe.grew is None:
        return "import log %d bytes %s, first look" % (probe.size, where)
    return "import log %d bytes %s, grew %s ago" % (
        probe.size, where, duration_text(max(0.0, (now - probe.grew).total_seconds())))


def _stage(upload, images: int, has_log: bool, steps: int) -> tuple:
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
    if steps >= len(STEP_STAGES):
        return DONE, "%d images, thumbnail step ended" % images
    if steps == 0:
        return PROCESSING, "upload verified, no server step ended yet (nothing is recorded " \
                           "before the metadata step ends)"
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
