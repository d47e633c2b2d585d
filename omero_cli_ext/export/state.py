"""Where an export keeps its control files: out of the DEST owner's reach.

The manifest, its journal and the run's lock live in a state directory of the user running the
export (root: `/var/lib/omero-cli-ext/exports/`; others: `$XDG_STATE_HOME/omero-cli-ext/exports/`,
by default `~/.local/state/...`), one subdirectory per DEST named by DEST's device and inode
(`<dev>-<ino>` in hex). Nothing there is reachable by a name the DEST owner controls: the
directories are made 0700 by the running user and checked (`fstat`: a directory, owned by the
running user, writable by nobody else) every time they are opened, each component with
O_NOFOLLOW.

One run per DEST: `Lock` holds an exclusive `flock` on the state's lock file for the whole run.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from typing import Callable, Optional

from omero_cli_ext.export.dest import ancestor_problem

ROOT_STATE_DIR = "/var/lib/omero-cli-ext/exports"
LOCK_NAME = "lock"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class StateError(Exception):
    """The state directory is unusable (the message says which directory and why)."""


class Busy(Exception):
    """Another run holds DEST's lock."""


def default_root(euid: Optional[int] = None, environ=os.environ) -> str:
    """The state directory for the running user."""
    euid = os.geteuid() if euid is None else euid
    if euid == 0:
        return ROOT_STATE_DIR
    base = environ.get("XDG_STATE_HOME") or os.path.join(
        environ.get("HOME") or os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "omero-cli-ext", "exports")


def _check_private(fd: int, what: str) -> None:
    st = os.fstat(fd)
    if not stat.S_ISDIR(st.st_mode):
        raise StateError(f"{what} is not a directory")
    if st.st_uid != os.geteuid():
        raise StateError(f"{what} is owned by uid {st.st_uid}, not by the user running the "
                         f"export (uid {os.geteuid()})")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise StateError(f"{what} is writable by group or others (mode "
                         f"{stat.S_IMODE(st.st_mode):04o}); it must be private")


def _open_child(parent: int, name: str, what: str, create: bool) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        if not create:
            raise
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            raise StateError(f"{what} is a symlink or not a directory; not followed") from None
        raise
    try:
        os.mkdir(name, 0o700, dir_fd=parent)
    except FileExistsError:
        pass
    return _open_child(parent, name, what, False)


def open_root(path: str) -> int:
    """The state root as a directory descriptor, made (0700, missing components too) when
    missing. Every component is opened with O_NOFOLLOW; the last one must be private to the
    running user."""
    if not os.path.isabs(path):
        raise StateError(f"the state directory {path} is not an absolute path")
    parts = [p for p in path.split("/") if p]
    fd = os.open("/", _DIR_FLAGS)
    try:
        for depth, name in enumerate(parts):
            what = "/" + "/".join(parts[:depth + 1])
            try:
                child = _open_child(fd, name, what, create=True)
            except OSError as err:
                raise StateError(f"cannot open {what}: {err.strerror}") from None
            problem = ancestor_problem(os.fstat(fd), os.fstat(child).st_uid, {os.geteuid()})
            fd, parent = child, fd      # one step: a Ctrl-C between never closes fd twice
            os.close(parent)
            if problem:
                raise StateError(f"{os.path.dirname(what) or '/'}, above the state directory, "
                                 f"is {problem}")
        _check_private(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def key(dest_st: os.stat_result) -> str:
    """The state subdirectory of a DEST: its device and inode."""
    return f"{dest_st.st_dev:x}-{dest_st.st_ino:x}"


def open_for(root_fd: int, dest_st: os.stat_result, create: bool) -> Optional[int]:
    """DEST's state directory (made when `create`), or None when it has none."""
    try:
        return _open_private(root_fd, key(dest_st), create)
    except FileNotFoundError:
        return None


def open_for_name(root_fd: int, name: str) -> int:
    """An existing state subdirectory by name (checked like open_for)."""
    return _open_private(root_fd, name, False)


def _open_private(root_fd: int, name: str, create: bool) -> int:
    """A state subdirectory, checked private (closed again when it is not)."""
    fd = _open_child(root_fd, name, f"the state directory {name}", create)
    try:
        _check_private(fd, f"the state directory {name}")
    except BaseException:
        os.close(fd)
        raise
    return fd


class Lock:
    """An exclusive flock on `<state>/lock`, held until `release` (or the process ends)."""

    def __init__(self, state_fd: int, wait: float = 0.0,
                 clock: Callable[[], float] = time.monotonic,
                 pause: Callable[[float], None] = time.sleep):
        self._fd = os.open(LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                           0o600, dir_fd=state_fd)
        deadline = clock() + wait
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as err:
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(self._fd)
                    raise
            if clock() >= deadline:
                os.close(self._fd)
                raise Busy()
            pause(min(0.2, max(0.0, deadline - clock())))

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
