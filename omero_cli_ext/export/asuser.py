"""Open files as the DEST owner: what she could open herself decides, never root's rights.

`ReaderProcess` forks one small child that drops to her uid, primary gid and supplementary
groups (no capabilities left); for each path it is sent, the child opens it (O_RDONLY|O_NONBLOCK|O_NOCTTY,
following symlinks as the kernel does for her) and passes the open descriptor back over a
Unix socket (SCM_RIGHTS). The exporter then works on that very descriptor — it links,
clones or copies the inode she opened, so nothing swapped between a check and the use can
slip through. `SelfOpener` does the same in-process when the exporter already is that user.
"""
from __future__ import annotations

import ctypes
import os
import socket
from typing import Optional

OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_MAX_PATH = 4096 + 16

class ReaderError(OSError):
    """The reader child could not be started or stopped answering (an OSError: the entry that
    needed it fails, the run goes on)."""


class SelfOpener:
    """Opens as the running user (who is the DEST owner)."""

    def open(self, path) -> int:
        return os.open(path, OPEN_FLAGS)

    def close(self) -> None:
        pass


class ReaderProcess:
    """Opens as (uid, gid, gids): a forked child that drops to exactly those credentials (no
    exec, so no interpreter the user must be able to run) and keeps no other descriptor."""

    def __init__(self, uid: int, gid: int, gids, timeout: float = 60.0):
        self._ids = (uid, gid, gids, timeout)
        self._sock = None
        self._broken = False
        # started by the first open, never here: she can kill or stop every process of hers,
        # and a reader that cannot start must fail the entries that need it, not the run (its
        # removals, revocation, need no reader)

    def _start(self) -> None:
        uid, gid, gids, timeout = self._ids
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        gids = sorted(set(gids))
        try:
            pid = os.fork()
        except OSError as err:
            parent.close()
            child.close()
            raise ReaderError(err.errno, f"cannot start a reader process as uid {uid}: "
                              f"{err.strerror}") from None
        if pid == 0:                       # the child: never returns
            code = 1
            try:
                keep = child.fileno()
                null = os.open(os.devnull, os.O_RDWR)
                for std in (0, 1, 2):         # nothing of root's stdio for the user's process
                    os.dup2(null, std)
                os.closerange(3, keep)
                os.closerange(keep + 1, 1 << 16)
                _not_dumpable()               # she may not ptrace it, whatever suid_dumpable says
                os.setgroups(gids)
                os.setresgid(gid, gid, gid)
                os.setresuid(uid, uid, uid)
                _not_dumpable()
                os.chdir("/")
                _serve(child)
                code = 0
            finally:
                os._exit(code)
        child.close()
        parent.settimeout(timeout)     # an open she can stall (her FUSE mount) ends the child
        self._sock = parent
        self._pid = pid
        try:
            self._sock.send(b"\0")         # the child answers once it runs as the user
            message = self._sock.recv(16)
        except OSError:
            message = b""
        if message != b"R":
            self._stop(kill=True)
            raise ReaderError(1, f"cannot start a reader process as uid {uid}")

    def open(self, path) -> int:
        data = os.fsencode(path)
        if b"\0" in data or not data or len(data) > _MAX_PATH:
            raise OSError(22, "not a valid path", os.fsdecode(data))
        if self._broken:
            # she can stop (SIGSTOP) or kill every reader of hers: started again for each file,
            # each would cost the timeout, and one user could hold a nightly loop for hours
            raise ReaderError(5, "the DEST owner's reader process failed earlier in this run "
                              "(not started again before the next run)")
        if self._sock is None:
            try:
                self._start()
            except ReaderError:
                self._broken = True
                raise
        try:
            self._sock.send(data)
            message, fds, _, _ = socket.recv_fds(self._sock, 64, 1)
        except OSError as err:
            self._broken = True
            self._stop(kill=True)
            raise ReaderError(err.errno or 5, "the DEST owner's reader process stopped "
                              "answering (killed, or an open that never returned)") from None
        for extra in fds[1:]:
            os.close(extra)
        if fds and message == b"F":
            return fds[0]
        for fd in fds[:1]:
            os.close(fd)
        if message[:1] == b"E" and message[1:].isdigit():
            number = int(message[1:])
            raise OSError(number, os.strerror(number), os.fsdecode(data))
        self._broken = True
        self._stop(kill=True)
        raise ReaderError(5, "the DEST owner's reader process ended")

    def close(self) -> None:
        self._stop(kill=False)

    def _stop(self, kill: bool) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            if kill:
                try:
                    os.kill(self._pid, 9)
                except ProcessLookupError:
                    pass
            os.waitpid(self._pid, 0)


def _not_dumpable() -> None:
    """prctl(PR_SET_DUMPABLE, 0): no ptrace, no /proc/<pid>/fd for other processes of the uid."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)    # PR_SET_DUMPABLE = 4
    except (OSError, AttributeError):
        pass


def _serve(sock) -> None:
    """The child's loop: a path in, an open descriptor (or an errno) out."""
    sock.recv(16)
    sock.send(b"R")
    while True:
        path = sock.recv(_MAX_PATH)
        if not path:
            return
        try:
            fd = os.open(path, OPEN_FLAGS)
        except OSError as err:
            sock.send(b"E%d" % err.errno)
            continue
        socket.send_fds(sock, [b"F"], [fd])
        os.close(fd)


def others_in_group(gid: int, owner_name: str) -> list:
    """Names of the users other than `owner_name` who belong to group `gid` (as a supplementary
    group, or as their primary group: sites whose users all share "Domain Users")."""
    import grp
    import pwd
    try:
        members = set(grp.getgrgid(gid).gr_mem)
    except KeyError:
        members = set()
    members.update(p.pw_name for p in pwd.getpwall() if p.pw_gid == gid)
    members.discard(owner_name)
    return sorted(members)


def dir_mode_problem(mode: int, gid: int, owner_name: str) -> Optional[str]:
    """What is wrong with giving the export's directories `mode` (DEST owner `owner_name`,
    group `gid`), or None: any bit for others, or group bits when the group has other members."""
    if mode & 0o007:
        return "lets every user on this host into the export"
    if mode & 0o070:
        others = others_in_group(gid, owner_name)
        if others:
            return (f"lets group {gid}'s other members into the export "
                    f"({', '.join(others[:5])}{', ...' if len(others) > 5 else ''})")
    return None


class OwnerError(Exception):
    """The DEST owner is unknown or may not be given this export (message says what to do)."""


def parse_owner_map(lines) -> dict:
    """'omero_name posix_name' per line; blank lines and '#' comments ignored (ValueError
    "<line>: ..." for anything else)."""
    mapping = {}
    for number, line in enumerate(lines, 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) != 2:
            raise ValueError(f"{number}: expected 'omero_name posix_name', got {line.strip()!r}")
        mapping[words[0]] = words[1]
    return mapping


def dest_owner(owner: Optional[str], omero_name: str, owner_map: dict, as_user: bool,
               explicit: bool):
    """The DEST owner's passwd entry: `owner` (--owner), else the owner map's or the OMERO
    user's own name. Not root: only oneself. Root: the POSIX account of the acting OMERO user
    (or root), so a DEST never shows one user what another may read; otherwise --as-user."""
    import pwd
    if os.geteuid() != 0 and not explicit:
        return pwd.getpwuid(os.geteuid())       # not root: DEST is always the runner's own
    name = owner or owner_map.get(omero_name, omero_name)
    how = "--owner" if owner else ("the owner map" if omero_name in owner_map
                                   else "the OMERO user's name")
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        raise OwnerError(f"no POSIX user {name!r} (from {how}); give --owner or --owner-map") \
            from None
    if os.geteuid() != 0:
        if explicit and entry.pw_uid != os.geteuid():
            raise OwnerError(f"only root can give DEST's directories to {name!r}")
        return entry
    acting = owner_map.get(omero_name, omero_name)
    try:
        acting_uid = pwd.getpwnam(acting).pw_uid
    except KeyError:
        acting_uid = None
    if entry.pw_uid not in (0, acting_uid):
        omero_owner = next((o for o, p in owner_map.items() if p == entry.pw_name), entry.pw_name)
        hint = (f"rerun with --as-user {omero_owner}" if not as_user else
                f"use --as-user {omero_owner}, or --owner {acting}")
        raise OwnerError(f"DEST's owner {entry.pw_name!r} is not the acting OMERO user "
                         f"{omero_name!r}: the export would show {entry.pw_name!r} what "
                         f"{omero_name!r} may read; {hint}")
    return entry
