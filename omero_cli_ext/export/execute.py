"""Make DEST hold exactly the planned entries, walking DEST only through directory descriptors.

Every directory below DEST is opened with O_DIRECTORY|O_NOFOLLOW relative to its parent's
descriptor, and every entry is created, checked or removed with `dir_fd=`: a symlink (or a file)
planted where a directory should be stops that entry instead of being followed, whoever planted
it and whenever. Entries appear under their final name in one step (link(2) of the source's
open descriptor, symlink(2), or a verified temporary, made O_CREAT|O_EXCL|O_NOFOLLOW, linked to
its final name — link(2) never replaces what a user put there), so no partial file is ever
visible under a final name.

Sources are opened, never named twice: a repository entry that is a symlink is an in-place
import whatever its annotations say, and its target is opened by the DEST owner (asuser.py);
the exporter then links, clones or copies exactly the inode she opened, after checking it
(a regular file, no set-uid/set-gid, OMERO's size; for in-place targets OMERO's hash before a
hard link, and a hard link only when she could have made it herself).
"""
from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Optional

from omero_cli_ext import fsops
from omero_cli_ext.export import CHAINS, dest as dest_io
from omero_cli_ext.export.asuser import OPEN_FLAGS, SelfOpener
from omero_cli_ext.export.manifest import (DONE, PENDING, Journal, Manifest, ManifestEntry,
                                           fd_path, save)
from omero_cli_ext.export.paths import RESERVED_PREFIX
from omero_cli_ext.export.plan import path_order
from omero_cli_ext.server import FileMissing, NotFound, PermissionDenied, ServerError

# The order `--link auto` tries (DESIGN: hard link, then reflink, then copy, then download)
PART_PREFIX = RESERVED_PREFIX + ".part."    # a download in progress: .omero-cli-ext.part.<id>
CHUNK = 1 << 20
BATCH = 10_000               # entries journaled as pending at once (one fsync each)
CHECKPOINT_SECONDS = 10.0    # longest time between two journal records of entries made
_CLIMBS = re.compile(r"(^|/)\.\.(/|$)")
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
DOWNLOAD_MODE = 0o644        # downloads and copies (0755 when the source is executable)
_TEMP_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_REFUSED = {errno.EXDEV: "source and DEST are on different filesystems",
            errno.EPERM: "the kernel refused (fs.protected_hardlinks or no hard links here)",
            errno.EMLINK: "the repository file has too many links",
            errno.EOPNOTSUPP: "the filesystem has no hard links"}


class PlantedLink(OSError):
    """Something other than a directory (a symlink, a file) stands where the plan needs one."""


class EntryFailed(Exception):
    """This entry could not be exported; the reason is shown to the user."""


class SourceUnavailable(Exception):
    """The repository file cannot be read on this host (not mounted, no access)."""


class DestinationFull(Exception):
    """DEST's filesystem is full; what was done is in the manifest, a rerun with --sync goes on."""


@dataclass
class Options:
    link: str = "auto"
    dir_mode: int = 0o700
    owner: Optional[tuple] = None    # (uid, gid) of what we create (when root)
    reader: Optional[tuple] = None   # (uid, gids) of the DEST owner, when root exports for her
    sync: bool = False
    dry_run: bool = False
    verify: bool = False
    dest_dev: Optional[int] = None   # DEST's filesystem, for a dry run before DEST exists


@dataclass
class Result:
    added: int = 0
    adopted: int = 0
    kept: int = 0
    removed: int = 0
    bytes_added: int = 0
    methods: Counter = field(default_factory=Counter)
    failed: list = field(default_factory=list)          # (path, fileset, original_file, reason)
    left_alone: list = field(default_factory=list)      # manifest paths now holding someone else's file
    notes: list = field(default_factory=list)
    writable: list = field(default_factory=list)        # managed files writable by group/others
    verified: int = 0
    verify_failures: list = field(default_factory=list)  # (path, reason)
    full: Optional[str] = None                           # the NoSpace message, when DEST filled up


def _syncfs(fd: int) -> None:
    """Flush DEST's filesystem once (syncfs(2)) instead of fsyncing every directory we touched."""
    if not fsops.syncfs(fd):
        os.sync()


def may_link(st: os.stat_result, uid: int, gids) -> bool:
    """Could (uid, gids) hard-link this file herself under fs.protected_hardlinks? Her own file,
    or a regular file without set-uid/set-gid that she may both read and write."""
    if st.st_uid == uid:
        return True
    if not stat.S_ISREG(st.st_mode) or st.st_mode & (stat.S_ISUID | stat.S_ISGID):
        return False
    if st.st_gid in gids:
        need = stat.S_IRGRP | stat.S_IWGRP
    else:
        need = stat.S_IROTH | stat.S_IWOTH
    return st.st_mode & need == need


def may_read(st: os.stat_result, uid: int, gids) -> bool:
    """Do the mode bits let (uid, gids) read this file (the class the kernel would pick)?"""
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IRUSR)
    if st.st_gid in gids:
        return bool(st.st_mode & stat.S_IRGRP)
    return bool(st.st_mode & stat.S_IROTH)


class Source:
    """A repository file open for reading: its descriptor, its fstat, whether it is the target
    of an in-place import (opened by the DEST owner)."""
    __slots__ = ("fd", "st", "in_place")

    def __init__(self, fd: int, st: os.stat_result, in_place: bool):
        self.fd, self.st, self.in_place = fd, st, in_place

    @property
    def path(self) -> str:
        return f"/proc/self/fd/{self.fd}"


class DestDir:
    """DEST open as a descriptor; `fd(parts)` walks (and creates) subdirectories without ever
    following a symlink. Descriptors along the current path are kept, so a sorted walk opens
    each directory once."""

    def __init__(self, root_fd: int, dir_mode: int = 0o700, owner: Optional[tuple] = None,
                 on_mkdir: Callable[[str], None] = lambda rel: None,
                 on_open: Callable[[int, str], None] = lambda fd, rel: None,
                 before_mkdir: Callable[[str], None] = lambda rel: None,
                 not_made: Callable[[str], None] = lambda rel: None):
        self.root = root_fd
        self._mount = dest_io.mount_id(root_fd) if root_fd is not None else None
        self._mode = dir_mode
        self._owner = owner
        self._on_mkdir = on_mkdir
        self._on_open = on_open
        self._before_mkdir = before_mkdir
        self._not_made = not_made
        self._stack: list = []   # (name, fd, made by us in this run)
        self._current: Optional[str] = ""   # the stack as a "/"-joined path (None: unknown)

    def at(self, dirpath: str, create: bool = False) -> int:
        """`fd` of a "/"-joined DEST-relative directory ("" for DEST), the last one answered
        without any work (entries come sorted, directory by directory)."""
        if dirpath == self._current:
            return self._stack[-1][1] if self._stack else self.root
        return self.fd(dirpath.split("/") if dirpath else (), create)

    def fd(self, parts, create: bool = False) -> int:
        parts = tuple(parts)
        self._current = None
        common = 0
        while (common < len(self._stack) and common < len(parts)
               and self._stack[common][0] == parts[common]):
            common += 1
        self._pop_to(common)
        for name in parts[common:]:
            parent, fresh = (self._stack[-1][1], self._stack[-1][2]) if self._stack \
                else (self.root, False)
            rel = "/".join(parts[:len(self._stack) + 1])
            self._stack.append((name, *self._open_child(parent, fresh, name, rel, create)))
        self._current = "/".join(parts)
        return self._stack[-1][1] if parts else self.root

    def _open_child(self, parent: int, fresh: bool, name: str, rel: str, create: bool) -> tuple:
        """(fd, made now). In a directory made by this run, mkdir first: nothing is expected
        there (what is, whoever put it, is opened with O_NOFOLLOW like anywhere else)."""
        if create and fresh:
            made = self._mkdir(parent, name, rel)
            if made is not None:
                return made, True
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise
            made = self._mkdir(parent, name, rel)
            if made is not None:
                return made, True
            return self._open_child(parent, False, name, rel, False)
        except OSError as err:
            if err.errno in (errno.ELOOP, errno.ENOTDIR):
                raise PlantedLink(err.errno, "not a directory (a symlink or a file stands "
                                  "there; not followed)", rel) from None
            # a user's FUSE mount refusing root, ...: that subtree fails, the run goes on
            raise PlantedLink(err.errno, f"not accessible ({err.strerror}; not followed)",
                              rel) from None
        if self._mount is not None and dest_io.mount_id(fd) != self._mount:
            os.close(fd)
            raise PlantedLink(errno.EXDEV, "a mount point (not crossed)", rel)
        self._on_open(fd, rel)
        return fd, False

    def _mkdir(self, parent: int, name: str, rel: str) -> Optional[int]:
        """The new directory open, its owner and mode set; None if the name exists. Its name is
        journaled first, so that a killed run's directories are known (and removed when empty)."""
        self._before_mkdir(rel)
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
        except FileExistsError:
            self._not_made(rel)
            return None
        except OSError as err:
            if err.errno in _NO_SPACE:
                raise fsops.NoSpace(err.errno, "no space left in DEST for a directory",
                                    rel) from None
            raise
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=parent)
        except OSError as err:
            self._not_made(rel)
            raise PlantedLink(err.errno, "replaced right after it was made (not followed)",
                              rel) from None
        if not dest_io.made_by_us(fd):
            os.close(fd)
            self._not_made(rel)
            raise PlantedLink(errno.EEXIST, "swapped for another directory right after it was "
                              "made; not used", rel)
        try:
            if self._owner is not None:
                os.fchown(fd, *self._owner)
            os.fchmod(fd, self._mode)
        except BaseException:
            os.close(fd)
            raise
        self._on_mkdir(rel)
        return fd

    def _pop_to(self, depth: int) -> None:
        while len(self._stack) > depth:
            os.close(self._stack.pop()[1])

    def close(self) -> None:
        self._pop_to(0)
        self._current = ""


def diff(plan, manifest: Manifest) -> tuple:
    """(to_add, to_keep, to_remove): entries to create (pending ones from a crashed run
    included), (entry, manifest entry) pairs believed in place, manifest entries to remove."""
    planned = {e.path: e for e in plan.entries}
    to_add, to_keep, to_remove = [], [], []
    for entry in plan.entries:
        old = manifest.entries.get(entry.path)
        if old is None:
            to_add.append(entry)
        elif old.original_file != entry.original_file_id:
            to_remove.append(old)
            to_add.append(entry)
        elif old.state == DONE:
            to_keep.append((entry, old))
        else:
            to_add.append(entry)
    to_remove += [m for path, m in sorted(manifest.entries.items()) if path not in planned]
    to_remove.sort(key=path_order)
    return to_add, to_keep, to_remove


class Exporter:
    """Brings DEST (open as `dest_fd`) to `plan`, recording everything in `manifest`, which is
    kept in the state directory open as `state_fd`. `opener` opens in-place targets as the DEST
    owner (asuser.py)."""

    def __init__(self, port, dest_fd: int, state_fd: int, repo_root: str, options: Options,
                 emit: Callable[..., None] = lambda kind, **fields: None,
                 progress: Callable[[int], None] = lambda n: None,
                 clock: Callable[[], float] = time.monotonic, opener=None):
        self.port = port
        self.dest_fd = dest_fd
        self.state_fd = state_fd
        self.opener = opener if opener is not None else SelfOpener()
        self.repo_root = os.path.abspath(repo_root)
        self._repo_prefix = self.repo_root.rstrip("/") + "/"
        self.options = options
        self.emit = emit
        self.progress = progress
        self.clock = clock
        self.result = Result()
        self._noted: set = set()
        self._active_parts: set = set()
        self._fs_root: Optional[bool] = None
        self._journal: Optional[Journal] = None
        self.manifest: Optional[Manifest] = None
        self.dest = DestDir(dest_fd, options.dir_mode, options.owner, self._made_dir,
                            (lambda fd, rel: None) if options.dry_run else self._opened_dir,
                            self._making_dir, self._dir_not_made)

    # ----------------------------------------------------------------------------- the run
    def run(self, plan, manifest: Manifest) -> Result:
        self.manifest = manifest
        to_add, to_keep, to_remove = diff(plan, manifest)
        try:
            to_add = self._check_kept(to_keep, to_add)
            if self.options.dry_run:
                self._report_dry_run(to_add, to_remove)
            else:
                self._active_parts = {PART_PREFIX + str(e.original_file_id) for e in to_add}
                if self.options.sync:
                    self._clean_dir(self.dest_fd, "")
                self._remove(to_remove, plan)
                self._add(to_add)
            if self.options.verify:
                self._verify(plan)
        finally:
            self.dest.close()
        return self.result

    def _check_kept(self, to_keep, to_add) -> list:
        """Entries the manifest says are done: still there and still ours? Missing ones are made
        again; one a user replaced is left alone and forgotten."""
        readd = []
        for entry, old in to_keep:
            st = self._lstat(entry.path)
            if st is None:
                readd.append(entry)
                if not self.options.dry_run:
                    del self.manifest.entries[entry.path]
            elif (st.st_dev, st.st_ino) != (old.dev, old.ino):
                self._left_alone(old.path, "replaced in DEST by a file this export did not make")
            else:
                self.result.kept += 1
                self.emit("entry", action="kept", path=entry.path, fileset=entry.fileset_id,
                          original_file=entry.original_file_id, size=entry.size, method=old.method)
        return sorted(to_add + readd, key=path_order) if readd else to_add

    def _lstat(self, path: str) -> Optional[os.stat_result]:
        parts = path.split("/")
        try:
            fd = self.dest.fd(parts[:-1])
            return os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        except (FileNotFoundError, PlantedLink):
            return None

    def _left_alone(self, path: str, reason: str) -> None:
        self.result.left_alone.append((path, reason))
        self.emit("left_alone", path=path, reason=reason)
        if not self.options.dry_run:
            self.manifest.entries.pop(path, None)

    def _report_dry_run(self, to_add, to_remove) -> None:
        for old in to_remove:
            self.result.removed += 1
            self.emit("entry", action="would-remove", path=old.path, fileset=old.fileset,
                      original_file=old.original_file, size=old.size, method=old.method)
        dest_dev = os.fstat(self.dest_fd).st_dev if self.dest_fd is not None \
            else self.options.dest_dev
        for entry in to_add:
            method = self._planned_method(entry, dest_dev)
            self.result.added += 1
            self.result.bytes_added += entry.size or 0
            self.result.methods[method] += 1
            self.emit("entry", action="would-add", path=entry.path, fileset=entry.fileset_id,
                      original_file=entry.original_file_id, size=entry.size, method=method)

    def _planned_method(self, entry, dest_dev: Optional[int]) -> str:
        """The method the chain would pick for this entry, judged from the repository file's
        device (no link is tried): a link or clone on DEST's filesystem, else a copy, else
        (the repository not readable here) a download."""
        chain = CHAINS[self.options.link]
        if len(chain) == 1:
            return chain[0]
        try:
            st = os.stat(self._source(entry.repo_path), follow_symlinks=False)
        except (OSError, EntryFailed):
            return "download" if "download" in chain else chain[0]
        reader = self.options.reader
        unreadable = reader is not None and not stat.S_ISLNK(st.st_mode) \
            and not may_read(st, *reader)
        for method in chain:
            if method in ("hard", "reflink") and st.st_dev != dest_dev:
                continue
            if method in ("hard", "sym") and unreadable:
                continue       # _check_readable: a link she could not open
            return method
        return chain[-1]

    # ----------------------------------------------------------------------------- removal
    def _remove(self, to_remove, plan) -> None:
        for old in to_remove:
            parts = old.path.split("/")
            try:
                fd = self.dest.fd(parts[:-1])
                st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
            except (FileNotFoundError, PlantedLink):
                self.manifest.entries.pop(old.path, None)
                continue
            if not self._is_ours(old, st, fd, parts[-1]):
                self._left_alone(old.path, "no longer the file this export made")
                continue
            try:
                os.unlink(parts[-1], dir_fd=fd)
            except FileNotFoundError:
                pass
            except OSError as err:     # kept in the manifest: the next run tries again
                self.result.failed.append((old.path, old.fileset, old.original_file,
                                           f"could not be removed ({_describe(err)})"))
                self.emit("failed", path=old.path, fileset=old.fileset,
                          original_file=old.original_file,
                          reason=f"could not be removed ({_describe(err)})")
                continue
            self._unlink_part(fd, old.original_file)
            del self.manifest.entries[old.path]
            self.result.removed += 1
            self.emit("entry", action="removed", path=old.path, fileset=old.fileset,
                      original_file=old.original_file, size=old.size, method=old.method)
        self.dest.close()
        if self.manifest.directories:
            self._remove_unneeded_dirs(set(plan.directories))
        if to_remove:
            save(self.state_fd, self.manifest)

    def _remove_unneeded_dirs(self, needed: set) -> None:
        """rmdir the directories we made that no entry needs any more; a directory holding
        someone else's files stays (and stays ours)."""
        for rel in sorted(self.manifest.directories - needed, key=lambda d: -d.count("/")):
            parts = rel.split("/")
            try:
                os.rmdir(parts[-1], dir_fd=self.dest.fd(parts[:-1]))
            except (FileNotFoundError, PlantedLink):
                pass
            except OSError as err:
                if err.errno != errno.ENOTDIR:
                    continue     # not empty, a mount point, ...: stays, and stays ours
            self.manifest.directories.discard(rel)
        self.dest.close()

    def _is_ours(self, old: ManifestEntry, st: os.stat_result, fd: int, name: str) -> bool:
        if old.state == DONE:
            return (st.st_dev, st.st_ino) == (old.dev, old.ino)
        try:
            src = self._source(old.repo_path) if old.repo_path else None
        except EntryFailed:
            src = None
        return self._adoptable(old.size, old.hash, old.hasher, st, fd, name, src)

    def _adoptable(self, size, hash_, hasher, st, fd, name, src) -> bool:
        """Is the file at `name` one a crashed run of ours made for this OriginalFile? (A hard link
        of the repository file or of the in-place target the DEST owner opens, a symlink to the
        repository file, or a complete copy with the right hash.) Read through a descriptor
        opened without following anything."""
        if stat.S_ISLNK(st.st_mode):
            return src is not None and os.readlink(name, dir_fd=fd) == src
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            return False
        if src is not None:
            try:
                source = self._open_source_fd(src)
            except (EntryFailed, SourceUnavailable, OSError):
                source = None
            if source is not None:
                try:
                    if (source[1].st_dev, source[1].st_ino) == (st.st_dev, st.st_ino):
                        return True
                finally:
                    os.close(source[0])
        if not (hash_ and hasher in fsops.HASHERS):
            return False
        try:
            efd = os.open(name, OPEN_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
        except OSError:
            return False
        try:
            est = os.fstat(efd)
            return ((est.st_dev, est.st_ino) == (st.st_dev, st.st_ino)
                    and _fd_checksum(efd, hasher) == hash_.lower())
        finally:
            os.close(efd)

    # ----------------------------------------------------------------------------- additions
    def _add(self, to_add) -> None:
        """Make the entries, a journaled batch at a time (manifest.py), then flush DEST once
        (syncfs) and save the manifest once."""
        adoptable = {p for p, m in self.manifest.entries.items() if m.state == PENDING}
        if self.manifest.serial == 0 or self.manifest.replayed:
            save(self.state_fd, self.manifest)   # the journal extends a manifest on disk
        journal = self._open_journal() if to_add else None
        self._journal = journal
        made: list = []
        last_record = self.clock()
        try:
            for start in range(0, len(to_add), BATCH):
                batch = to_add[start:start + BATCH]
                try:
                    journal.pending(batch)
                except OSError as err:
                    if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                        raise
                    self.result.full = "no space left in DEST for the manifest's journal"
                    break
                for entry in batch:
                    try:
                        made.append(self._add_one(entry, entry.path in adoptable))
                    except EntryFailed as err:
                        self._failed(entry, str(err))
                    except PlantedLink as err:
                        self._failed(entry, f"{err.filename}: {err.strerror}")
                    except fsops.NoSpace as err:
                        self.result.full = f"no space left in DEST ({err.strerror})"
                        self._failed(entry, "destination full")
                        break
                    except OSError as err:
                        if err.errno in _NO_SPACE:
                            self.result.full = f"no space left in DEST ({err.strerror})"
                            self._failed(entry, "destination full")
                            break
                        self._failed(entry, _describe(err))
                    self.progress(1)
                    if self.clock() - last_record >= CHECKPOINT_SECONDS:
                        self._record(journal, made)
                        last_record = self.clock()
                self._record(journal, made)
                if self.result.full is not None:
                    break
        except BaseException:
            if journal is not None:    # pending entries stay pending: the next run adopts them
                self._record(journal, made, quietly=True)
                journal.close()
            raise
        self.dest.close()
        for path in [p for p, m in self.manifest.entries.items() if m.state == PENDING]:
            del self.manifest.entries[path]
        self._journal = None
        _syncfs(self.dest_fd)
        try:
            save(self.state_fd, self.manifest)
        except OSError:
            if self.result.full is None:
                raise
            # DEST is full: the manifest on disk and the journal still say all there is
            if journal is not None:
                journal.close()
            return
        if journal is not None:
            journal.remove()

    def _open_journal(self) -> Journal:
        try:
            return Journal(self.state_fd, self.manifest.serial)
        except OSError as err:
            if err.errno in _NO_SPACE:
                raise fsops.NoSpace(err.errno, "no space left for the export's journal",
                                    "journal") from None
            raise

    def _record(self, journal, made: list, quietly: bool = False) -> None:
        """Journal the entries made since the last record (directories are journaled before
        they are made)."""
        if not made:
            return
        try:
            journal.done(made, ())
        except OSError:
            if not quietly and self.result.full is None:
                raise
            return   # unrecorded entries stay pending; the next run adopts them
        made.clear()

    def _failed(self, entry, reason: str) -> None:
        self.result.failed.append((entry.path, entry.fileset_id, entry.original_file_id, reason))
        self.emit("failed", path=entry.path, fileset=entry.fileset_id,
                  original_file=entry.original_file_id, reason=reason)

    def _add_one(self, entry, adopt: bool) -> ManifestEntry:
        directory, _, name = entry.path.rpartition("/")
        fd = self.dest.at(directory, create=True)
        src = self._source(entry.repo_path)
        try:
            method, identity = self._make(entry, src, fd, name)
        except FileExistsError:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if not (adopt and self._adoptable(entry.size, entry.hash, entry.hasher, st, fd, name,
                                              src)):
                raise EntryFailed("DEST already holds a file here that this export did not make; "
                                  "left alone") from None
            self._unlink_part(fd, entry.original_file_id)
            self.result.adopted += 1
            return self._done(entry, "sym" if stat.S_ISLNK(st.st_mode) else "adopted",
                              (st.st_dev, st.st_ino))
        self.result.added += 1
        self.result.bytes_added += entry.size or 0
        self.result.methods[method] += 1
        return self._done(entry, method, identity)

    def _done(self, entry, method: str, identity: tuple) -> ManifestEntry:
        record = ManifestEntry(entry.path, entry.fileset_id, entry.original_file_id, entry.size,
                               entry.hash, entry.hasher, method, DONE, *identity)
        self.manifest.entries[entry.path] = record
        self.emit("entry", action="added", path=entry.path, fileset=entry.fileset_id,
                  original_file=entry.original_file_id, size=entry.size, method=method)
        return record

    def _source(self, repo_path: str) -> str:
        """The repository file's absolute path on this host (never outside the repository root,
        whatever OriginalFile.path says)."""
        if ".." in repo_path and _CLIMBS.search(repo_path):
            raise EntryFailed("the OriginalFile's path is outside the managed repository")
        return self._repo_prefix + repo_path.lstrip("/")

    def _note(self, key: tuple, text: str) -> None:
        if key not in self._noted:
            self._noted.add(key)
            self.result.notes.append(text)
            self.emit("note", message=text)

    def _make(self, entry, src: str, fd: int, name: str) -> tuple:
        """Create `name` in `fd` by the first method of the chain that works: (method, identity)."""
        chain = CHAINS[self.options.link]
        source = None
        index = 0
        try:
            while index < len(chain):
                method = chain[index]
                try:
                    if method == "download":
                        if _exists(fd, name):
                            raise FileExistsError(errno.EEXIST, "exists", name)
                        return method, self._download(entry, fd, name)
                    if method == "sym":
                        if source is None:
                            source = self._open_source(entry, src)
                        self._check_readable(source, "sym")
                        os.symlink(src, name, dir_fd=fd)
                        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                        return method, (st.st_dev, st.st_ino)
                    if source is None:
                        source = self._open_source(entry, src)
                    if method == "hard":
                        return method, self._hard_link(entry, source, fd, name)
                    return method, self._copy(entry, source, fd, name, clone=method == "reflink")
                except fsops.LinkRefused as err:
                    if len(chain) == 1:
                        raise EntryFailed(f"{method} link refused: {err.reason}") from None
                    self._note((method, err.reason), f"{method} link refused ({err.reason}); "
                               f"falling back to {chain[index + 1]}")
                except SourceUnavailable as err:
                    if "download" not in chain[index + 1:]:
                        raise EntryFailed(str(err)) from None
                    self._note(("download",), f"{err}; downloading through the server instead")
                    index = chain.index("download")
                    continue
                index += 1
        finally:
            if source is not None:
                os.close(source.fd)
        raise EntryFailed("no method could export this file")

    def _open_source_fd(self, src: str) -> tuple:
        """(fd, fstat, in place) of the repository file: opened without following a symlink;
        a symlink is an in-place import (whatever the annotations say), whose target is opened
        by the DEST owner."""
        try:
            fd = os.open(src, OPEN_FLAGS | os.O_NOFOLLOW)
            in_place = False
        except OSError as err:
            if err.errno != errno.ELOOP:
                if err.errno in (errno.ENOENT, errno.EACCES, errno.ENOTDIR, errno.EPERM):
                    raise SourceUnavailable(f"the repository file is not readable here "
                                            f"({err.strerror})") from None
                raise
            fd = self._open_in_place(src)
            in_place = True
        return fd, os.fstat(fd), in_place

    def _open_in_place(self, src: str) -> int:
        try:
            target = os.readlink(src)
        except OSError as err:
            raise SourceUnavailable(f"the repository file is not readable here "
                                    f"({err.strerror})") from None
        if not os.path.isabs(target):
            target = os.path.join(os.path.dirname(src), target)
        try:
            fd = self.opener.open(target)
        except OSError as err:
            raise EntryFailed(f"the DEST owner cannot open the in-place import's target "
                              f"({err.strerror}); not exported") from None
        if dest_io.user_fuse(fd) is not None:     # its daemon could stall every read of ours
            os.close(fd)
            raise EntryFailed("the in-place import's target is on a FUSE filesystem a user "
                              "mounted; not exported")
        return fd

    def _open_source(self, entry, src: str) -> Source:
        fd, st, in_place = self._open_source_fd(src)
        try:
            self._check_source(entry, st)
        except BaseException:
            os.close(fd)
            raise
        return Source(fd, st, in_place)

    def _check_source(self, entry, st: os.stat_result) -> None:
        """Is `st` a file we may export, the size OMERO describes? (Notes a managed file writable
        by group or others.)"""
        if not stat.S_ISREG(st.st_mode):
            raise EntryFailed("the source is not a regular file (a directory, device, fifo or "
                              "socket); refused")
        if st.st_mode & (stat.S_ISUID | stat.S_ISGID):
            raise EntryFailed("the source is a set-uid or set-gid file; refused")
        if st.st_size != entry.size:
            raise EntryFailed(f"the repository file has {st.st_size} bytes, OMERO records "
                              f"{entry.size}")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            self.result.writable.append(entry.path)

    def _check_readable(self, source: Source, method: str) -> None:
        """A link shares the repository file's mode: one the DEST owner could not read would be
        an entry she cannot open (a server with umask 077). `auto` copies it instead (she may
        read it in OMERO). An in-place target was opened by her: readable."""
        reader = self.options.reader
        if reader is not None and not source.in_place and not may_read(source.st, *reader):
            raise fsops.LinkRefused(errno.EACCES, method, "the DEST owner could not read the "
                                    f"repository file (mode {stat.S_IMODE(source.st.st_mode):04o})"
                                    " through a link", "", "")

    def _check_content(self, entry, source: Source) -> None:
        """An in-place target (which its owner may rewrite at any time) must hold what OMERO
        recorded before it is linked."""
        if entry.hash and entry.hasher in fsops.HASHERS \
                and _fd_checksum(source.fd, entry.hasher) != entry.hash.lower():
            raise EntryFailed(f"the in-place import's target differs from OMERO's {entry.hasher}; "
                              "not exported")

    def _hard_link(self, entry, source: Source, fd: int, name: str) -> tuple:
        """Link the very inode opened (through its descriptor): nothing swapped since can be
        linked instead. An in-place target is linked only if the DEST owner could have linked it
        herself (fs.protected_hardlinks) and its content is OMERO's."""
        self._check_readable(source, "hard")
        if source.in_place:
            reader = self.options.reader
            if reader is not None and not may_link(source.st, *reader):
                raise fsops.LinkRefused(errno.EPERM, "hard", "the DEST owner could not hard-link "
                                        "this in-place target herself (fs.protected_hardlinks)",
                                        "", name)
            self._check_content(entry, source)
        try:
            os.link(source.path, name, dst_dir_fd=fd, follow_symlinks=True)
        except OSError as err:
            if err.errno in _REFUSED:
                raise fsops.LinkRefused(err.errno, "hard", _REFUSED[err.errno], "", name) \
                    from None
            if err.errno in _NO_SPACE:
                raise fsops.NoSpace(err.errno, "no space left in DEST", name) from None
            raise
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if (st.st_dev, st.st_ino) != (source.st.st_dev, source.st.st_ino):
            raise EntryFailed("a different file appeared under this name while linking; "
                              "left alone")
        return st.st_dev, st.st_ino

    def _copy(self, entry, source: Source, fd: int, name: str, clone: bool) -> tuple:
        """A verified copy (or a copy-on-write clone) of the open source: written to a fresh
        temporary (O_CREAT|O_EXCL|O_NOFOLLOW, checked with fstat), owned by the DEST owner,
        then linked to its final name (never replacing anything) and the temporary dropped."""
        if source.in_place and clone:
            self._check_content(entry, source)
        tmp = os.path.basename(fsops.temp_path(name))
        try:
            tfd = os.open(tmp, _TEMP_FLAGS, 0o600, dir_fd=fd)
        except OSError as err:
            if err.errno in _NO_SPACE:
                raise fsops.NoSpace(err.errno, "no space left in DEST", name) from None
            raise
        try:
            try:
                self._fill(entry, source, tfd, clone)
                self._give(tfd, DOWNLOAD_MODE | (0o111 if source.st.st_mode & stat.S_IXUSR
                                                 else 0))
                os.fsync(tfd)
                # the inode we wrote, whatever now has the temporary's name
                os.link(f"/proc/self/fd/{tfd}", name, dst_dir_fd=fd, follow_symlinks=True)
                st = os.fstat(tfd)
            finally:
                os.close(tfd)
                _unlink_quietly(fd, tmp)
        except OSError as err:
            if err.errno in _NO_SPACE:
                raise fsops.NoSpace(err.errno, "no space left in DEST", name) from None
            raise
        return st.st_dev, st.st_ino

    def _fill(self, entry, source: Source, tfd: int, clone: bool) -> None:
        if clone:
            try:
                fcntl.ioctl(tfd, fsops._FICLONE, source.fd)
            except OSError as err:
                if err.errno in _NO_SPACE:
                    raise
                raise fsops.LinkRefused(err.errno, "reflink", "the filesystem cannot clone "
                                        f"files ({err.strerror})", "", "") from None
            if os.fstat(tfd).st_size != entry.size:
                raise EntryFailed("the clone's size differs from OMERO's; removed")
            return
        known = bool(entry.hash and entry.hasher in fsops.HASHERS)
        state = fsops.new_hasher(entry.hasher) if known else None
        offset = 0
        while True:
            data = os.pread(source.fd, CHUNK, offset)
            if not data:
                break
            if state is not None:
                state.update(data)
            fsops.write_all(tfd, data)
            offset += len(data)
            if offset > entry.size:
                break
        if offset != entry.size:
            raise EntryFailed(f"the source changed while it was copied ({offset} bytes, OMERO "
                              f"records {entry.size}); removed")
        if state is not None and state.digest().hex() != entry.hash.lower():
            raise EntryFailed(f"the copy differs from OMERO's {entry.hasher}; removed")

    def _give(self, fd: int, mode: int) -> None:
        """What we create for the DEST owner is hers (when root) with `mode`."""
        if self.options.owner is not None:
            os.fchown(fd, *self.options.owner)
        os.fchmod(fd, mode)

    # ----------------------------------------------------------------------------- download
    def _download(self, entry, fd: int, name: str) -> tuple:
        """Stream the file through the server into `.omero-cli-ext.part.<id>`, resuming what
        an interrupted run left there, verify size and hash, then link it to its final name
        (link(2) never replaces an existing name) and drop the part."""
        part = PART_PREFIX + str(entry.original_file_id)
        pfd = self._open_part(fd, part)
        try:
            state = fsops.new_hasher(entry.hasher) \
                if entry.hash and entry.hasher in fsops.HASHERS else None
            offset = self._resume_offset(pfd, entry.size, state)
            try:
                reader = self.port.open_original_file(entry.original_file_id)
            except FileMissing:
                raise EntryFailed("the file is missing on the server (its repository file is "
                                  "gone or unreadable there)") from None
            except PermissionDenied:
                raise EntryFailed("download restricted by the server (BINARYACCESS)") from None
            except NotFound:
                raise EntryFailed("no longer readable on the server") from None
            except ServerError as err:
                raise EntryFailed(f"server error: {err}") from None
            try:
                while offset < entry.size:
                    try:
                        data = reader.read(offset, min(CHUNK, entry.size - offset))
                    except FileMissing:
                        raise EntryFailed("the file is missing on the server") from None
                    except PermissionDenied:   # RawFileBean.read checks BINARYACCESS, not open
                        raise EntryFailed("download restricted by the server (BINARYACCESS)") \
                            from None
                    except ServerError as err:
                        raise EntryFailed(f"server error: {err}") from None
                    if not data:
                        break
                    fsops.write_all(pfd, data)
                    if state is not None:
                        state.update(data)
                    offset += len(data)
            finally:
                reader.close()
            os.fsync(pfd)
            if offset != entry.size:
                os.unlink(part, dir_fd=fd)
                raise EntryFailed(f"the server sent {offset} bytes, OMERO records {entry.size}")
            if state is not None and state.digest().hex() != entry.hash.lower():
                os.unlink(part, dir_fd=fd)
                raise EntryFailed(f"the download differs from OMERO's {entry.hasher}; removed")
            self._give(pfd, DOWNLOAD_MODE)
            st = os.fstat(pfd)
        except OSError as err:
            os.close(pfd)
            if err.errno in _NO_SPACE:
                self._unlink_part(fd, entry.original_file_id)
                raise fsops.NoSpace(err.errno, "no space left in DEST while downloading", name) \
                    from None
            raise
        except BaseException:
            os.close(pfd)
            raise
        try:
            try:    # the inode we wrote and checked, whatever now has the part's name
                os.link(f"/proc/self/fd/{pfd}", name, dst_dir_fd=fd, follow_symlinks=True)
            except FileExistsError:
                raise EntryFailed("a file appeared here while downloading; left alone") \
                    from None
        finally:
            os.close(pfd)
        _unlink_quietly(fd, part)
        fsops.fsync_dir(fd_path(fd))
        return st.st_dev, st.st_ino

    def _open_part(self, fd: int, part: str) -> int:
        """Our part file to resume (a regular file, one link, ours, 0600: what we made), or a
        fresh one (O_CREAT|O_EXCL|O_NOFOLLOW) when what has that name is anything else."""
        try:
            pfd = os.open(part, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                          dir_fd=fd)
        except OSError as err:
            if err.errno not in (errno.ENOENT, errno.ELOOP, errno.EACCES, errno.EISDIR,
                                 errno.ENXIO, errno.ETXTBSY, errno.EPERM):
                raise
            pfd = None
        if pfd is not None:
            st = os.fstat(pfd)
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_uid == os.geteuid() \
                    and stat.S_IMODE(st.st_mode) == 0o600:
                return pfd
            os.close(pfd)
        _unlink_quietly(fd, part)
        return os.open(part, _TEMP_FLAGS, 0o600, dir_fd=fd)

    @staticmethod
    def _resume_offset(pfd: int, size: int, state) -> int:
        """Keep the whole chunks an earlier run wrote (hashing them again), drop the rest."""
        offset = os.fstat(pfd).st_size
        offset -= offset % CHUNK
        if offset > size:
            offset = 0
        os.ftruncate(pfd, offset)
        if state is not None:
            done = 0
            while done < offset:
                data = os.pread(pfd, min(CHUNK, offset - done), done)
                if not data:
                    break
                state.update(data)
                done += len(data)
        os.lseek(pfd, offset, os.SEEK_SET)
        return offset

    def _unlink_part(self, fd: int, of_id: int) -> None:
        try:
            os.unlink(PART_PREFIX + str(of_id), dir_fd=fd)
        except FileNotFoundError:
            pass

    # ----------------------------------------------------------------------------- housekeeping
    def _made_dir(self, rel: str) -> None:
        self.manifest.directories.add(rel)

    def _making_dir(self, rel: str) -> None:
        if self._journal is not None:
            self._journal.making(rel)

    def _dir_not_made(self, rel: str) -> None:
        if self._journal is not None:
            self._journal.not_made(rel)

    def _opened_dir(self, fd: int, rel: str) -> None:
        """An existing directory on the way: one of ours still as mkdir left it (root's, 0700:
        a run stopped before giving it away) is given to the DEST owner now; on --sync, what a
        killed run left in it is cleaned."""
        if self.options.owner is not None and self.manifest is not None \
                and rel in self.manifest.directories and dest_io.made_by_us(fd) \
                and os.fstat(fd).st_uid != self.options.owner[0] and not self._dest_is_fs_root():
            os.fchown(fd, *self.options.owner)
            os.fchmod(fd, self.options.dir_mode)
        if self.options.sync:
            self._clean_dir(fd, rel)

    def _dest_is_fs_root(self) -> bool:
        """DEST a filesystem's root: its lost+found (root's, 0700) could be renamed by her onto
        a directory name we recorded; no directory is repaired there."""
        if self._fs_root is None:
            self._fs_root = dest_io.is_mount_root(self.dest_fd)
        return self._fs_root

    def _clean_dir(self, fd: int, rel: str) -> None:
        """On --sync, drop what a killed run left in a directory we pass: fsops temporaries of
        dead processes and download parts no planned entry will resume."""
        fsops.remove_stale_temps(fd_path(fd))
        with os.scandir(fd_path(fd)) as entries:
            names = [e.name for e in entries if e.name.startswith(PART_PREFIX)]
        for name in names:
            if name not in self._active_parts:
                try:
                    os.unlink(name, dir_fd=fd)
                except OSError:
                    pass      # gone, or a directory someone named so: not ours, left alone

    # ----------------------------------------------------------------------------- verify
    def _verify(self, plan) -> None:
        """Every entry against its OriginalFile's size and hash, read through a descriptor
        opened without following anything (a sym entry: its target opened by the DEST owner).
        A mismatch names the algorithm, never the digest of what DEST holds."""
        for entry in plan.entries:
            record = self.manifest.entries.get(entry.path)
            if record is None or record.state != DONE:
                continue
            parts = entry.path.split("/")
            reason = None
            efd = None
            try:
                fd = self.dest.fd(parts[:-1])
                if record.method == "sym":
                    efd = self.opener.open(os.readlink(parts[-1], dir_fd=fd))
                    if dest_io.user_fuse(efd) is not None:
                        raise PlantedLink(errno.EXDEV, "on a user's FUSE mount", entry.path)
                else:
                    efd = os.open(parts[-1], OPEN_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
                st = os.fstat(efd)
                if not stat.S_ISREG(st.st_mode):
                    reason = "not a regular file"
                elif st.st_size != entry.size:
                    reason = f"{st.st_size} bytes, OMERO records {entry.size}"
                elif entry.hash and entry.hasher in fsops.HASHERS \
                        and _fd_checksum(efd, entry.hasher) != entry.hash.lower():
                    reason = f"content differs from OMERO's {entry.hasher}"
            except (FileNotFoundError, PlantedLink):
                reason = "missing"
            except OSError as err:
                reason = "not readable" if err.errno != errno.ELOOP else \
                    "replaced by a symlink"
            finally:
                if efd is not None:
                    os.close(efd)
            self.result.verified += 1
            if reason:
                self.result.verify_failures.append((entry.path, reason))
            self.emit("verify", path=entry.path, original_file=entry.original_file_id,
                      ok=reason is None, reason=reason)


def _fd_checksum(fd: int, hasher: str) -> str:
    """OMERO's checksum of the file open as `fd` (read with pread: the offset is not moved)."""
    state = fsops.new_hasher(hasher)
    offset = 0
    while True:
        data = os.pread(fd, CHUNK, offset)
        if not data:
            break
        state.update(data)
        offset += len(data)
    return state.digest().hex()


def _unlink_quietly(fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=fd)
    except FileNotFoundError:
        pass


def _describe(err: OSError) -> str:
    """An OSError for a user: its reason, never the /proc/self/fd path it went through."""
    return err.strerror or type(err).__name__


def _exists(fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True
