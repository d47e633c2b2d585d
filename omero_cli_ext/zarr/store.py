"""Files under DEST through directory descriptors: nothing a user planted there (a symlink, a
file in the place of a directory) is followed; every file appears under its final name in one
step (a temporary in the same directory, renamed), so a reader or a rerun after kill -9 sees
whole chunks and whole documents only."""
from __future__ import annotations

import errno
import json
import os
import secrets
import stat
from typing import Iterable, Optional

from omero_cli_ext import fsops

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_MODE = 0o644


class NotOurs(OSError):
    """Something that is not a plain directory stands where the export needs one."""


def open_dir(parent_fd: int, name: str, create: bool, mode: int) -> int:
    """The directory `name` in `parent_fd` (made with `mode` when missing and `create`)."""
    if create:
        try:
            os.mkdir(name, mode, dir_fd=parent_fd)
        except FileExistsError:
            pass
        else:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
            os.fchmod(fd, mode)      # whatever the umask
            return fd
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            raise NotOurs(err.errno, "not a directory made by the export", name) from None
        raise


def open_path(base_fd: int, parts: Iterable[str], create: bool, mode: int) -> int:
    """Walk `parts` below `base_fd` one component at a time; returns a new descriptor."""
    fd = os.dup(base_fd)
    try:
        for part in parts:
            child = open_dir(fd, part, create, mode)
            fd, parent = child, fd      # one step: a Ctrl-C between never closes fd twice
            os.close(parent)
    except BaseException:
        os.close(fd)
        raise
    return fd


def exists(dir_fd: int, name: str) -> bool:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode)


def write_file(dir_fd: int, name: str, data: bytes, sync: bool = False) -> None:
    """`name` holds `data` after this, never a part of it (temporary + rename)."""
    tmp = "%s%d.%s.%s" % (fsops.TEMP_PREFIX, os.getpid(), secrets.token_hex(4), name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 FILE_MODE, dir_fd=dir_fd)
    try:
        try:
            fsops.write_all(fd, data)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException as exc:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise fsops.NoSpace(exc.errno, "no space left in DEST while writing " + name) from exc
        if isinstance(exc, OSError) and exc.errno in (errno.EISDIR, errno.ENOTEMPTY,
                                                      errno.EEXIST, errno.ENOTDIR):
            raise NotOurs(exc.errno, "a directory the export did not make stands there",
                          name) from None
        raise


def read_file(dir_fd: int, name: str, limit: Optional[int] = None) -> Optional[bytes]:
    """The bytes of the regular file `name` (None when absent); anything else in its place (a
    symlink, a FIFO that would block the read, a directory) raises NotOurs, and so does a file
    larger than `limit` bytes (a file planted in DEST is never read whole into memory)."""
    try:
        return fsops.read_regular(dir_fd, name, limit)
    except fsops.NotRegularFile as err:
        why = ("larger than any file the export writes there" if err.errno == errno.EFBIG
               else "not a file made by the export")
        raise NotOurs(err.errno, why, name) from None


def json_bytes(doc) -> bytes:
    """The one serialisation of every document (so reruns write identical bytes)."""
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("utf-8")


def write_json(dir_fd: int, name: str, doc, sync: bool = False) -> bool:
    """Write when the content differs; returns whether it wrote."""
    data = json_bytes(doc)
    try:
        if read_file(dir_fd, name, limit=len(data)) == data:
            return False
    except NotOurs as err:
        if err.errno != errno.EFBIG:
            raise

    write_file(dir_fd, name, data, sync)
    return True


def remove_tree(parent_fd: int, name: str) -> None:
    """Remove `name` below `parent_fd` without following symlinks: every entry is removed
    relative to its directory's descriptor (a symlink is removed itself, never its target)."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=parent_fd)
        return
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    try:
        for _root, dirs, files, root_fd in os.fwalk(dir_fd=fd, topdown=False,
                                                    follow_symlinks=False):
            for entry in files:
                os.unlink(entry, dir_fd=root_fd)
            for entry in dirs:      # fwalk lists a symlink to a directory here, not entering it
                try:
                    os.rmdir(entry, dir_fd=root_fd)
                except NotADirectoryError:
                    os.unlink(entry, dir_fd=root_fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)


def remove_stale_temps(dir_fd: int, recursive: bool = True) -> int:
    """Remove, in the tree below `dir_fd` (or only in it), the temporaries a killed run left
    behind (those of live processes are kept). Returns how many were removed."""
    removed = 0
    for _root, dirs, files, root_fd in os.fwalk(dir_fd=dir_fd, follow_symlinks=False):
        if not recursive:
            dirs.clear()
        for name in files:
            owner = fsops._temp_owner(name)
            if owner is not None and owner != os.getpid() and not fsops.process_alive(owner):
                try:
                    os.unlink(name, dir_fd=root_fd)
                    removed += 1
                except FileNotFoundError:
                    pass
    return removed
