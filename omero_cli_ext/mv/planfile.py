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
from omero_cli_ext.mv.plan import MODES, PHASES, Plan, Request, Step
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
    if not isinstance(record, dict):
        raise ValueError("its request is not an object")
    known = {item.name for item in fields(Request)}
    values = {}
    for name, value in record.items():
        if name not in known:
            raise MvError(EXIT_USAGE, f"the plan names an unknown request field {name!r}")
        if name in ("repo", "src", "dst"):
            value = None if value is None else os.fsencode(_typed(name, value, str))
        elif name == "search":
            value = tuple(os.fsencode(_typed(name, v, str)) for v in _typed(name, value, list))
        elif name == "fileset_files":
            value = tuple((os.fsencode(_typed(name, a, str)), os.fsencode(_typed(name, b, str)))
                          for a, b in _typed(name, value, list))
        elif name in ("force", "checksums", "skip_mismatched"):
            value = _typed(name, value, bool)
        elif name in ("fileset", "workers"):
            value = _typed(name, value, int)
        values[name] = value
    if values.get("mode") not in MODES or values.get("repo") is None:
        raise ValueError(f"its mode {values.get('mode')!r} or repository is not valid")
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


def check_plan_target(path: str) -> None:
    """`--plan FILE` can be written: its directory exists (exit 3) and is writable, and FILE is
    absent or a plan written before (exit 2) — a mistyped FILE never replaces someone's file (an
    original a repository link points at)."""
    where = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(where):
        raise MvError(EXIT_SRC_MISSING, f"the directory {show(where)} for the plan does not "
                      "exist; nothing was changed")
    if not os.access(where, os.W_OK | os.X_OK):
        raise MvError(EXIT_USAGE, f"cannot write the plan in {show(where)}; nothing was changed")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISREG(st.st_mode):
        with open(path, "rb") as stream:
            first = stream.readline(1 << 16)
        try:
            header = json.loads(first)
        except ValueError:
            header = None
        if isinstance(header, dict) and header.get("type") == "plan":
            return
    raise MvError(EXIT_USAGE, f"{show(path)} exists and is not a plan written by omero mv "
                  "--plan; it is not replaced: name a new file; nothing was changed")


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
        data = stream.read()
    try:
        return _parse(path, data, repo_id)
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        # hand-edited (and re-digested) or not a plan at all: never a traceback
        raise MvError(EXIT_USAGE, f"{show(path)} is not a valid plan written by omero mv --plan "
                      f"({exc}); nothing was changed") from None


def _parse(path: str, data: bytes, repo_id: Tuple[int, int]) -> Tuple[Plan, str]:
    raw = data.decode("ascii", "strict").rstrip("\n").split("\n")
    header = json.loads(raw[0])
    if not isinstance(header, dict):
        raise ValueError("its first line is not the plan's header")
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
    notes = header.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise ValueError("its notes are not a list of texts")
    unresolved = header.get("unresolved", [])
    if not isinstance(unresolved, list) or not all(isinstance(e, dict) for e in unresolved):
        raise ValueError("its unresolved links are not a list of objects")
    plan = Plan(_request_from(header["request"]), steps, same_fs=bool(header.get("same_fs")),
                notes=list(notes),
                unresolved=[{k: (os.fsencode(v) if k in ("link", "target") and v else v)
                             for k, v in entry.items()} for entry in unresolved])
    command = header.get("command", "")
    if not isinstance(command, str):
        raise ValueError("its command is not a text")
    return plan, command


def _typed(name: str, value, kind):
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)
                              and kind is not bool):
        raise TypeError(f"{name} is {type(value).__name__}, not {kind.__name__}")
    return value


def _step_from(record: dict) -> Step:
    if not isinstance(record, dict):
        raise ValueError("a step line is not an object")
    if record.get("kind") not in PHASES:
        raise MvError(EXIT_USAGE, f"the plan holds an unknown step kind {record.get('kind')!r}")
    unknown = set(record) - set(_STEP_FIELDS)
    if unknown:
        raise ValueError(f"a step has unknown fields {sorted(unknown)}")
    values = {}
    for name in _STEP_FIELDS:
        value = record.get(name)
        if name in _BYTES_FIELDS or name in ("kind", "hasher", "hash"):
            _typed(name, value, str)
            if name in _BYTES_FIELDS and value is not None:
                value = os.fsencode(value)
        else:
            _typed(name, value, int)
        values[name] = value
    if values["path"] is None or values["seq"] is None:
        raise ValueError("a step has no path or no seq")
    return Step(**values)
