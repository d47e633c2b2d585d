"""`omero export --zarr` run by root for a hostile DEST owner (issue 12's rules, issue 16's
export).

The same host as tests/test_export_hostile.py (real POSIX users made with useradd, root only):
ALICE owns DEST and controls everything inside it, and has an --originals export (repository
hard links) on the same filesystem to move around. Every test asserts that no file outside DEST
changed (the repository, the homes, a stand-in /etc: content, mode, owner and inode).
"""
from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import time

import pytest

from omero_cli_ext.zarr.index import INDEX_NAME
from sim.launcher import run_cli, script_command, script_env
from test_export_hostile import ALICE, BOB, as_alice, posix_users, site  # noqa: F401
from test_export_world import records
from test_zarr_crash import check_whole, chunk_files
from test_zarr_export import tree

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("useradd") is None,
                                reason="needs root and useradd (real POSIX users)")


def zarr(site, dest=None, extra=(), as_user=ALICE, objects=None):
    argv = site.command("--zarr", *(objects or []), dest=dest, extra=extra, as_user=as_user)
    return run_cli(site.sim.root, argv, user="root")


def outside(site, *dests) -> dict:
    """site.outside() without the zarr DESTs (which the export writes)."""
    return {path: info for path, info in site.outside().items()
            if not any(path == d or path.startswith(d + "/") for d in dests)}


def image_ids(site) -> list:
    return [row[0] for row in site.sim.query(
        "SELECT child FROM DatasetImageLink WHERE parent = ? ORDER BY child", (site.dataset,))]


def alice_dir(site, path) -> None:
    os.makedirs(path, exist_ok=True)
    os.chown(path, site.alice.pw_uid, site.alice.pw_gid)
    os.chmod(path, 0o700)


def start(site, dest, extra=(), stdout=subprocess.DEVNULL):
    """The CLI in its own process, as root for ALICE (64 px chunks: many of them)."""
    return subprocess.Popen(
        script_command(site.sim.root, ["export", "--zarr", dest, f"Dataset:{site.dataset}",
                                       "--as-user", ALICE, "--state-dir", site.state, "--chunk",
                                       "64", *extra], "root"),
        stdout=stdout, stderr=subprocess.PIPE, env=script_env())


def test_repository_hard_links_moved_onto_every_name_are_never_written(site):
    originals = os.path.join(site.exports, ALICE + "-originals")
    rc, out, err = site.export(dest=originals)
    assert rc == 0, err
    links = sorted(r["path"] for r in records(out, "entry"))
    dest = os.path.join(site.exports, ALICE + "-zarr")
    alice_dir(site, dest)                  # hers, as her ~/export would be
    rc, out, err = zarr(site, dest=dest, extra=["--layout", "flat"])
    assert rc == 0, err
    before = outside(site, dest)
    # every control name an older version used, and the index copy
    names = [".omero-cli-ext-zarr.journal", ".omero-cli-ext-zarr.lock", INDEX_NAME]
    for rel, name in zip(links, names):   # one name a night
        as_alice(site, "mv", os.path.join(originals, rel), os.path.join(dest, name))
        rc, out, err = zarr(site, dest=dest, extra=["--layout", "flat", "--sync"])
        assert rc == 0, err               # neither frozen (exit 3) ...
        assert outside(site, dest) == before      # ... nor a repository inode written
    st = os.lstat(os.path.join(dest, INDEX_NAME))
    assert st.st_nlink == 1 and st.st_uid == site.alice.pw_uid


@pytest.mark.parametrize("where", ["level", "row", "image"])
def test_symlinks_planted_in_dest_never_redirect_roots_writes(site, where):
    alice_dir(site, site.dest)
    image = image_ids(site)[0]
    base = os.path.join(site.dest, f"Image_{image}.ome.zarr")
    if where == "image":
        link = base
    else:
        alice_dir(site, base)
        if where == "level":
            link = os.path.join(base, "0")
        else:
            alice_dir(site, os.path.join(base, "0"))
            alice_dir(site, os.path.join(base, "0", "0"))
            link = os.path.join(base, "0", "0", "0")     # t/c/z directory of the first chunk
    os.symlink(site.etc, link)
    os.lchown(link, site.alice.pw_uid, site.alice.pw_gid)
    before = site.outside()
    rc, out, err = zarr(site, extra=["--layout", "flat"])
    assert rc == 7, err
    assert [r["image"] for r in records(out, "failed")] == [image]
    assert site.outside() == before                   # nothing written into the stand-in /etc
    assert os.path.islink(link)


def test_what_root_writes_for_her_is_hers(site):
    old = os.umask(0o077)
    try:
        rc, out, err = zarr(site, extra=["--workers", "2", "--chunk", "64"])    # threads too
    finally:
        os.umask(old)
    assert rc == 0, err
    for dirpath, dirnames, names in os.walk(site.dest):
        for name in [dirpath] + [os.path.join(dirpath, n) for n in dirnames + names]:
            st = os.lstat(name)
            assert (st.st_uid, st.st_gid) == (site.alice.pw_uid, site.alice.pw_gid), name
    files = site.dest_files()              # every file opened as her
    assert INDEX_NAME in files and any(p.endswith("/.zattrs") for p in files)
    assert stat.S_IMODE(os.stat(site.dest).st_mode) == 0o700


def test_root_for_a_dest_of_another_user_refuses_with_exit_4(site):
    alice_dir(site, site.dest)
    rc, _out, err = zarr(site, as_user=None)            # root's own view into her DEST
    assert rc == 4 and f"--as-user {ALICE}" in err, err
    rc, _out, err = zarr(site, as_user=BOB)             # bob's view into her DEST
    assert rc == 4 and f"--as-user {ALICE}" in err, err
    assert os.listdir(site.dest) == [] and not os.path.exists(site.state)
    os.chown(site.dest, 0, 0)                           # as an earlier version made it
    rc, _out, err = zarr(site)
    assert rc == 4 and f"chown -R {ALICE}" in err, err


def test_dest_through_a_symlink_or_under_a_directory_others_may_write_is_refused(site):
    link = os.path.join(site.exports, "link")
    os.symlink(site.etc, link)
    shared = os.path.join(site.exports, "shared")
    os.mkdir(shared)
    os.chmod(shared, 0o777)
    before = site.outside()
    rc, _out, err = zarr(site, dest=os.path.join(link, "out"))
    assert rc == 3 and "symlink" in err, err
    rc, _out, err = zarr(site, dest=os.path.join(shared, ALICE))
    assert rc == 3 and "writable by" in err, err
    assert site.outside() == before


def test_a_closed_stdout_ends_cleanly_and_the_rerun_completes(site):
    proc = start(site, site.dest, extra=["--json"], stdout=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()                                   # `| head -1`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err              # the run goes on to its own end
    assert "Traceback" not in err and "cannot write" not in err and "Broken pipe" not in err
    rc, out, err = zarr(site, extra=["--sync", "--chunk", "64"])
    assert rc == 0, err
    assert {r["action"] for r in records(out, "image")} == {"kept"}


def test_kill_9_and_ctrl_c_as_root_for_her_then_rerun_is_byte_identical(site):
    reference = os.path.join(site.exports, "reference")
    rc, _out, err = zarr(site, dest=reference, extra=["--chunk", "64"])
    assert rc == 0, err
    expected = tree(reference)
    total = len(chunk_files(reference))
    assert total > 40
    for target, sig in ((total // 4, signal.SIGKILL), (total // 2, signal.SIGINT)):
        proc = start(site, site.dest)
        while len(chunk_files(site.dest)) < target and proc.poll() is None:
            time.sleep(0.001)
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=60)
        if sig == signal.SIGINT and proc.returncode != 0:
            assert proc.returncode == 10 and b"Traceback" not in err, err
        check_whole(site.dest)
    rc, out, err = zarr(site, extra=["--chunk", "64"])
    assert rc == 0, err
    assert tree(site.dest) == expected
    for dirpath, dirnames, names in os.walk(site.dest):
        for name in dirnames + names:
            assert os.lstat(os.path.join(dirpath, name)).st_uid == site.alice.pw_uid


def test_a_full_dest_exits_6_and_the_rerun_completes(site):
    mount = site.small_tmpfs(nr_inodes=12)
    dest = os.path.join(mount, ALICE)
    rc, _out, err = zarr(site, dest=dest, extra=["--chunk", "64"])
    assert rc == 6 and "rerun the same command" in err, err
    assert "Traceback" not in err and "/proc/self/fd" not in err
    check_whole(dest)
    subprocess.run(["mount", "-o", "remount,nr_inodes=10000", mount], check=True)
    rc, out, err = zarr(site, dest=dest, extra=["--chunk", "64"])
    assert rc == 0, err
    reference = os.path.join(site.exports, "reference")
    assert zarr(site, dest=reference, extra=["--chunk", "64"])[0] == 0
    assert tree(dest) == tree(reference)


def test_an_image_she_can_no_longer_read_is_removed_on_sync(site):
    rc, out, err = zarr(site, extra=["--layout", "flat"])
    assert rc == 0, err
    paths = {r["image"]: r["path"] for r in records(out, "image")}
    gone = image_ids(site)[0]
    private = site.sim.query("SELECT id FROM ExperimenterGroup WHERE name = 'private'")[0][0]
    site.sim.query("UPDATE Image SET group_id = ? WHERE id = ?", (private, gone))
    before = site.outside()
    rc, out, err = zarr(site, extra=["--layout", "flat", "--sync"])
    assert rc == 0, err
    assert [r["image"] for r in records(out, "removed")] == [gone]
    assert not os.path.exists(os.path.join(site.dest, paths[gone]))
    assert all(os.path.isdir(os.path.join(site.dest, p)) for i, p in paths.items() if i != gone)
    assert site.outside() == before


def test_chunks_she_planted_are_never_read_whole_and_fail_only_their_image(site):
    src = os.path.join(site.base, "upload", "big&sizeX=1100&sizeY=70.fake")
    site._file(src, b"", 0o644)
    site.sim.import_fileset(ALICE, [src], target=("Dataset", site.dataset))
    big = image_ids(site)[-1]
    level0 = os.path.join(site.dest, f"Image_{big}.ome.zarr", "0", "0", "0", "0", "0")
    os.makedirs(level0)
    with open(os.path.join(level0, "0"), "wb") as stream:
        stream.write(b"not a blosc chunk")
    with open(os.path.join(level0, "1"), "wb") as stream:
        stream.truncate(8 << 30)                     # 8 GiB, sparse: never read into memory
    subprocess.run(["chown", "-R", f"{site.alice.pw_uid}:{site.alice.pw_gid}", site.dest],
                   check=True)
    rc, out, err = zarr(site, extra=["--layout", "flat", "--chunk", "64"])
    assert rc == 7, err
    assert "Traceback" not in err
    (failed,) = records(out, "failed")
    assert failed["image"] == big and "level above" in failed["reason"]
    assert len(records(out, "image")) == len(image_ids(site)) - 1


def test_sync_writes_again_what_she_removed_from_dest(site):
    rc, out, err = zarr(site, extra=["--layout", "flat"])
    assert rc == 0, err
    expected = tree(site.dest)
    removed = [r["path"] for r in records(out, "image")][:2]
    as_alice(site, "rm", "-rf", os.path.join(site.dest, removed[0]))          # an image
    as_alice(site, "rm", "-rf", os.path.join(site.dest, removed[1], "0"))     # a level of one
    rc, out, err = zarr(site, extra=["--layout", "flat", "--sync"])
    assert rc == 0, err
    actions = {r["path"]: r["action"] for r in records(out, "image")}
    assert {a for p, a in actions.items() if p in removed} <= {"resumed", "written"}
    assert {a for p, a in actions.items() if p not in removed} <= {"kept"}
    assert tree(site.dest) == expected


def test_the_state_of_a_deleted_dest_whose_inode_is_reused_does_not_freeze_another(site):
    rc, _out, err = zarr(site, extra=["--layout", "flat"])
    assert rc == 0, err
    st = os.stat(site.dest)
    shutil.rmtree(site.dest)
    other = os.path.join(site.exports, BOB)
    # bob's new DEST gets the inode (as a filesystem reusing it would): the old state's key
    os.mkdir(other)
    os.chown(other, site.bob.pw_uid, site.bob.pw_gid)
    key = f"{st.st_dev:x}-{st.st_ino:x}"
    new = os.stat(other)
    os.rename(os.path.join(site.state, key),
              os.path.join(site.state, f"{new.st_dev:x}-{new.st_ino:x}"))
    rc, out, err = zarr(site, dest=other, as_user=BOB, extra=["--layout", "flat"])
    assert rc == 0, err
    assert ALICE in records(out, "note")[0]["message"]


def test_a_dir_mode_letting_her_group_in_is_warned_about(site):
    rc, _out, err = zarr(site, extra=["--dir-mode", "0750"])
    assert rc == 0, err
    assert "warning: --dir-mode 0750" in err and BOB in err
    assert stat.S_IMODE(os.stat(site.dest).st_mode) == 0o750


def test_a_directory_planted_at_a_chunk_name_fails_only_its_image(site):
    alice_dir(site, site.dest)
    image = image_ids(site)[0]
    chunk = os.path.join(site.dest, f"Image_{image}.ome.zarr", "0", "0", "0", "0", "0", "0")
    os.makedirs(os.path.join(chunk, "full"))
    subprocess.run(["chown", "-R", f"{site.alice.pw_uid}:{site.alice.pw_gid}", site.dest],
                   check=True)
    rc, out, err = zarr(site, extra=["--layout", "flat"])
    assert rc == 7, err
    assert [r["image"] for r in records(out, "failed")] == [image]
    assert len(records(out, "image")) == len(image_ids(site)) - 1


def test_what_she_did_to_a_revoked_images_place_never_stops_the_sync(site):
    rc, out, err = zarr(site)
    assert rc == 0, err
    paths = {r["image"]: r["path"] for r in records(out, "image")}
    first, second = image_ids(site)[:2]
    private = site.sim.query("SELECT id FROM ExperimenterGroup WHERE name = 'private'")[0][0]
    # the second revoked, a directory of it made unreadable to her by her
    site.sim.query("UPDATE Image SET group_id = ? WHERE id = ?", (private, second))
    level = os.path.join(site.dest, paths[second], "0")
    as_alice(site, "chmod", "000", level)
    before = site.outside()
    rc, out, err = zarr(site, extra=["--sync"])
    assert rc == 7, err                     # the one she keeps from being removed is listed
    assert records(out, "removed") == [] and [r["image"] for r in records(out, "failed")] == [
        second]
    assert "cannot remove" in records(out, "failed")[0]["reason"]
    # both revoked, their parent directory swapped for a symlink to /etc
    as_alice(site, "chmod", "700", level)
    site.sim.query("UPDATE Image SET group_id = ? WHERE id = ?", (private, first))
    parent = os.path.join(site.dest, os.path.dirname(paths[first]))
    as_alice(site, "mv", parent, parent + ".moved")
    as_alice(site, "ln", "-s", site.etc, parent)
    rc, out, err = zarr(site, extra=["--sync"])
    assert rc == 0, err
    assert sorted(r["image"] for r in records(out, "removed")) == sorted([first, second])
    assert site.outside() == before and os.path.islink(parent)


def test_a_dest_another_run_made_first_for_another_user_is_refused_as_an_existing_one(site,
                                                                                     monkeypatch):
    """Two root runs make the same missing DEST: bob's wins the mkdir and gives DEST to bob.
    Alice's run, whose mkdir lost, opens bob's DEST (0770, their shared group) as an existing
    one: the checks of an existing DEST apply (exit 4, nothing of hers written into his DEST), as when it was there
    before the run."""
    real_mkdir = os.mkdir
    made = []

    def bob_first(name, mode=0o777, *, dir_fd=None):
        if dir_fd is not None and name == os.path.basename(site.dest) and not made:
            made.append(name)
            real_mkdir(name, 0o700, dir_fd=dir_fd)
            os.chown(name, site.bob.pw_uid, site.bob.pw_gid, dir_fd=dir_fd)
            os.chmod(name, 0o770, dir_fd=dir_fd)      # his run's --dir-mode 0770: their group
        return real_mkdir(name, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "mkdir", bob_first)
    rc, _out, err = zarr(site, extra=["--wait", "5"])
    monkeypatch.undo()
    assert made and rc == 4 and f"--as-user {BOB}" in err, (rc, err)
    assert os.stat(site.dest).st_uid == site.bob.pw_uid and os.listdir(site.dest) == []
