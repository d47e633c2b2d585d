"""The `omero mv` tables in a journal (omero_cli_ext.journal): one row per job, one per step.

The plan is written in one transaction before the first change; each step's outcome is written
after it, in batches. A job is "running" until it ends "done", "failed" (rolled back, nothing
changed) or "abandoned"; at most one unfinished job per repository.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence

from omero_cli_ext.journal import Journal
from omero_cli_ext.mv.plan import Plan, Step

COMPONENT = "mv"
SCHEMA_VERSION = 1
SCHEMA = (
    "CREATE TABLE mv_job (id INTEGER PRIMARY KEY AUTOINCREMENT, repo TEXT NOT NULL, "
    "job_key TEXT NOT NULL, command TEXT NOT NULL, mode TEXT NOT NULL, same_fs INTEGER NOT NULL, "
    "state TEXT NOT NULL, created TEXT NOT NULL, updated TEXT NOT NULL, summary TEXT)",
    "CREATE INDEX mv_job_repo_state ON mv_job (repo, state)",
    "CREATE TABLE mv_step (job INTEGER NOT NULL REFERENCES mv_job (id), seq INTEGER NOT NULL, "
    "kind TEXT NOT NULL, path BLOB NOT NULL, other BLOB, old BLOB, new BLOB, size INTEGER, "
    "mode INTEGER, uid INTEGER, gid INTEGER, mtime_ns INTEGER, hasher TEXT, hash TEXT, "
    "fileset INTEGER, state TEXT NOT NULL, note TEXT, PRIMARY KEY (job, seq))",
)
UNFINISHED = "running"
_STEP_COLUMNS = ("seq", "kind", "path", "other", "old", "new", "size", "mode", "uid", "gid",
                 "mtime_ns", "hasher", "hash", "fileset", "state", "note")


@dataclass(frozen=True)
class Job:
    id: int
    repo: str
    key: str
    command: str
    mode: str
    same_fs: bool
    state: str
    created: str


def _blob(value: Optional[bytes]):
    return None if value is None else bytes(value)


class JobStore:
    def __init__(self, journal: Journal):
        self.journal = journal
        journal.ensure_schema(COMPONENT, SCHEMA_VERSION, SCHEMA)

    def unfinished(self, repo: str) -> Optional[Job]:
        row = self.journal.query_one(
            "SELECT id, repo, job_key, command, mode, same_fs, state, created FROM mv_job "
            "WHERE repo = ? AND state = ? ORDER BY id LIMIT 1", (repo, UNFINISHED))
        return None if row is None else Job(row[0], row[1], row[2], row[3], row[4],
                                             bool(row[5]), row[6], row[7])

    def create(self, repo: str, command: str, plan: Plan) -> Job:
        """Record the job and its whole plan in one transaction."""
        now = self.journal.now()
        key = plan.request.key()
        with self.journal.transaction():
            row = self.journal.query_one(
                "INSERT INTO mv_job (repo, job_key, command, mode, same_fs, state, created, "
                "updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (repo, key, command, plan.request.mode, int(plan.same_fs), UNFINISHED, now, now))
            job_id = row[0]
            marks = ", ".join("?" * (len(_STEP_COLUMNS) + 1))
            self.journal.executemany(
                f"INSERT INTO mv_step (job, {', '.join(_STEP_COLUMNS)}) VALUES ({marks})",
                [(job_id, s.seq, s.kind, _blob(s.path), _blob(s.other), _blob(s.old),
                  _blob(s.new), s.size, s.mode, s.uid, s.gid, s.mtime_ns, s.hasher, s.hash,
                  s.fileset, s.state, s.note) for s in plan.steps])
        return Job(job_id, repo, key, command, plan.request.mode, plan.same_fs, UNFINISHED, now)

    def steps(self, job_id: int) -> List[Step]:
        rows = self.journal.query(
            f"SELECT {', '.join(_STEP_COLUMNS)} FROM mv_step WHERE job = ? ORDER BY seq",
            (job_id,))
        steps = []
        for row in rows:
            values = dict(zip(_STEP_COLUMNS, row))
            for name in ("path", "other", "old", "new"):
                if values[name] is not None:
                    values[name] = bytes(values[name])
            steps.append(Step(**values))
        return steps

    def record(self, job_id: int, steps: Sequence[Step]) -> None:
        """Outcomes of finished steps (one transaction)."""
        with self.journal.transaction():
            self.journal.executemany(
                "UPDATE mv_step SET state = ?, note = ?, hasher = ?, hash = ? "
                "WHERE job = ? AND seq = ?",
                [(s.state, s.note, s.hasher, s.hash, job_id, s.seq) for s in steps])
            self.journal.execute("UPDATE mv_job SET updated = ? WHERE id = ?",
                                 (self.journal.now(), job_id))

    def finish(self, job_id: int, state: str, summary: dict) -> None:
        self.journal.execute("UPDATE mv_job SET state = ?, updated = ?, summary = ? WHERE id = ?",
                             (state, self.journal.now(), json.dumps(summary, default=os.fsdecode),
                              job_id))

    def plan_info(self, job_id: int) -> dict:
        """The notes and unresolved links recorded with the plan."""
        row = self.journal.query_one("SELECT summary FROM mv_job WHERE id = ?", (job_id,))
        return json.loads(row[0]) if row and row[0] else {}

    def set_plan_info(self, job_id: int, info: dict) -> None:
        self.journal.execute("UPDATE mv_job SET summary = ? WHERE id = ?",
                             (json.dumps(info, default=os.fsdecode), job_id))

    def abandon(self, repo: str) -> Optional[Job]:
        """Mark the repository's unfinished job abandoned; returns it (None if there was none)."""
        job = self.unfinished(repo)
        if job is not None:
            self.finish(job.id, "abandoned", self.plan_info(job.id))
        return job

    def finished_same(self, repo: str, key: str) -> Optional[Job]:
        """The newest job with this identity that ended done (a rerun after completion)."""
        row = self.journal.query_one(
            "SELECT id, repo, job_key, command, mode, same_fs, state, updated FROM mv_job "
            "WHERE repo = ? AND job_key = ? AND state = 'done' ORDER BY id DESC LIMIT 1",
            (repo, key))
        return None if row is None else Job(row[0], row[1], row[2], row[3], row[4],
                                             bool(row[5]), row[6], row[7])
