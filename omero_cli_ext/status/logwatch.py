"""Is a server step still writing? A look at the import log files themselves.

While step 1 (Bio-Formats setId + saveToDB, one transaction) runs, the server records nothing in
the database — no EventLog, no size of the log — for minutes or hours on a big plate; only the
import log on disk grows, as the server's logback appender writes it (ManagedImportRequestI). So:

- when the repository is readable here (status runs on the server host), the log's size and mtime
  on disk, one `lstat` each, for every candidate;
- else `RawFileStore.size()` through the port, for at most MAX_SERVER_PROBES candidates (the
  newest), and a memory of the sizes seen before (in-process across `--watch` refreshes, and in a
  small file between runs): a size that changed since the last look means growth now; a size seen
  before means no growth since then, and says when it grew only if a look saw it change (a first
  look sees a size, not when the log reached it).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import stat
from typing import Mapping, Optional, Sequence

from omero_cli_ext.status.classify import LogProbe

MAX_SERVER_PROBES = 50     # RawFileStore looks per snapshot (2 round trips each, plus 2)
FORGET_AFTER = _dt.timedelta(days=30)   # a remembered size no look has renewed since is dropped
MEMORY_FILE = os.path.join("omero-cli-ext", "status-log-sizes.json")
IMPORT_MEMORY_FILE = os.path.join("omero-cli-ext", "import-log-sizes.json")   # import --resume's
_TIME = "%Y-%m-%dT%H:%M:%S.%f%z"


def default_memory_path(name: str = MEMORY_FILE) -> str:
    """<OMERO user dir>/omero-cli-ext/status-log-sizes.json, or `name` there (OMERO_USERDIR
    moves the user dir)."""
    from omero.util import get_omero_userdir
    return os.path.join(str(get_omero_userdir()), name)


class SizeMemory:
    """Per (repository uuid, log OriginalFile id): (size, when a look saw it change to that size
    (None when no look has: the first one), when a look first saw that size, when a look last
    saw it). `path` None keeps it in memory only; else it is read once and rewritten
    (crash-safe) after each look. Several runs share one file (a `--watch`, a cron job, import
    jobs), each looking at its own logs: a run never forgets another's looks, only those no look
    has renewed for FORGET_AFTER."""

    def __init__(self, path: Optional[str] = None):
        self.path = path
        self.seen: dict = {}
        self._saved: dict = {}
        if path:
            self.seen = self._read()
            self._saved = dict(self.seen)

    def _read(self) -> dict:
        try:
            with open(self.path, encoding="utf-8") as f:
                raw = json.load(f)
            if not isinstance(raw, dict):
                raise ValueError("not an object")
            return {key: (int(size), _parse(grew), _parse(since), _parse(last))
                    for key, (size, grew, since, last) in raw.items()}
        except (OSError, ValueError, TypeError):
            return {}   # absent, damaged or of an older layout: start afresh (hints only)

    def look(self, key: str, size: int, now: _dt.datetime) -> Optional[_dt.datetime]:
        """Record `size`; return when a look last saw the log grow (None: no look has yet)."""
        before = self.seen.get(key)
        if before is None:
            self.seen[key] = (size, None, now, now)
            return None
        if before[0] != size:
            self.seen[key] = (size, now, now, now)
            return now
        self.seen[key] = before[:3] + (now,)
        return before[1]

    def unchanged_since(self, key: str, size: int, now: _dt.datetime) -> _dt.datetime:
        """Record `size`; return the first look that saw it (now, for a first look or a change):
        the log has not grown since then, as far as the looks can tell."""
        self.look(key, size, now)
        since = self.seen[key][2]
        if since is None or since > now:  # damaged, or written by a clock ahead: a first look
            self.seen[key] = (size, self.seen[key][1], now, now)
        return self.seen[key][2]

    def forget_stale(self, now: _dt.datetime) -> None:
        """Forget the logs no look (of any run) has seen for FORGET_AFTER: their imports are
        long over, or nobody asks about them any more (the file stays small)."""
        self.seen = {k: v for k, v in self.seen.items()
                     if v[3] is not None and now - v[3] < FORGET_AFTER}

    def save(self) -> None:
        """Write the memory (OSError is the caller's: a look that cannot be remembered is a
        problem, not a reason to fail), merged with what other runs saved since it was read:
        only what this one changed or forgot is written over (a look another run changed since
        is kept)."""
        if not self.path or self.seen == self._saved:
            return
        from omero_cli_ext.fsops import atomic_write
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        merged = {k: v for k, v in self._read().items()
                  if k in self.seen or self._saved.get(k) != v}
        merged.update({k: v for k, v in self.seen.items()
                       if self._saved.get(k) != v or k not in merged})
        data = {k: [_format(t) if i else t for i, t in enumerate(entry)]
                for k, entry in sorted(merged.items())}
        atomic_write(self.path, json.dumps(data).encode("utf-8"), 0o600)
        self.seen, self._saved = merged, dict(merged)


def _parse(text: Optional[str]) -> Optional[_dt.datetime]:
    return None if text is None else _dt.datetime.strptime(text, _TIME)


def _format(when: Optional[_dt.datetime]) -> Optional[str]:
    return None if when is None else when.strftime(_TIME)


def _stat_in_repository(root: str, repo_path: str):
    """lstat of a regular file below `root`, or None. The path comes from the database, where an
    owner may edit their own OriginalFile rows: a `..` component or a non-regular file (a link
    planted to read another file's size and mtime) is never looked at on disk."""
    parts = repo_path.strip("/").split("/")
    if not repo_path or any(p in ("", ".", "..") for p in parts):
        return None
    try:
        st = os.lstat(os.path.join(root, *parts))
    except (OSError, ValueError):
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def _on_disk(repository, log, now: _dt.datetime) -> Optional[tuple]:
    """(size, mtime) of an import log readable on disk here, else None. An mtime later than
    `now` (the server's clock: another clock wrote it, or the file was touched) proves nothing:
    it is None then, and only the size counts, compared with remembered looks."""
    st = _stat_in_repository(repository.root, log.repo_path)
    if st is None:
        return None
    mtime = _dt.datetime.fromtimestamp(st.st_mtime, _dt.timezone.utc)
    return st.st_size, (mtime if mtime <= now else None)


def probe_logs(port, repository, candidates: Sequence[tuple], now: _dt.datetime,
               memory: SizeMemory) -> Mapping[int, LogProbe]:
    """LogProbe per fileset id of `candidates` ((fileset id, ImportLog) pairs, newest first)."""
    probes: dict = {}
    remote = []

    def looked(log, size: int) -> Optional[_dt.datetime]:
        return memory.look(_key(repository, log), size, now)

    for fileset_id, log in candidates:
        disk = _on_disk(repository, log, now)
        if disk is None:
            remote.append((fileset_id, log))
            continue
        size, mtime = disk
        probes[fileset_id] = LogProbe(size=size, source="disk", grew=mtime or looked(log, size))
    remote = remote[:MAX_SERVER_PROBES]
    sizes = port.file_sizes([log.original_file_id for _, log in remote]) if remote else {}
    for fileset_id, log in remote:
        if log.original_file_id in sizes:
            size = sizes[log.original_file_id]
            probes[fileset_id] = LogProbe(size=size, source="server", grew=looked(log, size))
    memory.forget_stale(now)
    return probes


def logs_unchanged_since(port, repository, logs: Sequence, memory: SizeMemory,
                         now: _dt.datetime) -> Mapping[int, Optional[_dt.datetime]]:
    """Per ImportLog (by its OriginalFile id): since when it has not grown, as far as can be
    told — its mtime when the repository is readable here; else the first look (this one or a
    remembered one) that saw its current `RawFileStore.size()`, one batched `file_sizes` for all;
    None when the server refuses it. A first look proves nothing about the past, so it answers
    `now`: a step found writing nothing is given a full timeout from the first look, never
    judged dead on the database's signals alone."""
    found: dict = {}
    sizes: dict = {}
    remote = []
    for log in logs:
        disk = _on_disk(repository, log, now)
        if disk is None:
            remote.append(log.original_file_id)
        elif disk[1] is not None:
            found[log.original_file_id] = disk[1]
        else:
            sizes[log.original_file_id] = disk[0]
    if remote:
        sizes.update(port.file_sizes(remote))
    for log in logs:
        if log.original_file_id in found:
            continue
        size = sizes.get(log.original_file_id)
        found[log.original_file_id] = None if size is None else memory.unchanged_since(
            _key(repository, log), size, now)
    return found


def _key(repository, log) -> str:
    """A remembered log: its repository's uuid and its OriginalFile id."""
    return "%s/%d" % (repository.uuid, log.original_file_id)
