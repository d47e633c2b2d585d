"""Where an `omero mv` job keeps its journal and lock: one place per repository, whoever runs the
command and however the repository is spelt.

The repository root is resolved (`os.path.realpath`), so a spelling through a symlink finds the
same journal, the same unfinished job and the same lock; the lock's name carries the root's
device and inode. The default directory is `<resolved parent>/.omero-cli-ext/` (beside the
repository, outside it): created mode 0700 and, when root creates it, handed to the repository
root's owner, so that root's runs and the owner's runs share it and no other user can write it.
When it cannot be made or written, the command refuses and says where it must be (there is no
per-user fallback: a journal another user's run cannot see would let two jobs run at once).
"""
from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from typing import Optional

from omero_cli_ext import fsops
from omero_cli_ext.mv.errors import EXIT_JOURNAL, MvError
from omero_cli_ext.mv.mounts import canonical_directory
from omero_cli_ext.mv.tree import show

CONTROL_DIR = b".omero-cli-ext"
JOURNAL_NAME = b"mv.sqlite"


@dataclass(frozen=True)
class RepoPlace:
    """A repository root as the job sees it: resolved path, identity, and its control directory."""
    root: bytes          # resolved (realpath) repository root
    dev: int
    ino: int
    uid: int             # owner of the repository root
    gid: int

    @property
    def control_dir(self) -> bytes:
        return os.path.join(os.path.dirname(self.root.rstrip(b"/")) or b"/", CONTROL_DIR)

    @property
    def default_journal(self) -> bytes:
        return os.path.join(self.control_dir, JOURNAL_NAME)

    @property
    def lock_name(self) -> str:
        """The writer lock's name: the same for every spelling of the root (device and inode)."""
        return f"omero mv repository {self.dev}-{self.ino}"


def repo_place(repo: bytes) -> RepoPlace:
    root = canonical_directory(os.path.realpath(repo))
    st = os.stat(root)
    return RepoPlace(root, st.st_dev, st.st_ino, st.st_uid, st.st_gid)


def ensure_control_dir(place: RepoPlace) -> bytes:
    """The control directory, created when missing (0700; owned by the repository's owner when
    root creates it). MvError(EXIT_JOURNAL) naming the directory when it cannot be used."""
    directory = place.control_dir
    try:
        os.mkdir(directory, 0o700)
        if os.geteuid() == 0:
            os.lchown(directory, place.uid, place.gid)
    except FileExistsError:
        pass
    except OSError as exc:
        raise _unusable(place, exc.strerror) from None
    try:
        st = os.lstat(directory)
    except OSError as exc:
        raise _unusable(place, exc.strerror) from None
    if not stat.S_ISDIR(st.st_mode):
        raise _unusable(place, "it is not a directory")
    if os.geteuid() == 0 and st.st_uid == 0 and place.uid != 0:
        # made by a root run killed before it handed the directory over: finish that
        try:
            os.lchown(directory, place.uid, place.gid)
            st = os.lstat(directory)
        except OSError as exc:
            raise _unusable(place, exc.strerror) from None
    if st.st_uid not in (os.geteuid(), place.uid, 0) or st.st_mode & 0o022:
        raise _unusable(place, "it is writable by users other than root and the repository's "
                        "owner")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise _unusable(place, "you cannot write it")
    return directory


def hand_over(place: RepoPlace) -> None:
    """As root: give what this run created in the control directory (journal, its WAL files,
    locks) to the repository's owner, so the owner's later runs can use them."""
    if os.geteuid() != 0:
        return
    directory = place.control_dir
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        for name in os.listdir(fd):
            if not (name.startswith("mv.sqlite") or name.endswith(".lock")):
                continue   # only what omero mv makes here
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                # a single link: never hand over a root file hard-linked in here
                if st.st_uid == 0 and stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                    os.chown(name, place.uid, place.gid, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue
    finally:
        os.close(fd)


def journal_location(place: RepoPlace, given: Optional[str]) -> str:
    """`--journal` when given, else the repository's default journal."""
    return given or os.fsdecode(place.default_journal)


def open_repo_journal(place: RepoPlace, given: Optional[str]):
    """The job journal, its control directory made first when it is the default one."""
    from omero_cli_ext.journal import open_journal
    if not given:
        ensure_control_dir(place)
        _refuse_planted(place)
    journal = open_journal(journal_location(place, given))
    hand_over(place)
    return journal


@contextlib.contextmanager
def writer_lock(place: RepoPlace, journal):
    """The one-mv-per-repository lock: in the control directory for SQLite journals (whatever
    --journal says; the lock file handed to the repository's owner when root made it), else
    the PostgreSQL journal's advisory lock on the resolved root."""
    if journal.backend != "sqlite":
        with journal.writer_lock(f"omero mv {os.fsdecode(place.root)}"):
            yield
        return
    directory = os.fsdecode(ensure_control_dir(place))
    with journal.writer_lock(place.lock_name, directory=directory):
        hand_over(place)
        yield


def _refuse_planted(place: RepoPlace) -> None:
    """As root, the journal's files in a directory the repository's owner can write must be
    plain files of their own: a symlink or a hard link there could make root's run write
    through it to another file."""
    if os.geteuid() != 0:
        return
    for suffix in (b"", b"-wal", b"-shm", b"-journal"):
        path = place.default_journal + suffix
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise MvError(EXIT_JOURNAL, f"{show(path)} is not a plain file of its own (a "
                          "symlink or a hard link); root will not write through it. Check "
                          "who made it, remove it, and rerun; nothing was changed")


def _unusable(place: RepoPlace, why: str) -> MvError:
    user = _user_name(place.uid)
    return MvError(EXIT_JOURNAL, f"the journal and lock of this repository must be in "
                   f"{show(place.control_dir)}, which cannot be used: {why}. Run omero mv as the "
                   f"repository's owner ({user}) or as root, or create that directory (mode 700, "
                   f"owner {user}); nothing was changed")


def _user_name(uid: int) -> str:
    return fsops.account_name(uid) or f"uid {uid}"
