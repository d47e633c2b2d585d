"""DEST itself: opened from `/` one component at a time without following a symlink, its
ancestors checked as sshd's StrictModes checks a home directory, and kept apart from the
ManagedRepository by device and inode (bind mounts included), never by path spelling.
"""
from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct
from typing import Iterable, Optional

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class DestError(Exception):
    """DEST cannot be used (the message says which component and why)."""


class DestMissing(DestError):
    """DEST itself does not exist (its parent does)."""


def ancestor_problem(st: os.stat_result, next_uid: Optional[int],
                     trusted: Iterable[int]) -> Optional[str]:
    """Why a directory above DEST lets someone other than root (or the DEST owner, `trusted`)
    swap what lies below it, or None. A directory writable by group or others passes only under
    the sticky-bit rule: sticky, and the next component owned by a trusted user (others may then
    neither rename nor remove it)."""
    trusted = set(trusted) | {0}
    if st.st_uid not in trusted:
        return f"owned by uid {st.st_uid}"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        sticky_ok = (st.st_mode & stat.S_ISVTX) and next_uid in trusted
        if not sticky_ok:
            who = "group and others" if st.st_mode & stat.S_IWGRP and st.st_mode & stat.S_IWOTH \
                else ("its group" if st.st_mode & stat.S_IWGRP else "others")
            return f"writable by {who} (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def split(path: str) -> list:
    if not os.path.isabs(path):
        raise DestError(f"{path} is not an absolute path")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise DestError(f"{path}: '..' is not allowed in DEST")
    if not parts:
        raise DestError("DEST cannot be /")
    return parts


def open_dest(path: str, *, create: bool, mode: int = 0o700, owner: Optional[tuple] = None,
              strict: Optional[Iterable[int]] = None) -> tuple:
    """(fd, created) of the directory `path`, every component opened relative to its parent
    with O_NOFOLLOW. `strict` (the trusted uids besides root; None: no check) checks each
    ancestor with `ancestor_problem`. A missing DEST is made when `create` (0700, then `owner`
    and `mode` through the descriptor); its parent must exist."""
    parts = split(path)
    trusted = None if strict is None else set(strict)
    fd = os.open("/", _DIR_FLAGS)
    created = False
    try:
        for depth, name in enumerate(parts):
            here = "/" + "/".join(parts[:depth])
            last = depth == len(parts) - 1
            what = "/" + "/".join(parts[:depth + 1])
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not last:
                    raise DestError(f"{what} does not exist (DEST's parent must exist)") \
                        from None
                if not create:
                    raise DestMissing(f"{what} does not exist") from None
                if trusted is not None:     # checked before DEST is made in it (made by root)
                    _refuse(ancestor_problem(os.fstat(fd), 0, trusted), here)
                try:
                    child = _make(fd, name, what, mode, owner)
                    created = True
                except FileExistsError:   # another run made it first: an existing DEST now
                    child = _open_child(fd, name, what)
            except OSError as err:
                raise _open_error(err, what) from None
            if trusted is not None:
                try:
                    _refuse(ancestor_problem(os.fstat(fd), os.fstat(child).st_uid, trusted),
                            here)
                except DestError:
                    os.close(child)
                    raise
            fd, parent = child, fd      # one step: a Ctrl-C between never closes fd twice
            os.close(parent)
    except BaseException:
        os.close(fd)
        raise
    return fd, created


def device_of(path: str) -> Optional[int]:
    """The device of `path`, or of its nearest existing ancestor (a DEST not made yet)."""
    while True:
        try:
            return os.stat(path).st_dev
        except OSError:
            if path == os.path.dirname(path):
                return None
            path = os.path.dirname(path)


def _refuse(problem: Optional[str], here: str) -> None:
    if problem:
        raise DestError(f"{here}, above DEST, is {problem}: its other users could swap DEST; as "
                        "root, DEST's ancestors must be writable only by root (or the DEST "
                        "owner), or sticky")


def made_by_us(fd: int) -> bool:
    """Is the directory open as `fd` the one we have just made (mkdir 0700)? Ours, and open to
    nobody else: a directory that someone who may write its parent renamed over ours in the
    meantime is one she could write, or not ours; it must never be given away (chown, chmod).
    Checked as root only: anyone else can chmod only their own directories, never chown, and
    on filesystems that force modes (vfat, CIFS) a new directory is not 0700."""
    if os.geteuid() != 0:
        return True
    st = os.fstat(fd)
    return st.st_uid == os.geteuid() and not st.st_mode & 0o077 and stat.S_ISDIR(st.st_mode)


def give_unfinished(fd: int, mode: int, owner: tuple) -> bool:
    """DEST with no export in it yet, empty and still as mkdir left it (root's, 0700: a run
    stopped between making it and giving it away) is given to `owner` with `mode` now; True if
    it was. Otherwise every entry would be made where its owner cannot enter."""
    if owner[0] == 0 or not made_by_us(fd) or os.fstat(fd).st_uid == owner[0] or os.listdir(fd):
        return False
    if os.stat("..", dir_fd=fd, follow_symlinks=False).st_uid == owner[0]:
        return False    # in a directory of hers she could have renamed any root 0700 one there
    os.fchown(fd, *owner)
    os.fchmod(fd, mode)
    return True


def _open_error(err: OSError, what: str) -> DestError:
    if err.errno in (errno.ELOOP, errno.ENOTDIR):
        return DestError(f"{what} is a symlink or not a directory; DEST is resolved without "
                         "following symlinks")
    return DestError(f"cannot open {what}: {err.strerror}")


def _open_child(parent: int, name: str, what: str) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except OSError as err:
        raise _open_error(err, what) from None


def _make(parent: int, name: str, what: str, mode: int, owner: Optional[tuple]) -> int:
    """DEST made 0700 and opened; FileExistsError when another run made it first."""
    try:
        os.mkdir(name, 0o700, dir_fd=parent)
    except FileExistsError:
        raise
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise DestError(f"cannot create {what}: {err.strerror}") from None
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    try:
        if not made_by_us(fd):
            raise DestError(f"{what} was swapped for another directory right after it was made "
                            "(by a user who may write its parent); not used")
        if owner is not None:
            os.fchown(fd, *owner)
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


# ------------------------------------------------------------------------- the repository

def _mountinfo() -> list:
    """(mount id, "major:minor", root within the filesystem, mount point) per mount."""
    try:
        with open("/proc/self/mountinfo", "rb") as stream:
            lines = stream.read().decode("utf-8", "surrogateescape").splitlines()
    except OSError:
        return []
    mounts = []
    for line in lines:
        fields = line.split(" ")
        if len(fields) < 5:
            continue
        mounts.append((int(fields[0]), fields[2], _unescape(fields[3]), _unescape(fields[4])))
    return mounts


def _unescape(text: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    if "\\" not in text:
        return text
    out, i = [], 0
    while i < len(text):
        digits = text[i + 1:i + 4]
        if text[i] == "\\" and len(digits) == 3 and digits.isdigit():
            out.append(chr(int(text[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


_FUSE_OWNERS: dict = {}     # mount id -> uid that mounted that FUSE filesystem (None: not one)


def user_fuse(fd: int) -> Optional[int]:
    """The uid that mounted the FUSE filesystem holding the open `fd` (its daemon answers every
    read, and can stall them), None when `fd` is not on a FUSE filesystem mounted by a user.
    Nothing is asked of the filesystem itself: the mount id comes from statx without syncing
    (or /proc/self/fdinfo), the mount's type and options from /proc/self/mountinfo (read again
    only for a mount not seen before)."""
    mnt = _mount_id(fd)
    if mnt is None:
        return None
    if mnt not in _FUSE_OWNERS:
        _FUSE_OWNERS.clear()
        for mount_id, fstype, options in _mount_types():
            _FUSE_OWNERS[mount_id] = _fuse_owner(fstype, options)
    return _FUSE_OWNERS.get(mnt)


def _mount_types() -> list:
    """(mount id, filesystem type, super options) per mount."""
    try:
        with open("/proc/self/mountinfo", "rb") as stream:
            lines = stream.read().decode("utf-8", "surrogateescape").splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        if " - " not in line:
            continue
        fstype, _, rest = line.split(" - ", 1)[1].partition(" ")
        found.append((int(line.split(" ", 1)[0]), fstype, rest.split(" ")[-1]))
    return found


def _fuse_owner(fstype: str, options: str) -> Optional[int]:
    if not fstype.startswith("fuse"):
        return None
    for option in options.split(","):
        if option.startswith("user_id="):
            uid = int(option[len("user_id="):])
            return uid if uid != 0 else None
    return None


def _load_statx():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.statx
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint,
                         ctypes.c_void_p)
    return function


_STATX = _load_statx()
_STATX_MNT_ID = 0x1000
_AT_EMPTY_PATH = 0x1000
_AT_STATX_DONT_SYNC = 0x4000
_STATX_BUFFER = ctypes.create_string_buffer(256)


def _mount_id(fd: int) -> Optional[int]:
    """statx(fd, "", AT_EMPTY_PATH|AT_STATX_DONT_SYNC, STATX_MNT_ID): stx_mnt_id (offset 144 of
    struct statx, linux/stat.h), without asking the filesystem; else /proc/self/fdinfo."""
    if _STATX is not None and _STATX(fd, b"", _AT_EMPTY_PATH | _AT_STATX_DONT_SYNC,
                                     _STATX_MNT_ID, _STATX_BUFFER) == 0:
        mask, = struct.unpack_from("=I", _STATX_BUFFER, 0)
        if mask & _STATX_MNT_ID:
            return struct.unpack_from("=Q", _STATX_BUFFER, 144)[0]
    try:
        with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as stream:
            for line in stream:
                if line.startswith("mnt_id:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _within(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def place(fd: int, mounts: list) -> Optional[tuple]:
    """("major:minor", path within that filesystem) of the directory open as `fd`: the same for
    every bind mount of one directory."""
    mnt = _mount_id(fd)
    seen = os.readlink(f"/proc/self/fd/{fd}")
    for mount_id, device, root, point in mounts:
        if mount_id == mnt and _within(seen, point):
            rel = os.path.relpath(seen, point)
            return device, os.path.normpath(os.path.join(root, rel)) if rel != "." else root
    return None


def chain(fd: int) -> list:
    """(dev, ino) of the directory open as `fd` and of each directory above it, up to `/`."""
    chain = []
    current = os.dup(fd)
    try:
        while True:
            st = os.fstat(current)
            ident = (st.st_dev, st.st_ino)
            if chain and chain[-1] == ident:
                return chain
            chain.append(ident)
            current, child = os.open("..", _DIR_FLAGS, dir_fd=current), current
            os.close(child)             # after the swap: a Ctrl-C never closes one fd twice
    finally:
        os.close(current)


def check_apart(dest_fd: int, dest_text: str, repo_fd: int, repo_text: str,
                inside_only: bool = False) -> None:
    """Refuse a DEST equal to, inside, or above the repository: compared by device and inode
    along both ancestor chains, by filesystem-relative path (bind mounts of any directory of
    the repository), and refusing any mount point below DEST. `inside_only` (for the parent of
    a DEST not made yet): only refuse a directory equal to or inside the repository."""
    dest_chain, repo_chain = chain(dest_fd), chain(repo_fd)
    if repo_chain[0] in dest_chain:
        raise DestError(f"DEST {dest_text} is inside the ManagedRepository ({repo_text}), "
                        "or is its root; choose a directory outside it")
    mounts = _mountinfo()
    dest_place = place(dest_fd, mounts) if mounts else None
    repo_place = place(repo_fd, mounts) if mounts else None
    same_fs = dest_place and repo_place and dest_place[0] == repo_place[0]
    if same_fs and _within(dest_place[1], repo_place[1]):
        raise DestError(f"DEST {dest_text} is the ManagedRepository ({repo_text}) or a "
                        "directory inside it, reached through a bind mount")
    if inside_only:
        return
    if dest_chain[0] in repo_chain:
        raise DestError(f"DEST {dest_text} contains the ManagedRepository ({repo_text}); "
                        "choose a directory outside it")
    if not mounts:
        return
    if same_fs and _within(repo_place[1], dest_place[1]):
        raise DestError(f"DEST {dest_text} holds the ManagedRepository ({repo_text}) "
                        "through a bind mount")
    seen = os.readlink(f"/proc/self/fd/{dest_fd}")
    for _, device, root, point in mounts:
        if point != seen and _within(point, seen) and repo_place and device == repo_place[0] \
                and (_within(root, repo_place[1]) or _within(repo_place[1], root)):
            raise DestError(f"DEST {dest_text} holds a mount of the ManagedRepository "
                            f"({point}); choose a directory outside it")


def is_mount_root(fd: int) -> bool:
    """Is the directory open as `fd` the root of a mount (its parent on another mount, or
    /proc cannot tell)? A filesystem's root holds lost+found (root's, 0700)."""
    parent = os.open("..", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
    try:
        here, above = mount_id(fd), mount_id(parent)
    finally:
        os.close(parent)
    return here is None or here != above


def mount_id(fd: int) -> Optional[int]:
    """The mount the open `fd` is on (/proc/self/fdinfo), None where /proc cannot tell."""
    return _mount_id(fd)
