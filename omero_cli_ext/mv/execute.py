"""Executing a plan step by step, and the final verification pass.

Every step checks the filesystem before acting and accepts a state it already reached, so after
a `kill -9` the same steps can simply run again. Outcomes are handed to `record` in batches, and
only after the directories the batch changed were synced: a step marked done in the journal
survived on disk.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import os
import secrets
import stat
import time
from typing import Callable, Iterable, List, Optional, Sequence, Set

from omero_cli_ext import fsops
from omero_cli_ext.mv.errors import (EXIT_INTERRUPTED, EXIT_NO_SPACE, EXIT_REPO_PERMISSION,
                                     MvError)
from omero_cli_ext.mv.plan import DEFAULT_HASHER, Step
from omero_cli_ext.mv.tree import show

BATCH_ROWS = 5000
BATCH_SECONDS = 2.0


def _libc_syncfs():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syncfs
    except (OSError, AttributeError):
        return None


_SYNCFS = _libc_syncfs()


def sync_directories(directories: Iterable[bytes]) -> None:
    """Make the entries changed in `directories` durable: one syncfs(2) per filesystem (Linux),
    cheaper than an fsync per directory when a batch touched hundreds of them; elsewhere an
    fsync per directory."""
    by_device = {}
    for directory in directories:
        try:
            by_device.setdefault(os.stat(directory).st_dev, directory)
        except FileNotFoundError:
            continue
    if _SYNCFS is None:
        for directory in directories:
            with contextlib.suppress(FileNotFoundError):
                fsops.fsync_dir(directory)
        return
    for directory in by_device.values():
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if _SYNCFS(fd) != 0:
                fsops.fsync_dir(directory)
        finally:
            os.close(fd)


class _Recorder:
    """Collects finished steps; before handing them to `record`, syncs the directories they
    changed (one fsync per directory per batch instead of one per link)."""

    def __init__(self, record: Callable[[List[Step]], None]):
        self._record = record
        self._steps: List[Step] = []
        self._dirs: Set[bytes] = set()
        self._started = time.monotonic()

    def add(self, step: Step, changed_dir: Optional[bytes]) -> None:
        if not self._steps:
            self._started = time.monotonic()
        self._steps.append(step)
        if changed_dir is not None:
            self._dirs.add(changed_dir)
        if len(self._steps) >= BATCH_ROWS or time.monotonic() - self._started >= BATCH_SECONDS:
            self.flush()

    def flush(self) -> None:
        sync_directories(self._dirs)
        self._dirs.clear()
        if self._steps:
            steps, self._steps = self._steps, []
            self._record(steps)


_TEMP_TAG = f"{fsops.TEMP_PREFIX}{os.getpid()}.{secrets.token_hex(3)}".encode("ascii")
_temp_counter = itertools.count()


def _temp_link_name(link: bytes) -> bytes:
    """A short temporary name beside `link` that fsops.is_temp_name recognises (pid inside, so
    remove_stale_temps can tell a dead writer's debris); cheaper than fsops.temp_path per link."""
    return os.path.join(os.path.dirname(link), b"%s%x." % (_TEMP_TAG, next(_temp_counter)))


def _replace_link(target: bytes, link: bytes) -> None:
    """A new symlink under a temporary name renamed over `link` (readers see old or new)."""
    tmp = _temp_link_name(link)
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _parent(path: bytes) -> bytes:
    return os.path.dirname(path) or b"."


class Executor:
    """Runs the pending steps of a plan in order. `on_step(step)` is told every outcome (for
    --json and progress); `copied(n)` every chunk of bytes copied."""

    def __init__(self, steps: Sequence[Step], *, same_fs: bool,
                 record: Callable[[List[Step]], None],
                 on_step: Optional[Callable[[Step], None]] = None,
                 copied: Optional[Callable[[int], None]] = None):
        self.steps = list(steps)
        self.same_fs = same_fs
        self._recorder = _Recorder(record)
        self._on_step = on_step
        self._copied = copied
        # sources a link still points at (its retarget was skipped): never removed
        self._kept = {s.other for s in self.steps
                      if s.kind == "retarget" and s.state == "skipped" and s.other}

    def run(self) -> None:
        phase = None
        try:
            for step in self.steps:
                if step.state != "pending":
                    continue
                if step.phase != phase:
                    self._recorder.flush()
                    phase = step.phase
                changed = self._run_step(step)
                self._recorder.add(step, changed)
                if self._on_step is not None:
                    self._on_step(step)
        finally:
            self._recorder.flush()

    def _run_step(self, step: Step) -> Optional[bytes]:
        try:
            return getattr(self, "_" + step.kind)(step)
        except fsops.NoSpace as exc:
            raise MvError(EXIT_NO_SPACE, f"{exc.strerror}") from exc
        except PermissionError as exc:
            raise MvError(EXIT_REPO_PERMISSION,
                          f"permission denied on {show(exc.filename or step.path)} during "
                          f"{step.kind}; fix the permission and rerun the same command") from exc
        except fsops.VerifyError as exc:
            raise MvError(EXIT_INTERRUPTED, f"{exc}; rerun the same command") from exc
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise MvError(EXIT_NO_SPACE, f"no space left writing {show(step.path)}") from exc
            if exc.errno == errno.EROFS:
                raise MvError(EXIT_INTERRUPTED, f"{show(step.path)} is on a read-only "
                              "filesystem") from exc
            raise MvError(EXIT_INTERRUPTED, f"{step.kind} {show(step.path)} failed: "
                          f"{exc.strerror or exc}") from exc

    @staticmethod
    def _done(step: Step, note: Optional[str] = None) -> None:
        step.state = "done"
        step.note = note

    @staticmethod
    def _skip(step: Step, note: str) -> None:
        step.state = "skipped"
        step.note = note

    # --- phase 0-2: build the destination
    def _mkdir(self, step: Step) -> bytes:
        try:
            os.mkdir(step.path, 0o700 | (step.mode or 0o755))
        except FileExistsError:
            if not os.path.isdir(step.path) or os.path.islink(step.path):
                raise MvError(EXIT_INTERRUPTED, f"{show(step.path)} appeared meanwhile and is "
                              "not a directory; remove it and rerun") from None
        self._done(step)
        return _parent(step.path)

    def _place(self, step: Step) -> bytes:
        dst, src = step.path, step.other
        if os.path.lexists(dst):
            have = os.lstat(dst)
            try:
                if os.path.samestat(have, os.stat(src)):
                    self._done(step, "hard")
                    return _parent(dst)
            except FileNotFoundError:
                pass
            # a copy is renamed to its final name only once verified (fsops.copy_verified)
            if stat.S_ISREG(have.st_mode) and have.st_size == step.size:
                self._done(step, "copy")
                return _parent(dst)
            raise MvError(EXIT_INTERRUPTED, f"{show(dst)} exists and is not the file being "
                          f"moved from {show(src)}; remove it and rerun")
        if self.same_fs:
            try:
                os.link(src, dst)
                self._done(step, "hard")
                return _parent(dst)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP):
                    raise
        hasher = step.hasher or DEFAULT_HASHER
        expected = step.hash or fsops.checksum(src, hasher)
        fsops.copy_verified(src, dst, hasher=hasher, expected_hash=expected,
                            expected_size=step.size, progress=self._copied)
        step.hasher, step.hash = hasher, expected
        self._done(step, "copy")
        return _parent(dst)

    def _place_link(self, step: Step) -> bytes:
        if not (os.path.islink(step.path) and os.readlink(step.path) == step.new):
            _replace_link(step.new, step.path)
        self._done(step)
        return _parent(step.path)

    def _dirmeta(self, step: Step) -> None:
        if os.geteuid() == 0 and step.uid is not None:
            os.chown(step.path, step.uid, step.gid, follow_symlinks=False)
        os.chmod(step.path, step.mode)
        if step.mtime_ns:
            os.utime(step.path, ns=(step.mtime_ns, step.mtime_ns), follow_symlinks=False)
        self._done(step)
        return None

    # --- phase 3: links
    def _retarget(self, step: Step) -> Optional[bytes]:
        try:
            current = os.readlink(step.path)
        except FileNotFoundError:
            self._skip(step, "the link was removed meanwhile")
            return None
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self._skip(step, "no longer a symlink")
            return None
        if current == step.new:
            self._done(step)
            return None
        if current != step.old:
            self._skip(step, f"changed meanwhile (now -> {show(current)}); left alone")
            self._kept.add(step.other)
            return None
        _replace_link(step.new, step.path)
        self._done(step)
        return _parent(step.path)

    def _swap(self, step: Step) -> Optional[bytes]:
        if os.path.islink(step.path):
            if os.readlink(step.path) == step.new:
                self._done(step)
            else:
                self._skip(step, "became a link elsewhere meanwhile; left alone")
            return None
        if not os.path.lexists(step.path):
            self._skip(step, "the file was removed meanwhile")
            return None
        copy = os.stat(step.new)
        if not (os.path.samestat(copy, os.lstat(step.path)) or copy.st_size == step.size):
            raise MvError(EXIT_INTERRUPTED, f"the offloaded copy {show(step.new)} does not match "
                          f"{show(step.path)}; the repository file was kept")
        _replace_link(step.new, step.path)
        self._done(step)
        return _parent(step.path)

    def _materialize(self, step: Step) -> Optional[bytes]:
        if not os.path.islink(step.path):
            have = os.lstat(step.path)
            if stat.S_ISREG(have.st_mode) and have.st_size == step.size:
                self._done(step)
                return None
            raise MvError(EXIT_INTERRUPTED, f"{show(step.path)} is neither the link nor the "
                          "file it should become; left alone")
        if os.readlink(step.path) != step.old:
            self._skip(step, "changed meanwhile; left alone")
            return None
        try:
            fsops.hard_link(step.other, step.path)
            self._done(step, "hard")
        except fsops.LinkRefused:
            hasher = step.hasher or DEFAULT_HASHER
            expected = step.hash or fsops.checksum(step.other, hasher)
            fsops.copy_verified(step.other, step.path, hasher=hasher, expected_hash=expected,
                                expected_size=step.size, progress=self._copied)
            step.hasher, step.hash = hasher, expected
            self._done(step, "copy")
        return None

    # --- phase 4-5: remove the sources
    def _unlink(self, step: Step) -> Optional[bytes]:
        if not os.path.lexists(step.path):
            self._done(step)
            return None
        if step.path in self._kept:
            self._skip(step, "a repository link still points here; kept")
            return None
        if not self._copy_in_place(step):
            raise MvError(EXIT_INTERRUPTED, f"the copy {show(step.other)} of {show(step.path)} "
                          "is missing or differs; the source was kept")
        os.unlink(step.path)
        self._done(step)
        return _parent(step.path)

    @staticmethod
    def _copy_in_place(step: Step) -> bool:
        try:
            copy = os.lstat(step.other)
        except FileNotFoundError:
            return False
        if step.size is None:
            return stat.S_ISLNK(copy.st_mode)
        return stat.S_ISREG(copy.st_mode) and copy.st_size == step.size

    def _rmdir(self, step: Step) -> Optional[bytes]:
        try:
            os.rmdir(step.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            self._skip(step, "not empty (files appeared or were kept); left in place")
            return None
        self._done(step)
        return _parent(step.path)


def roll_back_copies(steps: Sequence[Step]) -> List[bytes]:
    """Undo the destination side of a plan whose link phase has not started: remove the placed
    files and links, then the directories made. Returns what was removed."""
    if any(s.phase >= 3 and s.state == "done" for s in steps):
        raise ValueError("links were changed already; the job can only go forward")
    removed = []
    for step in steps:
        if step.kind in ("place", "place_link") and os.path.lexists(step.path):
            os.unlink(step.path)
            removed.append(step.path)
    for step in reversed(steps):
        if step.kind == "mkdir" and os.path.isdir(step.path):
            try:
                os.rmdir(step.path)
                removed.append(step.path)
            except OSError:
                continue
    return removed


def verify(steps: Iterable[Step], checksums: bool,
           progress: Optional[Callable[[int], None]] = None) -> List[dict]:
    """Every link this job changed resolves to a file of the recorded size (and checksum with
    `checksums` when one is recorded). Returns the failures."""
    failures = []
    for step in steps:
        if step.kind not in ("retarget", "swap", "materialize") or step.state != "done":
            continue
        try:
            st = os.stat(step.path)
        except OSError as exc:
            failures.append({"link": step.path, "problem": f"does not resolve ({exc.strerror})"})
            continue
        if step.size is not None and st.st_size != step.size:
            failures.append({"link": step.path, "problem": f"{st.st_size} bytes, expected "
                             f"{step.size}"})
        elif checksums and step.hash and step.hasher:
            got = fsops.checksum(step.path, step.hasher)
            if got != step.hash.lower():
                failures.append({"link": step.path, "problem": f"{step.hasher} {got}, expected "
                                 f"{step.hash}"})
        if progress is not None:
            progress(1)
    return failures
