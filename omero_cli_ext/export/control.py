"""One DEST's control files for a run: its state directory (state.py), the lock held for the
whole run, the migration of an old in-DEST manifest, and the manifest itself (manifest.py)."""
from __future__ import annotations

import os
from typing import Optional

from omero_cli_ext.export import dest as dest_io, manifest as manifest_io, state


class Refused(Exception):
    """DEST holds an export this run may not update (message says why and what to do)."""


class DestControl:
    def __init__(self, state_root: Optional[str], wait: float, dry_run: bool):
        self._root_path = state_root or state.default_root()
        self._wait = wait
        self._dry_run = dry_run
        self.root_fd = self.state_fd = None
        self.lock = None
        self.migrated: Optional[str] = None    # a note: state moved, migrated or dropped
        self._from_dest = False     # the manifest was DEST's (written by its owner) this run

    def open(self, dest_fd: int, create: bool) -> None:
        """Open (or make) DEST's state directory and take its lock (state.StateError,
        state.Busy); move an old manifest out of DEST."""
        if self.root_fd is None:
            self.root_fd = state.open_root(self._root_path)
            dest_st = os.fstat(dest_fd)
            if (dest_st.st_dev, dest_st.st_ino) in dest_io.chain(self.root_fd):
                raise state.StateError(f"{self._root_path} is inside DEST, where its owner "
                                       "could move it: choose a state directory outside DEST")
        dest_st = os.fstat(dest_fd)
        if create:
            self._follow_renumbered(dest_st, os.readlink(f"/proc/self/fd/{dest_fd}"))
        self.state_fd = state.open_for(self.root_fd, dest_st, create)
        if self.state_fd is None:
            return
        self.lock = state.Lock(self.state_fd, self._wait)
        if not self._dry_run:
            note = manifest_io.migrate(dest_fd, self.state_fd)
            self._from_dest = note is not None and note.startswith(manifest_io.MIGRATED)
            self.migrated = note or self.migrated

    def _follow_renumbered(self, dest_st: os.stat_result, dest_path: str) -> None:
        """A filesystem whose device number changed (a reboot renumbering device-mapper or
        btrfs devices) keeps DEST's inode: the state made under the old number, for this very
        path, is renamed to the new key instead of starting an export that would leave every
        entry alone."""
        wanted = state.key(dest_st)
        names = os.listdir(self.root_fd)
        if wanted in names:
            return
        suffix = "-" + wanted.split("-", 1)[1]
        for name in names:
            if not name.endswith(suffix):
                continue
            fd = state.open_for_name(self.root_fd, name)
            try:
                found = manifest_io.load(fd)
            except (manifest_io.ManifestError, OSError):
                found = None
            finally:
                os.close(fd)
            if found is not None and found.dest == dest_path:
                os.rename(name, wanted, src_dir_fd=self.root_fd, dst_dir_fd=self.root_fd)
                self.migrated = (f"the export's state followed DEST to its filesystem's new "
                                 f"device number ({name} -> {wanted})")
                return

    def load(self, repository: str, user: str, sync: bool,
             dest: str = "") -> Optional[manifest_io.Manifest]:
        """The manifest (ManifestError when unreadable), None when DEST has none yet. The state
        of another user's export made at another path is a directory that had DEST's inode
        before (deleted since, the inode reused): it is dropped, with a note."""
        found = manifest_io.load(self.state_fd) if self.state_fd is not None else None
        if found is None:
            return None
        if (found.repository, found.user) != (repository, user) and found.dest \
                and found.dest != dest and not self._dry_run:
            manifest_io.discard(self.state_fd)
            self.migrated = (f"dropped the state of {found.user!r}'s export at {found.dest}, "
                             "a directory that had DEST's device and inode before")
            return None
        if (found.repository, found.user) != (repository, user) and self._from_dest:
            # DEST's owner wrote what was under the old name: never a reason to refuse her
            # exports for ever (as root, DEST is hers: no other user's export can be in it)
            manifest_io.discard(self.state_fd)
            self.migrated = (f"DEST's old manifest names {found.user!r}'s export from repository "
                             f"{found.repository}, not this one: not trusted, dropped")
            return None
        if not sync:
            raise Refused("DEST already holds an export; rerun with --sync to update it")
        if (found.repository, found.user) != (repository, user):
            raise Refused(f"DEST holds the export of {found.user!r} from repository "
                          f"{found.repository}, not of {user!r} from {repository}; choose "
                          "another DEST")
        return found

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        for fd in (self.state_fd, self.root_fd):
            if fd is not None:
                os.close(fd)
        self.state_fd = self.root_fd = None
