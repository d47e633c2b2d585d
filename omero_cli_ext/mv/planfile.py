"""`omero mv --plan FILE` / `--execute-plan FILE`: a plan written for change-management approval
and later run exactly as approved.

The file is JSON lines: a header object (`"type": "plan"`: format, the request, the repository
with its device and inode, notes, the number of steps and the SHA-256 of the step lines), then
one object per step. Paths are text with undecodable bytes as surrogate escapes (`\\udcNN` in
the JSON), so every byte of a name survives the round trip. Reading refuses a file another user
can write (a privileged run must never execute a plan someone else could have edited), a file
whose step lines do not match the header's digest (which covers the header too), and a plan made for another repository.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import fields
from typing import Tuple

from omero_cli_ext import fsops
from omero_cli_ext.mv.errors import EXIT_SRC_MISSING, EXIT_USAGE, MvError
from omero_cli_ext.mv.plan import PHASES, Plan, Request, Step
from omero_cli_ext.mv.tree import show

FORMAT = 1
_STEP_FIELDS = ("seq", "kind", "path", "other", "old", "new", "size", "mode", "uid", "gid",
                "mtime_ns", "hasher", "hash", "fileset")
_BYTES_FIELDS = frozenset({"path", "other", "old", "new"})


def _text(value):
    return os.fsdecode(value) if isinstance(value, bytes) else value


def _step_line(step: Step) -> str:
    record = {name: _text(getattr(step, name)) for name in _STEP_FIELDS}
    return json.dumps(record, ensure_ascii=True, sort_keys=True)


def _request_record(request: Request) -> dict:
    record = {}
    for item in fields(Request):
        value = getattr(request, item.name)
        if isinstance(value, bytes):
            value = os.fsdecode(value)
        elif isinstance(value, tuple):
            value = [[_text(v) for v in entry] if isinstance(entry, tuple) else _text(entry)
                     for entry in value]
        record[item.name] = value
    return record


def _request_from(record: dict) -> Request:
    known = {item.name for item in fields(Request)}
    values = {}
    for name, value in record.items():
        if name not in known:
            raise MvError(EXIT_USAGE, f"the plan names an unknown request field {name!r}")
        if name in ("repo", "src", "dst") and value is not None:
            value = os.fsencode(value)
        elif name == "search":
            value = tuple(os.fsencode(v) for v in value)
        elif name == "fileset_files":
            value = tuple((os.fsencode(a), os.fsencode(b)) for a, b in value)
        values[name] = value
    return Request(**values)


def _digest(header: dict, lines) -> str:
    """SHA-256 of the header (without its digest) and the step lines: any edit shows."""
    head = json.dumps({k: v for k, v in header.items() if k != "digest"}, ensure_ascii=True,
                      sort_keys=True)
    return hashlib.sha256("\n".join([head, *lines]).encode("ascii")).hexdigest()


def write_plan(path: str, plan: Plan, repo_id: Tuple[int, int], command: str) -> None:
    """The plan as JSON lines at `path` (written whole, synced, renamed into place)."""
    lines = [_step_line(step) for step in plan.steps]
    header = {"type": "plan", "format": FORMAT, "request": _request_record(plan.request),
              "repo_device": repo_id[0], "repo_inode": repo_id[1], "same_fs": plan.same_fs,
              "command": command, "notes": plan.notes,
              "unresolved": [{k: ([_text(c) for c in v] if isinstance(v, list) else _text(v))
                              for k, v in entry.items()} for entry in plan.unresolved],
              "summary": plan.summary(), "steps": len(lines)}
    header["digest"] = _digest(header, lines)
    text = "\n".join([json.dumps(header, ensure_ascii=True, sort_keys=True)] + lines) + "\n"
    fsops.atomic_write(path, text.encode("ascii"), mode=0o600)


def read_plan(path: str, repo_id: Tuple[int, int]) -> Tuple[Plan, str]:
    """The plan written by write_plan, and the command that made it; MvError when the file is
    missing, editable by another user, altered, or made for another repository."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise MvError(EXIT_SRC_MISSING, f"cannot open the plan {show(path)}: {exc.strerror}") \
            from None
    with os.fdopen(fd, "rb") as stream:
        st = os.fstat(stream.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise MvError(EXIT_USAGE, f"the plan {show(path)} is not a regular file")
        if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
            raise MvError(EXIT_USAGE, f"the plan {show(path)} can be changed by another user "
                          "(owner or mode): make it yours and not writable by others (chmod "
                          "go-w) after checking it, then run it")
        raw = stream.read().decode("ascii", "strict").rstrip("\n").split("\n")
    try:
        header = json.loads(raw[0])
    except (ValueError, IndexError):
        raise MvError(EXIT_USAGE, f"{show(path)} is not a plan written by omero mv --plan") \
            from None
    if header.get("type") != "plan" or header.get("format") != FORMAT:
        raise MvError(EXIT_USAGE, f"{show(path)} is not a plan of this omero mv (format "
                      f"{header.get('format')!r})")
    lines = raw[1:]
    if len(lines) != header.get("steps") or _digest(header, lines) != header.get("digest"):
        raise MvError(EXIT_USAGE, f"the plan {show(path)} was changed or cut short after it "
                      "was written (it does not match its digest); make a new one")
    if (header.get("repo_device"), header.get("repo_inode")) != tuple(repo_id):
        raise MvError(EXIT_USAGE, f"the plan {show(path)} was made for another repository "
                      f"({header['request'].get('repo')}); nothing was changed")
    steps = [_step_from(json.loads(line)) for line in lines]
    if [s.seq for s in steps] != list(range(len(steps))) or \
            [s.phase for s in steps] != sorted(s.phase for s in steps):
        raise MvError(EXIT_USAGE, f"the plan {show(path)} has its steps out of order")
    plan = Plan(_request_from(header["request"]), steps, same_fs=bool(header.get("same_fs")),
                notes=list(header.get("notes", [])),
                unresolved=[{k: (os.fsencode(v) if k in ("link", "target") and v else v)
                             for k, v in entry.items()} for entry in header.get("unresolved", [])])
    return plan, header.get("command", "")


def _step_from(record: dict) -> Step:
    if record.get("kind") not in PHASES:
        raise MvError(EXIT_USAGE, f"the plan holds an unknown step kind {record.get('kind')!r}")
    values = {name: (os.fsencode(record[name]) if name in _BYTES_FIELDS and record.get(name)
                     is not None else record.get(name)) for name in _STEP_FIELDS}
    return Step(**values)
