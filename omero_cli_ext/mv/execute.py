"""Executing a plan step by step, and the final verification pass.

Every step checks the filesystem before acting and accepts a state it already reached, so after
a `kill -9` the same steps can simply run again. Outcomes are handed to `record` in batches as
they come: the journal's marks save work on resume, they are not the proof that a change is on
disk. Durability comes from syncing the filesystems a phase changed when the phase ends, before
the next phase starts (new files are durable before links point at them, links are durable
before their old targets are removed) and when the run ends. A `kill -9` loses no page-cache
write, so only a power cut can undo unsynced changes; that is why a resumed job runs the steps
of its last recorded phase again (`recheck_unsynced`), each re-checking the disk.
"""
from __future__ import annotations

import contextlib
import errno
import itertools
import os
import secrets
import stat
import time
from typing import Callable, Iterable, List, Optional, Sequence, Set

from omero_cli_ext import fsops
from omero_cli_ext.mv.errors import (EXIT_INTERRUPTED, EXIT_MISMATCH, EXIT_NO_SPACE,
                                     EXIT_REPO_PERMISSION, MvError)
from omero_cli_ext.mv.mounts import unescape
from omero_cli_ext.mv.plan import DEFAULT_HASHER, PHASES, Step
from omero_cli_ext.mv.tree import show
from omero_cli_ext.workers import parallel_map

BATCH_ROWS = 5000
BATCH_SECONDS = 2.0


def sync_changed(paths: Sequence[bytes]) -> None:
    """Make durable the directory entries made, replaced or removed at `paths`: one syncfs(2) per
    filesystem holding their directories (Linux), cheaper than an fsync per directory when a
    batch touched hundreds of them; elsewhere an fsync per directory."""
    if not paths:
        return
    if not fsops.HAS_SYNCFS:
        for directory in _parents(paths):
            with contextlib.suppress(FileNotFoundError):
                fsops.fsync_dir(directory)
        return
    for directory in _one_per_filesystem(paths):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if not fsops.syncfs(fd):
                fsops.fsync_dir(directory)
        finally:
            os.close(fd)


def _parents(paths: Iterable[bytes]) -> Set[bytes]:
    return {path.rpartition(b"/")[0] or b"/" for path in paths}


def _one_per_filesystem(paths: Sequence[bytes]) -> List[bytes]:
    """A directory of each filesystem holding the directories of `paths`. They were found by
    walks that never follow a symlink, so below their common ancestor only a mount point can
    lead to another filesystem: without one there, that ancestor stands for all of them (no
    stat per directory, which on a relink of 200k links is 60k+ stats)."""
    common = _common_directory(min(paths), max(paths))
    if common and not _mount_points_below(os.path.realpath(common)):
        return [common] if os.path.isdir(common) else []
    by_device = {}
    for directory in _parents(paths):
        try:
            by_device.setdefault(os.stat(directory).st_dev, directory)
        except FileNotFoundError:
            continue
    return list(by_device.values())


def _common_directory(first: bytes, last: bytes) -> bytes:
    """A directory above every path sorting between `first` and `last` (so above their
    directories too): their common prefix cut at its last separator."""
    length = len(os.path.commonprefix([first, last]))
    return first[:first.rfind(b"/", 0, length)] or b"/"


def _mount_points_below(root: bytes) -> bool:
    """Is anything mounted strictly below `root`? (Linux /proc/self/mountinfo; True when unknown.)"""
    try:
        with open("/proc/self/mountinfo", "rb") as table:
            lines = table.read().splitlines()
    except OSError:
        return True
    prefix = root.rstrip(b"/") + b"/"
    for line in lines:
        fields = line.split(b" ")
        if len(fields) > 4 and unescape(fields[4]).startswith(prefix):
            return True
    return False


def recheck_unsynced(steps: Sequence[Step]) -> int:
    """Make the steps of the last phase with recorded outcomes pending again (returns how many).

    The phases before it ended with a sync, so their outcomes are on disk; this one may not
    have (a power cut after the journal commit), and its steps re-check the disk cheaply."""
    last = max((s.phase for s in steps if s.state != "pending"), default=None)
    count = 0
    for step in steps:
        if step.state != "pending" and step.phase == last:
            step.state, step.note = "pending", None
            count += 1
    return count


class _Recorder:
    """Collects finished steps and hands them to `record` in batches (journal marks, no sync),
    and remembers the entries they changed until `sync` makes their filesystems durable."""

    def __init__(self, record: Callable[[List[Step]], None]):
        self._record = record
        self._steps: List[Step] = []
        self._changed: List[bytes] = []
        self._started = time.monotonic()

    def add(self, steps: List[Step]) -> None:
        if not self._steps:
            self._started = time.monotonic()
        self._steps.extend(steps)
        # the entries the steps changed, now or in a killed run before
        self._changed.extend([s.path for s in steps if s.state == "done"])
        if len(self._steps) >= BATCH_ROWS or time.monotonic() - self._started >= BATCH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self._steps:
            steps, self._steps = self._steps, []
            self._record(steps)

    def sync(self) -> None:
        sync_changed(self._changed)
        self._changed = []


# short temporary names beside each link that fsops.is_temp_name recognises (pid inside, so
# remove_stale_temps can tell a dead writer's debris); cheaper than fsops.temp_path per link
_TEMP_TAG = f"{fsops.TEMP_PREFIX}{os.getpid()}.{secrets.token_hex(3)}".encode("ascii")
_temp_counter = itertools.count()


def _replace_link(target: bytes, link: bytes) -> None:
    """A new symlink under a temporary name renamed over `link` (readers see old or new)."""
    tmp = b"%s/%s%x." % (link.rpartition(b"/")[0], _TEMP_TAG, next(_temp_counter))
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class OriginalMismatch(Exception):
    """The bytes of an original no longer match the checksum recorded for it."""


class Executor:
    """Runs the pending steps of a plan in order. `on_steps(steps)` is told every outcome, a
    batch at a time (for --json and progress); `copied(n)` every chunk of bytes copied.

    A phase whose steps are all independent of one another — retargets and swaps of links,
    removals of sources, and on one filesystem the hard links that place files — runs in `workers`
    processes (omero_cli_ext.workers): each step re-checks what it changes, so the order within
    the phase does not matter. Directory steps (parents first, or last) and copies (whose bytes
    the progress bar follows) run here, in order."""

    PARALLEL_KINDS = frozenset({"retarget", "swap", "unlink"})
    PARALLEL_SAME_FS_KINDS = frozenset({"place", "place_link"})

    def __init__(self, steps: Sequence[Step], *, same_fs: bool,
                 record: Callable[[List[Step]], None],
                 on_steps: Optional[Callable[[List[Step]], None]] = None,
                 copied: Optional[Callable[[int], None]] = None,
                 workers: int = 1, skip_mismatched: bool = False,
                 warn: Optional[Callable[[str], None]] = None,
                 on_phase: Optional[Callable[[int, List[Step]], None]] = None):
        self.steps = list(steps)
        self._on_phase = on_phase
        self._warn = warn or (lambda message: None)
        self.skip_mismatched = skip_mismatched
        self._unplaced: Set[bytes] = set()
        self.same_fs = same_fs
        self.workers = workers
        self._recorder = _Recorder(record)
        self._on_steps = on_steps
        self._copied = copied
        self._kept: Set[bytes] = set()
        self._actions = {kind: getattr(self, "_" + kind) for kind in PHASES}
        self._parallel = self.PARALLEL_KINDS | (self.PARALLEL_SAME_FS_KINDS if same_fs
                                                else frozenset())
        self._pid = os.getpid()

    def run(self) -> None:
        """Run the pending steps, phase by phase. The filesystems a phase changed are synced
        before the next phase starts; the last phase's changes are made durable by `sync()`
        (the caller may verify meanwhile)."""
        recorder = self._recorder
        pending = [s for s in self.steps if s.state == "pending"]
        try:
            for phase, group in itertools.groupby(pending, key=lambda s: PHASES[s.kind]):
                recorder.sync()
                recorder.flush()
                steps = list(group)
                if self._on_phase is not None:
                    self._on_phase(phase, steps)
                if phase == PHASES["unlink"]:
                    self._kept = self._linked_sources()
                self._unplaced = {s.other for s in self.steps
                                  if s.kind == "place" and s.state == "skipped"}
                if self.workers > 1 and all(s.kind in self._parallel for s in steps):
                    self._run_parallel(steps)
                else:
                    for step in steps:
                        self._run_step(step)
                        self._finished([step])
        finally:
            recorder.flush()

    def sync(self) -> None:
        """Make the changes of `run()` durable (syncfs of the filesystems the last phase touched)."""
        self._recorder.sync()

    def _linked_sources(self) -> Set[bytes]:
        """Sources a link may still point at (its retarget was skipped): never removed."""
        return {s.other for s in self.steps
                if s.kind == "retarget" and s.state == "skipped" and s.other}

    def _finished(self, steps: List[Step]) -> None:
        self._recorder.add(steps)
        if self._on_steps is not None:
            self._on_steps(steps)

    def _run_parallel(self, steps: List[Step]) -> None:
        """The steps in worker processes; their outcomes come back and are recorded here."""
        def outcome(step: Step) -> Optional[tuple]:
            """None for a plain "done" (most steps: cheap to send back), else what changed."""
            if os.getpid() != self._pid:
                self._copied = None   # a fallback copy in a worker: its bytes are not followed
            hasher, hash_ = step.hasher, step.hash
            self._run_step(step)
            if step.state == "done" and step.note is None and step.hasher == hasher \
                    and step.hash == hash_:
                return None
            return step.state, step.note, step.hasher, step.hash

        # in step order: the journal's "done through step N" must hold for what is recorded
        for start, outcomes in parallel_map(outcome, steps, self.workers).in_order():
            finished = steps[start:start + len(outcomes)]
            for step, changed in zip(finished, outcomes):
                if changed is None:
                    step.state, step.note = "done", None
                else:
                    step.state, step.note, step.hasher, step.hash = changed
            self._finished(finished)

    def _run_step(self, step: Step) -> None:
        try:
            self._actions[step.kind](step)
        except OriginalMismatch as exc:
            if not self.skip_mismatched:
                raise MvError(EXIT_MISMATCH, f"{exc}. Check or restore it; to finish the job "
                              "leaving it (and its link) where it is, rerun the same command "
                              "with --skip-mismatched") from None
            self._skip(step, "the original does not match its recorded checksum; left where "
                       "it is (--skip-mismatched)")
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
    def _mkdir(self, step: Step) -> None:
        try:
            os.mkdir(step.path, 0o700 | (step.mode or 0o755))
        except FileExistsError:
            if not os.path.isdir(step.path) or os.path.islink(step.path):
                raise MvError(EXIT_INTERRUPTED, f"{show(step.path)} appeared meanwhile and is "
                              "not a directory; remove it and rerun") from None
        self._done(step)

    def _place(self, step: Step) -> None:
        dst, src = step.path, step.other
        if not os.path.lexists(src) and not os.path.lexists(dst):
            # removed from SRC after the plan was made: nothing to move, its link stays
            self._skip(step, "the source was removed meanwhile")
            return
        if os.path.lexists(dst):
            have = os.lstat(dst)
            try:
                if os.path.samestat(have, os.stat(src)):
                    self._done(step, "hard")
                    return
            except FileNotFoundError:
                pass
            # a copy is renamed to its final name only once verified (fsops.copy_verified); a
            # file of the same size someone else put there is not one: compare the bytes (a
            # source already gone was removed once its copy was found in place)
            if stat.S_ISREG(have.st_mode) and have.st_size == step.size \
                    and (not os.path.lexists(src) or _same_bytes(dst, src)):
                self._done(step, "copy")
                return
            raise MvError(EXIT_INTERRUPTED, f"{show(dst)} exists and is not the file being "
                          f"moved from {show(src)}; remove it and rerun")
        if self.same_fs:
            try:
                os.link(src, dst)
                self._done(step, "hard")
                return
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP):
                    raise
        self._copy(step, src, dst)
        self._done(step, "copy")

    def _copy(self, step: Step, src: bytes, dst: bytes) -> None:
        """A verified copy of `src` at `dst`, checked against the checksum recorded before the
        job (the server's OriginalFile.hash, or one taken at planning), else one taken now. A
        copy whose bytes do not match a recorded checksum is told apart: when the source itself
        no longer matches, the original is damaged (OriginalMismatch), not the copy."""
        hasher = step.hasher or DEFAULT_HASHER
        recorded = step.hash
        expected = recorded or fsops.checksum(src, hasher)
        try:
            fsops.copy_verified(src, dst, hasher=hasher, expected_hash=expected,
                                expected_size=step.size, progress=self._copied,
                                xattrs=self._warn)
        except fsops.VerifyError:
            if recorded is not None:
                actual = fsops.checksum(src, hasher)
                if actual != recorded.lower():
                    raise OriginalMismatch(
                        f"the original {show(src)}"
                        + (f" (Fileset:{step.fileset})" if step.fileset is not None else "")
                        + f" does not match its recorded {hasher} checksum {recorded} (it has "
                        f"{actual}): it was damaged or changed after its import, not by this "
                        "copy; nothing of it was moved") from None
            raise
        step.hasher, step.hash = hasher, expected

    def _place_link(self, step: Step) -> None:
        if not (os.path.islink(step.path) and os.readlink(step.path) == step.new):
            _replace_link(step.new, step.path)
        self._done(step)

    def _dirmeta(self, step: Step) -> None:
        if os.geteuid() == 0 and step.uid is not None:
            os.chown(step.path, step.uid, step.gid, follow_symlinks=False)
        os.chmod(step.path, step.mode)
        if step.mtime_ns:
            os.utime(step.path, ns=(step.mtime_ns, step.mtime_ns), follow_symlinks=False)
        self._done(step)

    # --- phase 3: links
    def _retarget(self, step: Step) -> None:
        try:
            current = os.readlink(step.path)
        except FileNotFoundError:
            self._skip(step, "the link was removed meanwhile")
            return
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self._skip(step, "no longer a symlink")
            return
        if current == step.new:
            self._done(step)
            return
        if step.other in self._unplaced:
            self._skip(step, "its file was not moved (see the skipped placement); left alone")
            return
        if current != step.old:
            self._skip(step, f"changed meanwhile (now -> {show(current)}); left alone")
            return
        _replace_link(step.new, step.path)
        self._done(step)

    def _swap(self, step: Step) -> None:
        if step.path in self._unplaced:
            self._skip(step, "its file was not copied (see the skipped placement); kept")
            return
        if os.path.islink(step.path):
            if os.readlink(step.path) == step.new:
                self._done(step)
            else:
                self._skip(step, "became a link elsewhere meanwhile; left alone")
            return
        if not os.path.lexists(step.path):
            self._skip(step, "the file was removed meanwhile")
            return
        copy = os.stat(step.new)
        if not (os.path.samestat(copy, os.lstat(step.path)) or copy.st_size == step.size):
            raise MvError(EXIT_INTERRUPTED, f"the offloaded copy {show(step.new)} does not match "
                          f"{show(step.path)}; the repository file was kept")
        _replace_link(step.new, step.path)
        self._done(step)

    def _materialize(self, step: Step) -> None:
        if not os.path.islink(step.path):
            have = os.lstat(step.path)
            if stat.S_ISREG(have.st_mode) and have.st_size == step.size:
                self._done(step)
                return
            raise MvError(EXIT_INTERRUPTED, f"{show(step.path)} is neither the link nor the "
                          "file it should become; left alone")
        if os.readlink(step.path) != step.old:
            self._skip(step, "changed meanwhile; left alone")
            return
        try:
            fsops.hard_link(step.other, step.path)
            self._done(step, "hard")
        except fsops.LinkRefused:
            self._copy(step, step.other, step.path)
            self._done(step, "copy")

    # --- phase 4-5: remove the sources
    def _unlink(self, step: Step) -> None:
        if not os.path.lexists(step.path):
            self._done(step)
            return
        if step.path in self._kept:
            self._skip(step, "a repository link still points here; kept")
            return
        if not self._copy_in_place(step):
            raise MvError(EXIT_INTERRUPTED, f"the copy {show(step.other)} of {show(step.path)} "
                          "is missing or differs; the source was kept")
        os.unlink(step.path)
        self._done(step)

    @staticmethod
    def _copy_in_place(step: Step) -> bool:
        """Is the placed copy still the one this job made? The source's own inode (a hard
        link); else a regular file of the size, which on the source's filesystem must have
        its bytes, and elsewhere its owner (as root copies keep the source's owner; otherwise
        they are this user's): a file of the same size planted in a directory others can
        write is never taken for the copy, and its source is kept."""
        try:
            copy = os.lstat(step.other)
        except FileNotFoundError:
            return False
        if step.size is None:
            return stat.S_ISLNK(copy.st_mode)
        if not (stat.S_ISREG(copy.st_mode) and copy.st_size == step.size):
            return False
        source = os.lstat(step.path)
        if os.path.samestat(copy, source):
            return True
        if copy.st_dev == source.st_dev:
            return _same_bytes(step.other, step.path)
        return copy.st_uid == (source.st_uid if os.geteuid() == 0 else os.geteuid())

    def _rmdir(self, step: Step) -> None:
        try:
            os.rmdir(step.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            self._skip(step, "not empty (files appeared or were kept); left in place")
            return
        self._done(step)


def _same_bytes(a: bytes, b: bytes, chunk: int = 1 << 20) -> bool:
    """Do the files `a` and `b` hold the same bytes? (read, never trusting sizes or times)"""
    try:
        with open(a, "rb") as first, open(b, "rb") as second:
            while True:
                block = first.read(chunk)
                if block != second.read(chunk):
                    return False
                if not block:
                    return True
    except OSError:
        return False


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
           progress: Optional[Callable[[int], None]] = None, workers: int = 1,
           meanwhile: Optional[Callable[[], None]] = None) -> List[dict]:
    """Every link this job changed resolves to a file of the recorded size (and checksum with
    `checksums` when one is recorded). Returns the failures. The links are checked in `workers`
    processes; `meanwhile()` (the final sync) runs here while they work."""
    links = [s for s in steps if s.state == "done" and s.kind in ("retarget", "swap", "materialize")]
    checks = parallel_map(lambda step: _check_link(step, checksums), links, workers)
    if meanwhile is not None:
        try:
            meanwhile()
        except BaseException:
            checks.close()
            raise
    chunks = []
    for start, results in checks:
        chunks.append((start, [r for r in results if r is not None]))
        if progress is not None:
            progress(len(results))
    return [failure for _, found in sorted(chunks, key=lambda c: c[0]) for failure in found]


def _check_link(step: Step, checksums: bool) -> Optional[dict]:
    try:
        st = os.stat(step.path)
    except OSError as exc:
        return {"link": step.path, "problem": f"does not resolve ({exc.strerror})"}
    if step.size is not None and st.st_size != step.size:
        return {"link": step.path, "problem": f"{st.st_size} bytes, expected {step.size}"}
    if checksums and step.hash and step.hasher:
        got = fsops.checksum(step.path, step.hasher)
        if got != step.hash.lower():
            return {"link": step.path, "problem": f"{step.hasher} {got}, expected {step.hash}"}
    return None
