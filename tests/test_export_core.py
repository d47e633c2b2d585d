"""The pure core of `omero export --originals`: path safety, layout and clashes, manifest."""
from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omero_cli_ext.export import manifest as manifest_io
from omero_cli_ext.export.paths import (RESERVED_PREFIX, client_path_components, is_safe_relpath,
                                        safe_component, split_common_root)
from omero_cli_ext.export.plan import BadObject, Entry, parse_objects, plan_layout
from omero_cli_ext.server import Fileset, FilesetEntry, OriginalFile

_next_id = iter(range(1000, 10 ** 9))


def fileset(fid, client_paths, *, restricted=(), incomplete=(), transfer=None):
    entries = []
    for index, client_path in enumerate(client_paths):
        of_id = next(_next_id)
        entries.append(FilesetEntry(client_path, OriginalFile(
            id=of_id, path=f"u_1/2026-11/27/x.{fid}/", name=f"f{index}",
            size=None if index in incomplete else 10, hash="0" * 40, hasher="SHA1-160",
            binary_restricted=index in restricted)))
    return Fileset(id=fid, template_prefix=f"u_1/2026-11/27/x.{fid}/", owner_id=2,
                   owner_name="alice", group_id=3, group_name="lab", group_perms="rwr---",
                   entries=tuple(entries), transfer=transfer)


def stays_inside(path: str) -> bool:
    dest = "/export/dest"
    return os.path.normpath(os.path.join(dest, path)).startswith(dest + "/")


# --------------------------------------------------------------------------- path safety

@pytest.mark.parametrize("name, expected", [
    ("..", "__"), (".", "_"), ("", "_"), ("a\x00b", "a_b"), ("new\nline", "new_line"),
    ("tab\there", "tab_here"), ("a/b", "a_b"), (RESERVED_PREFIX + "-export.json",
                                                "_" + RESERVED_PREFIX + "-export.json"),
    ("ok name.tif", "ok name.tif"), ("über", "über"),
])
def test_safe_component(name, expected):
    assert safe_component(name) == expected


def test_long_names_are_shortened_and_stay_distinct():
    a, b = "x" * 300 + "a", "x" * 300 + "b"
    assert len(safe_component(a).encode()) <= 255
    assert safe_component(a) != safe_component(b)


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=80))
def test_every_safe_name_fits_in_name_max_bytes(name):
    """NAME_MAX counts bytes: 64 four-byte characters (256 bytes) must be shortened too."""
    assert len(safe_component(name).encode("utf-8", "surrogateescape")) <= 255
    assert len(safe_component("\U0001F600" * 64).encode()) <= 255


HOSTILE = ["../../etc/passwd", "/etc/passwd", "data/../../../../root/.ssh/authorized_keys",
           "a/./b/../../..", "nul\x00/x", "ctl\x01\x7f/y", "..", "", "/", "//..//..//",
           RESERVED_PREFIX + ".part.7", "data/" + RESERVED_PREFIX + "-export.json"]


@pytest.mark.parametrize("client_path", HOSTILE)
def test_hostile_client_path_stays_inside_dest(client_path):
    plan = plan_layout({1: fileset(1, [client_path])})
    assert len(plan.entries) == 1
    path = plan.entries[0].path
    assert is_safe_relpath(path) and stays_inside(path), path
    assert not any(part.startswith(RESERVED_PREFIX) for part in path.split("/"))


def test_hostile_names_are_reported_as_renamed():
    plan = plan_layout({1: fileset(1, ["data/ok", "data/../../etc/passwd"])})
    # nothing interpreted, nothing climbed: ".." is a (renamed) directory inside DEST
    assert [e.path for e in plan.entries] == ["data/__/__/etc/passwd", "data/ok"]
    assert [(r.wanted, r.reasons) for r in plan.renamed] == [
        ("data/../../etc/passwd", ("unsafe name",))]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.text(min_size=0, max_size=12), min_size=1, max_size=4)
                .map("/".join), min_size=1, max_size=6),
       st.sampled_from(["clientpath", "tree", "fileset"]))
def test_any_client_paths_give_safe_unique_non_nesting_paths(client_paths, layout):
    filesets = {i + 1: fileset(i + 1, [p]) for i, p in enumerate(client_paths)}
    filesets[99] = fileset(99, client_paths)
    containers = {fid: ("Project", "../p", "Dataset", "d/\x00") for fid in filesets}
    plan = plan_layout(filesets, layout, containers)
    paths = [e.path for e in plan.entries]
    assert len(paths) == len(set(paths)) == sum(len(f.entries) for f in filesets.values())
    for path in paths:
        assert is_safe_relpath(path) and stays_inside(path)
    as_dirs = {p + "/" for p in paths}
    assert not any(q.startswith(d) for d in as_dirs for q in paths), "a file is used as a directory"


def test_client_path_components_and_common_root():
    assert client_path_components("a//./b/../c") == ["a", "b", "..", "c"]
    common, rels = split_common_root([["d", "e", "x.tif"], ["d", "e", "sub", "y.tif"]])
    assert common == ["d", "e"] and rels == [["x.tif"], ["sub", "y.tif"]]
    assert split_common_root([["d", "x.tif"]]) == (["d"], [["x.tif"]])


# --------------------------------------------------------------------------- layouts and clashes

def test_clientpath_layout_keeps_the_clients_structure_below_the_common_root():
    plan = plan_layout({5: fileset(5, ["data/alice/exp1/a.tif", "data/alice/exp1/sub/b.tif"])})
    assert [e.path for e in plan.entries] == ["exp1/a.tif", "exp1/sub/b.tif"]
    assert plan.renamed == []


def test_clash_climbs_the_clients_directories_then_uses_the_fileset_id():
    filesets = {
        1: fileset(1, ["data/run1/plate/a.tif"]),
        2: fileset(2, ["data/run2/plate/a.tif"]),
        3: fileset(3, ["data/run2/plate/a.tif"]),   # the same client path imported again
    }
    plan = plan_layout(filesets)
    assert {e.fileset_id: e.path for e in plan.entries} == {
        1: "plate/a.tif", 2: "run2/plate/a.tif", 3: "data/run2/plate/a.tif"}
    assert [(r.fileset_id, r.reasons) for r in plan.renamed] == [(2, ("clash",)), (3, ("clash",))]
    again = plan_layout({3: filesets[3], 1: filesets[1], 2: filesets[2]})
    assert [e.path for e in again.entries] == [e.path for e in plan.entries]


def test_clash_beyond_the_client_path_goes_under_fileset_id():
    plan = plan_layout({1: fileset(1, ["a.tif"]), 2: fileset(2, ["a.tif"])})
    assert sorted(e.path for e in plan.entries) == ["Fileset_2/a.tif", "a.tif"]


def test_a_fileset_stays_together_when_one_file_clashes():
    plan = plan_layout({1: fileset(1, ["x/a.tif"]),
                        2: fileset(2, ["y/x/a.tif", "y/x/a.companion"])})
    by_fileset = {e.path for e in plan.entries if e.fileset_id == 2}
    assert by_fileset == {"y/x/a.tif", "y/x/a.companion"}


def test_names_that_sanitise_alike_inside_one_fileset():
    plan = plan_layout({1: fileset(1, ["d/a\nb", "d/a\tb"])})
    paths = sorted(e.path for e in plan.entries)
    assert paths[0] == "d/a_b" and paths[1].startswith("d/a_b~")


def test_tree_and_fileset_layouts():
    filesets = {1: fileset(1, ["c/x.tif"]), 2: fileset(2, ["c/y.tif"]), 3: fileset(3, ["z.tif"])}
    containers = {1: ("Project", "P", "Dataset", "D"), 2: ("Screen", "S", "Plate", "Pl"), 3: ()}
    tree = plan_layout(filesets, "tree", containers)
    assert [e.path for e in tree.entries] == ["P/D/c/x.tif", "S/Pl/c/y.tif", "orphaned/z.tif"]
    flat = plan_layout(filesets, "fileset")
    assert [e.path for e in flat.entries] == ["Fileset_1/x.tif", "Fileset_2/y.tif", "Fileset_3/z.tif"]


def test_restricted_and_incomplete_files_are_skipped_and_listed():
    plan = plan_layout({1: fileset(1, ["d/a", "d/b", "d/c"], restricted={1}, incomplete={2})})
    assert [e.path for e in plan.entries] == ["d/a"]
    assert sorted(s.reason for s in plan.skipped) == ["incomplete", "restricted"]


def test_keep_holds_earlier_paths_and_ignores_unsafe_ones():
    two = fileset(2, ["a.tif"])
    first = plan_layout({2: two})
    of2 = first.entries[0].original_file_id
    one = fileset(1, ["a.tif"])
    # fileset 1 appears later (e.g. newly readable): fileset 2 keeps a.tif, 1 moves aside
    plan = plan_layout({1: one, 2: two}, keep={of2: "a.tif"})
    assert {e.fileset_id: e.path for e in plan.entries} == {1: "Fileset_1/a.tif", 2: "a.tif"}
    hostile = plan_layout({1: one}, keep={one.entries[0].original_file.id: "../../etc/x"})
    assert hostile.entries[0].path == "a.tif"


def test_parse_objects():
    assert parse_objects(["project:1,2", "Image:5", "Project:1"]) == [
        ("Project", 1), ("Project", 2), ("Image", 5)]
    for bad in ["Image", "Mask:1", "Image:x", "Image:-1", "Image:1,"]:
        with pytest.raises(BadObject):
            parse_objects([bad])


# --------------------------------------------------------------------------- manifest

def test_manifest_round_trip_and_refusals(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert manifest_io.load(fd) is None
        m = manifest_io.Manifest(repository="uuid", user="alice", layout="clientpath")
        m.entries["d/a"] = manifest_io.ManifestEntry("d/a", 1, 2, 3, "h", "SHA1-160",
                                                     repo_path="x/a", method="hard",
                                                     state="done", dev=1, ino=2)
        m.directories.add("d")
        manifest_io.save(fd, m)
        back = manifest_io.load(fd)
        assert back.entries == m.entries and back.directories == {"d"} and back.created
        assert not [n for n in os.listdir(tmp_path) if n != manifest_io.MANIFEST_NAME]
        doc = m.to_bytes().replace(b'"d/a"', b'"../a"')
        with open(tmp_path / manifest_io.MANIFEST_NAME, "wb") as stream:
            stream.write(doc)
        with pytest.raises(manifest_io.ManifestError, match="not a safe DEST path"):
            manifest_io.load(fd)
        os.unlink(tmp_path / manifest_io.MANIFEST_NAME)
        os.symlink("/etc/passwd", tmp_path / manifest_io.MANIFEST_NAME)
        with pytest.raises(manifest_io.ManifestError, match="symlink"):
            manifest_io.load(fd)
    finally:
        os.close(fd)


def test_journal_replays_over_its_manifest_and_a_stale_one_is_ignored(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        m = manifest_io.Manifest(repository="uuid", user="alice", layout="clientpath")
        manifest_io.save(fd, m)
        journal = manifest_io.Journal(fd, m.serial)
        journal.pending([Entry("d/a", 1, 10, "x/a", 3, "h", "SHA1-160"),
                         Entry("d/b", 1, 11, "x/b", 3, "h", "SHA1-160")])
        made = manifest_io.ManifestEntry("d/a", 1, 10, 3, "h", "SHA1-160", "hard", "done", 7, 8)
        journal.done([made], ["d"])
        journal.close()
        with open(tmp_path / manifest_io.JOURNAL_NAME, "ab") as stream:
            stream.write(b'["D",[["d/b","hard",7,')          # torn by a crash: ignored
        back = manifest_io.load(fd)
        assert back.replayed and back.directories == {"d"}
        assert back.entries["d/a"] == made
        assert (back.entries["d/b"].state, back.entries["d/b"].repo_path) == ("pending", "x/b")
        manifest_io.save(fd, back)                          # holds it all: the journal is stale
        again = manifest_io.load(fd)
        assert not again.replayed and again.entries == back.entries
        hostile = manifest_io.Journal(fd, again.serial)
        hostile.pending([Entry("../escape", 1, 12, "x/c", 3, "h", "SHA1-160")])
        hostile.close()
        with pytest.raises(manifest_io.ManifestError, match="not a safe DEST path"):
            manifest_io.load(fd)
    finally:
        os.close(fd)
