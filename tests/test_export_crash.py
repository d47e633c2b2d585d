"""kill -9 at seeded random moments, then `--sync`: complete, no partial file ever visible under
its final name, the manifest consistent after every kill."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from omero_cli_ext.export import manifest as manifest_io
from omero_cli_ext.export.manifest import MANIFEST_NAME
from sim.builder import build_uploaded, lab_server
from sim.launcher import script_env
from test_export_world import manifest, state_dir, state_root

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# tests/sim/launcher.py with 10 ms of latency per RawFileStore read, as over a network, and per
# entry made, so that kills land inside downloads and between links too
SLOW_LAUNCHER = """
import sys, time
sys.path[:0] = [{root!r}, {tests!r}]
import sim.server
read = sim.server._Reader.read
sim.server._Reader.read = lambda self, offset, length: (time.sleep(0.01), read(self, offset, length))[1]
import omero_cli_ext.export.execute as execute
make = execute.Exporter._make
execute.Exporter._make = lambda self, *args: (time.sleep(0.01), make(self, *args))[1]
from sim.launcher import main
sys.exit(main(sys.argv[1:]))
""".format(root=ROOT, tests=os.path.join(ROOT, "tests"))


def start(sim_root, dest, dataset, link):
    return subprocess.Popen(
        [sys.executable, "-c", SLOW_LAUNCHER, "--sim-root", sim_root, "--sim-user", "alice", "export",
         "--originals", dest, f"Dataset:{dataset}", "--owner", "root", "--link", link, "--sync",
         "--state-dir", state_root(sim_root)],
        env=script_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def uploaded_dataset(tmp_path, n_filesets: int) -> tuple:
    """(sim, dataset, built): alice's dataset of `n_filesets` uploaded filesets of two 3 MB files
    (under tmp_path/up), long enough to download that a kill lands inside one."""
    sim = lab_server(str(tmp_path / "sim"))
    dataset = sim.add_dataset("D", "alice")
    built = build_uploaded(sim, "alice", str(tmp_path / "up"), n_filesets, 2, file_size=3_000_000,
                           target=("Dataset", dataset))
    return sim, dataset, built


def final_files(dest) -> int:
    return sum(1 for _, _, names in os.walk(dest) for n in names
               if not n.startswith(".omero-cli-ext"))


def kill_at(proc, dest, target: int, extra: float) -> None:
    """SIGKILL once `target` files are in place (then `extra` seconds later): a seeded random
    moment inside the export, not in the interpreter's start-up."""
    while final_files(dest) < target and proc.poll() is None:
        time.sleep(0.001)
    time.sleep(extra)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


def check_consistent(dest, originals: dict) -> int:
    """Every file under a final name is complete and known to the manifest as replayed with its
    journal (done, or pending: to be checked and adopted); every done entry is on disk and is
    the file it records. Returns the number of exported files."""
    finals = {}
    for dirpath, _, names in os.walk(dest):
        for name in names:
            if name.startswith(".omero-cli-ext"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, name), dest)
            with open(os.path.join(dirpath, name), "rb") as stream:
                finals[rel] = stream.read()
    for rel, data in finals.items():
        assert data == originals[rel], f"partial or wrong file under its final name: {rel}"
    try:
        state = state_dir(dest)
    except FileNotFoundError:
        state = None
    if state is None or not os.path.exists(os.path.join(state, MANIFEST_NAME)):
        assert finals == {}, "files made before the manifest existed"
        return 0
    fd = os.open(state, os.O_RDONLY | os.O_DIRECTORY)
    try:
        known = manifest_io.load(fd).entries
    finally:
        os.close(fd)
    assert set(finals) <= set(known), "files under a final name the manifest does not know"
    for entry in known.values():
        if entry.state == "done":
            st = os.lstat(os.path.join(dest, entry.path))
            assert (st.st_dev, st.st_ino) == (entry.dev, entry.ino)
    return len(finals)


@pytest.mark.slow
@pytest.mark.parametrize("link", ["copy", "download", "hard", "sym"])
def test_kill_9_then_sync_completes(tmp_path, link):
    sim, dataset, built = uploaded_dataset(tmp_path, 20)
    originals = {}
    for path in built.all_files:
        with open(path, "rb") as stream:
            originals[os.path.relpath(path, tmp_path / "up" / "batch_0")] = stream.read()
    dest = str(tmp_path / "dest")
    rng = random.Random(6)
    counts = []
    for _ in range(6):
        done = final_files(dest) if os.path.isdir(dest) else 0
        if done >= len(originals) - 1:
            break
        proc = start(sim.root, dest, dataset, link)
        step = rng.randint(1, max(1, (len(originals) - done) // 4))
        kill_at(proc, dest, done + step, rng.uniform(0, 0.02))
        counts.append(check_consistent(dest, originals))
    assert min(counts) < len(originals), "every kill came too late to test anything"
    proc = start(sim.root, dest, dataset, link)
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    assert check_consistent(dest, originals) == len(originals)
    leftovers = [n for _, _, names in os.walk(dest) for n in names
                 if n.startswith(".omero-cli-ext")]
    assert leftovers == []
    doc = manifest(dest)
    assert sorted(e["path"] for e in doc["entries"]) == sorted(originals)
    assert {e["state"] for e in doc["entries"]} == {"done"}
    on_disk = {os.path.relpath(os.path.join(d, n), dest) for d, names, _ in os.walk(dest)
               for n in names}
    assert set(doc["directories"]) == on_disk     # every directory a killed run made is known


def test_ctrl_c_ends_cleanly_and_sync_goes_on(tmp_path):
    sim, dataset, built = uploaded_dataset(tmp_path, 10)
    dest = str(tmp_path / "dest")
    proc = start(sim.root, dest, dataset, "download")
    while final_files(dest) < 3 and proc.poll() is None:
        time.sleep(0.001)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 10
    err = proc.stderr.read().decode()
    assert "interrupted" in err and "--sync" in err and "Traceback" not in err
    assert check_consistent(dest, {os.path.relpath(p, tmp_path / "up" / "batch_0"):
                                   open(p, "rb").read() for p in built.all_files}) >= 3
    proc = start(sim.root, dest, dataset, "download")
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    assert final_files(dest) == len(built.all_files)
