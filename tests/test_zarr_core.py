"""The pure parts of the zarr export: FakeReader's values as the simulated server serves them, the
2x2 mean, levels, layout, the index and its journal, retries and refusals in the writer."""
from __future__ import annotations

import os

import numpy as np
import pytest

from omero_cli_ext import server
from omero_cli_ext.zarr import index as index_io
from omero_cli_ext.zarr import ngff, plan as zplan
from omero_cli_ext.zarr.writer import Options, Writer
from sim import pixels as simpix
from test_zarr_export import numpy_mean2


# --------------------------------------------------------------------------- FakeReader values

def test_fake_names_parse_like_fakereader():
    spec = simpix.parse_fake("a/b/img&sizeX=300&sizeY=20&sizeZ=3&sizeC=2&sizeT=4"
                             "&pixelType=int16&series=2&physicalSizeX=500nm&color_1=0xFF0000FF"
                             "&junk.fake")
    assert (spec.name, spec.size_x, spec.size_y, spec.size_z, spec.size_c, spec.size_t,
            spec.pixel_type, spec.series) == ("img", 300, 20, 3, 2, 4, "int16", 2)
    assert spec.physical == (0.5, None, None) and spec.colors == {1: "FF0000"}
    assert simpix.parse_fake("plain.tif") == simpix.FakeSpec(name="plain.tif")
    spw = simpix.parse_fake("SPW&plates=2&plateRows=3&plateCols=4&fields=5&plateAcqs=2.fake")
    assert spw.image_count == 2 * 3 * 4 * 5 * 2
    # series = acq*fields fastest, then wells row-major, then plates (toSPWCoordinates)
    assert spw.spw_position(0) == (0, 0, 0, 0, 0)
    assert spw.spw_position(5) == (0, 0, 0, 0, 1)
    assert spw.spw_position(10) == (0, 0, 1, 0, 0)
    assert spw.spw_position(10 * 4) == (0, 1, 0, 0, 0)
    assert spw.spw_position(10 * 12 + 3) == (1, 0, 0, 3, 0)
    with pytest.raises(ValueError):
        simpix.parse_fake("img&sizeX=0.fake")


def test_fake_values_gradient_wraps_and_boxes_encode_the_plane():
    spec = simpix.parse_fake("img&sizeX=600&sizeY=30&sizeZ=3&sizeC=2&sizeT=2.fake")
    tile = simpix.fake_tile(spec, 4, z=2, c=1, t=1, x=0, y=0, w=600, h=30)
    assert tile.dtype == np.uint8
    assert list(tile[20, 255:258]) == [255, 0, 1]               # min + x, cut to 8 bits
    no = 2 + 3 * (1 + 2 * 1)
    assert [tile[0, 10 * k] for k in range(6)] == [4, no, 2, 1, 1, 50]
    assert tile[9, 45] == 1 and tile[10, 45] == 45                # boxes are 10 rows high
    signed = simpix.parse_fake("img&sizeX=70000&sizeY=11&pixelType=int16.fake")
    row = simpix.fake_tile(signed, 0, 0, 0, 0, 65530, 10, 10, 1)[0]
    assert list(row[:7]) == [32762, 32763, 32764, 32765, 32766, 32767, -32768]
    floats = simpix.parse_fake("img&sizeX=64&sizeY=12&pixelType=double.fake")
    assert simpix.fake_tile(floats, 0, 0, 0, 0, 50, 11, 3, 1).tolist() == [[50.0, 51.0, 52.0]]


def test_sim_reader_is_big_endian_and_bounds_checked():
    reader = simpix.SimPixelsReader(simpix.parse_fake("i&sizeX=40&sizeY=40&pixelType=uint16.fake"), 0)
    assert reader.tile(0, 0, 0, 20, 30, 2, 1) == b"\x00\x14\x00\x15"
    with pytest.raises(server.ServerError, match="DimensionsOutOfBounds"):
        reader.tile(0, 0, 0, 39, 0, 2, 1)


# --------------------------------------------------------------------------- levels and means

@pytest.mark.parametrize("dtype", ["u1", "i2", "u2", "i4", "u4", "f4", "f8"])
@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (8, 8), (33, 64)])
def test_downsample_is_the_2x2_mean(dtype, shape):
    rng = np.random.default_rng(sum(shape))
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    if info:
        block = rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=np.int64)
    else:
        block = rng.normal(0, 1000, size=shape)
    block = block.astype(dtype)
    ours, theirs = ngff.downsample(block), numpy_mean2(block)
    assert ours.dtype == block.dtype
    if info:
        assert np.array_equal(ours, theirs)
    else:   # the same mean; float sums may differ in the last bit with the summation order
        np.testing.assert_allclose(ours, theirs, rtol=1e-6 if dtype == "f4" else 1e-12)


def test_levels_halve_until_the_long_side_fits():
    info = server.PixelsInfo(1, "a", 1, 2100, 5000, 1, 1, 1, "uint8")
    shapes = ngff.level_shapes(info)
    assert [s[3:] for s in shapes] == [(5000, 2100), (2500, 1050), (1250, 525), (625, 263)]
    small = server.PixelsInfo(1, "a", 1, 1024, 10, 1, 1, 1, "uint8")
    assert len(ngff.level_shapes(small)) == 1
    assert ngff.row_name(0) == "A" and ngff.row_name(25) == "Z" and ngff.row_name(26) == "AA"


# --------------------------------------------------------------------------- layout and index

def pixels(image_id, name="x", containers=("Project", "P", "Dataset", "D"), **kw):
    return server.PixelsInfo(image_id, name, image_id, 10, 10, 1, 1, 1, kw.pop("pt", "uint8"),
                             containers=containers, **kw)


def test_tree_layout_clashes_unsafe_names_and_known_paths():
    infos = {1: pixels(1), 2: pixels(2), 3: pixels(3, "a[0] #?", ()), 4: pixels(4, pt="bit"),
             5: pixels(5, binary_restricted=True)}
    plan = zplan.build(infos, {}, [2, 1, 3, 4, 5], [], "tree", 1024, {})
    assert [j.path for j in plan.images] == ["P/D/x.ome.zarr", "P/D/x_2.ome.zarr",
                                             "orphaned/a_0_ __.ome.zarr"]
    assert plan.skipped == [(4, "unsupported pixel type bit", None), (5, "restricted", None)]
    kept = zplan.build(infos, {}, [1, 2], [], "tree", 1024, {"image:2": "P/D/x.ome.zarr"})
    assert [(j.image_id, j.path) for j in kept.images] == [(1, "P/D/x_1.ome.zarr"),
                                                           (2, "P/D/x.ome.zarr")]
    flat = zplan.build(infos, {}, [1], [], "flat", 1024, {})
    assert flat.images[0].path == "Image_1.ome.zarr"


def test_index_replays_its_journal_and_refuses_unsafe_paths(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        index = index_io.Index("uuid", "alice", "0.4", "tree", 1024)
        entry = {"kind": "image", "image": 1, "plate": None, "path": "P/D/x.ome.zarr",
                 "complete": False}
        index.entries["image:1"] = entry
        index_io.save(fd, index)
        journal = index_io.Journal(fd)
        journal.append(dict(entry, complete=True))
        journal.close()
        with open(tmp_path / index_io.JOURNAL_NAME, "a") as stream:
            stream.write('{"kind": "image", "ima')           # cut by a crash
        assert index_io.load(fd).entries["image:1"]["complete"] is True
        index.entries["image:1"] = dict(entry, path="../../etc")
        index_io.save(fd, index)
        with pytest.raises(index_io.IndexError_, match="unsafe path"):
            index_io.load(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- writer

class FlakyReader:
    def __init__(self, port):
        self.port = port

    def tile(self, z, c, t, x, y, w, h):
        self.port.calls += 1
        if self.port.calls <= self.port.failures:
            raise server.ServerError("Ice.ConnectionLostException")
        return b"\x00\x07" * (w * h)

    def close(self):
        self.port.closed += 1


class FakePort:
    def __init__(self, failures=0, refuse=False):
        self.failures, self.refuse = failures, refuse
        self.calls = self.opened = self.closed = 0

    def open_pixels(self, image_id):
        if self.refuse:
            raise server.PermissionDenied("no")
        self.opened += 1
        return FlakyReader(self)


def run_writer(tmp_path, port, retries=4):
    info = server.PixelsInfo(9, "img", 9, 40, 30, 1, 1, 1, "uint16")
    plan = zplan.build({9: info}, {}, [9], [], "flat", 1024, {})
    events, sleeps = [], []
    state = tmp_path.with_name(tmp_path.name + ".state")      # out of DEST, as in a run
    state.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    state_fd = os.open(state, os.O_RDONLY | os.O_DIRECTORY)
    try:
        writer = Writer(port, fd, Options(retries=retries), emit=lambda t, **f: events.append((t, f)),
                        sleep=sleeps.append, state_fd=state_fd)
        result = writer.run(plan, index_io.Index("u", "alice", "0.4", "flat", 1024), {})
    finally:
        os.close(fd)
        os.close(state_fd)
    return result, events, sleeps


def test_transient_tile_errors_are_retried_with_backoff_on_a_new_service(tmp_path):
    port = FakePort(failures=2)
    result, events, sleeps = run_writer(tmp_path, port)
    assert sleeps == [0.5, 1.0] and port.opened == 3 and port.closed == 3
    assert result.failed == [] and [e[1]["action"] for e in events if e[0] == "image"] == ["written"]


def test_an_image_failing_past_its_retries_is_listed_and_the_run_goes_on(tmp_path):
    port = FakePort(failures=100)
    result, events, sleeps = run_writer(tmp_path, port, retries=2)
    assert sleeps == [0.5, 1.0] and len(result.failed) == 1
    assert "failed 3 times" in result.failed[0][1]
    assert [e[0] for e in events] == ["failed"]


def test_refused_pixels_write_nothing(tmp_path):
    result, events, _ = run_writer(tmp_path, FakePort(refuse=True))
    assert [e[0] for e in events] == ["skipped"] and result.skipped == [(9, "not readable")]
    assert not (tmp_path / "Image_9.ome.zarr").exists()


def test_a_symlink_planted_in_dest_is_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(outside, dest / "Image_9.ome.zarr")
    result, events, _ = run_writer(dest, FakePort())
    assert [e[0] for e in events] == ["failed"] and os.listdir(outside) == []


def test_a_fifo_planted_as_a_document_fails_the_image_instead_of_hanging(tmp_path):
    image_dir = tmp_path / "Image_9.ome.zarr"
    image_dir.mkdir()
    os.mkfifo(image_dir / ".zgroup")
    result, events, _ = run_writer(tmp_path, FakePort())
    assert [e[0] for e in events] == ["failed"] and ".zgroup" in result.failed[0][1]


def test_the_fake_importer_counts_images_and_plates_as_fakereader(tmp_path):
    from sim.fake_importer import find_candidates
    spw = tmp_path / "SPW&plates=1&plateRows=2&plateCols=2&fields=3.fake"
    multi = tmp_path / "img&series=3&sizeX=20.fake"
    for path in (spw, multi):
        path.write_text("")
    found = {os.path.basename(c.main): (c.spw, c.images) for c in find_candidates(
        [str(spw), str(multi)])}
    assert found == {spw.name: (True, 12), multi.name: (False, 3)}


def test_remove_tree_removes_symlinks_never_their_targets(tmp_path):
    from omero_cli_ext.zarr import store
    outside = tmp_path / "outside"
    (outside / "keep").mkdir(parents=True)
    (outside / "keep" / "f").write_text("x")
    tree_dir = tmp_path / "dest" / "img.ome.zarr" / "0" / "0"
    tree_dir.mkdir(parents=True)
    (tree_dir / "0").write_bytes(b"chunk")
    os.symlink(outside / "keep", tree_dir / "link_dir")
    os.symlink(outside / "keep" / "f", tree_dir / "link_file")
    fd = os.open(tmp_path / "dest", os.O_RDONLY | os.O_DIRECTORY)
    try:
        store.remove_tree(fd, "img.ome.zarr")
    finally:
        os.close(fd)
    assert os.listdir(tmp_path / "dest") == []
    assert (outside / "keep" / "f").read_text() == "x"
