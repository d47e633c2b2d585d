"""The server decides what happened to filesets in doubt (an attempt died, or gave no result).

For every doubtful fileset, the owner's server filesets that use all of its files (clientPath)
are its candidates; those the job found on the server before it imported anything (`foreign`)
are never its own and never touched. Of the job's own candidates:
- one with images means the fileset is imported (its ids are recorded);
- an uploaded, image-less one whose import process is still live and was active within the
  lease is still being imported by the server: wait;
- any other image-less or half-uploaded one (UploadJob not Finished) is a ghost: deleted and the
  fileset re-imported with `clean_ghosts`, reported (fileset state `ghost`) otherwise.
Three batched server calls at most (client paths, activity, running imports) and one delete,
whatever the number of filesets.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

from omero_cli_ext.importing.plan import client_path

UPLOAD_JOB = "UploadJob"
FINISHED = "Finished"


@dataclass
class Decision:
    """What to record; idx = the fileset's index in the plan."""
    done: list = field(default_factory=list)        # (idx, fileset id, images, plates, note)
    replan: list = field(default_factory=list)      # idx: import (again)
    failed: list = field(default_factory=list)      # (idx, message)
    blocked: list = field(default_factory=list)     # (idx, ghost ids): waits for --clean-ghosts
    ghosts_left: list = field(default_factory=list)  # (fileset_id, idx) ghosts not deleted
    deleted: list = field(default_factory=list)     # (fileset_id, idx) deleted ghosts
    waiting: list = field(default_factory=list)     # idx: the server is still importing it
    duplicates: list = field(default_factory=list)  # (idx, (extra fileset ids with images...))


def _uploaded(activity) -> bool:
    return any(job.kind == UPLOAD_JOB and job.status == FINISHED for job in activity.jobs)


def reconcile(port, owner_id: int, doubtful: Sequence, *, foreign: set, clean_ghosts: bool,
              raw_results: Optional[Mapping[int, tuple]] = None,
              reported: Optional[Mapping[int, str]] = None, final: bool = False,
              now: Optional[_dt.datetime] = None, active_within: float = 600) -> Decision:
    """Decide every doubtful PlannedFileset against the server.

    `raw_results`: importer results already journaled (fileset id -> (images, plates)).
    `reported`: idx -> message for filesets the importer said it failed (these end `failed`).
    `final`: the importer ran to its end, so a fileset with no trace on the server failed, and a
    complete fileset that existed before the job (skipped by `--exclude`) counts as done.
    """
    decision = Decision()
    if not doubtful:
        return decision
    raw_results = raw_results or {}
    reported = reported or {}
    now = now or _dt.datetime.now(_dt.timezone.utc)
    paths = sorted({client_path(f) for fs in doubtful for f in fs.files})
    by_path = port.filesets_by_client_paths(paths, owner_id)
    candidates = {}
    for fs in doubtful:
        sets = [set(by_path.get(client_path(f), ())) for f in fs.files]
        candidates[fs.idx] = set.intersection(*sets) if sets else set()
    everything = sorted(set().union(*candidates.values()))
    activity = port.activity(everything) if everything else {}
    unsure = [fid for fid in everything if fid not in foreign and fid in activity
              and not activity[fid].image_count and _uploaded(activity[fid])]
    live = {r.fileset_id for r in port.running_imports()} if unsure else set()

    def still_importing(fid) -> bool:
        act = activity[fid]
        last = act.last_event or (act.log.updated if act.log else None)
        if fid not in live or last is None:
            return False
        if last.tzinfo is None:
            last = last.replace(tzinfo=_dt.timezone.utc)
        return (now - last).total_seconds() < active_within

    to_delete = []
    for fs in doubtful:
        ours = sorted(fid for fid in candidates[fs.idx] if fid not in foreign and fid in activity)
        complete = [fid for fid in ours if activity[fid].image_count]
        busy = [fid for fid in ours if fid not in complete and still_importing(fid)]
        ghosts = tuple(fid for fid in ours if fid not in complete and fid not in busy)
        if clean_ghosts:
            to_delete += [(fid, fs.idx) for fid in ghosts]
        else:
            decision.ghosts_left += [(fid, fs.idx) for fid in ghosts]
        message = reported.get(fs.idx)
        if complete:
            images, plates = raw_results.get(complete[0], (None, None))
            decision.done.append((fs.idx, complete[0], images, plates, None))
            if complete[1:]:
                decision.duplicates.append((fs.idx, tuple(complete[1:])))
        elif busy:
            decision.waiting.append(fs.idx)
        elif message is not None:
            note = (f" (ghost fileset {', '.join(map(str, ghosts))} "
                    f"{'deleted' if clean_ghosts else 'left on the server'})") if ghosts else ""
            decision.failed.append((fs.idx, message + note))
        elif ghosts and not clean_ghosts:
            decision.blocked.append((fs.idx, ghosts))
        elif final:
            theirs = sorted(fid for fid in candidates[fs.idx] if fid in foreign
                            and fid in activity and activity[fid].image_count)
            if theirs:
                decision.done.append((fs.idx, theirs[0], None, None,
                                      f"already imported before this job as Fileset {theirs[0]}"))
            else:
                decision.failed.append((fs.idx, "the importer reported no result for it"))
        else:
            decision.replan.append(fs.idx)
    if to_delete:
        port.delete_filesets(sorted({fid for fid, _ in to_delete}))
        decision.deleted = to_delete
    return decision
