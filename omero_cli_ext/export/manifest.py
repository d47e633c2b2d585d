"""The manifest in DEST: which entries (and directories) this export made, so that --sync adds,
keeps and removes only its own, and a rerun after a crash can adopt what it half-did.

It is one JSON document, replaced atomically (temporary, fsync, rename, fsync directory). Entries
are written as "pending" before the export creates them and "done" after, so a crash leaves
either no file or a pending entry whose file the next run checks and adopts.
"""
from __future__ import annotations

import datetime as _dt
import errno
import json
import os
from dataclasses import dataclass, field
from typing import Optional

from omero_cli_ext import fsops
from omero_cli_ext.export.paths import RESERVED_PREFIX, is_safe_relpath

MANIFEST_NAME = RESERVED_PREFIX + "-export.json"
FORMAT = "omero-cli-ext originals export"
VERSION = 1
DONE, PENDING = "done", "pending"


class ManifestError(Exception):
    """The manifest cannot be read or belongs to another export (message says which)."""


@dataclass
class ManifestEntry:
    path: str
    fileset: int
    original_file: int
    size: Optional[int]
    hash: Optional[str]
    hasher: Optional[str]
    repo_path: str = ""          # OriginalFile.path + name, to recognise a pending entry's file
    method: str = ""             # hard | reflink | sym | copy | download ("" while pending)
    state: str = PENDING
    dev: Optional[int] = None    # identity (st_dev, st_ino) of what we created, so that we never
    ino: Optional[int] = None    # remove or claim a file a user put there instead


@dataclass
class Manifest:
    repository: str              # the managed repository's UUID
    user: str                    # the OMERO user whose view this is
    layout: str
    entries: dict = field(default_factory=dict)       # path -> ManifestEntry
    directories: set = field(default_factory=set)     # DEST-relative directories we created
    created: str = ""
    updated: str = ""

    def to_bytes(self) -> bytes:
        doc = {
            "format": FORMAT, "version": VERSION, "repository": self.repository,
            "user": self.user, "layout": self.layout, "created": self.created,
            "updated": self.updated, "directories": sorted(self.directories),
            "entries": [vars(self.entries[p]) for p in sorted(self.entries)],
        }
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> "Manifest":
        try:
            doc = json.loads(data.decode("utf-8"))
            if doc.get("format") != FORMAT or doc.get("version") != VERSION:
                raise ManifestError(f"not an omero-cli-ext export manifest (version {VERSION})")
            manifest = cls(repository=doc["repository"], user=doc["user"], layout=doc["layout"],
                           created=doc.get("created", ""), updated=doc.get("updated", ""))
            for raw in doc["entries"]:
                entry = ManifestEntry(**raw)
                if not is_safe_relpath(entry.path):
                    raise ManifestError(f"entry path {entry.path!r} is not a safe DEST path")
                manifest.entries[entry.path] = entry
            for directory in doc["directories"]:
                if not is_safe_relpath(directory):
                    raise ManifestError(f"directory {directory!r} is not a safe DEST path")
                manifest.directories.add(directory)
        except ManifestError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ManifestError(f"unreadable manifest: {err}") from None
        return manifest


def now_text() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def fd_path(dir_fd: int, name: str = "") -> str:
    """A path that reaches `name` inside the directory open as `dir_fd` without walking DEST's
    path again (the /proc magic link pins the directory we opened, even if DEST is renamed or
    an ancestor swapped for a symlink)."""
    base = f"/proc/self/fd/{dir_fd}"
    return f"{base}/{name}" if name else base


def load(dest_fd: int) -> Optional[Manifest]:
    """The manifest in the DEST directory open as `dest_fd`, or None when there is none."""
    try:
        fd = os.open(MANIFEST_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dest_fd)
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ManifestError(f"{MANIFEST_NAME} in DEST is a symlink; not following it") from None
        raise
    with os.fdopen(fd, "rb") as stream:
        return Manifest.from_bytes(stream.read())


def save(dest_fd: int, manifest: Manifest) -> None:
    """Replace the manifest atomically (fsops.atomic_write: temporary, fsync, rename, fsync dir)."""
    manifest.updated = now_text()
    if not manifest.created:
        manifest.created = manifest.updated
    fsops.atomic_write(fd_path(dest_fd, MANIFEST_NAME), manifest.to_bytes(), mode=0o644)
