"""Second look at `omero export --originals` as root for a hostile DEST owner (issue 12):
races inside a run (a directory swapped in right after root made it) and a reader process she
stalls. Same site as test_export_hostile (real POSIX users made by the test; root only)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess

import pytest

from omero_cli_ext.export import asuser, state
from omero_cli_ext.export.manifest import LEGACY_MANIFEST_NAME, MANIFEST_NAME
from test_export_hostile import (ALICE, BOB, Site, as_alice, posix_users,  # noqa: F401
                                 site)
from test_export_world import records

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (real POSIX users)")


def _shared_dir(site) -> str:
    """A lab directory every user may write (and so rename), owned by root: not hers."""
    lab = os.path.join(site.base, "lab")
    shared = os.path.join(lab, "shared")
    os.makedirs(shared)
    os.chmod(lab, 0o777)
    os.chmod(shared, 0o777)
    return shared


def _swap_after_mkdir(monkeypatch, site, victim: str, wanted: str) -> list:
    """Right after root's mkdir of `wanted`, she renames `victim` over the new, empty
    directory (her parent directory: her right)."""
    real = os.mkdir
    swapped = []

    def mkdir(path, mode=0o777, *, dir_fd=None):
        real(path, mode, dir_fd=dir_fd)
        if path == wanted and not swapped:
            where = os.readlink(f"/proc/self/fd/{dir_fd}") if dir_fd is not None else ""
            as_alice(site, "mv", "-T", victim, os.path.join(where, path))
            swapped.append(os.path.join(where, path))
    monkeypatch.setattr(os, "mkdir", mkdir)
    return swapped


def test_a_directory_swapped_in_right_after_mkdir_is_never_given_to_her(site, monkeypatch):
    rc, _, err = site.export()
    assert rc == 0, err
    shared = _shared_dir(site)
    path = Site._file(os.path.join(site.base, "more", "new", "n.fake"), b"new one", 0o644)
    site.sim.import_fileset(ALICE, [path], target=("Dataset", site.dataset))
    swapped = _swap_after_mkdir(monkeypatch, site, shared, "new")
    rc, out, err = site.export(extra=["--sync"])
    monkeypatch.undo()
    assert swapped, "the swap did not happen"
    st = os.stat(swapped[0])
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o777), "root gave her the lab's directory"
    assert rc == 7 and {r["path"] for r in records(out, "failed")} == {"new/n.fake"}, err
    assert os.listdir(swapped[0]) == []                      # nothing made in it either


def test_dest_swapped_in_right_after_mkdir_is_never_given_to_her(site, monkeypatch):
    # DEST below a directory of hers (allowed: she owns the ancestor)
    parent = os.path.join(site.base, "shares")
    os.mkdir(parent)
    os.chown(parent, site.alice.pw_uid, site.alice.pw_gid)
    os.chmod(parent, 0o700)
    shared = _shared_dir(site)
    swapped = _swap_after_mkdir(monkeypatch, site, shared, ALICE)
    rc, _, err = site.export(dest=os.path.join(parent, ALICE))
    monkeypatch.undo()
    assert swapped, "the swap did not happen"
    st = os.stat(swapped[0])
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o777), "root gave her the lab's directory"
    assert rc == 3 and "swapped" in err, err
    assert os.listdir(swapped[0]) == []


def test_a_reader_she_stops_or_kills_stalls_the_run_once_only(site, monkeypatch):
    """Each in-place entry opened by a fresh reader she SIGSTOPs would cost the reader's
    timeout: a nightly loop over users would be held for hours by one of them. After her reader
    fails once, the run's other in-place entries fail at once (retried by the next run)."""
    for n in range(5):
        path = Site._file(os.path.join(site.src, f"more{n}", "m.fake"), b"more %d" % n, 0o644,
                          site.alice)
        os.chown(os.path.dirname(path), site.alice.pw_uid, site.alice.pw_gid)
        site.sim.import_fileset(ALICE, [path], transfer="ln_s", target=("Dataset", site.dataset))
    starts = []
    real_start = asuser.ReaderProcess._start

    def start(self):
        real_start(self)
        starts.append(self._pid)
        os.kill(self._pid, signal.SIGKILL)        # she kills every reader of hers at once
    monkeypatch.setattr(asuser.ReaderProcess, "_start", start)
    rc, out, err = site.export()
    monkeypatch.undo()
    failed = records(out, "failed")
    assert rc == 7 and len(failed) == 7, err                   # every in-place file, not others
    assert len(starts) == 1, f"{len(starts)} readers started: each could stall the run"
    assert sum("reader" in r["reason"] for r in failed) == 7
    rc, out, err = site.export(extra=["--sync"])               # the next run retries them
    assert rc == 0 and len(site.dest_files()) == 8, err


@pytest.mark.parametrize("link", ["copy", "download"])
def test_a_full_dest_of_blocks_exits_6_leaves_no_partial_file_and_sync_completes(site, link):
    big = Site._file(os.path.join(site.base, "upload", "big", "big.fake"), os.urandom(3 << 20),
                     0o644)
    site.sim.import_fileset(ALICE, [big], target=("Dataset", site.dataset))
    mount = os.path.join(site.exports, "small")
    os.mkdir(mount)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", mount]).returncode:
        pytest.skip("cannot mount a tmpfs")
    dest = os.path.join(mount, ALICE)
    def outside():
        return {k: v for k, v in site.outside().items() if not k.startswith(dest)}
    before = outside()
    rc, out, err = site.export(dest=dest, extra=["--link", link])
    assert rc == 6 and "--sync" in err, err
    assert outside() == before
    names = [n for _, _, files in os.walk(dest) for n in files]
    assert not any(n.startswith(".omero-cli-ext") for n in names) or link == "download", names
    assert "big.fake" not in names                            # never a partial file
    subprocess.run(["mount", "-o", "remount,size=8m", mount], check=True)
    rc, out, err = site.export(dest=dest, extra=["--link", link, "--sync"])
    assert rc == 0, err
    files = site.dest_files(dest)
    assert len(files) == 4 and files["big/big.fake"] == open(big, "rb").read(1 << 20)
    assert not [n for _, _, fs in os.walk(dest) for n in fs if n.startswith(".omero-cli-ext")]


def _she_kills_every_reader(monkeypatch) -> list:
    """`kill -KILL -1` in a loop as her: every reader of hers dies as soon as it exists (here:
    right after the fork, before it could answer)."""
    real_fork = os.fork
    started = []

    def fork():
        pid = real_fork()
        if pid:
            started.append(pid)
            os.kill(pid, signal.SIGKILL)
        return pid
    monkeypatch.setattr(os, "fork", fork)
    return started


def test_killing_her_readers_cannot_stop_revocation(site, monkeypatch):
    rc, out, err = site.export(f"Project:{site.project}")
    assert rc == 0, err
    site.sim.query("UPDATE Project SET group_id = (SELECT id FROM ExperimenterGroup WHERE "
                   "name = 'private') WHERE id = ?", (site.project,))
    _she_kills_every_reader(monkeypatch)
    rc, out, err = site.export(f"Project:{site.project}", extra=["--sync"])
    monkeypatch.undo()
    assert rc == 22 and records(out, "summary")[0]["removed"] == 3, err
    assert site.dest_files() == {}


def test_killing_her_readers_fails_in_place_entries_only(site, monkeypatch):
    started = _she_kills_every_reader(monkeypatch)
    rc, out, err = site.export()
    monkeypatch.undo()
    assert len(started) == 1
    assert rc == 7 and {r["path"] for r in records(out, "failed")} == {
        "run/a.fake", "run/a.fake.ini"}, err
    assert set(site.dest_files()) == {"exp/b.fake"}
    rc, out, err = site.export(extra=["--sync"])
    assert rc == 0 and len(site.dest_files()) == 3, err


def test_an_old_manifest_she_forged_for_another_user_cannot_freeze_the_export(site):
    """Before the first run of this version (DEST made earlier, hers), she writes a manifest
    naming another user's export at the old in-DEST name: migrated into the state, it would
    refuse every later run (exit 3, "another user's export")."""
    rc, out, err = site.export()
    assert rc == 0, err
    key_dir = os.path.join(site.state, state.key(os.stat(site.dest)))
    with open(os.path.join(key_dir, MANIFEST_NAME), "rb") as stream:
        doc = json.loads(stream.read())
    shutil.rmtree(site.state)                                    # as before the upgrade
    doc["user"], doc["entries"], doc["directories"] = BOB, [], []
    forged = os.path.join(site.home[ALICE], "forged.json")
    with open(forged, "w") as stream:
        json.dump(doc, stream)
    as_alice(site, "cp", forged, os.path.join(site.dest, LEGACY_MANIFEST_NAME))
    for _ in range(2):
        rc, out, err = site.export(extra=["--sync"])
        assert rc == 7, err        # her three files stand where the export wants them: left alone
        assert {r["path"] for r in records(out, "failed")} == {
            "run/a.fake", "run/a.fake.ini", "exp/b.fake"}


def test_a_directory_made_just_before_ctrl_c_is_hers_after_the_next_run(site, monkeypatch):
    """Ctrl-C (or kill -9) between root's mkdir and the chown leaves a root-owned 0700
    directory: the next run must give it to her, or the entries it makes in it are unreadable
    to her."""
    real = os.fchown
    calls = []

    def fchown(fd, uid, gid):
        calls.append(fd)
        if len(calls) == 2:          # DEST is the first directory, "exp" the second
            raise KeyboardInterrupt
        real(fd, uid, gid)
    monkeypatch.setattr(os, "fchown", fchown)
    rc, _, err = site.export()
    monkeypatch.undo()
    assert rc == 10, err
    rc, out, err = site.export(extra=["--sync"])
    assert rc == 0, err
    for name in ("exp", "run"):
        st = os.stat(os.path.join(site.dest, name))
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (site.alice.pw_uid, 0o700), name
    assert len(site.dest_files()) == 3


def test_dest_made_just_before_ctrl_c_is_hers_after_the_next_run(site, monkeypatch):
    def fchown(fd, uid, gid):
        raise KeyboardInterrupt
    monkeypatch.setattr(os, "fchown", fchown)
    rc, _, err = site.export()
    monkeypatch.undo()
    assert rc == 10, err
    rc, out, err = site.export()
    assert rc == 0, err
    st = os.stat(site.dest)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (site.alice.pw_uid, 0o700)
    assert len(site.dest_files()) == 3
    # in a directory of hers, a root 0700 directory she renamed to DEST's name is not given
    parent = os.path.join(site.home[ALICE], "shares")
    as_alice(site, "mkdir", parent)
    os.mkdir(os.path.join(parent, "rootdir"), 0o700)
    as_alice(site, "mv", os.path.join(parent, "rootdir"), os.path.join(parent, "export"))
    rc, _, err = site.export(dest=os.path.join(parent, "export"))
    assert os.stat(os.path.join(parent, "export")).st_uid == 0, err


def test_a_repository_file_she_could_not_read_on_disk_is_copied_not_linked(site):
    """A server with umask 077 makes 0600 repository files: a hard link (or symlink) of one
    is an entry she cannot open; auto gives her a verified copy (she may read it in OMERO)."""
    os.chmod(site.repo_file(site.uploaded), 0o600)
    rc, out, err = site.export(extra=["--dry-run"])
    planned = {r["path"]: r["method"] for r in records(out, "entry")}
    assert rc == 0 and planned["run/a.fake"] == "hard", err
    assert planned["exp/b.fake"] in ("reflink", "copy")      # (reflink support is not foreseen)
    rc, out, err = site.export()
    assert rc == 0, err
    assert site.dest_files()["exp/b.fake"] == b"alice's image B\n"          # opened as her
    assert {r["path"]: r["method"] for r in records(out, "entry")}["exp/b.fake"] == "copy"
    rc, out, err = site.export(dest=site.dest + "-hard", extra=["--link", "hard"])
    assert rc == 7 and "could not read" in out, err


def test_lost_found_renamed_onto_an_unfinished_directory_is_not_given_to_her(site, monkeypatch):
    """DEST the root of a filesystem: its lost+found (root's, 0700; fsck puts other users'
    orphaned files there) renamed by her onto a directory a stopped run recorded is not hers
    after the next run."""
    mount = os.path.join(site.exports, "fs")
    os.mkdir(mount)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mount]).returncode:
        pytest.skip("cannot mount a tmpfs")
    lost = os.path.join(mount, "lost+found")
    os.mkdir(lost, 0o700)
    os.chown(mount, site.alice.pw_uid, site.alice.pw_gid)
    real, calls = os.fchown, []

    def fchown(fd, uid, gid):
        calls.append(fd)
        if len(calls) == 1:           # DEST exists: "exp" is the first directory made
            raise KeyboardInterrupt
        real(fd, uid, gid)
    monkeypatch.setattr(os, "fchown", fchown)
    rc, _, err = site.export(dest=mount)
    monkeypatch.undo()
    assert rc == 10, err
    as_alice(site, "rmdir", os.path.join(mount, "exp"))           # empty, in her directory
    as_alice(site, "mv", lost, os.path.join(mount, "exp"))
    site.export(dest=mount, extra=["--sync"])
    assert os.stat(os.path.join(mount, "exp")).st_uid == 0
