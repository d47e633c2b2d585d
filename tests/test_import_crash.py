"""Crash scenarios: `kill -9` of the driver and of its importer at seeded random moments, rerun
until done; every planned fileset must be on the simulated server exactly once, no ghost left."""
from __future__ import annotations

import glob
import os
import random
import signal
import sqlite3
import subprocess
import time

import pytest

from import_helpers import driver_command, driver_env
from sim.builder import lab_server

N_FILESETS = 1000
DRIVER_KILLS = 20
IMPORTER_KILLS = 10


def children(pid: int) -> list:
    found = []
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            with open(path) as stream:
                found += [int(p) for p in stream.read().split()]
        except OSError:
            pass
    return found


def start(sim_root, src, env):
    return subprocess.Popen(driver_command(sim_root, "--chunk-size", "50", "--clean-ghosts",
                                           "--retries", "50", src),
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_kill_driver_and_importer_at_random_moments_then_finish_exactly_once(tmp_path):
    sim = lab_server(str(tmp_path / "sim"))
    src = tmp_path / "src"
    for d in range(10):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(N_FILESETS // 10):
            (src / f"d{d}" / f"img{i:03d}.fake").write_bytes(b"x" * (64 + i))
    env = driver_env(tmp_path, SECONDS_PER_FILESET="0.03")
    rng = random.Random(20240501)
    kills = ["driver"] * DRIVER_KILLS + ["importer"] * IMPORTER_KILLS
    rng.shuffle(kills)
    hits = {"driver": 0, "importer": 0}
    for victim in kills:
        driver = start(sim.root, str(src), env)
        if victim == "importer":
            deadline = time.monotonic() + 10
            while not children(driver.pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.8))
            importers = children(driver.pid)
            for pid in importers:
                os.kill(pid, signal.SIGKILL)
            hits["importer"] += bool(importers)
            time.sleep(rng.uniform(0.2, 1.0))
        else:
            time.sleep(rng.uniform(0.5, 3.0))
        hits["driver"] += driver.poll() is None
        driver.kill()
        driver.wait()
    done = sim.query("SELECT count(DISTINCT fe.clientPath) FROM FilesetEntry fe JOIN Image i "
                     "ON i.fileset = fe.fileset")[0][0]
    # the kills landed while there was work: live drivers, running importers, an unfinished job
    assert hits["driver"] >= DRIVER_KILLS and hits["importer"] >= IMPORTER_KILLS - 2, hits
    assert done < N_FILESETS
    # past --lease and --server-step-timeout on the server's clock: the killed importers' uploads
    # are dead, and so are the imports whose server steps the (fake) importer ran when it died
    sim.advance(13 * 3600)
    for _ in range(5):
        driver = start(sim.root, str(src), env)
        _, err = driver.communicate(timeout=170)
        if driver.returncode == 0:
            break
    assert driver.returncode == 0, err.decode()[-2000:]

    per_path = sim.query("SELECT fe.clientPath, count(DISTINCT fe.fileset) FROM FilesetEntry fe "
                         "GROUP BY fe.clientPath")
    assert len(per_path) == N_FILESETS
    assert {count for _, count in per_path} == {1}            # exactly once
    assert sim.query("SELECT count(*) FROM Fileset f WHERE NOT EXISTS "
                     "(SELECT 1 FROM Image i WHERE i.fileset = f.id)") == [(0,)]   # no ghost
    [journal] = glob.glob(str(tmp_path / "userdir" / "omero-cli-ext" / "import-jobs" / "*.sqlite"))
    with sqlite3.connect(journal) as db:
        rows = db.execute("SELECT main, state, fileset_id FROM import_fileset").fetchall()
    server = dict(sim.query("SELECT fe.fileset, fe.clientPath FROM FilesetEntry fe"))
    assert len(rows) == N_FILESETS
    for main, state, fid in rows:
        assert state == "done" and server[fid] == main.lstrip("/")
