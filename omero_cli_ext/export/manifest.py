"""The manifest: which entries (and directories) this export made, so that --sync adds, keeps
and removes only its own, and a rerun after a crash can adopt what it half-did.

Two files in the export's private state directory (state.py; never in DEST, where its owner
could rename a file over them):

- `manifest.json`, the state after the last completed run: one JSON document with one row per
  entry (columns named once), replaced atomically (temporary, fsync, rename, fsync directory)
  at the end of a run — once, whatever the number of entries.
- `journal`, the progress of the run since: before a batch of entries is made their rows are
  appended as "pending" and fsynced; before a directory is made, its name; after, the entries'
  identities (done). A crash leaves the journal behind and the next load replays it over the
  manifest, so each entry is either absent or known (done, or pending: its file is checked and
  adopted), and each directory a run made is known. The journal names the manifest serial it
  extends: one left over from a run that crashed just after replacing the manifest is stale
  and ignored.

Exports made before the state directory kept both in DEST (`.omero-cli-ext-export.json` and
`.journal`); `migrate` moves them once.
"""
from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import stat
from dataclasses import dataclass, field
from typing import Iterable, Optional

from omero_cli_ext import fsops
from omero_cli_ext.export.paths import RESERVED_PREFIX, is_safe_relpath
from omero_cli_ext.compat import DATACLASS_SLOTS

MANIFEST_NAME = "manifest.json"
JOURNAL_NAME = "journal"
LEGACY_MANIFEST_NAME = RESERVED_PREFIX + "-export.json"     # in DEST, before version 3
LEGACY_JOURNAL_NAME = RESERVED_PREFIX + "-export.journal"
MIGRATED = "DEST's manifest"     # how migrate's note begins when it moved one
LEGACY_LIMIT = 1 << 30        # what DEST holds under the old names is read up to 1 GiB
FORMAT = "omero-cli-ext originals export"
JOURNAL_FORMAT = "omero-cli-ext originals export journal"
VERSION = 3
READABLE_VERSIONS = (2, 3)
DONE, PENDING = "done", "pending"
# One row per entry, in this order (ManifestEntry's fields)
COLUMNS = ("path", "fileset", "original_file", "size", "hash", "hasher", "method", "state",
           "dev", "ino", "repo_path")
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False)


class ManifestError(Exception):
    """The manifest cannot be read or belongs to another export (message says which)."""


@dataclass(**DATACLASS_SLOTS)
class ManifestEntry:
    path: str
    fileset: int
    original_file: int
    size: Optional[int]
    hash: Optional[str]
    hasher: Optional[str]
    method: str = ""             # hard | reflink | sym | copy | download | adopted ("" while pending)
    state: str = PENDING
    dev: Optional[int] = None    # identity (st_dev, st_ino) of what we created, so that we never
    ino: Optional[int] = None    # remove or claim a file a user put there instead
    repo_path: Optional[str] = None   # OriginalFile.path + name, to recognise a pending entry's
    #                                   file (not kept once done: dev and ino say it)


@dataclass
class Manifest:
    repository: str              # the managed repository's UUID
    user: str                    # the OMERO user whose view this is
    layout: str
    entries: dict = field(default_factory=dict)       # path -> ManifestEntry
    directories: set = field(default_factory=set)     # DEST-relative directories we created
    created: str = ""
    updated: str = ""
    serial: int = 0              # bumped by every save; 0: never saved
    objects: list = field(default_factory=list)   # the OBJ arguments ("Project:1") last exported
    dest: str = ""               # DEST's path when last saved (the state is keyed by its inode)
    replayed: bool = False       # a killed run's journal was replayed into it (not yet saved)

    def to_bytes(self) -> bytes:
        rows = [[m.path, m.fileset, m.original_file, m.size, m.hash, m.hasher, m.method, m.state,
                 m.dev, m.ino, m.repo_path] for _, m in sorted(self.entries.items())]
        doc = {
            "format": FORMAT, "version": VERSION, "repository": self.repository,
            "user": self.user, "layout": self.layout, "created": self.created,
            "updated": self.updated, "serial": self.serial, "objects": list(self.objects),
            "dest": self.dest,
            "directories": sorted(self.directories), "columns": list(COLUMNS), "entries": rows,
        }
        return _ENCODER.encode(doc).encode("utf-8") + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> "Manifest":
        try:
            doc = json.loads(data.decode("utf-8"))
            if doc.get("format") != FORMAT or doc.get("version") not in READABLE_VERSIONS:
                raise ManifestError(f"not an omero-cli-ext export manifest (version {VERSION})")
            if tuple(doc["columns"]) != COLUMNS:
                raise ManifestError(f"unexpected columns {doc['columns']}")
            manifest = cls(repository=doc["repository"], user=doc["user"], layout=doc["layout"],
                           created=doc.get("created", ""), updated=doc.get("updated", ""),
                           serial=int(doc["serial"]),
                           objects=[str(o) for o in doc.get("objects", [])],
                           dest=str(doc.get("dest", "")))
            for row in doc["entries"]:
                entry = ManifestEntry(*row)
                _check_path(entry.path, "entry path")
                manifest.entries[entry.path] = entry
            for directory in doc["directories"]:
                _check_path(directory, "directory")
                manifest.directories.add(directory)
        except ManifestError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
            raise ManifestError(f"unreadable manifest: {err}") from None
        return manifest

    def replay(self, data: bytes) -> None:
        """Apply a journal (its bytes) that extends this manifest's serial; a stale one is
        ignored. Reading stops at the first line that does not parse: only a crash's torn
        last line can be one, and nothing of it was made (pending rows are fsynced first)."""
        lines = data.split(b"\n")
        try:
            header = json.loads(lines[0])
        except ValueError:
            return
        if len(header) != 3 or header[0] != JOURNAL_FORMAT or header[1] not in READABLE_VERSIONS \
                or header[2] != self.serial:
            return
        try:
            for line in lines[1:]:
                try:
                    kind, rows, *rest = json.loads(line)
                except ValueError:
                    break
                if kind == "P":
                    for path, fileset, of_id, size, hash_, hasher, repo_path in rows:
                        _check_path(path, "journal entry path")
                        self.entries[path] = ManifestEntry(path, fileset, of_id, size, hash_,
                                                           hasher, repo_path=repo_path)
                elif kind == "D":
                    for path, method, dev, ino in rows:
                        entry = self.entries.get(path)
                        if entry is not None and entry.state == PENDING:
                            entry.method, entry.state, entry.dev, entry.ino = method, DONE, dev, ino
                            entry.repo_path = None
                    for directory in rest[0]:
                        _check_path(directory, "journal directory")
                        self.directories.add(directory)
                elif kind == "M":     # about to be made (rows: one directory)
                    _check_path(rows, "journal directory")
                    self.directories.add(rows)
                elif kind == "X":     # was there already: not ours
                    self.directories.discard(rows)
                else:
                    raise ManifestError(f"unknown journal record {kind!r}")
        except ManifestError:
            raise
        except (ValueError, TypeError, IndexError, RecursionError) as err:
            raise ManifestError(f"unreadable journal {JOURNAL_NAME}: {err}") from None
        self.replayed = True


def _check_path(path, what: str) -> None:
    if not is_safe_relpath(path):
        raise ManifestError(f"{what} {path!r} is not a safe DEST path")


def now_text() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def fd_path(dir_fd: int, name: str = "") -> str:
    """A path that reaches `name` inside the directory open as `dir_fd` without walking DEST's
    path again (the /proc magic link pins the directory we opened, even if DEST is renamed or
    an ancestor swapped for a symlink)."""
    base = f"/proc/self/fd/{dir_fd}"
    return f"{base}/{name}" if name else base


_NOT_READ = {errno.ELOOP: "is a symlink; not following it",
             errno.EINVAL: "is not a regular file",
             errno.EFBIG: "is larger than any manifest"}


def _read(dir_fd: int, name: str, where: str, limit: Optional[int] = None) -> Optional[bytes]:
    """The bytes of the regular file `name` (fsops.read_regular: never through a symlink, never
    a fifo or device, at most `limit` bytes), None when there is none."""
    try:
        return fsops.read_regular(dir_fd, name, limit)
    except fsops.NotRegularFile as err:
        raise ManifestError(f"{name} in {where} {_NOT_READ[err.errno]}") from None


def load(state_fd: int) -> Optional[Manifest]:
    """The manifest in the state directory open as `state_fd` with its journal replayed, or
    None when there is none."""
    data = _read(state_fd, MANIFEST_NAME, "the state directory")
    if data is None:
        return None
    manifest = Manifest.from_bytes(data)
    journal = _read(state_fd, JOURNAL_NAME, "the state directory")
    if journal:
        manifest.replay(journal)
    return manifest


def save(state_fd: int, manifest: Manifest) -> None:
    """Replace the manifest atomically (fsops.atomic_write: temporary, fsync, rename, fsync dir);
    it then holds everything a journal of the previous serial said."""
    manifest.updated = now_text()
    if not manifest.created:
        manifest.created = manifest.updated
    manifest.serial += 1
    try:
        fsops.atomic_write(fd_path(state_fd, MANIFEST_NAME), manifest.to_bytes(), mode=0o600)
    except BaseException:
        manifest.serial -= 1
        raise
    manifest.replayed = False


def discard(state_fd: int, names: tuple = (JOURNAL_NAME, MANIFEST_NAME)) -> None:
    """Remove the manifest and journal (or the other control files `names`, journal first)
    of a state directory."""
    for name in names:
        try:
            os.unlink(name, dir_fd=state_fd)
        except FileNotFoundError:
            pass


def migrate(dest_fd: int, state_fd: int) -> Optional[str]:
    """Move a manifest (and journal) an older version kept in DEST into the state directory,
    once; returns a note for the user, None when DEST holds none. What DEST holds under those
    names is only read (as a regular file, never followed) and, once saved, unlinked: the DEST
    owner controls it, and at worst describes her own files."""
    try:
        if _exists(state_fd, MANIFEST_NAME):
            return None
        data = _read(dest_fd, LEGACY_MANIFEST_NAME, "DEST", LEGACY_LIMIT)
        if data is None:
            return None
        manifest = Manifest.from_bytes(data)
        journal = _read(dest_fd, LEGACY_JOURNAL_NAME, "DEST", LEGACY_LIMIT)
        if journal:
            manifest.replay(journal)
    except (ManifestError, OSError) as err:
        return f"DEST's old manifest {LEGACY_MANIFEST_NAME} was not migrated ({err}); left alone"
    manifest.serial = 0
    save(state_fd, manifest)
    for name in (LEGACY_JOURNAL_NAME, LEGACY_MANIFEST_NAME):
        try:
            os.unlink(name, dir_fd=dest_fd)
        except FileNotFoundError:
            pass
    return (f"{MIGRATED} ({LEGACY_MANIFEST_NAME}) moved to the export's state directory, "
            "out of the DEST owner's reach")


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


class Journal:
    """The run's progress, appended to the state directory's journal (module docstring).
    Created empty for the serial of the manifest on disk, which must exist (save it first)."""

    def __init__(self, state_fd: int, serial: int):
        self._state_fd = state_fd
        self._fd = os.open(JOURNAL_NAME, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                           | os.O_CLOEXEC, 0o600, dir_fd=state_fd)
        try:
            if not stat.S_ISREG(os.fstat(self._fd).st_mode):
                raise ManifestError(f"{JOURNAL_NAME} in the state directory is not a file")
            self._append([JOURNAL_FORMAT, VERSION, serial])
            os.fsync(self._fd)
            fsops.fsync_dir(fd_path(state_fd))
        except BaseException:
            os.close(self._fd)
            raise

    def making(self, directory: str) -> None:
        """A directory about to be made (written before mkdir; a kill -9 cannot lose it)."""
        self._append(["M", directory])

    def not_made(self, directory: str) -> None:
        """The directory was there already: not ours."""
        self._append(["X", directory])

    def pending(self, entries: Iterable) -> None:
        """Entries (plan.Entry) about to be made; durable before the first of them is."""
        self._append(["P", [[e.path, e.fileset_id, e.original_file_id, e.size, e.hash, e.hasher,
                             e.repo_path] for e in entries]])
        os.fsync(self._fd)

    def done(self, records: Iterable[ManifestEntry], directories: Iterable[str]) -> None:
        """Entries made (with their identity) and directories created since the last call; not
        fsynced: if lost, the entries are still pending and adopted by the next run."""
        self._append(["D", [[m.path, m.method, m.dev, m.ino] for m in records],
                      sorted(directories)])

    def remove(self) -> None:
        """After the manifest that holds all of it was saved."""
        self.close()
        try:
            os.unlink(JOURNAL_NAME, dir_fd=self._state_fd)
        except FileNotFoundError:
            pass

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _append(self, record: list) -> None:
        fsops.write_all(self._fd, _ENCODER.encode(record).encode("utf-8") + b"\n")
