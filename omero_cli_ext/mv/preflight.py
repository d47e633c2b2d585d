"""Checks a plan passes before anything on disk changes: room on the destination (blocks and
inodes), write access to every directory the plan changes, and originals that no longer match
what the server recorded."""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

from omero_cli_ext.mv.errors import (EXIT_DST_UNWRITABLE, EXIT_NO_SPACE, EXIT_REPO_PERMISSION,
                                     MvError)
from omero_cli_ext.mv.tree import is_under, show

# room left free on the destination beyond what the plan writes (metadata, journal growth)
SPACE_MARGIN = 1 << 20
SHOWN = 5   # paths named in a refusal


def free_space(path: bytes) -> Tuple[int, int, Optional[int]]:
    """(fragment size, free bytes for unprivileged users, free inodes or None when the
    filesystem does not count them: btrfs, some network filesystems report 0 files)."""
    st = os.statvfs(path)
    inodes = st.f_favail if st.f_files else None
    return st.f_frsize or st.f_bsize, st.f_bavail * (st.f_frsize or st.f_bsize), inodes


def _existing(path: bytes) -> bytes:
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def check_space(plan) -> None:
    """Refuse a plan whose new entries the destination filesystem cannot hold: the bytes of
    every copy rounded up to whole blocks plus a block per directory, and one inode per
    directory, copy and symlink it creates (hard links need none)."""
    where = plan.request.dst if plan.request.mode != "inline" else plan.request.src
    copies = [s for s in plan.steps if s.kind in ("place", "materialize")] \
        if not plan.same_fs else []
    made = [s for s in plan.steps if s.kind in ("mkdir", "place_link")]
    if not copies and not made:
        return
    probe = _existing(where)
    block, free, inodes = free_space(probe)
    need = sum(-(-(s.size or 0) // block) * block for s in copies) \
        + block * sum(1 for s in made if s.kind == "mkdir")
    if need and need + SPACE_MARGIN > free:
        raise MvError(EXIT_NO_SPACE, f"not enough space on the filesystem of {show(probe)}: "
                      f"{need} bytes in whole blocks to write, {free} free; nothing was changed")
    need_inodes = len(copies) + len(made)
    if inodes is not None and need_inodes > inodes:
        raise MvError(EXIT_NO_SPACE, f"not enough inodes on the filesystem of {show(probe)}: "
                      f"{need_inodes} files, directories and links to create, {inodes} free; "
                      "nothing was changed")


# step kind -> the entries whose directory the step changes
_CHANGES_PARENT = frozenset({"mkdir", "place", "place_link", "retarget", "swap", "materialize",
                             "unlink", "rmdir"})


def check_writable(plan) -> None:
    """Every existing directory the plan adds to, replaces in or removes from must be writable
    by this user, on a writable filesystem: refused before the first copy rather than failing
    at the first link after a long copy (which would leave the job half-way). Directories the
    plan creates itself are not checked (their parent is). As root only read-only filesystems
    can refuse: one check per place named in the request."""
    request = plan.request
    if os.geteuid() == 0:
        places = {_existing(p) for p in (request.repo, request.src, request.dst) if p}
        directories = sorted(p if os.path.isdir(p) else os.path.dirname(p) for p in places)
    else:
        directories = sorted({s.path.rpartition(b"/")[0] or b"/" for s in plan.steps
                              if s.kind in _CHANGES_PARENT})
    denied: Dict[str, List[bytes]] = {}
    read_only: Dict[int, bool] = {}
    for directory in directories:
        try:
            st = os.stat(directory)
        except FileNotFoundError:
            continue   # made by the plan (mkdir); its parent is checked with the mkdir step
        except OSError:
            denied.setdefault("unreadable", []).append(directory)
            continue
        if st.st_dev not in read_only:
            read_only[st.st_dev] = bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
        if read_only[st.st_dev]:
            denied.setdefault("read-only filesystem", []).append(directory)
        elif not os.access(directory, os.W_OK | os.X_OK):
            denied.setdefault("not writable by you", []).append(directory)
    if denied:
        _refuse(plan, denied)


def _refuse(plan, denied: Dict[str, List[bytes]]) -> None:
    request = plan.request
    dst = request.dst
    lines, in_dst = [], True
    for why, directories in denied.items():
        in_dst = in_dst and all(dst is not None and is_under(d, os.path.dirname(dst))
                                and not is_under(d, request.repo) for d in directories)
        shown = ", ".join(show(d) for d in directories[:SHOWN])
        more = f" and {len(directories) - SHOWN} more" if len(directories) > SHOWN else ""
        lines.append(f"{len(directories)} director{'y' if len(directories) == 1 else 'ies'} "
                     f"({why}): {shown}{more}")
    raise MvError(EXIT_DST_UNWRITABLE if in_dst else EXIT_REPO_PERMISSION,
                  "this job would change directories it cannot write:\n  " + "\n  ".join(lines)
                  + "\nRun omero mv as the user that owns the repository and the files (or fix "
                  "the permissions); nothing was changed")


def mismatched_sizes(pairs: Sequence[Tuple[bytes, int, object]]) -> List[dict]:
    """Of (path, size on disk, FileFacts) triples, those whose server-recorded size differs: the
    original changed or was damaged after its import."""
    found = []
    for path, size, fact in pairs:
        if fact is not None and fact.size is not None and fact.size != size:
            found.append({"path": path, "original_file": getattr(fact, "file_id", None),
                          "fileset": fact.fileset,
                          "problem": f"{size} bytes on disk, {fact.size} recorded"})
    return found


def imports_check(port):
    """Which of some filesets the server is still importing, as plan_for's `unfinished`: the
    stage `omero status imports` would show (omero_cli_ext.status.classify: the UploadJob not
    Finished, or fewer than three import-log updates), for any owner."""
    from omero_cli_ext.status.classify import DONE, FAILED, STAGES, classify
    running_stages = tuple(stage for stage in STAGES if stage not in (DONE, FAILED))

    def unfinished(fileset_ids):
        filesets = port.filesets(fileset_ids, image_counts=True)
        activities = port.activity(list(filesets))
        statuses = classify(list(filesets.values()), activities, [], now=port.server_time(),
                            stalled_after=float("inf"), viewer_id=-1)
        return [(s.fileset_id, s.stage, s.reason) for s in statuses
                if s.stage in running_stages]
    return unfinished
