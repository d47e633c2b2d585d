"""Open files as the DEST owner: what she could open herself decides, never root's rights.

`ReaderProcess` starts one small child with her uid, primary gid and supplementary groups (no
capabilities); for each path it is sent, the child opens it (O_RDONLY|O_NONBLOCK|O_NOCTTY,
following symlinks as the kernel does for her) and passes the open descriptor back over a
Unix socket (SCM_RIGHTS). The exporter then works on that very descriptor — it links,
clones or copies the inode she opened, so nothing swapped between a check and the use can
slip through. `SelfOpener` does the same in-process when the exporter already is that user.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys

OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_MAX_PATH = 4096 + 16

# The child: stdlib only, started with -I -S (no site, no environment), as the user.
_CHILD = r"""
import os, socket, sys
s = socket.socket(fileno=int(sys.argv[1]))
flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
while True:
    path = s.recv(8192)
    if not path:
        break
    try:
        fd = os.open(path, flags)
    except OSError as err:
        s.send(b"E%d" % err.errno)
        continue
    socket.send_fds(s, [b"F"], [fd])
    os.close(fd)
"""


class ReaderError(Exception):
    """The reader child could not be started or stopped answering."""


class SelfOpener:
    """Opens as the running user (who is the DEST owner)."""

    def open(self, path) -> int:
        return os.open(path, OPEN_FLAGS)

    def close(self) -> None:
        pass


class ReaderProcess:
    """Opens as (uid, gid, gids): a child process with exactly those credentials."""

    def __init__(self, uid: int, gid: int, gids, python: str = sys.executable):
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock = parent
        try:
            self._proc = subprocess.Popen(
                [os.path.realpath(python), "-I", "-S", "-c", _CHILD, str(child.fileno())],
                user=uid, group=gid, extra_groups=sorted(set(gids)), pass_fds=[child.fileno()],
                cwd="/", env={}, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                umask=0o077)
        except (OSError, subprocess.SubprocessError) as err:
            parent.close()
            raise ReaderError(f"cannot start a reader process as uid {uid}: {err}") from None
        finally:
            child.close()

    def open(self, path) -> int:
        data = os.fsencode(path)
        if b"\0" in data or len(data) > _MAX_PATH:
            raise OSError(22, "not a valid path", os.fsdecode(data))
        try:
            self._sock.send(data)
            message, fds, _, _ = socket.recv_fds(self._sock, 64, 1)
        except OSError as err:
            raise ReaderError(f"the reader process stopped answering ({err.strerror})") from None
        if fds:
            return fds[0]
        if message.startswith(b"E"):
            number = int(message[1:])
            raise OSError(number, os.strerror(number), os.fsdecode(data))
        raise ReaderError("the reader process ended")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


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
