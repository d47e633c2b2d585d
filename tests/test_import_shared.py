"""Several driver processes share one job through a PostgreSQL journal (real server from
tests/pg_fixture.py): every chunk is imported once, and none is lost when a worker is killed."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from sim.server import SimServer

HERE = os.path.dirname(os.path.abspath(__file__))
LAUNCHER = os.path.join(HERE, "sim", "launcher.py")
N_FILESETS = 120


def start(sim_root, src, url, env):
    return subprocess.Popen([sys.executable, LAUNCHER, "--sim-root", sim_root, "--sim-user",
                             "alice", "import", "--resume", "--job", "shared", "--journal", url,
                             "--chunk-size", "5", "--lease", "2", "--clean-ghosts", src],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.parametrize("workers", [2, 3])
def test_workers_share_a_job_and_survive_the_death_of_one(tmp_path, postgres_db_url, workers):
    sim = SimServer(str(tmp_path / "sim"))
    sim.add_group("lab", "rwr---")
    sim.add_user("alice", ["lab"])
    src = tmp_path / "src"
    src.mkdir()
    for i in range(N_FILESETS):
        (src / f"img{i:03d}.fake").write_bytes(b"x" * (10 + i))
    pythonpath = os.pathsep.join(p for p in (os.path.dirname(HERE), os.environ.get("PYTHONPATH"))
                                 if p)
    env = dict(os.environ, PYTHONPATH=pythonpath, OMERO_USERDIR=str(tmp_path / "userdir"),
               OMERO_CLI_EXT_SIM_SECONDS_PER_FILESET="0.05")
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
