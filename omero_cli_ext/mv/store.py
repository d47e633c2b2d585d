"""The `omero mv` tables in a journal (omero_cli_ext.journal): one row per job, the plan's steps
in packs of a few thousand (omero_cli_ext.mv.packing), and the outcomes that are not plain "done".

The plan is written in one transaction before the first change. Outcomes follow in batches:
the job's `done_through` says that every step up to that number finished, and only steps that
did not simply end "done" (skipped, or done with a note such as how a file was placed) get an
outcome row, so a batch of 5000 plain link changes writes one small row, not 5000. Outcomes are
marks that save work on resume, not proof of durability (see mv.execute).

A job is "running" until it ends "done", "failed" (rolled back, nothing changed) or
"abandoned"; at most one unfinished job per repository.

Journals of schema 1 and 2 kept a row per step in `mv_step`; the upgrade keeps that table, and
their jobs (`step_packs` 0) are still read from it, so an unfinished job survives the upgrade.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence

from omero_cli_ext.journal import Journal
from omero_cli_ext.mv.packing import STEPS_PER_PACK, pack_steps, unpack_steps
from omero_cli_ext.mv.plan import Plan, Step

COMPONENT = "mv"
SCHEMA_VERSION = 3
_PACK_TABLES = (
    "CREATE TABLE mv_pack (job INTEGER NOT NULL REFERENCES mv_job (id), first_seq INTEGER NOT NULL, "
    "data BLOB NOT NULL, PRIMARY KEY (job, first_seq))",
    "CREATE TABLE mv_outcome (job INTEGER NOT NULL REFERENCES mv_job (id), seq INTEGER NOT NULL, "
    "state TEXT NOT NULL, note TEXT, hasher TEXT, hash TEXT, PRIMARY KEY (job, seq))",
)
SCHEMA = (
    "CREATE TABLE mv_job (id INTEGER PRIMARY KEY AUTOINCREMENT, repo TEXT NOT NULL, "
    "job_key TEXT NOT NULL, command TEXT NOT NULL, mode TEXT NOT NULL, same_fs INTEGER NOT NULL, "
    "state TEXT NOT NULL, created TEXT NOT NULL, updated TEXT NOT NULL, summary TEXT, "
    "done_through INTEGER NOT NULL DEFAULT -1, step_packs INTEGER NOT NULL DEFAULT 0)",
    "CREATE INDEX mv_job_repo_state ON mv_job (repo, state)",
) + _PACK_TABLES
# version 1 recorded every outcome in its step row; its rows stay valid with done_through -1
UPGRADES = {1: ["ALTER TABLE mv_job ADD COLUMN done_through INTEGER NOT NULL DEFAULT -1"],
            2: ["ALTER TABLE mv_job ADD COLUMN step_packs INTEGER NOT NULL DEFAULT 0",
                *_PACK_TABLES]}
UNFINISHED = "running"
# the step columns of schema 1 and 2, in the order of Step's fields, so that a row is Step(*row)
_LEGACY_STEP_COLUMNS = ("kind", "path", "other", "old", "new", "size", "mode", "uid", "gid",
                        "mtime_ns", "hasher", "hash", "fileset", "state", "note", "seq")


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


def _bytes(value) -> Optional[bytes]:
    """A BLOB/BYTEA value as bytes (PostgreSQL gives memoryview)."""
    return value if value is None or type(value) is bytes else bytes(value)


def _text_column(text: str) -> str:
    """A path as the journal's TEXT columns hold it: bytes that are not UTF-8 (surrogate
    escapes) as `\\xNN`, always the same way, so a repository with such a name finds its job."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class JobStore:
    def __init__(self, journal: Journal):
        self.journal = journal
        journal.ensure_schema(COMPONENT, SCHEMA_VERSION, SCHEMA, UPGRADES)

    def unfinished(self, repo: str) -> Optional[Job]:
        repo = _text_column(repo)
        row = self.journal.query_one(
            "SELECT id, repo, job_key, command, mode, same_fs, state, created FROM mv_job "
            "WHERE repo = ? AND state = ? ORDER BY id LIMIT 1", (repo, UNFINISHED))
        return None if row is None else Job(row[0], row[1], row[2], row[3], row[4],
                                             bool(row[5]), row[6], row[7])

    def create(self, repo: str, command: str, plan: Plan) -> Job:
        """Record the job and its whole plan in one transaction."""
        now = self.journal.now()
        repo, command = _text_column(repo), _text_column(command)
        key = plan.request.key()
        steps = plan.steps
        with self.journal.transaction():
            row = self.journal.query_one(
                "INSERT INTO mv_job (repo, job_key, command, mode, same_fs, state, created, "
                "updated, step_packs) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1) RETURNING id",
                (repo, key, command, plan.request.mode, int(plan.same_fs), UNFINISHED, now, now))
            job_id = row[0]
            self.journal.insert_rows("mv_pack", ("job", "first_seq", "data"), [
                (job_id, steps[i].seq, pack_steps(steps[i:i + STEPS_PER_PACK]))
                for i in range(0, len(steps), STEPS_PER_PACK)])
        return Job(job_id, repo, key, command, plan.request.mode, plan.same_fs, UNFINISHED, now)

    def steps(self, job_id: int) -> List[Step]:
        """The job's steps with their outcomes (a pending step up to done_through is done)."""
        through, packed = self.journal.query_one(
            "SELECT done_through, step_packs FROM mv_job WHERE id = ?", (job_id,))
        if packed:
            steps = [step for first_seq, data in self.journal.query(
                         "SELECT first_seq, data FROM mv_pack WHERE job = ? ORDER BY first_seq",
                         (job_id,))
                     for step in unpack_steps(data, first_seq)]
        else:
            steps = [Step(row[0], _bytes(row[1]), _bytes(row[2]), _bytes(row[3]),
                          _bytes(row[4]), *row[5:]) for row in self.journal.query(
                         f"SELECT {', '.join(_LEGACY_STEP_COLUMNS)} FROM mv_step WHERE job = ? "
                         "ORDER BY seq", (job_id,))]
        for step in steps:
            if step.state == "pending" and step.seq <= through:
                step.state = "done"
        by_seq = {step.seq: step for step in steps}
        for seq, state, note, hasher, hash_ in self.journal.query(
                "SELECT seq, state, note, hasher, hash FROM mv_outcome WHERE job = ?", (job_id,)):
            step = by_seq[seq]
            step.state, step.note, step.hasher, step.hash = state, note, hasher, hash_
        return steps

    def _done_through(self, job_id: int) -> int:
        return self.journal.query_one("SELECT done_through FROM mv_job WHERE id = ?",
                                      (job_id,))[0]

    def record(self, job_id: int, steps: Sequence[Step]) -> None:
        """Outcomes of finished steps, given in step order (one transaction): done_through
        moves to the last one; outcome rows are written for the steps that did not simply end
        done, and for steps recorded before (a resumed job runs some again, and an earlier
        outcome of theirs may be recorded)."""
        if not steps:
            return
        with self.journal.transaction():
            recorded = self._done_through(job_id)
            rows = [(job_id, s.seq, s.state, s.note, s.hasher, s.hash) for s in steps
                    if s.state != "done" or s.note is not None or s.seq <= recorded]
            if rows:
                self.journal.executemany(
                    "INSERT INTO mv_outcome (job, seq, state, note, hasher, hash) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (job, seq) DO UPDATE SET "
                    "state = excluded.state, note = excluded.note, hasher = excluded.hasher, "
                    "hash = excluded.hash", rows)
            last = steps[-1].seq
            self.journal.execute(
                "UPDATE mv_job SET updated = ?, done_through = CASE WHEN done_through < ? "
                "THEN ? ELSE done_through END WHERE id = ?",
                (self.journal.now(), last, last, job_id))

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
        repo = _text_column(repo)
        row = self.journal.query_one(
            "SELECT id, repo, job_key, command, mode, same_fs, state, updated FROM mv_job "
            "WHERE repo = ? AND job_key = ? AND state = 'done' ORDER BY id DESC LIMIT 1",
            (repo, key))
        return None if row is None else Job(row[0], row[1], row[2], row[3], row[4],
                                             bool(row[5]), row[6], row[7])
