"""`omero export --originals` run by root for a hostile DEST owner (issue 12).

Real POSIX users made by the test (useradd; root only): the DEST owner ALICE controls what is
inside her DEST and where her in-place (ln_s) imports point; BOB shares her primary group and
keeps a secret in his 0700 home; CAROL is in a private OMERO group. Every test asserts
the exit code, that nothing outside DEST changed (the repository, the homes and a stand-in /etc,
by content, mode, owner and inode), and that DEST holds no file its owner could not open herself
(checked by opening each one as her).
"""
from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile

import pytest

from omero_cli_ext.export import state
from omero_cli_ext.export.asuser import ReaderProcess
from omero_cli_ext.export.manifest import LEGACY_MANIFEST_NAME, MANIFEST_NAME
from sim.launcher import run_cli, script_command, script_env
from sim.server import SimServer
from test_export_world import records

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("useradd") is None,
                                reason="needs root and useradd (real POSIX users)")
# names of this run's own (runs may overlap: each makes and removes its own users)
TAG = f"{os.getpid() % 100000:05d}"
ALICE, BOB, CAROL = f"i12a{TAG}", f"i12b{TAG}", f"i12c{TAG}"
GROUP = f"i12g{TAG}"           # a primary group every user shares ("Domain Users")
USERS = (ALICE, BOB, CAROL)


@pytest.fixture(scope="module")
def posix_users():
    made = []
    try:
        grp.getgrnam(GROUP)
    except KeyError:
        subprocess.run(["groupadd", GROUP], check=True)
        made.append(("group", GROUP))
    for name in USERS:
        try:
            pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "-M", "-N", "-g", GROUP, "-s", "/bin/false", name],
                           check=True)
            made.append(("user", name))
    yield {name: pwd.getpwnam(name) for name in USERS}
    for kind, name in reversed(made):
        subprocess.run(["userdel", "-f", name] if kind == "user" else ["groupdel", name],
                       check=False, capture_output=True)


class Site:
    """A host: homes, a stand-in /etc, the repository and a root-owned /exports."""

    def __init__(self, base: str, users: dict):
        self.base, self.users = base, users
        self.alice, self.bob = users[ALICE], users[BOB]
        self.etc = os.path.join(base, "etc")
        self.home = {n: os.path.join(base, "home", n) for n in USERS}
        self.exports = os.path.join(base, "exports")
        self.dest = os.path.join(self.exports, ALICE)
        self.state = os.path.join(base, "state")
        os.makedirs(self.etc)
        os.makedirs(self.exports)
        for name, home in self.home.items():
            os.makedirs(home)
            os.chown(home, users[name].pw_uid, users[name].pw_gid)
            os.chmod(home, 0o700)
        self.shadow = self._file(os.path.join(self.etc, "shadow"), b"root:x:SECRET:\n", 0o600)
        self.suid = self._file(os.path.join(self.etc, "suid"), b"#!/bin/sh\nid\n", 0o4755)
        self.secret = self._file(os.path.join(self.home[BOB], "secret"), b"bob's secret\n",
                                 0o644, self.bob)
        self.sim = SimServer(os.path.join(base, "sim"))
        self.sim.add_group("lab", "rwr---")
        self.sim.add_group("private", "rw----")
        self.sim.add_user(ALICE, ["lab"])
        self.sim.add_user(BOB, ["lab"])
        self.sim.add_user(CAROL, ["private"])
        self.project = self.sim.add_project("P", ALICE)
        self.dataset = self.sim.add_dataset("D", ALICE, project=self.project)
        self.src = os.path.join(self.home[ALICE], "data")
        self.inplace = self.sim.import_fileset(ALICE, [
            self._file(os.path.join(self.src, "run", "a.fake"), b"alice's image A\n", 0o644,
                       self.alice),
            self._file(os.path.join(self.src, "run", "a.fake.ini"), b"alice's meta\n", 0o644,
                       self.alice)], transfer="ln_s", target=("Dataset", self.dataset))
        subprocess.run(["chown", "-R", f"{self.alice.pw_uid}:{self.alice.pw_gid}", self.src],
                       check=True)
        up = os.path.join(base, "upload")
        self.uploaded = self.sim.import_fileset(ALICE, [
            self._file(os.path.join(up, "exp", "b.fake"), b"alice's image B\n", 0o644)],
            target=("Dataset", self.dataset))
        self.carol_file = self._file(os.path.join(base, "carolsrc", "c.fake"),
                                     b"carol's image C\n", 0o644)
        self.carol = self.sim.import_fileset(CAROL, [self.carol_file])

    @staticmethod
    def _file(path, data: bytes, mode: int, owner=None) -> str:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as stream:
            stream.write(data)
        if owner is not None:
            os.chown(path, owner.pw_uid, owner.pw_gid)
        os.chmod(path, mode)
        return path

    def repo_file(self, fileset: int) -> str:
        path, name = self.sim.query("SELECT o.path, o.name FROM FilesetEntry fe JOIN OriginalFile o "
                                    "ON o.id = fe.originalFile WHERE fe.fileset = ? ORDER BY fe.id",
                                    (fileset,))[0]
        return os.path.join(self.sim.repo_dir, path, name)

    def command(self, mode, *objects, dest=None, extra=(), as_user=ALICE) -> list:
        """`export MODE DEST OBJECTS --json` (DEST: ALICE's, OBJECTS: the dataset) for root to run
        as `as_user`."""
        argv = ["export", mode, dest or self.dest, *(objects or [f"Dataset:{self.dataset}"]),
                "--state-dir", self.state, "--json"]
        if as_user:
            argv += ["--as-user", as_user]
        return argv + list(extra)

    def export(self, *objects, dest=None, extra=(), as_user=ALICE):
        argv = self.command("--originals", *objects, dest=dest, extra=extra, as_user=as_user)
        return run_cli(self.sim.root, argv, user="root")

    def small_tmpfs(self, nr_inodes: int) -> str:
        """A 1 MB tmpfs of `nr_inodes` inodes at /exports/small (unmounted with the site)."""
        mount = os.path.join(self.exports, "small")
        os.mkdir(mount)
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=1m,nr_inodes={nr_inodes}", "tmpfs",
                           mount]).returncode:
            pytest.skip("cannot mount a tmpfs")
        return mount

    def outside(self) -> dict:
        """Everything under the site but DEST, the state directory and the simulated server's
        database: kind, mode, owner, inode and content."""
        skip = {self.dest, self.state, self.sim.root + "/sim.sqlite"}
        found = {}
        for dirpath, dirnames, names in os.walk(self.base):
            dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skip]
            for name in dirnames + names:
                full = os.path.join(dirpath, name)
                if any(full.startswith(s) for s in skip):
                    continue
                st = os.lstat(full)
                data = None
                if stat.S_ISREG(st.st_mode):
                    with open(full, "rb") as stream:
                        data = stream.read()
                elif stat.S_ISLNK(st.st_mode):
                    data = os.readlink(full)
                found[full] = (st.st_mode, st.st_uid, st.st_gid, st.st_ino, data)
        return found

    def dest_files(self, dest=None) -> dict:
        """DEST-relative path -> bytes, each file opened as the DEST owner (fails if she could
        not open it herself); no set-id bit, nothing but regular files, directories, symlinks."""
        dest = dest or self.dest
        found = {}
        if not os.path.isdir(dest):
            return found
        reader = ReaderProcess(self.alice.pw_uid, self.alice.pw_gid,
                               os.getgrouplist(self.alice.pw_name, self.alice.pw_gid))
        try:
            for dirpath, dirnames, names in os.walk(dest):
                for name in names:
                    full = os.path.join(dirpath, name)
                    st = os.lstat(full)
                    assert stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode), full
                    assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID), full
                    fd = reader.open(full)          # raises if she could not open it
                    try:
                        found[os.path.relpath(full, dest)] = os.pread(fd, 1 << 20, 0)
                    finally:
                        os.close(fd)
        finally:
            reader.close()
        return found


@pytest.fixture
def site(posix_users):
    base = tempfile.mkdtemp(prefix="i12-hostile-", dir="/tmp")
    os.chmod(base, 0o755)
    yield Site(base, posix_users)
    with open("/proc/mounts", encoding="utf-8") as stream:
        points = [line.split()[1] for line in stream if line.split()[1].startswith(base + "/")]
    for point in sorted(points, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)
    shutil.rmtree(base, ignore_errors=True)


def as_alice(site, *cmd):
    """Run a command as the DEST owner (what she can do herself)."""
    done = subprocess.run(["setpriv", f"--reuid={site.alice.pw_uid}",
                           f"--regid={site.alice.pw_gid}", "--init-groups", *cmd],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def summary(out) -> dict:
    return records(out, "summary")[0]


# ------------------------------------------------------------------ control files

def test_a_hard_link_renamed_onto_control_file_names_is_never_written(site):
    rc, out, err = site.export()
    assert rc == 0, err
    before = site.outside()
    exported = sorted(r["path"] for r in records(out, "entry"))
    # she moves exported hard links (repository inodes) onto every name the export ever used
    uploaded_of = site.sim.query("SELECT originalFile FROM FilesetEntry WHERE fileset = ?",
                                 (site.uploaded,))[0][0]
    targets = [LEGACY_MANIFEST_NAME, ".omero-cli-ext-export.journal",
               f"exp/.omero-cli-ext.part.{uploaded_of}"]
    for rel, name in zip(exported, targets):
        as_alice(site, "mv", os.path.join(site.dest, rel), os.path.join(site.dest, name))
    for link in ("download", "copy", "hard"):
        rc, out, err = site.export(extra=["--sync", "--link", link])
        assert rc == 0, err
        assert site.outside() == before                       # no repository inode written
    assert set(site.dest_files()) >= set(exported)


def test_an_old_manifest_in_dest_is_migrated_and_cannot_freeze_the_export(site):
    rc, out, err = site.export()
    assert rc == 0, err
    key_dir = os.path.join(site.state, state.key(os.stat(site.dest)))
    # an export made by the previous version: its manifest in DEST
    os.rename(os.path.join(key_dir, MANIFEST_NAME), os.path.join(site.dest, LEGACY_MANIFEST_NAME))
    rc, out, err = site.export(extra=["--sync"])
    assert rc == 0 and "moved to the export's state directory" in err, err
    assert not os.path.exists(os.path.join(site.dest, LEGACY_MANIFEST_NAME))
    assert os.path.exists(os.path.join(key_dir, MANIFEST_NAME))
    assert summary(out)["kept"] == 3
    # whatever she renames over the old names now is left alone, never read, never frozen
    as_alice(site, "mkdir", os.path.join(site.dest, LEGACY_MANIFEST_NAME))
    before = site.outside()
    rc, out, err = site.export(extra=["--sync"])
    assert rc == 0, err
    assert site.outside() == before


def test_names_planted_on_the_part_and_temporary_prefixes_never_stop_a_sync(site):
    rc, _, err = site.export(f"Project:{site.project}")
    assert rc == 0, err
    for name in (".omero-cli-ext.part.1", ".omero-cli-ext.999999.abcd.x"):
        as_alice(site, "mkdir", os.path.join(site.dest, name))
        as_alice(site, "mkdir", os.path.join(site.dest, "run", name))
    site.sim.query("UPDATE Project SET group_id = (SELECT id FROM ExperimenterGroup WHERE "
                   "name = 'private') WHERE id = ?", (site.project,))
    before = site.outside()
    rc, out, err = site.export(f"Project:{site.project}", extra=["--sync"])
    assert rc == 22 and summary(out)["removed"] == 3, err
    assert site.dest_files() == {} and site.outside() == before


def test_a_state_directory_inside_dest_is_refused(site):
    os.makedirs(site.dest)
    os.chown(site.dest, site.alice.pw_uid, site.alice.pw_gid)
    rc, _, err = site.export(extra=["--state-dir", os.path.join(site.dest, "state")])
    assert rc == 3 and "above the state directory" in err, err     # she owns DEST
    root_dest = os.path.join(site.exports, "root")
    os.makedirs(root_dest)
    rc, _, err = site.export(dest=root_dest, as_user=None,
                             extra=["--state-dir", os.path.join(root_dest, "state")])
    assert rc == 3 and "inside DEST" in err, err


@pytest.mark.parametrize("link", ["hard", "copy", "download", "sym"])
def test_symlinks_planted_in_dest_are_never_followed(site, link):
    rc, _, err = site.export(extra=["--link", link])
    assert rc == 0, err
    # she swaps an exported directory for a symlink to /etc, deletes an entry below it so the
    # next run wants to make it again, and plants a link where a new directory will go
    as_alice(site, "mv", os.path.join(site.dest, "run"), os.path.join(site.dest, "run.old"))
    as_alice(site, "ln", "-s", site.etc, os.path.join(site.dest, "run"))
    as_alice(site, "ln", "-s", site.etc, os.path.join(site.dest, "new"))
    path = Site._file(os.path.join(site.base, "more", "new", "n.fake"), b"new one", 0o644)
    site.sim.import_fileset(ALICE, [path], target=("Dataset", site.dataset))
    before = site.outside()
    rc, out, err = site.export(extra=["--sync", "--link", link])
    assert rc == 7, err
    assert site.outside() == before
    assert {r["path"] for r in records(out, "left_alone") + records(out, "failed")} >= {
        "run/a.fake", "new/n.fake"}
    assert sorted(os.listdir(site.etc)) == ["shadow", "suid"]


def test_the_state_follows_a_renumbered_device(site):
    rc, _, err = site.export()
    assert rc == 0, err
    st = os.stat(site.dest)
    os.rename(os.path.join(site.state, state.key(st)),
              os.path.join(site.state, f"{st.st_dev + 7:x}-{st.st_ino:x}"))   # as after a reboot
    rc, out, err = site.export(extra=["--sync"])
    assert rc == 0 and "new device number" in err, err
    assert summary(out)["kept"] == 3 and summary(out)["added"] == 0


def test_one_run_per_dest(site):
    rc, _, err = site.export()
    assert rc == 0, err
    root = state.open_root(site.state)
    sfd = state.open_for(root, os.stat(site.dest), create=False)
    held = state.Lock(sfd)
    try:
        rc, _, err = site.export(extra=["--sync"])
        assert rc == 9 and "--wait" in err
    finally:
        held.release()
        os.close(sfd)
        os.close(root)
    assert site.export(extra=["--sync"])[0] == 0


# ------------------------------------------------------------------ in-place targets

def _repoint(site, target):
    """She replaces her in-place source with a symlink to `target` (her directory, her right)."""
    victim = os.path.join(site.src, "run", "a.fake")
    as_alice(site, "rm", "-f", victim)
    as_alice(site, "ln", "-s", target, victim)


@pytest.mark.parametrize("link", ["auto", "hard", "copy", "sym"])
def test_an_in_place_link_repointed_at_another_users_file_is_refused(site, link):
    # bob's file, readable by its mode but in his 0700 home, the same size as hers
    with open(site.secret, "wb") as stream:
        stream.write(b"bob's secret A\n!")
    assert os.path.getsize(site.secret) == len(b"alice's image A\n")
    _repoint(site, site.secret)
    before = site.outside()
    rc, out, err = site.export(extra=["--link", link])
    assert rc == 7, err
    (failed,) = [r for r in records(out, "failed") if r["path"].endswith("a.fake")]
    assert "cannot open" in failed["reason"]
    assert site.outside() == before
    files = site.dest_files()
    assert b"bob's secret A\n!" not in files.values()
    inodes = {os.lstat(os.path.join(site.dest, p)).st_ino for p in files}
    assert os.stat(site.secret).st_ino not in inodes


def test_an_in_place_link_repointed_at_a_private_groups_repository_file_is_refused(site):
    carol = site.repo_file(site.carol)                 # 0644 on disk, private in OMERO
    assert os.path.getsize(carol) == len(b"alice's image A\n")
    _repoint(site, carol)
    before = site.outside()
    rc, out, err = site.export(extra=["--link", "hard"])
    assert rc == 7, err                # she could not have hard-linked it herself
    assert site.outside() == before
    rc, out, err = site.export(extra=["--sync"])
    assert rc == 7, err                # nor is a copy made: its content is not her OriginalFile's
    (failed,) = [r for r in records(out, "failed") if r["path"].endswith("a.fake")]
    assert "differs from OMERO's SHA1-160" in failed["reason"]
    assert "carol" not in json.dumps(records(out)) and site.outside() == before
    assert b"carol's image C\n" not in site.dest_files().values()


@pytest.mark.parametrize("kind", ["suid", "device", "fifo", "directory", "shadow"])
def test_set_id_special_and_unreadable_targets_are_refused(site, kind):
    if kind == "fifo":
        target = os.path.join(site.home[ALICE], "fifo")
        as_alice(site, "mkfifo", target)
    else:
        target = {"suid": site.suid, "device": "/dev/zero", "shadow": site.shadow,
                  "directory": site.home[ALICE]}[kind]
    _repoint(site, target)
    if kind == "shadow":
        # without the fileTransfer comment the export still treats the symlink as in-place
        site.sim.query("DELETE FROM FilesetAnnotationLink WHERE parent = ?", (site.inplace,))
    before = site.outside()
    rc, out, err = site.export()
    assert rc == 7, err
    (failed,) = [r for r in records(out, "failed") if r["path"].endswith("a.fake")]
    assert failed["reason"]
    assert site.outside() == before
    files = site.dest_files()
    assert all(b"SECRET" not in data and b"id\n" not in data for data in files.values())


def test_an_in_place_target_she_may_read_but_not_link_is_copied_not_linked(site):
    """protected_hardlinks: root never hard-links a file she could not have linked herself."""
    shared = Site._file(os.path.join(site.base, "pub", "a.fake"), b"alice's image A\n", 0o644)
    _repoint(site, shared)
    rc, out, err = site.export()
    assert rc == 0, err
    entry = [r for r in records(out, "entry") if r["path"].endswith("a.fake")][0]
    assert entry["method"] in ("copy", "reflink")
    st = os.stat(os.path.join(site.dest, entry["path"]))
    assert st.st_ino != os.stat(shared).st_ino and st.st_uid == site.alice.pw_uid


def test_a_swapped_in_place_target_between_runs_is_not_linked(site):
    rc, _, err = site.export()
    assert rc == 0, err
    os.unlink(os.path.join(site.dest, "run", "a.fake"))           # made again on --sync
    with open(site.secret, "wb") as stream:
        stream.write(b"bob's secret A\n!")
    _repoint(site, site.secret)
    before = site.outside()
    rc, out, err = site.export(extra=["--sync"])
    assert rc == 7, err
    assert site.outside() == before
    assert b"bob's secret A\n!" not in site.dest_files().values()


# ------------------------------------------------------------------ DEST itself

def test_dest_through_a_symlink_is_refused(site):
    link = os.path.join(site.home[ALICE], "export")
    as_alice(site, "ln", "-s", site.etc, link)
    before = site.outside()
    rc, _, err = site.export(dest=link, extra=["--owner", ALICE])
    assert rc == 3 and "symlink" in err, err
    assert site.outside() == before
    rc, _, err = site.export(dest=os.path.join(link, "sub"))
    assert rc == 3 and "symlink" in err, err
    assert site.outside() == before


@pytest.mark.parametrize("parent_owner, mode, ok", [(BOB, 0o755, False),
                                                     ("root", 0o777, False),
                                                     ("root", 0o1777, True),
                                                     ("root", 0o775, False),
                                                     (ALICE, 0o700, True)])
def test_dest_ancestors_writable_by_others_are_refused(site, parent_owner, mode, ok):
    parent = os.path.join(site.base, "shares")
    os.mkdir(parent)
    owner = pwd.getpwnam(parent_owner)
    os.chown(parent, owner.pw_uid, site.alice.pw_gid)
    os.chmod(parent, mode)
    dest = os.path.join(parent, ALICE)
    rc, _, err = site.export(dest=dest)
    if ok:
        assert rc == 0, err
        assert stat.S_IMODE(os.stat(dest).st_mode) == 0o700
        assert os.stat(dest).st_uid == site.alice.pw_uid
    else:
        assert rc == 3 and parent in err, err
        assert not os.path.exists(dest)


def test_dest_containing_or_inside_the_repository_is_refused(site):
    before = site.outside()
    for dest in (site.sim.root, site.sim.repo_dir, os.path.dirname(site.repo_file(site.carol))):
        rc, _, err = site.export(dest=dest)
        assert rc == 3 and "ManagedRepository" in err, (dest, err)
    assert site.outside() == before


def test_dest_with_a_bind_mount_of_the_repository_is_refused(site):
    os.makedirs(site.dest)
    os.chown(site.dest, site.alice.pw_uid, site.alice.pw_gid)
    inside = os.path.join(site.dest, "repo")
    os.mkdir(inside)
    other = os.path.join(site.base, "mnt")
    os.mkdir(other)
    alice_dir = os.path.join(site.sim.repo_dir, os.path.relpath(
        site.repo_file(site.inplace), site.sim.repo_dir).split("/")[0])
    if subprocess.run(["mount", "--bind", site.sim.repo_dir, inside]).returncode or \
            subprocess.run(["mount", "--bind", alice_dir, other]).returncode:
        pytest.skip("bind mounts not available")
    try:
        before = site.outside()
        rc, _, err = site.export()
        assert rc == 3 and "mount" in err, err
        rc, _, err = site.export(dest=os.path.join(other, "x"))
        assert rc == 3 and "ManagedRepository" in err, err
        assert site.outside() == before
    finally:
        subprocess.run(["umount", "-l", inside])
        subprocess.run(["umount", "-l", other])


# ------------------------------------------------------------------ who may read DEST

def test_directories_are_private_and_a_shared_group_mode_is_warned_about(site):
    rc, out, err = site.export()
    assert rc == 0, err
    assert summary(out)["dir_mode_warnings"] == 0 and "warning" not in err
    for dirpath, dirnames, _ in os.walk(site.dest):
        for d in [dirpath] + [os.path.join(dirpath, n) for n in dirnames]:
            st = os.stat(d)
            assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == site.alice.pw_uid, d
    other = os.path.join(site.exports, "second")
    rc, out, err = site.export(dest=other, extra=["--dir-mode", "0750"])
    assert rc == 0, err
    assert summary(out)["dir_mode_warnings"] == 1 and BOB in err


def test_root_must_name_the_acting_user(site):
    rc, _, err = site.export(as_user=None, extra=["--owner", ALICE])
    assert rc == 4 and f"--as-user {ALICE}" in err
    assert not os.path.exists(site.dest)


# ------------------------------------------------------------------ revocation

def test_revocation_removes_everything_once_nothing_is_readable(site):
    rc, out, err = site.export(f"Project:{site.project}")
    assert rc == 0, err
    assert len(site.dest_files()) == 3
    # a typo'd list that never exported anything changes nothing
    rc, _, err = site.export("Project:9999", extra=["--sync"])
    assert rc == 22 and len(site.dest_files()) == 3
    # she leaves the group and loses her data: the next night empties the export
    site.sim.query("UPDATE Project SET group_id = (SELECT id FROM ExperimenterGroup WHERE "
                   "name = 'private'), owner_id = (SELECT id FROM Experimenter WHERE "
                   "omeName = ?) WHERE id = ?", (CAROL, site.project))
    rc, out, err = site.export(f"Project:{site.project}", extra=["--sync"])
    assert rc == 22, err
    assert site.dest_files() == {} and summary(out)["removed"] == 3
    assert [d for _, d, _ in os.walk(site.dest) if d] == []      # its directories went too


# ------------------------------------------------------------------ smaller defects

def test_a_name_of_64_four_byte_characters_is_shortened(site):
    path = Site._file(os.path.join(site.base, "emoji", "short.fake"), b"smile", 0o644)
    fid = site.sim.import_fileset(ALICE, [path], target=("Dataset", site.dataset))
    # a clientPath no local filesystem could hold: 64 four-byte characters, 256 bytes
    site.sim.query("UPDATE FilesetEntry SET clientPath = ? WHERE fileset = ?",
                   (path.lstrip("/").replace("short.fake", "\U0001F600" * 64), fid))
    rc, out, err = site.export()
    assert rc == 0, records(out, "failed")
    (entry,) = [r for r in records(out, "entry") if r["fileset"] == fid]
    assert all(len(c.encode()) <= 255 for c in entry["path"].split("/"))


def test_downloads_belong_to_the_dest_owner_whatever_the_umask(site):
    old = os.umask(0o077)
    try:
        rc, out, err = site.export(extra=["--link", "download"])
    finally:
        os.umask(old)
    assert rc == 0, err
    for entry in records(out, "entry"):
        st = os.stat(os.path.join(site.dest, entry["path"]))
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (site.alice.pw_uid, 0o644)
    assert len(site.dest_files()) == 3


def test_a_file_missing_on_the_server_is_named_so(site):
    os.unlink(site.repo_file(site.uploaded))
    rc, out, err = site.export(extra=["--link", "download"])
    assert rc == 7, err
    (failed,) = records(out, "failed")
    assert "missing on the server" in failed["reason"] and "BINARYACCESS" not in failed["reason"]


def test_messages_name_dest_paths_and_no_digest(site):
    _repoint(site, site.repo_file(site.carol))
    rc, out, err = site.export(extra=["--link", "copy"])
    assert rc == 7
    text = out + err
    assert "/proc/self/fd" not in text
    digest = site.sim.query("SELECT hash FROM OriginalFile o JOIN FilesetEntry fe ON "
                            "fe.originalFile = o.id WHERE fe.fileset = ?", (site.carol,))[0][0]
    import hashlib
    with open(site.repo_file(site.carol), "rb") as stream:
        assert hashlib.sha1(stream.read()).hexdigest() not in text and digest not in text


def test_dry_run_reports_the_method_planned(site):
    rc, out, err = site.export(extra=["--dry-run"])
    assert rc == 0, err
    assert {r["method"] for r in records(out, "entry")} == {"hard"}
    assert not os.path.exists(site.dest)


def test_a_closed_stdout_ends_quietly_with_the_runs_exit_code(site):
    proc = subprocess.Popen(script_command(site.sim.root, site.command("--originals"), "root"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=script_env())
    proc.stdout.readline()
    proc.stdout.close()                                   # `| head -1`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "cannot write" not in err and "Broken pipe" not in err
    assert len(site.dest_files()) == 3


def test_a_full_dest_of_inodes_exits_6_and_sync_completes(site):
    mount = site.small_tmpfs(nr_inodes=4)
    dest = os.path.join(mount, ALICE)
    rc, out, err = site.export(dest=dest, extra=["--link", "copy"])
    assert rc == 6 and "--sync" in err, err
    assert "/proc/self/fd" not in err
    subprocess.run(["mount", "-o", "remount,nr_inodes=100", mount], check=True)
    rc, out, err = site.export(dest=dest, extra=["--link", "copy", "--sync"])
    assert rc == 0, err
    assert len(site.dest_files(dest)) == 3


def test_a_mount_she_makes_inside_dest_is_not_crossed_and_revocation_still_works(site):
    rc, out, err = site.export(f"Project:{site.project}")
    assert rc == 0, err
    run = os.path.join(site.dest, "run")
    if subprocess.run(["mount", "-t", "tmpfs", "tmpfs", run]).returncode:
        pytest.skip("cannot mount a tmpfs")
    try:
        before = site.outside()
        rc, out, err = site.export(f"Project:{site.project}", extra=["--sync"])
        assert rc == 7 and "mount point" in out, err
        assert site.outside() == before and os.listdir(run) == []
        site.sim.query("UPDATE Project SET group_id = (SELECT id FROM ExperimenterGroup WHERE "
                       "name = 'private') WHERE id = ?", (site.project,))
        rc, out, err = site.export(f"Project:{site.project}", extra=["--sync"])
        assert rc == 22, err
        assert site.outside() == before
    finally:
        subprocess.run(["umount", "-l", run])


def test_a_state_left_by_another_users_deleted_dest_is_dropped(site):
    rc, _, err = site.export()
    assert rc == 0, err
    key = state.key(os.stat(site.dest))
    other = os.path.join(site.exports, BOB)
    os.rename(site.dest, other)                 # bob's new DEST has alice's old inode
    os.chown(other, site.bob.pw_uid, site.bob.pw_gid)
    for dirpath, dirnames, names in os.walk(other, topdown=False):
        for name in names:
            os.unlink(os.path.join(dirpath, name))
        for name in dirnames:
            os.rmdir(os.path.join(dirpath, name))
    site.sim.add_dataset("B", BOB)
    bobs = site.sim.query("SELECT id FROM Dataset WHERE name = 'B'")[0][0]
    rc, out, err = site.export(f"Dataset:{bobs}", dest=other, as_user=BOB)
    assert rc == 0 and f"dropped the state of '{ALICE}'" in err, err
    assert state.key(os.stat(other)) == key


@pytest.mark.parametrize("when", ["before the run", "by a run whose mkdir won"])
def test_a_dest_of_another_user_made_by_another_run_is_refused_as_an_existing_one(site, when,
                                                                                 monkeypatch):
    """Bob's root run makes DEST (his, 0770: their shared group) before alice's run, or at once
    with it, winning the mkdir. Either way alice's run meets an existing DEST that is not hers:
    the same checks apply (exit 4), nothing of hers is written into his DEST."""
    def bobs(name, dir_fd=None):
        os.mkdir(name, 0o700, dir_fd=dir_fd)
        os.chown(name, site.bob.pw_uid, site.bob.pw_gid, dir_fd=dir_fd)
        os.chmod(name, 0o770, dir_fd=dir_fd)

    if when == "before the run":
        bobs(site.dest)
    else:
        real_mkdir, made = os.mkdir, []

        def bob_first(name, mode=0o777, *, dir_fd=None):
            if dir_fd is not None and name == os.path.basename(site.dest) and not made:
                made.append(name)
                monkeypatch.setattr(os, "mkdir", real_mkdir)
                bobs(name, dir_fd)
                monkeypatch.setattr(os, "mkdir", bob_first)
            return real_mkdir(name, mode, dir_fd=dir_fd)

        monkeypatch.setattr(os, "mkdir", bob_first)
    rc, _out, err = site.export(extra=["--wait", "5"])
    monkeypatch.undo()
    assert rc == 4 and f"--as-user {BOB}" in err, (rc, err)
    assert os.stat(site.dest).st_uid == site.bob.pw_uid and os.listdir(site.dest) == []


def test_a_user_winning_the_mkdir_in_a_sticky_shared_parent_never_gets_roots_export(site,
                                                                                   monkeypatch):
    """DEST's parent is /tmp-like (1777): bob, who may write it, makes DEST his own (0777) or a
    symlink just before root's run for alice makes it. The run whose mkdir lost meets what an
    existing DEST would meet there: the sticky rule refuses a component bob owns, O_NOFOLLOW the
    symlink (exit 3); nothing is written."""
    shared = os.path.join(site.base, "shared")
    os.mkdir(shared)
    os.chmod(shared, 0o1777)
    dest = os.path.join(shared, "out")
    real_mkdir = os.mkdir
    for plant in ("his directory", "a symlink"):
        made = []

        def bob_first(name, mode=0o777, *, dir_fd=None):
            if dir_fd is not None and name == "out" and not made:
                made.append(name)
                if plant == "a symlink":
                    os.symlink(site.home[BOB], name, dir_fd=dir_fd)
                else:
                    real_mkdir(name, 0o777, dir_fd=dir_fd)
                    os.chmod(name, 0o777, dir_fd=dir_fd)
                    os.chown(name, site.bob.pw_uid, site.bob.pw_gid, dir_fd=dir_fd,
                             follow_symlinks=False)
            return real_mkdir(name, mode, dir_fd=dir_fd)

        monkeypatch.setattr(os, "mkdir", bob_first)
        rc, _out, err = site.export(dest=dest, extra=["--wait", "5"])
        monkeypatch.undo()
        assert made and rc == 3, (plant, rc, err)
        if plant == "a symlink":
            assert "symlink" in err and os.listdir(site.home[BOB]) == ["secret"]
            os.unlink(dest)
        else:
            assert "above DEST" in err and os.listdir(dest) == []
            os.rmdir(dest)


def test_a_run_whose_mkdir_lost_to_a_finished_export_reads_its_manifest(site, monkeypatch):
    """Two runs for alice make the same missing DEST: the winner finishes its export (of the
    project) while the loser waits for DEST's lock. The loser then reads the winner's manifest as
    an existing DEST's: without --sync it is refused as one (exit 3) and the winner's manifest is
    left as it was, never replaced by the loser's fresh one."""
    real_mkdir, made = os.mkdir, []

    def winner_first(name, mode=0o777, *, dir_fd=None):
        if dir_fd is not None and name == os.path.basename(site.dest) and not made:
            made.append(subprocess.run(
                script_command(site.sim.root, ["export", "--originals", site.dest,
                                               f"Project:{site.project}", "--as-user", ALICE,
                                               "--state-dir", site.state], "root"),
                capture_output=True, env=script_env()))
        return real_mkdir(name, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "mkdir", winner_first)
    rc, _out, err = site.export(f"Dataset:{site.dataset}", extra=["--wait", "30"])
    monkeypatch.undo()
    assert made and made[0].returncode == 0, made[0].stderr
    manifest = os.path.join(site.state, state.key(os.stat(site.dest)), MANIFEST_NAME)
    with open(manifest, encoding="utf-8") as stream:
        recorded = json.load(stream)
    assert rc == 3 and "already holds an export" in err, (rc, err)
    assert recorded["objects"] == [f"Project:{site.project}"], recorded["objects"]
