"""The benchmark scripts that check the issues' speed targets still run, at toy sizes (their
figures mean nothing here; only that each script gets through and prints its verdict lines)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("script, argv, expected", [
    ("mv_relink.py", ["--links", "4100", "--rounds", "1"],
     ["relink  median ratio", "scan    walk_links, one process", "as the command scans"]),
    ("mv_move.py", ["--files", "4100", "--rounds", "1"], ["speed-up"]),
    ("export_originals.py", ["--files", "200", "--repeat", "1"],
     ["ratio export / cp -al", "floor, 1 process", "floor, 2 processes", "server round trips"]),
    ("status_imports.py", ["--sizes", "100"], ["first full screen", "round trips"]),
    ("adapter_scale.py", ["--files", "30", "--filesets", "40"], ["round trips", "largest answer"]),
    ("import_resume.py", ["--filesets", "100"], ["driver overhead"]),
    ("export_zarr.py", ["--images", "1", "--size", "1100"],
     ["ratio export / zarr from memory", "peak memory"]),
])
def test_benchmark_runs_and_prints_its_verdict(tmp_path, script, argv, expected):
    where = ["--dir", str(tmp_path)] if script.startswith("mv_") else []
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), *argv,
                           *where], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for line in expected:
        assert line in done.stdout, f"{line!r} missing from:\n{done.stdout}"
