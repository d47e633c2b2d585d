"""Root writing DEST as its owner.

When root exports for a DEST owner, everything done in DEST (directories, chunks, documents,
removals, the reads of chunks for the pyramid) is done with her effective uid, gid and groups:
the kernel then gives root's writes exactly her rights, so a name, hard link or symlink she
planted can redirect them no further than she could herself, and what is made is hers. Root's
own rights come back only around the state directory's writes (`privileged`), which happen
before the writer's threads start and after they end. The real and saved uids stay root's:
she may neither signal nor trace the process meanwhile (the kernel checks those)."""
from __future__ import annotations

import contextlib
import os
from typing import Iterable, Optional


class Effective:
    """(uid, gid, gids) to take for DEST's work; None: stay as we are (not root, or root
    exporting for root)."""

    def __init__(self, ids: Optional[tuple] = None):
        self._ids = None if ids is None else (ids[0], ids[1], sorted(set(ids[2])))
        self._saved: Optional[tuple] = None

    @classmethod
    def of(cls, uid: int, gid: int, gids: Iterable[int]) -> "Effective":
        return cls((uid, gid, gids) if os.geteuid() == 0 and uid != 0 else None)

    def drop(self) -> None:
        if self._ids is None or self._saved is not None:
            return
        uid, gid, gids = self._ids
        self._saved = (os.getegid(), os.getgroups())
        os.setgroups(gids)
        os.setegid(gid)
        os.seteuid(uid)

    def restore(self) -> None:
        if self._saved is None:
            return
        egid, groups = self._saved
        os.seteuid(0)
        os.setegid(egid)
        os.setgroups(groups)
        self._saved = None

    @contextlib.contextmanager
    def privileged(self):
        """Root's own rights for the block (the state directory), then hers again."""
        dropped = self._saved is not None
        self.restore()
        try:
            yield
        finally:
            if dropped:
                self.drop()
