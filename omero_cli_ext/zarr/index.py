"""The export's index and its journal, kept in DEST's state directory (export/state.py: root's
own, keyed by DEST's device and inode, out of the DEST owner's reach); a copy of the index,
`omero-zarr-index.json`, is written into DEST for analysts and never read back.

The index lists every object the export placed in DEST with its OMERO ids and path, and for
--sync what each was written from (a key of the pixels, a key of the rendering settings). It is
replaced atomically at the start of a run (the planned paths, so that what the export made is
known before it makes it) and at its end. In between, each finished image or plate appends one
line to the journal; loading replays the journal onto the index."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from typing import Optional

from omero_cli_ext.export import manifest as manifest_io
from omero_cli_ext.export.paths import is_safe_relpath
from omero_cli_ext.zarr import store

INDEX_NAME = "omero-zarr-index.json"          # DEST's copy, for analysts
STATE_INDEX_NAME = "zarr-index.json"          # in the state directory: the one read back
JOURNAL_NAME = "zarr-index.journal"           # in the state directory
FORMAT = "omero-cli-ext zarr index"
VERSION = 1


class IndexError_(ValueError):
    """DEST's index cannot be read or does not belong to this export."""


@dataclass
class Index:
    repository: str
    user: str
    ngff: str
    layout: str
    chunk: int
    dest: str = ""          # DEST's path when the index was written (inode reuse, see cli)
    # "image:<id>" / "plate:<id>" -> entry dict (path, ids, keys, complete, bytes)
    entries: dict = field(default_factory=dict)

    def paths(self) -> dict:
        return {key: e["path"] for key, e in self.entries.items()}

    def document(self) -> dict:
        def items(kind):
            return [dict(e) for key, e in sorted(self.entries.items(),
                                                 key=lambda kv: (kv[1]["path"], kv[0]))
                    if key.startswith(kind + ":")]
        return {"format": FORMAT, "version": VERSION, "repository": self.repository,
                "user": self.user, "ngff": self.ngff, "layout": self.layout, "chunk": self.chunk,
                "images": items("image"), "plates": items("plate")}


def pixels_key(info) -> str:
    """What the arrays are made of: the Pixels and its dimensions and type."""
    return "%d:%dx%dx%dx%dx%d:%s" % (info.pixels_id, info.size_t, info.size_c, info.size_z,
                                     info.size_y, info.size_x, info.pixel_type)


def doc_key(doc) -> str:
    return hashlib.sha1(store.json_bytes(doc)).hexdigest()


def load(state_fd: int) -> Optional[Index]:
    """The index in the state directory `state_fd` with its journal replayed (None: none)."""
    raw = store.read_file(state_fd, STATE_INDEX_NAME)
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
        if doc.get("format") != FORMAT or doc.get("version") != VERSION:
            raise IndexError_("not an index of this export (format %r, version %r)"
                              % (doc.get("format"), doc.get("version")))
        index = Index(repository=doc["repository"], user=doc["user"], ngff=doc["ngff"],
                      layout=doc["layout"], chunk=int(doc["chunk"]), dest=doc.get("dest", ""))
        for entry in doc["images"] + doc["plates"]:
            _add(index, entry)
    except (ValueError, KeyError, TypeError) as err:
        raise IndexError_(str(err)) from None
    journal = store.read_file(state_fd, JOURNAL_NAME) or b""
    for line in journal.splitlines():
        try:
            _add(index, json.loads(line))
        except (ValueError, KeyError, TypeError):
            break     # a line cut by a crash ends the journal
    return index


def _add(index: Index, entry: dict) -> None:
    key = entry_key(entry)
    if entry.get("removed"):
        index.entries.pop(key, None)
        return
    if not is_safe_relpath(entry["path"]):
        raise IndexError_("unsafe path in the index: %r" % entry["path"])
    index.entries[key] = entry


def entry_key(entry: dict) -> str:
    if entry.get("kind") == "plate":
        return "plate:%d" % entry["plate"]
    if entry.get("plate") is None:
        return "image:%d" % entry["image"]
    return "field:%d:%d" % (entry["plate"], entry["image"])


def save(state_fd: int, index: Index) -> None:
    """Replace the index in the state directory (temporary, fsync, rename, fsync the
    directory), then drop the journal."""
    doc = dict(index.document(), dest=index.dest)     # the state's copy also knows DEST's path
    store.write_file(state_fd, STATE_INDEX_NAME, store.json_bytes(doc), sync=True)
    os.fsync(state_fd)
    try:
        os.unlink(JOURNAL_NAME, dir_fd=state_fd)
    except FileNotFoundError:
        pass


def discard(state_fd: int) -> None:
    """Remove the index and its journal from a state directory (journal first)."""
    manifest_io.discard(state_fd, (JOURNAL_NAME, STATE_INDEX_NAME))


def publish(dest_fd: int, index: Index) -> None:
    """DEST's copy of the index for analysts (a new file renamed into place, by the DEST
    owner when root exports for her; never read back)."""
    store.write_json(dest_fd, INDEX_NAME, index.document())


class Journal:
    """Appends to the state directory's journal: opened without following a symlink and
    checked (a regular file of the running user with one link) before the first line."""

    def __init__(self, state_fd: int):
        fd = os.open(JOURNAL_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
                     | os.O_NONBLOCK | os.O_CLOEXEC, 0o600, dir_fd=state_fd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_uid != os.geteuid():
            os.close(fd)
            raise store.NotOurs(errno.EINVAL, "not a journal made by the export", JOURNAL_NAME)
        self._fd = fd

    def append(self, entry: dict) -> None:
        os.write(self._fd, (json.dumps(entry, sort_keys=True) + "\n").encode("utf-8"))

    def close(self) -> None:
        os.close(self._fd)
