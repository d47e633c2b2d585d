"""`omero mv --status`: the repository's unfinished job as the journal records it (phase, steps
done, who started it, where the journal is) and whether a command holds its lock now (read from
/proc/locks, so looking never takes the lock a starting run needs)."""
from __future__ import annotations

import json
import os
import stat
from typing import Optional

from omero_cli_ext.mv.plan import PHASES
from omero_cli_ext.mv.store import JobStore

PHASE_NAMES = {0: "making directories", 1: "placing files", 2: "directory metadata",
               3: "changing links", 4: "removing sources", 5: "removing directories"}


def started_by() -> dict:
    """Who starts a job (recorded with its plan)."""
    import socket
    try:
        import pwd
        user = pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        user = str(os.getuid())
    return {"user": user, "uid": os.getuid(), "host": socket.gethostname(), "pid": os.getpid()}


def job_status(store: JobStore, repo: bytes, lock_dir: Optional[bytes],
               lock_name: str) -> Optional[dict]:
    """The unfinished job's status, or None when the repository has none."""
    job = store.unfinished(os.fsdecode(repo))
    if job is None:
        return None
    steps = store.steps(job.id)
    pending = [s for s in steps if s.state == "pending"]
    phase = min((s.phase for s in pending), default=max(PHASES.values()))
    in_phase = [s for s in steps if s.phase == phase]
    info = store.plan_info(job.id)
    return {"job": job.id, "command": job.command, "mode": job.mode, "created": job.created,
            "started_by": info.get("started_by"), "phase": PHASE_NAMES[phase],
            "phase_number": phase, "phase_steps_done": sum(1 for s in in_phase
                                                           if s.state != "pending"),
            "phase_steps": len(in_phase), "steps_done": len(steps) - len(pending),
            "steps": len(steps), "running": lock_holder(lock_dir, lock_name)}


def lock_holder(lock_dir: Optional[bytes], lock_name: str) -> Optional[dict]:
    """The record ({"pid", "host", "since"}) of the process holding the writer lock, or None.
    Held means listed in /proc/locks for the lock file's inode (Linux); elsewhere None."""
    if lock_dir is None or not os.path.isdir(lock_dir):
        return None
    try:
        with open("/proc/locks", encoding="ascii") as table:
            held = {line.split()[5].rsplit(":", 1)[-1] for line in table
                    if len(line.split()) > 5}
    except OSError:
        return None
    for name in os.listdir(lock_dir):
        if not name.endswith(b".lock"):
            continue
        path = os.path.join(lock_dir, name)
        try:
            record, inode = _lock_record(path)
        except (OSError, ValueError):
            continue
        if record.get("name") == lock_name and str(inode) in held:
            return {k: record.get(k) for k in ("pid", "host", "since")}
    return None


def _lock_record(path: bytes) -> tuple:
    """(holder record, inode) of a lock file. Whoever can write the control directory may plant
    a FIFO, a device or a symlink under a lock file's name: opened without following links,
    without blocking, read only when a regular file, and only its first KiB."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        record = json.loads(os.read(fd, 1024).decode("utf-8") or "{}")
    finally:
        os.close(fd)
    if not isinstance(record, dict):
        raise ValueError("not a lock record")
    return record, st.st_ino
