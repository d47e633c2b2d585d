"""Several driver processes share one job through a PostgreSQL journal (real server from
tests/pg_fixture.py): every chunk is imported once, and none is lost when a worker is killed."""
from __future__ import annotations

import subprocess
import time

import pytest

from import_helpers import driver_command, driver_env, fake_images
from sim.builder import lab_server

N_FILESETS = 120


def start(sim_root, src, url, env):
    return subprocess.Popen(driver_command(sim_root, "--job", "shared", "--journal", url,
                                           "--chunk-size", "5", "--lease", "2", "--clean-ghosts",
                                           src),
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.parametrize("workers", [2, 3])
def test_workers_share_a_job_and_survive_the_death_of_one(tmp_path, postgres_db_url, workers):
    sim = lab_server(str(tmp_path / "sim"))
    src = tmp_path / "src"
    src.mkdir()
    fake_images(src, N_FILESETS, size=10)
    env = driver_env(tmp_path, SECONDS_PER_FILESET="0.05")
    procs = [start(sim.root, str(src), postgres_db_url, env) for _ in range(workers)]
    import psycopg
    with psycopg.connect(postgres_db_url, autocommit=True) as db:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:      # kill one worker while it holds a chunk
            try:
                row = db.execute("SELECT pid, chunk FROM import_chunk WHERE state = 'running' "
                                 "LIMIT 1").fetchone()
            except psycopg.errors.UndefinedTable:
                row = None
            if row:
                break
            time.sleep(0.05)
        assert row, "no worker claimed a chunk"
        victim = next(p for p in procs if p.pid == row[0])
        victim.kill()
        victim.wait()
        survivors = [p for p in procs if p is not victim]
        for proc in survivors:
            _, err = proc.communicate(timeout=170)
            assert proc.returncode == 0, err.decode()[-2000:]
        chunks = db.execute("SELECT state, count(*) FROM import_chunk GROUP BY state").fetchall()
        taken_over = db.execute("SELECT state, pid FROM import_chunk WHERE chunk = %s",
                                (row[1],)).fetchone()
        registered = db.execute("SELECT count(DISTINCT pid) FROM import_worker").fetchone()[0]
    per_path = sim.query("SELECT fe.clientPath, count(DISTINCT fe.fileset) FROM FilesetEntry fe "
                         "JOIN Image i ON i.fileset = fe.fileset GROUP BY fe.clientPath")
    assert len(per_path) == N_FILESETS and {c for _, c in per_path} == {1}
    assert chunks == [("done", N_FILESETS // 5)]
    assert taken_over[0] == "done" and taken_over[1] != victim.pid   # the dead one's chunk
    assert registered == workers
    assert sim.query("SELECT count(*) FROM Fileset f WHERE NOT EXISTS "
                     "(SELECT 1 FROM Image i WHERE i.fileset = f.id)") == [(0,)]
