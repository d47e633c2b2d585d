"""Make DEST hold exactly the planned entries, walking DEST only through directory descriptors.

Every directory below DEST is opened with O_DIRECTORY|O_NOFOLLOW relative to its parent's
descriptor, and every entry is created, checked or removed with `dir_fd=`: a symlink (or a file)
planted where a directory should be stops that entry instead of being followed, whoever planted
it and whenever. Entries appear under their final name in one step (link(2), symlink(2), or a
verified temporary renamed into place), so no partial file is ever visible under a final name.
"""
from __future__ import annotations

import errno
import os
import re
import stat
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Optional

from omero_cli_ext import fsops
from omero_cli_ext.export import CHAINS
from omero_cli_ext.export.manifest import (DONE, JOURNAL_NAME, PENDING, Journal, Manifest,
                                           ManifestEntry, fd_path, save)
from omero_cli_ext.export.paths import RESERVED_PREFIX
from omero_cli_ext.export.plan import path_order
from omero_cli_ext.server import NotFound, PermissionDenied, ServerError

# The order `--link auto` tries (DESIGN: hard link, then reflink, then copy, then download)
PART_PREFIX = RESERVED_PREFIX + ".part."    # a download in progress: .omero-cli-ext.part.<id>
CHUNK = 1 << 20
BATCH = 10_000               # entries journaled as pending at once (one fsync each)
CHECKPOINT_SECONDS = 10.0    # longest time between two journal records of entries made
_CLIMBS = re.compile(r"(^|/)\.\.(/|$)")
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
    dir_mode: int = 0o750
    owner: Optional[tuple] = None    # (uid, gid) for directories we create (when root)
    reader: Optional[tuple] = None   # (uid, gids): when root, in-place targets must be readable by it
    sync: bool = False
    dry_run: bool = False
    verify: bool = False


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


def posix_readable(st: os.stat_result, uid: int, gids) -> bool:
    """Would the mode bits of `st` let (uid, gids) read the file? (root's own check for the
    targets of in-place imports, which the importing user controls)."""
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IRUSR)
    if st.st_gid in gids:
        return bool(st.st_mode & stat.S_IRGRP)
    return bool(st.st_mode & stat.S_IROTH)


class DestDir:
    """DEST open as a descriptor; `fd(parts)` walks (and creates) subdirectories without ever
    following a symlink. Descriptors along the current path are kept, so a sorted walk opens
    each directory once."""

    def __init__(self, root_fd: int, dir_mode: int = 0o750, owner: Optional[tuple] = None,
                 on_mkdir: Callable[[str], None] = lambda rel: None,
                 on_open: Callable[[int, str], None] = lambda fd, rel: None):
        self.root = root_fd
        self._mode = dir_mode
        self._owner = owner
        self._on_mkdir = on_mkdir
        self._on_open = on_open
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
            raise
        self._on_open(fd, rel)
        return fd, False

    def _mkdir(self, parent: int, name: str, rel: str) -> Optional[int]:
        """The new directory open, its owner and mode set; None if the name exists."""
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
        except FileExistsError:
            return None
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=parent)
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
    """Brings DEST (open as `dest_fd`) to `plan`, recording everything in `manifest`."""

    def __init__(self, port, dest_fd: int, repo_root: str, options: Options,
                 emit: Callable[..., None] = lambda kind, **fields: None,
                 progress: Callable[[int], None] = lambda n: None,
                 clock: Callable[[], float] = time.monotonic):
        self.port = port
        self.dest_fd = dest_fd
        self.repo_root = os.path.abspath(repo_root)
        self._repo_prefix = self.repo_root.rstrip("/") + "/"
        self.options = options
        self.emit = emit
        self.progress = progress
        self.clock = clock
        self.result = Result()
        self._noted: set = set()
        self._active_parts: set = set()
        self._new_dirs: list = []    # directories made since the journal last recorded any
        self.manifest: Optional[Manifest] = None
        self.dest = DestDir(dest_fd, options.dir_mode, options.owner, self._made_dir,
                            self._clean_dir if options.sync and not options.dry_run else
                            (lambda fd, rel: None))

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
        for entry in to_add:
            self.result.added += 1
            self.result.bytes_added += entry.size or 0
            self.emit("entry", action="would-add", path=entry.path, fileset=entry.fileset_id,
                      original_file=entry.original_file_id, size=entry.size,
                      method=self.options.link)

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
            os.unlink(parts[-1], dir_fd=fd)
            self._unlink_part(fd, old.original_file)
            del self.manifest.entries[old.path]
            self.result.removed += 1
            self.emit("entry", action="removed", path=old.path, fileset=old.fileset,
                      original_file=old.original_file, size=old.size, method=old.method)
        self.dest.close()
        if self.manifest.directories:
            self._remove_unneeded_dirs(set(plan.directories))
        if to_remove:
            save(self.dest_fd, self.manifest)

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
                if err.errno == errno.ENOTEMPTY:
                    continue
                if err.errno != errno.ENOTDIR:
                    raise
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
        of the repository file, a symlink to it, or a complete copy with the right hash.)"""
        if stat.S_ISLNK(st.st_mode):
            return src is not None and os.readlink(name, dir_fd=fd) == src
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            return False
        if src is not None:
            try:
                sst = os.stat(src)
                if (sst.st_dev, sst.st_ino) == (st.st_dev, st.st_ino):
                    return True
            except OSError:
                pass
        if not (hash_ and hasher in fsops.HASHERS):
            return False
        return fsops.checksum(fd_path(fd, name), hasher) == hash_.lower()

    # ----------------------------------------------------------------------------- additions
    def _add(self, to_add) -> None:
        """Make the entries, a journaled batch at a time (manifest.py), then flush DEST once
        (syncfs) and save the manifest once."""
        adoptable = {p for p, m in self.manifest.entries.items() if m.state == PENDING}
        if self.manifest.serial == 0 or self.manifest.replayed:
            save(self.dest_fd, self.manifest)   # the journal extends a manifest on disk
        journal = self._open_journal() if to_add else None
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
                        self.result.full = str(err)
                        self._failed(entry, "destination full")
                        break
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
        _syncfs(self.dest_fd)
        try:
            save(self.dest_fd, self.manifest)
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
            return Journal(self.dest_fd, self.manifest.serial)
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise fsops.NoSpace(err.errno, "no space left in DEST for the manifest's journal",
                                    JOURNAL_NAME) from None
            raise

    def _record(self, journal, made: list, quietly: bool = False) -> None:
        """Journal the entries made and directories created since the last record."""
        if not (made or self._new_dirs):
            return
        try:
            journal.done(made, self._new_dirs)
        except OSError:
            if not quietly and self.result.full is None:
                raise
            return   # unrecorded entries stay pending; the next run adopts them
        made.clear()
        self._new_dirs.clear()

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
            raise EntryFailed(f"{repo_path!r} is outside the managed repository")
        return self._repo_prefix + repo_path.lstrip("/")

    def _note(self, key: tuple, text: str) -> None:
        if key not in self._noted:
            self._noted.add(key)
            self.result.notes.append(text)
            self.emit("note", message=text)

    def _make(self, entry, src: str, fd: int, name: str) -> tuple:
        """Create `name` in `fd` by the first method of the chain that works: (method, identity)."""
        chain = CHAINS[self.options.link]
        sst = None
        index = 0
        while index < len(chain):
            method = chain[index]
            if method in ("reflink", "copy", "download") and _exists(fd, name):
                raise FileExistsError(errno.EEXIST, "exists", name)   # these would replace it
            try:
                if method == "download":
                    return method, self._download(entry, fd, name)
                if method == "hard":
                    return method, self._hard_link(entry, src, fd, name)
                if sst is None:
                    sst = self._checked_source(entry, src)
                if method == "sym":
                    os.symlink(src, name, dir_fd=fd)
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    return method, (st.st_dev, st.st_ino)
                target = fd_path(fd, name)
                if method == "reflink":
                    fsops.reflink(src, target)
                else:
                    known = bool(entry.hash and entry.hasher in fsops.HASHERS)
                    fsops.copy_verified(src, target, hasher=entry.hasher if known else None,
                                        expected_hash=entry.hash if known else None,
                                        expected_size=entry.size)
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                return method, (st.st_dev, st.st_ino)
            except fsops.LinkRefused as err:
                if len(chain) == 1:
                    raise EntryFailed(f"{method} link refused: {err.reason}") from None
                self._note((method, err.reason),
                           f"{method} link refused ({err.reason}); falling back to {chain[index + 1]}")
            except SourceUnavailable as err:
                if "download" not in chain[index + 1:]:
                    raise EntryFailed(str(err)) from None
                self._note(("download",), f"{err}; downloading through the server instead")
                index = chain.index("download")
                continue
            except fsops.VerifyError as err:
                raise EntryFailed(str(err)) from None
            index += 1
        raise EntryFailed("no method could export this file")

    def _checked_source(self, entry, src: str) -> os.stat_result:
        """stat the repository file (following an in-place import's link) and check it."""
        try:
            sst = os.stat(src)
        except (FileNotFoundError, PermissionError, NotADirectoryError) as err:
            raise SourceUnavailable(f"the repository file is not readable here ({err.strerror})") \
                from None
        self._check_source(entry, src, sst)
        return sst

    def _check_source(self, entry, src: str, sst: os.stat_result) -> None:
        """Is `sst` the file OMERO describes, and — as root — could the DEST owner read it
        anyway? (Notes a managed file writable by group or others.)"""
        if not stat.S_ISREG(sst.st_mode):
            raise EntryFailed(f"{src} is not a regular file")
        if sst.st_size != entry.size:
            raise EntryFailed(f"the repository file has {sst.st_size} bytes, OMERO records "
                              f"{entry.size}")
        if entry.in_place and self.options.reader is not None \
                and not posix_readable(sst, *self.options.reader):
            raise EntryFailed("the in-place import's target is not readable by the DEST owner; "
                              "refusing to expose it")
        if sst.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            self.result.writable.append(entry.path)

    def _hard_link(self, entry, src: str, fd: int, name: str) -> tuple:
        """Link first (following an in-place import's link), then check the inode linked: the
        checks see exactly the file DEST now holds, with one stat, and no swap of an in-place
        target between a check and the link can slip through. A file failing them is unlinked
        again; it shares its inode, mode and owner with the repository file, so for that moment
        it gave nobody access the repository did not."""
        try:
            os.link(src, name, dst_dir_fd=fd, follow_symlinks=True)
        except (FileNotFoundError, PermissionError, NotADirectoryError) as err:
            if isinstance(err, PermissionError) and err.errno == errno.EPERM:
                raise fsops.LinkRefused(err.errno, "hard", _REFUSED[err.errno], src, name) \
                    from None
            raise SourceUnavailable(f"the repository file is not readable here "
                                    f"({err.strerror})") from None
        except OSError as err:
            if err.errno in _REFUSED:
                raise fsops.LinkRefused(err.errno, "hard", _REFUSED[err.errno], src, name) from None
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise fsops.NoSpace(err.errno, "no space left in DEST", name) from None
            raise
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        try:
            self._check_source(entry, src, st)
        except EntryFailed:
            os.unlink(name, dir_fd=fd)
            raise
        return st.st_dev, st.st_ino

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
            except PermissionDenied:
                raise EntryFailed("download restricted by the server (BINARYACCESS)") from None
            except NotFound:
                raise EntryFailed("no longer readable on the server") from None
            except ServerError as err:
                raise EntryFailed(f"server error: {err}") from None
            try:
                while offset < entry.size:
                    data = reader.read(offset, min(CHUNK, entry.size - offset))
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
                raise EntryFailed(f"{entry.hasher} of the download differs from OMERO's; removed")
            st = os.fstat(pfd)
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                self._unlink_part(fd, entry.original_file_id)
                raise fsops.NoSpace(err.errno, "no space left in DEST while downloading", name) \
                    from None
            raise
        finally:
            os.close(pfd)
        try:
            os.link(part, name, src_dir_fd=fd, dst_dir_fd=fd, follow_symlinks=False)
        except FileExistsError:
            raise EntryFailed("a file appeared here while downloading; left alone") from None
        os.unlink(part, dir_fd=fd)
        fsops.fsync_dir(fd_path(fd))
        return st.st_dev, st.st_ino

    def _open_part(self, fd: int, part: str) -> int:
        """Our part file, or a fresh one if what has that name is not a plain file of ours."""
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            pfd = os.open(part, flags, 0o644, dir_fd=fd)
        except OSError as err:
            if err.errno != errno.ELOOP:
                raise
            pfd = None
        if pfd is not None:
            st = os.fstat(pfd)
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_uid == os.geteuid():
                return pfd
            os.close(pfd)
        os.unlink(part, dir_fd=fd)
        return os.open(part, flags | os.O_EXCL, 0o644, dir_fd=fd)

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
        self._new_dirs.append(rel)

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
                except FileNotFoundError:
                    pass

    # ----------------------------------------------------------------------------- verify
    def _verify(self, plan) -> None:
        """Every entry against its OriginalFile's size and hash (through the symlink for sym)."""
        for entry in plan.entries:
            record = self.manifest.entries.get(entry.path)
            if record is None or record.state != DONE:
                continue
            parts = entry.path.split("/")
            reason = None
            try:
                fd = self.dest.fd(parts[:-1])
                st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=record.method == "sym")
                if not stat.S_ISREG(st.st_mode):
                    reason = "not a regular file"
                elif st.st_size != entry.size:
                    reason = f"{st.st_size} bytes, OMERO records {entry.size}"
                elif entry.hash and entry.hasher in fsops.HASHERS:
                    digest = fsops.checksum(fd_path(fd, parts[-1]), entry.hasher)
                    if digest != entry.hash.lower():
                        reason = f"{entry.hasher} {digest}, OMERO records {entry.hash.lower()}"
            except (FileNotFoundError, PlantedLink):
                reason = "missing"
            self.result.verified += 1
            if reason:
                self.result.verify_failures.append((entry.path, reason))
            self.emit("verify", path=entry.path, original_file=entry.original_file_id,
                      ok=reason is None, reason=reason)


def _exists(fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True
