"""`omero export --originals` end to end on the simulated server (in-process CLI)."""
from __future__ import annotations

import os
import stat
import subprocess

import pytest

from omero_cli_ext.export.execute import CHUNK, PART_PREFIX
from omero_cli_ext.export.manifest import MANIFEST_NAME
from test_export_world import (export, exported_files, make_world, manifest, records, snapshot,
                               state_dir)


@pytest.fixture
def world(tmp_path):
    return make_world(tmp_path)


def source_bytes(world) -> dict:
    """client file name -> bytes, for every original of the world."""
    found = {}
    for built in (world.inplace, world.uploaded):
        for path in built.all_files:
            with open(path, "rb") as stream:
                found[path] = stream.read()
    return found


def test_hard_links_share_the_inode_of_the_real_file(world, tmp_path):
    dest = tmp_path / "dest"
    rc, out, err = export(world, dest, f"Project:{world.project}", extra=["--json"])
    assert rc == 0, err
    added = records(out, "entry")
    assert len(added) == 10 and {r["method"] for r in added} == {"hard"}
    summary = records(out, "summary")[0]
    assert summary["added"] == 10 and summary["exit_code"] == 0
    # in-place (ln_s) imports: the link's real target, never the repository symlink
    for path in world.inplace.all_files:
        rel = os.path.relpath(path, tmp_path / "src" / "batch_0")
        assert os.stat(dest / rel).st_ino == os.stat(path).st_ino
    repo_inodes = {os.stat(os.path.join(dp, n)).st_ino
                   for dp, _, names in os.walk(world.sim.repo_dir) for n in names}
    assert {os.stat(dest / r["path"]).st_ino for r in added} <= repo_inodes | {
        os.stat(p).st_ino for p in world.inplace.all_files}
    for rel, info in snapshot(dest).items():
        if info[0] == "dir":
            assert info[1] == 0o700, rel
    assert len(manifest(dest)["entries"]) == 10


def test_layouts_tree_and_fileset(world, tmp_path):
    rc, _, err = export(world, tmp_path / "tree", f"Dataset:{world.dataset}",
                        extra=["--layout", "tree"])
    assert rc == 0, err
    assert {p.split("/")[0:2] == ["Proj", "Data"] for p in exported_files(tmp_path / "tree")} == {True}
    rc, _, err = export(world, tmp_path / "flat", f"Dataset:{world.dataset}",
                        extra=["--layout", "fileset"])
    assert rc == 0, err
    assert {p.split("/")[0] for p in exported_files(tmp_path / "flat")} == {
        f"Fileset_{f}" for f in world.inplace.fileset_ids + world.uploaded.fileset_ids}


def test_sync_adds_new_removes_deleted_and_never_touches_foreign_files(world, tmp_path):
    dest = tmp_path / "dest"
    assert export(world, dest, f"Dataset:{world.dataset}")[0] == 0
    foreign = dest / "set_0" / "my notes.txt"
    foreign.write_text("mine")
    rc, _, err = export(world, dest, f"Dataset:{world.dataset}")
    assert rc == 3 and "--sync" in err
    gone = world.inplace.fileset_ids[0]
    world.sim.delete_fileset(gone)
    new_file = tmp_path / "new" / "fresh.fake"
    new_file.parent.mkdir()
    new_file.write_bytes(b"fresh")
    world.sim.import_fileset("alice", [str(new_file)], target=("Dataset", world.dataset))
    rc, out, err = export(world, dest, f"Dataset:{world.dataset}", extra=["--sync", "--json"])
    assert rc == 0, err
    actions = {(r["action"], r["path"]) for r in records(out, "entry") if r["action"] != "kept"}
    assert actions == {("added", "new/fresh.fake"), ("removed", "set_0/file_0.fake"),
                       ("removed", "set_0/file_1.fake")}
    assert foreign.read_text() == "mine"
    assert (dest / "set_0").is_dir()          # ours, but it still holds the user's file
    assert not (dest / "set_0" / "file_0.fake").exists()
    paths = {e["path"] for e in manifest(dest)["entries"]}
    assert paths == set(exported_files(dest)) - {"set_0/my notes.txt"}


def test_sync_removes_what_the_user_can_no_longer_read(world, tmp_path):
    dest = tmp_path / "dest"
    assert export(world, dest, f"Project:{world.project}", user="bob")[0] == 0
    hidden = world.uploaded.fileset_ids[0]
    other = world.sim.query("SELECT id FROM ExperimenterGroup WHERE name = 'other'")[0][0]
    world.sim.query("UPDATE Fileset SET group_id = ? WHERE id = ?", (other, hidden))
    world.sim.query("UPDATE Image SET group_id = ? WHERE fileset = ?", (other, hidden))
    rc, out, err = export(world, dest, f"Project:{world.project}", user="bob",
                          extra=["--sync", "--json"])
    assert rc == 0, err
    removed = [r for r in records(out, "entry") if r["action"] == "removed"]
    assert {r["fileset"] for r in removed} == {hidden} and len(removed) == 2
    assert len(exported_files(dest)) == 8


def test_dry_run_changes_nothing(world, tmp_path):
    dest = tmp_path / "dest"
    rc, out, err = export(world, dest, f"Project:{world.project}", extra=["--dry-run", "--json"])
    assert rc == 0, err
    assert not dest.exists()
    assert {r["action"] for r in records(out, "entry")} == {"would-add"}
    assert export(world, dest, f"Project:{world.project}")[0] == 0
    world.sim.delete_fileset(world.uploaded.fileset_ids[0])
    before = snapshot(dest)
    rc, out, _ = export(world, dest, f"Project:{world.project}", extra=["--sync", "--dry-run", "--json"])
    assert rc == 0
    assert sum(r["action"] == "would-remove" for r in records(out, "entry")) == 2
    assert snapshot(dest) == before


def test_verify_reports_an_entry_that_no_longer_matches(world, tmp_path):
    dest = tmp_path / "dest"
    rc, out, err = export(world, dest, f"Dataset:{world.dataset}",
                          extra=["--link", "copy", "--verify", "--json"])
    assert rc == 0, err
    assert records(out, "summary")[0]["verified"] == 10
    victim = dest / "set_1" / "file_0.fake"
    data = victim.read_bytes()
    victim.write_bytes(bytes([data[0] ^ 1]) + data[1:])
    rc, out, err = export(world, dest, f"Dataset:{world.dataset}", extra=["--sync", "--verify", "--json"])
    assert rc == 8 and "do not match" in err
    bad = [r for r in records(out, "verify") if not r["ok"]]
    assert [r["path"] for r in bad] == ["set_1/file_0.fake"] and "SHA1-160" in bad[0]["reason"]


def test_a_symlink_planted_in_dest_is_never_followed(world, tmp_path):
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    (outside / "precious").write_bytes(b"keep")
    os.symlink(outside, dest / "set_0")                       # a directory the plan needs
    (dest / "set_1").mkdir()
    os.symlink(outside / "precious", dest / "set_1" / "file_0.fake")   # a file the plan needs
    before = snapshot(outside)
    rc, out, err = export(world, dest, f"Dataset:{world.dataset}", extra=["--json"])
    assert rc == 7
    failed = {r["path"]: r["reason"] for r in records(out, "failed")}
    assert set(failed) == {"set_0/file_0.fake", "set_0/file_1.fake", "set_1/file_0.fake"}
    assert "not followed" in failed["set_0/file_0.fake"]
    assert "did not make" in failed["set_1/file_0.fake"]
    assert snapshot(outside) == before
    assert os.readlink(dest / "set_1" / "file_0.fake") == str(outside / "precious")


def test_hostile_client_paths_never_write_outside_dest(world, tmp_path):
    hostile = ["../../../../../../tmp/evil", "/etc/passwd", "x/../../../../y", "nul\x01\x7f",
               ".omero-cli-ext-export.json"]
    rows = world.sim.query("SELECT id FROM FilesetEntry ORDER BY id")
    for (entry_id,), client_path in zip(rows, hostile):
        world.sim.query("UPDATE FilesetEntry SET clientPath = ? WHERE id = ?", (client_path, entry_id))
    dest = tmp_path / "deep" / "dest"
    dest.parent.mkdir()
    before = {p: snapshot(tmp_path / p) for p in ("src", "up", "sim/ManagedRepository")}
    rc, out, err = export(world, dest, f"Project:{world.project}", extra=["--json"])
    assert rc == 0, err
    assert sorted(os.listdir(tmp_path / "deep")) == ["dest"]
    assert {p: snapshot(tmp_path / p) for p in ("src", "up", "sim/ManagedRepository")} == before
    assert len(exported_files(dest)) == 10
    assert manifest(dest)["entries"]                           # ours was not overwritten
    assert any("unsafe name" in r["reasons"] for r in records(out, "renamed"))


def test_download_resumes_a_partial_file_and_checks_the_hash(tmp_path):
    world = make_world(tmp_path, n_inplace=0, n_uploaded=0)
    big = tmp_path / "big" / "large.fake"
    big.parent.mkdir()
    content = os.urandom(3 * CHUNK + 123)
    big.write_bytes(content)
    fid = world.sim.import_fileset("alice", [str(big)], target=("Dataset", world.dataset))
    of_id = world.sim.query("SELECT originalFile FROM FilesetEntry WHERE fileset = ?", (fid,))[0][0]
    dest = tmp_path / "dest"
    (dest / "big").mkdir(parents=True)
    part = dest / "big" / f"{PART_PREFIX}{of_id}"
    part.write_bytes(content[:2 * CHUNK + 10])                 # two whole chunks and a bit
    part.chmod(0o600)                                          # as the export makes its parts
    world.sim.reset_round_trips()
    rc, _, err = export(world, dest, f"Fileset:{fid}", extra=["--link", "download"])
    assert rc == 0, err
    assert (dest / "big" / "large.fake").read_bytes() == content and not part.exists()
    # 2 whole chunks kept: 2 reads remain (chunk 3 and the tail) + open + the fixed calls
    # (filesets: the fileset, transfer, entry-count and entry queries)
    assert world.sim.round_trips <= 2 + 1 + 8
    # a part with wrong bytes is caught by the hash and removed; the rerun succeeds
    (dest / "big" / "large.fake").unlink()
    os.unlink(os.path.join(state_dir(dest), MANIFEST_NAME))
    part.write_bytes(b"\0" * CHUNK)
    part.chmod(0o600)
    rc, out, err = export(world, dest, f"Fileset:{fid}", extra=["--link", "download", "--json"])
    assert rc == 7 and "SHA1-160" in records(out, "failed")[0]["reason"]
    assert not (dest / "big" / "large.fake").exists() and not part.exists()
    rc, _, err = export(world, dest, f"Fileset:{fid}", extra=["--link", "download", "--sync"])
    assert rc == 0, err
    assert (dest / "big" / "large.fake").read_bytes() == content


def test_auto_downloads_when_the_repository_is_not_mounted_here(world, tmp_path):
    dest = tmp_path / "dest"
    rc, out, err = export(world, dest, f"Dataset:{world.dataset}",
                          extra=["--repo", str(tmp_path / "not-mounted"), "--json"])
    assert rc == 0, err
    assert {r["method"] for r in records(out, "entry")} == {"download"}
    assert any("downloading" in r["message"] for r in records(out, "note"))
    assert sorted(exported_files(dest).values()) == sorted(source_bytes(world).values())


def test_binary_access_restricted_files_are_skipped_and_listed(world, tmp_path):
    world.sim.set_binary_access(True, group="lab")
    dest = tmp_path / "dest"
    rc, out, err = export(world, dest, f"Dataset:{world.dataset}", user="bob", extra=["--json"])
    assert rc == 0, err
    assert len(records(out, "skipped")) == 10
    assert {r["reason"] for r in records(out, "skipped")} == {"restricted"}
    assert exported_files(dest) == {}
    rc, out, _ = export(world, tmp_path / "own", f"Dataset:{world.dataset}", extra=["--json"])
    assert rc == 0 and len(exported_files(tmp_path / "own")) == 10   # never for the owner


def test_as_user_exports_what_that_user_reads(world, tmp_path):
    dest = tmp_path / "dest"
    rc, out, err = export(world, dest, f"Project:{world.project}", user="root",
                          extra=["--as-user", "carol", "--json"])
    assert rc == 22 and "carol" in err and not dest.exists()
    rc, out, err = export(world, dest, f"Project:{world.project}", user="root",
                          extra=["--as-user", "bob", "--json"])
    assert rc == 0, err
    assert manifest(dest)["user"] == "bob" and len(exported_files(dest)) == 10



def test_the_readme_tour_export_runs_as_the_tour_logs_in(world, tmp_path):
    """README.md's 2-minute tour logs in as a user and exports; its options must work for her."""
    import re
    import shlex
    readme = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "README.md"), encoding="utf-8").read()
    tour = readme[readme.index("## A 2-minute tour"):readme.index("## Documentation")]
    user = re.search(r"^omero login .*-u (\w+)", tour, re.M).group(1)
    line = re.search(r"^omero export --originals .*$", tour, re.M).group(0)
    words = shlex.split(line, comments=True)[4:]            # after `omero export --originals DEST`
    options = [w for w in words if not re.match(r"^[A-Z][a-z]+:[\d,]+$", w)]
    rc, _, err = export(world, tmp_path / "dest", f"Project:{world.project}", user=user,
                        extra=options)
    assert rc == 0, err


# --------------------------------------------------------------------------- bad input

def test_dest_inside_the_managed_repository(world, tmp_path):
    before = snapshot(world.sim.repo_dir)
    rc, _, err = export(world, os.path.join(world.sim.repo_dir, "export"), f"Project:{world.project}")
    assert rc == 3 and "inside the ManagedRepository" in err
    assert snapshot(world.sim.repo_dir) == before


def test_dest_is_a_file(world, tmp_path):
    dest = tmp_path / "dest"
    dest.write_bytes(b"x")
    rc, _, err = export(world, dest, f"Project:{world.project}")
    assert rc == 3 and "not a directory" in err and dest.read_bytes() == b"x"


@pytest.mark.parametrize("user, obj", [("alice", "Project:9999"), ("carol", "Project:1"),
                                       ("alice", "Fileset:9999")])
def test_unknown_or_unreadable_objects(world, tmp_path, user, obj):
    rc, _, err = export(world, tmp_path / "dest", obj, user=user)
    assert rc == 22 and obj in err and not (tmp_path / "dest").exists()


def test_mixed_valid_and_invalid_objects(world, tmp_path):
    dest = tmp_path / "dest"
    rc, out, err = export(world, dest, f"Dataset:{world.dataset}", "Image:9999,9998", "Plate:7",
                          extra=["--json"])
    assert rc == 5 and "Image:9999" in err and "Plate:7" in err
    assert [r["object"] for r in records(out, "object_missing")] == ["Image:9999", "Image:9998",
                                                                     "Plate:7"]
    assert len(exported_files(dest)) == 10


def test_bad_object_syntax(world, tmp_path):
    rc, _, err = export(world, tmp_path / "dest", "Imag:1")
    assert rc == 2 and "Type:id" in err and not (tmp_path / "dest").exists()


@pytest.mark.parametrize("wait", ["-1", "nan", "inf", "soon"])
def test_a_wait_that_is_not_a_number_of_seconds_is_bad_usage(world, tmp_path, wait):
    rc, _, err = export(world, tmp_path / "dest", f"Project:{world.project}",
                        extra=["--wait", wait])
    assert rc == 2 and "--wait" in err and not (tmp_path / "dest").exists()


def test_as_user_without_sudo(world, tmp_path):
    rc, _, err = export(world, tmp_path / "dest", f"Project:{world.project}", user="bob",
                        extra=["--as-user", "alice"])
    assert rc == 21 and "Sudo" in err and not (tmp_path / "dest").exists()


def test_unknown_posix_owner(world, tmp_path):
    rc, _, err = export(world, tmp_path / "dest", f"Project:{world.project}",
                        owner="no-such-posix-user-x")
    assert rc == 4 and "no-such-posix-user-x" in err and not (tmp_path / "dest").exists()
    if os.geteuid() == 0:   # default owner: a POSIX user named like the OMERO user ("alice")
        rc, _, err = export(world, tmp_path / "dest", f"Project:{world.project}", owner=None)
        assert rc == 4 and "alice" in err and "--owner-map" in err
        mapping = tmp_path / "owners"
        mapping.write_text("# omero posix\nalice root\n")
        rc, _, err = export(world, tmp_path / "dest", f"Project:{world.project}", owner=None,
                            extra=["--owner-map", str(mapping)])
        assert rc == 0, err


@pytest.fixture
def small_tmpfs(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs",
                                            str(mount)], capture_output=True).returncode:
        pytest.skip("needs root to mount a small tmpfs")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_destination_full(tmp_path, small_tmpfs):
    world = make_world(tmp_path, n_inplace=0, n_uploaded=0)
    sources = tmp_path / "big"
    sources.mkdir()
    for i in range(6):
        (sources / f"f{i}.fake").write_bytes(os.urandom(60 * 1024))
        world.sim.import_fileset("alice", [str(sources / f"f{i}.fake")],
                                 target=("Dataset", world.dataset))
    dest = small_tmpfs / "dest"
    rc, out, err = export(world, dest, f"Dataset:{world.dataset}", extra=["--json"])
    assert rc == 6 and "no space" in err.lower() and "--sync" in err
    done = {e["path"]: e for e in manifest(dest)["entries"]}
    on_disk = exported_files(dest)
    assert set(done) == set(on_disk) and 0 < len(on_disk) < 6      # nothing half-made
    for path, data in on_disk.items():
        assert data == (sources / os.path.basename(path)).read_bytes()
    assert not [n for n in os.listdir(dest / "big") if n.startswith(".omero-cli-ext")]
    subprocess.run(["mount", "-o", "remount,size=2m", str(small_tmpfs)], check=True)
    rc, _, err = export(world, dest, f"Dataset:{world.dataset}", extra=["--sync"])
    assert rc == 0, err
    assert len(exported_files(dest)) == 6


def test_group_or_other_writable_managed_files_are_warned_about(world, tmp_path):
    victim = world.uploaded.fileset_ids[0]
    path, name = world.sim.query("SELECT o.path, o.name FROM FilesetEntry fe JOIN OriginalFile o "
                                 "ON o.id = fe.originalFile WHERE fe.fileset = ?", (victim,))[0]
    repo_file = os.path.join(world.sim.repo_dir, path, name)
    os.chmod(repo_file, 0o666)
    rc, _, err = export(world, tmp_path / "dest", f"Dataset:{world.dataset}")
    assert rc == 0 and "writable by group or others" in err
    assert stat.S_IMODE(os.stat(repo_file).st_mode) == 0o666     # never chmod-ed


def test_an_original_file_path_outside_the_repository_is_refused(world, tmp_path):
    victim = world.uploaded.fileset_ids[0]
    world.sim.query("UPDATE OriginalFile SET path = '../../../etc/' WHERE id IN "
                    "(SELECT originalFile FROM FilesetEntry WHERE fileset = ?)", (victim,))
    rc, out, _ = export(world, tmp_path / "dest", f"Fileset:{victim}", extra=["--json"])
    assert rc == 7
    failed = records(out, "failed")
    assert len(failed) == 2
    assert all("outside the managed repository" in r["reason"] for r in failed)
    assert exported_files(tmp_path / "dest") == {}


def test_an_export_outlives_the_old_ten_minute_sudo_lifetime(tmp_path, monkeypatch):
    """--as-user sessions have no time to live, only an idle timeout that every call restarts:
    a download of 12 chunks taking 4 simulated minutes each (48 minutes) completes."""
    import sim.server
    world = make_world(tmp_path, n_inplace=0, n_uploaded=0)
    big = tmp_path / "big" / "slow.fake"
    big.parent.mkdir()
    content = os.urandom(12 * CHUNK)
    big.write_bytes(content)
    fid = world.sim.import_fileset("alice", [str(big)], target=("Dataset", world.dataset))
    read = sim.server._Reader.read

    def slow_read(self, offset, length):
        self._server.advance(240)
        return read(self, offset, length)
    monkeypatch.setattr(sim.server._Reader, "read", slow_read)
    before = world.sim.now()
    rc, _, err = export(world, tmp_path / "dest", f"Fileset:{fid}", user="root",
                        extra=["--as-user", "alice", "--link", "download"])
    assert rc == 0, err
    assert (world.sim.now() - before).total_seconds() >= 48 * 60
    assert (tmp_path / "dest" / "big" / "slow.fake").read_bytes() == content


def test_a_download_binaryaccess_refuses_after_planning_is_named_so(world, tmp_path, monkeypatch):
    """The policy changes between the plan (files readable) and the download: the server
    refuses the reads (RawFileBean.read checks BINARYACCESS, not setFileId), each file fails
    with the reason a refused open would give."""
    import sim.server
    opened = sim.server.SimPort.open_original_file

    def restrict_then_open(self, original_file_id):
        world.sim.set_binary_access(True, group="lab")
        return opened(self, original_file_id)
    monkeypatch.setattr(sim.server.SimPort, "open_original_file", restrict_then_open)
    rc, out, err = export(world, tmp_path / "dest", f"Dataset:{world.dataset}", user="bob",
                          extra=["--json", "--link", "download"])
    failed = records(out, "failed")
    assert rc != 0 and failed, err
    assert {r["reason"] for r in failed} == {"download restricted by the server (BINARYACCESS)"}
    assert exported_files(tmp_path / "dest") == {}
