"""`omero export --zarr` end to end on the simulated server: read back with ome-zarr-py (an
independent reader), every metadata document validated against the NGFF 0.4 JSON schemas (the
strict ones, as shipped by the ngff-zarr package), every full-resolution pixel compared with the
server's, every pyramid level with a numpy 2x2 mean of the level above."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass

import numpy as np
import pytest

from omero_cli_ext.zarr.index import INDEX_NAME
from sim import pixels as simpix
from sim.builder import lab_server
from sim.launcher import run_cli, script_command, script_env
from sim.server import SimServer
from test_export_world import state_root


# --------------------------------------------------------------------------- helpers (shared)

def schemas():
    # the independent readers are test dependencies on Python >= 3.10 only (setup.cfg): older
    # interpreters run every other check of these tests, and skip at the read-back
    ngff_zarr = pytest.importorskip("ngff_zarr")
    pytest.importorskip("jsonschema")
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012
    folder = os.path.join(os.path.dirname(ngff_zarr.__file__), "spec", "0.4", "schemas")
    registry = Registry()
    loaded = {}
    for name in os.listdir(folder):
        with open(os.path.join(folder, name), encoding="utf-8") as stream:
            doc = json.load(stream)
        loaded[name] = doc
        registry = registry.with_resource(doc["$id"], Resource.from_contents(
            doc, default_specification=DRAFT202012))
    return loaded, registry


def validate(attrs: dict, kind: str) -> None:
    loaded, registry = schemas()      # skips first where the schema tools are not installed
    import jsonschema
    jsonschema.Draft202012Validator(loaded["strict_%s.schema" % kind],
                                    registry=registry).validate(attrs)


def records(out: str, kind: str) -> list:
    return [r for r in map(json.loads, out.splitlines()) if r["type"] == kind]


def fake_name(**keys) -> str:
    return "img&" + "&".join("%s=%s" % kv for kv in keys.items()) + ".fake"


@dataclass
class World:
    sim: SimServer
    src: str
    project: int
    dataset: int
    images: dict      # image id -> fake name


def add_fake(world_or_sim, src, name, owner="alice", target=None, spw=False, group=None) -> list:
    sim = world_or_sim
    path = os.path.join(src, name)
    open(path, "w").close()
    spec = simpix.parse_fake(name)
    fid = sim.import_fileset(owner, [path], target=target, spw=spw, images=spec.image_count,
                             group=group)
    return [r[0] for r in sim.query("SELECT id FROM Image WHERE fileset = ? ORDER BY id", (fid,))]


def make_world(tmp_path) -> World:
    sim = lab_server(str(tmp_path / "server"), ("alice", "bob"))
    src = str(tmp_path / "src")
    os.makedirs(src)
    project = sim.add_project("Proj", "alice")
    dataset = sim.add_dataset("Data", "alice", project=project)
    images = {}
    for name in (fake_name(sizeX=1500, sizeY=2100, sizeZ=2, sizeC=2, pixelType="uint16",
                           physicalSizeX=0.25, physicalSizeY=0.25, physicalSizeZ=2),
                 fake_name(sizeX=300, sizeY=200, sizeT=2, pixelType="int8", color="0x00FF00FF"),
                 fake_name(sizeX=100, sizeY=90, pixelType="float", series=2)):
        for image in add_fake(sim, src, name, target=("Dataset", dataset)):
            images[image] = name
    return World(sim, src, project, dataset, images)


def control_args(sim_root, owner="root") -> list:
    """--state-dir beside the simulated server (never /var/lib) and, as root, the DEST owner."""
    return ["--state-dir", state_root(sim_root)] + (
        ["--owner", owner] if os.geteuid() == 0 and owner else [])


def export(world, dest, *objs, user="alice", extra=()):
    return run_cli(world.sim.root, ["export", "--zarr", str(dest), *objs, "--json",
                                    *control_args(world.sim.root), *extra], user=user)


def server_plane(sim, image_id, z, c, t) -> np.ndarray:
    """The whole plane as the server serves it (test side only: small images)."""
    port = sim.port("root")
    info = port.pixels_info([image_id])[image_id]
    reader = port.open_pixels(image_id)
    try:
        data = reader.tile(z, c, t, 0, 0, info.size_x, info.size_y)
    finally:
        reader.close()
    dtype = np.dtype(simpix.DTYPES[info.pixel_type]).newbyteorder(">")
    return np.frombuffer(data, dtype=dtype).reshape(info.size_y, info.size_x)


def numpy_mean2(a: np.ndarray) -> np.ndarray:
    """Independent 2x2 mean: pad with NaN, nanmean, round half up for integer types."""
    h, w = a.shape
    padded = np.full((h + h % 2, w + w % 2), np.nan)
    padded[:h, :w] = a
    mean = np.nanmean(padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2),
                      axis=(1, 3))
    if a.dtype.kind == "f":
        return mean.astype(a.dtype)
    return np.floor(mean + 0.5).astype(a.dtype)


def read_image(path):
    """(levels as numpy arrays, metadata) through ome-zarr-py's reader."""
    pytest.importorskip("ome_zarr")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    location = parse_url(str(path))
    assert location is not None, path
    nodes = list(Reader(location)())
    node = nodes[0]
    return [np.asarray(level) for level in node.data], node.metadata


def check_image(sim, path, image_id) -> dict:
    """Schema-valid, read back by ome-zarr-py, every pixel as the server's, every level the mean
    of the one above. Returns the .zattrs."""
    with open(os.path.join(path, ".zattrs"), encoding="utf-8") as stream:
        attrs = json.load(stream)
    validate(attrs, "image")
    levels, _meta = read_image(path)
    info = sim.port("root").pixels_info([image_id])[image_id]
    assert levels[0].shape == (info.size_t, info.size_c, info.size_z, info.size_y, info.size_x)
    for t in range(info.size_t):
        for c in range(info.size_c):
            for z in range(info.size_z):
                assert np.array_equal(levels[0][t, c, z], server_plane(sim, image_id, z, c, t))
                for above, level in zip(levels, levels[1:]):
                    assert np.array_equal(level[t, c, z], numpy_mean2(above[t, c, z]))
    assert max(levels[-1].shape[3:]) <= 1024
    assert len(levels) == 1 or max(levels[-2].shape[3:]) > 1024
    return attrs


def tree(dest) -> dict:
    """Every file below dest -> bytes (the whole export, index included)."""
    found = {}
    for dirpath, _dirs, names in os.walk(dest):
        for name in names:
            full = os.path.join(dirpath, name)
            with open(full, "rb") as stream:
                found[os.path.relpath(full, dest)] = stream.read()
    return found


@pytest.fixture
def world(tmp_path):
    return make_world(tmp_path)


# --------------------------------------------------------------------------- tests

def test_project_export_reads_back_pixel_exact_with_valid_metadata(world, tmp_path):
    dest = tmp_path / "dest"
    rc, out, err = export(world, dest, "Project:%d" % world.project, extra=["--chunk", "512"])
    assert rc == 0, err
    images = records(out, "image")
    assert {r["image"] for r in images} == set(world.images)
    assert {r["action"] for r in images} == {"written"}
    for record in images:
        assert record["path"].startswith("Proj/Data/")
        attrs = check_image(world.sim, dest / record["path"], record["image"])
        assert attrs["omero"]["id"] == record["image"]
    big = next(r for r in images if "sizeX=1500" in world.images[r["image"]])
    attrs = json.loads((dest / big["path"] / ".zattrs").read_text())
    ms = attrs["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["t", "c", "z", "y", "x"]
    assert ms["axes"][4]["unit"] == "micrometer"
    assert [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]] == [
        [1.0, 1.0, 2.0, 0.25, 0.25], [1.0, 1.0, 2.0, 0.5, 0.5], [1.0, 1.0, 2.0, 1.0, 1.0]]
    zarray = json.loads((dest / big["path"] / "0" / ".zarray").read_text())
    assert zarray["chunks"] == [1, 1, 1, 512, 512] and zarray["dtype"] == "<u2"
    assert zarray["compressor"]["id"] == "blosc" and zarray["compressor"]["cname"] == "zstd"
    index = json.loads((dest / INDEX_NAME).read_text())
    assert {e["image"]: e["path"] for e in index["images"]} == {
        r["image"]: r["path"] for r in images}
    assert all(e["complete"] and e["pixels"] == e["image"] for e in index["images"])


def test_rendering_block_is_the_users_settings(world, tmp_path):
    green = next(i for i, n in world.images.items() if "color=" in n)
    simpix.set_rendering(world.sim, green, channel=0, start=-10.0, end=50.0, label="GFP")
    simpix.set_rendering(world.sim, green, default_t=1)
    rc, out, err = export(world, tmp_path / "d", "Image:%d" % green)
    assert rc == 0, err
    path = records(out, "image")[0]["path"]
    omero = json.loads((tmp_path / "d" / path / ".zattrs").read_text())["omero"]
    channel = omero["channels"][0]
    assert channel["label"] == "GFP" and channel["color"] == "00FF00"
    assert channel["window"] == {"start": -10.0, "end": 50.0, "min": -128.0, "max": 127.0}
    assert omero["rdefs"] == {"defaultZ": 0, "defaultT": 1, "model": "greyscale"}


def test_plate_is_ngff_hcs_with_wells_fields_and_acquisitions(world, tmp_path):
    name = "SPW&plates=1&plateRows=2&plateCols=3&fields=2&plateAcqs=2&sizeX=40&sizeY=30.fake"
    screen = world.sim.add_screen("Scr", "alice")
    add_fake(world.sim, world.src, name, target=("Screen", screen), spw=True)
    dest = tmp_path / "dest"
    rc, out, err = export(world, dest, "Screen:%d" % screen, extra=["--workers", "3"])
    assert rc == 0, err
    plate = records(out, "plate")[0]
    assert plate["path"].startswith("Scr/") and plate["wells"] == 6 and plate["fields"] == 24
    attrs = json.loads((dest / plate["path"] / ".zattrs").read_text())
    validate(attrs, "plate")
    doc = attrs["plate"]
    assert [r["name"] for r in doc["rows"]] == ["A", "B"]
    assert [c["name"] for c in doc["columns"]] == ["1", "2", "3"]
    assert doc["field_count"] == 4 and len(doc["acquisitions"]) == 2
    for well in doc["wells"]:
        wattrs = json.loads((dest / plate["path"] / well["path"] / ".zattrs").read_text())
        validate(wattrs, "well")
        assert len(wattrs["well"]["images"]) == 4
        assert {i["acquisition"] for i in wattrs["well"]["images"]} == {
            a["id"] for a in doc["acquisitions"]}
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    node = list(Reader(parse_url(str(dest / plate["path"])))())[0]
    assert "plate" in node.metadata or node.zarr.root_attrs.get("plate")
    for record in records(out, "image"):
        assert record["plate"] == plate["plate"]
        check_image(world.sim, dest / record["path"], record["image"])
    index = json.loads((dest / INDEX_NAME).read_text())
    assert index["plates"][0]["plate"] == plate["plate"] and index["plates"][0]["complete"]


def test_flat_layout_and_dry_run(world, tmp_path):
    dest = tmp_path / "dest"
    rc, out, err = export(world, dest, "Dataset:%d" % world.dataset, extra=["--dry-run"])
    assert rc == 0, err
    assert not dest.exists()
    images = records(out, "image")
    assert {r["action"] for r in images} == {"would-write"}
    summary = records(out, "summary")[0]
    assert summary["estimated_bytes"] == sum(r["bytes"] for r in images) > 0
    big = next(r for r in images if "sizeX=1500" in world.images[r["image"]])
    # 2 z x 2 c planes: 3x2 + 2x1 + 1 chunks of 1024 at levels 2100x1500, 1050x750, 525x375
    assert big["chunks"] == 4 * (6 + 2 + 1) and big["levels"] == 3
    rc, out, err = export(world, dest, "Dataset:%d" % world.dataset,
                          extra=["--layout", "flat", "--workers", "2"])
    assert rc == 0, err
    assert sorted(n for n in os.listdir(dest) if not n.startswith(".omero-cli-ext")) == sorted(
        ["Image_%d.ome.zarr" % i for i in world.images] + [INDEX_NAME])


def test_rerun_resumes_and_sync_after_rendering_change_rewrites_only_metadata(world, tmp_path):
    dest = tmp_path / "dest"
    rc, out, err = export(world, dest, "Dataset:%d" % world.dataset)
    assert rc == 0, err
    before = tree(dest)
    rc, out, err = export(world, dest, "Dataset:%d" % world.dataset)
    assert rc == 0, err
    assert {r["action"] for r in records(out, "image")} == {"kept"}
    assert tree(dest) == before
    changed = next(iter(world.images))
    simpix.set_rendering(world.sim, changed, channel=0, color="FF00FF", active=False)
    rc, out, err = export(world, dest, "Dataset:%d" % world.dataset, extra=["--sync"])
    assert rc == 0, err
    actions = {r["image"]: r["action"] for r in records(out, "image")}
    assert actions == {i: ("metadata" if i == changed else "kept") for i in world.images}
    after = tree(dest)
    differing = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
    path = next(r["path"] for r in records(out, "image") if r["image"] == changed)
    assert differing == {path + "/.zattrs", INDEX_NAME}
    channel = json.loads(after[path + "/.zattrs"])["omero"]["channels"][0]
    assert channel["color"] == "FF00FF" and channel["active"] is False


def test_permissions_restricted_and_unreadable_images_never_written(world, tmp_path):
    world.sim.add_group("priv", "rw----")
    world.sim.add_user("carol", ["priv", "lab"])   # a private group of hers bob is not in
    secret = add_fake(world.sim, world.src, fake_name(sizeX=20, sizeY=20), owner="carol",
                      group="priv")[0]
    world.sim.set_binary_access(True, group="lab")
    dest = tmp_path / "bob"
    rc, out, err = export(world, dest, "Dataset:%d" % world.dataset, "Image:%d" % secret,
                          user="bob")
    assert rc == 5, err                       # Image:secret is unknown to bob
    assert records(out, "object_missing") == [{"type": "object_missing",
                                                "object": "Image:%d" % secret}]
    skipped = records(out, "skipped")
    assert {r["image"] for r in skipped} == set(world.images)
    assert {r["reason"] for r in skipped} == {"restricted"}
    assert records(out, "image") == []
    assert [p for p in tree(dest) if p != INDEX_NAME and not p.startswith(".omero")] == []
    # the owner is never restricted; an admin exporting --as-user bob gets bob's view
    rc, out, err = export(world, tmp_path / "alice", "Dataset:%d" % world.dataset)
    assert rc == 0 and len(records(out, "image")) == len(world.images)
    rc, out, err = run_cli(world.sim.root, ["export", "--zarr", str(tmp_path / "asbob"),
                                            "Dataset:%d" % world.dataset, "--as-user", "bob",
                                            "--json", *control_args(world.sim.root)],
                           user="root")
    assert rc == 0, err
    assert records(out, "image") == [] and len(records(out, "skipped")) == len(world.images)
    world.sim.set_binary_access(False, group="lab")
    # --sync removes what is no longer readable
    rc, out, err = export(world, dest, "Dataset:%d" % world.dataset, user="bob")
    assert rc == 0 and len(records(out, "image")) == len(world.images)
    gone = world.sim.add_dataset("Other", "alice")
    world.sim.query("UPDATE DatasetImageLink SET parent = ? WHERE child = ?",
                    (gone, next(iter(world.images))))
    rc, out, err = export(world, dest, "Dataset:%d" % world.dataset, user="bob",
                          extra=["--sync"])
    assert rc == 0, err
    removed = records(out, "removed")
    assert [r["image"] for r in removed] == [next(iter(world.images))]
    assert not (dest / removed[0]["path"]).exists()


@pytest.mark.parametrize("argv, rc, message", [
    (["--ngff", "0.5"], 2, "is not written by this version"),
    (["--layout", "fileset"], 2, "with --zarr the layouts are tree and flat"),
    (["--link", "hard"], 2, "--link applies to --originals only"),
    (["--chunk", "0"], 2, "must be 1 or more"),
])
def test_bad_arguments_change_nothing(world, tmp_path, argv, rc, message):
    dest = tmp_path / "dest"
    code, out, err = export(world, dest, "Dataset:%d" % world.dataset, extra=argv)
    assert code == rc and message in err
    assert not dest.exists()



@pytest.mark.parametrize("obj", ["Image:99999999999999999999999", "Image:9223372036854775808",
                                 "Image:\u0663", "Image:1_000", "Image: 7"])
def test_an_id_beyond_omeros_long_is_bad_syntax_not_a_crash(world, tmp_path, obj):
    """OMERO ids are Java longs: a longer number is not an object id (exit 2), for both exports."""
    dest = tmp_path / "dest"
    code, out, err = export(world, dest, obj)
    assert (code, out) == (2, "") and "is not an object id" in err and "Traceback" not in err
    code, _, err = run_cli(world.sim.root, ["export", "--originals", str(dest), obj,
                                        *control_args(world.sim.root)], user="alice")
    assert code == 2 and "is not an object id" in err
    assert not dest.exists()


def test_refusals_fileset_objects_other_users_dest_and_all_missing(world, tmp_path):
    dest = tmp_path / "dest"
    rc, _out, err = export(world, dest, "Fileset:1")
    assert rc == 2 and "not Fileset:1" in err
    rc, _out, err = export(world, dest, "Image:999999")
    assert rc == 22 and not dest.exists()
    rc, _out, err = export(world, dest, "Dataset:%d" % world.dataset)
    assert rc == 0, err
    rc, _out, err = export(world, dest, "Dataset:%d" % world.dataset, user="bob")
    assert rc == 3 and "export of 'alice'" in err
    rc, _out, err = export(world, dest, "Dataset:%d" % world.dataset, extra=["--chunk", "256"])
    assert rc == 3 and "--chunk 1024" in err
    afile = tmp_path / "afile"
    afile.write_text("x")
    rc, _out, err = export(world, afile, "Dataset:%d" % world.dataset)
    assert rc == 3 and afile.read_text() == "x"
    inside = os.path.join(world.sim.repo_dir, "zarr")
    rc, _out, err = export(world, inside, "Dataset:%d" % world.dataset)
    assert rc == 3 and not os.path.exists(inside)
    rc, _out, err = export(world, tmp_path / "no" / "parent", "Dataset:%d" % world.dataset)
    assert rc == 3 and "parent" in err


def test_a_second_run_on_the_same_dest_is_refused(world, tmp_path):
    from omero_cli_ext.export import state
    dest = tmp_path / "dest"
    dest.mkdir()
    root_fd = state.open_root(state_root(world.sim.root))
    state_fd = state.open_for(root_fd, os.stat(dest), create=True)
    held = state.Lock(state_fd)      # the lock --originals takes: one run per DEST, either kind
    try:
        rc, _out, err = export(world, dest, "Dataset:%d" % world.dataset)
    finally:
        held.release()
        os.close(state_fd)
        os.close(root_fd)
    assert rc == 9 and "another export is running on this DEST" in err
    assert os.listdir(dest) == []


def test_closed_stdout_ends_cleanly_and_the_rerun_completes(world, tmp_path):
    import subprocess
    dest = tmp_path / "dest"
    argv = script_command(world.sim.root, ["export", "--zarr", str(dest),
                                           "Dataset:%d" % world.dataset, "--json", "--chunk",
                                           "256", *control_args(world.sim.root)], "alice")
    head = subprocess.run(" ".join("'%s'" % a for a in argv) + " | head -1", shell=True,
                          capture_output=True, text=True, env=script_env())
    assert "Traceback" not in head.stderr, head.stderr
    rc, out, err = export(world, dest, "Dataset:%d" % world.dataset, extra=["--chunk", "256"])
    assert rc == 0, err
    for record in records(out, "image"):
        check_image(world.sim, dest / record["path"], record["image"])


@pytest.mark.parametrize("argv, message", [
    (["--layout", "flat"], "--layout flat applies to --zarr only"),
    (["--workers", "2"], "apply to --zarr only"),
])
def test_zarr_only_options_are_refused_with_originals(world, tmp_path, argv, message):
    rc, _out, err = run_cli(world.sim.root, ["export", "--originals", str(tmp_path / "o"),
                                             "Dataset:%d" % world.dataset, *argv], user="alice")
    assert rc == 2 and message in err and not (tmp_path / "o").exists()


def test_a_plate_whose_fields_are_all_restricted_writes_nothing(world, tmp_path):
    name = "SPW&plates=1&plateRows=1&plateCols=2&fields=2&sizeX=16&sizeY=16.fake"
    add_fake(world.sim, world.src, name, spw=True)
    plate = world.sim.query("SELECT MAX(id) FROM Plate")[0][0]
    world.sim.set_binary_access(True, group="lab")
    dest = tmp_path / "bob"
    rc, out, err = export(world, dest, "Plate:%d" % plate, user="bob")
    assert rc == 0, err
    skipped = records(out, "skipped")
    assert sorted(r.get("reason") for r in skipped) == ["no field written"] + ["restricted"] * 4
    assert records(out, "image") == [] and records(out, "plate") == []
    assert [p for p in tree(dest) if not p.startswith(".omero") and p != INDEX_NAME] == []
    index = json.loads((dest / INDEX_NAME).read_text())
    assert index["images"] == [] and index["plates"] == []


def test_a_symlink_planted_at_a_plates_row_fails_the_plate_not_the_run(world, tmp_path):
    name = "SPW&plates=1&plateRows=2&plateCols=1&fields=1&sizeX=40&sizeY=30.fake"
    screen = world.sim.add_screen("Scr", "alice")
    add_fake(world.sim, world.src, name, target=("Screen", screen), spw=True)
    dest = tmp_path / "dest"
    rc, out, err = export(world, dest, "Screen:%d" % screen, "Dataset:%d" % world.dataset)
    assert rc == 0, err
    plate = records(out, "plate")[0]
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.rmtree(dest / plate["path"] / "B")
    os.symlink(outside, dest / plate["path"] / "B")
    (dest / plate["path"] / ".zattrs").unlink()
    rc, out, err = export(world, dest, "Screen:%d" % screen, "Dataset:%d" % world.dataset)
    assert rc == 7, err
    failed = records(out, "failed")            # the field in row B, then the plate itself
    assert [r["plate"] for r in failed] == [plate["plate"]] * 2 and failed[1]["image"] is None
    assert os.listdir(outside) == []
    assert len(records(out, "image")) == len(world.images) + 1     # the field in row A
