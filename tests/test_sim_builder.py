"""The repository builder makes real trees: absolute links, nested dirs, awkward names, many links."""
import os
import time

import pytest

from sim.builder import ODD_NAMES, build_inplace_tree, build_uploaded, lab_server
from sim.server import file_hash


@pytest.fixture
def sim(tmp_path):
    return lab_server(str(tmp_path / "server"))


def test_inplace_tree_links_every_file_absolutely(sim, tmp_path):
    built = build_inplace_tree(sim, "alice", str(tmp_path / "src"), 12, 3, odd_names=True)
    filesets = sim.port("alice").filesets(built.fileset_ids)
    assert len(filesets) == 12 and len(built.all_files) == 36
    for fid in built.fileset_ids:
        for entry, source in zip(filesets[fid].entries, built.files[fid]):
            link = os.path.join(sim.repo_dir, entry.original_file.repo_path)
            assert os.fsencode(os.readlink(link)) == os.fsencode(source)
            assert os.path.isabs(os.readlink(link))
            assert entry.original_file.hash == file_hash(source)
    names = {os.path.basename(f) for f in built.all_files}
    assert set(ODD_NAMES) <= names
    newline = next(e for f in filesets.values() for e in f.entries
                   if e.original_file.name == "new_line.fake")   # the path rules: "\n" -> "_"
    assert newline.client_path.endswith("/new_line.fake")     # in the clientPath too


def test_uploaded_tree_has_real_copies(sim, tmp_path):
    built = build_uploaded(sim, "alice", str(tmp_path / "src"), 3, 2, nested=False)
    for fid, fileset in sim.port("alice").filesets(built.fileset_ids).items():
        for entry, source in zip(fileset.entries, built.files[fid]):
            copy = os.path.join(sim.repo_dir, entry.original_file.repo_path)
            assert not os.path.islink(copy)
            assert open(copy, "rb").read() == open(source, "rb").read()


@pytest.mark.slow
def test_ten_thousand_links(sim, tmp_path):
    started = time.perf_counter()
    built = build_inplace_tree(sim, "alice", str(tmp_path / "src"), 2000, 5)
    elapsed = time.perf_counter() - started
    links = sum(len(files) for _, _, files in os.walk(sim.repo_dir)) - len(built.fileset_ids)
    assert links == 10000
    print("built 10000 links in %.1f s" % elapsed)
