"""The tables of an import job in the journal, and every statement that reads or writes them.

One journal may hold several jobs (the `job` column). The plan (every fileset, its files, sizes,
reader, chunk) is written in one transaction before anything is imported; results are written as
they arrive. States:

- fileset: `planned` (to import), `running` (an attempt started: in doubt if that attempt died),
  `done` (Fileset id known), `failed` (the importer rejected it: not retried), `ghost` (an
  image-less or half-uploaded fileset of this job is on the server and --clean-ghosts was not given)
- chunk: `pending`, `running` (claimed by a host/pid until `lease_until`), `done`

Claims use `SELECT ... FOR UPDATE SKIP LOCKED` on PostgreSQL (several hosts, one job); SQLite
serialises writers with BEGIN IMMEDIATE, which gives the same guarantee on one host. Timestamps are
ISO-8601 UTC text, compared as text.
"""
from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

COMPONENT = "import"
VERSION = 2

STATEMENTS = (
    "CREATE TABLE import_job ("
    " job TEXT PRIMARY KEY, created TEXT NOT NULL, user_name TEXT NOT NULL,"
    " owner_id INTEGER NOT NULL, paths TEXT NOT NULL, target TEXT NOT NULL,"
    " options TEXT NOT NULL, command TEXT NOT NULL, chunk_size INTEGER, chunk_bytes INTEGER,"
    " filesets INTEGER NOT NULL, bytes INTEGER NOT NULL, chunks INTEGER NOT NULL)",
    "CREATE TABLE import_fileset ("
    " job TEXT NOT NULL, idx INTEGER NOT NULL, chunk INTEGER NOT NULL, main TEXT NOT NULL,"
    " files TEXT NOT NULL, nfiles INTEGER NOT NULL, size INTEGER NOT NULL, reader TEXT,"
    " spw INTEGER NOT NULL, state TEXT NOT NULL, fileset_id INTEGER, images TEXT, plates TEXT,"
    " message TEXT, updated TEXT, PRIMARY KEY (job, idx))",
    "CREATE INDEX import_fileset_chunk ON import_fileset (job, chunk)",
    "CREATE INDEX import_fileset_state ON import_fileset (job, state)",
    "CREATE TABLE import_chunk ("
    " job TEXT NOT NULL, chunk INTEGER NOT NULL, state TEXT NOT NULL,"
    " filesets INTEGER NOT NULL, bytes INTEGER NOT NULL, attempts INTEGER NOT NULL,"
    " host TEXT, pid INTEGER, lease_until TEXT, not_before TEXT, started TEXT, finished TEXT,"
    " message TEXT, PRIMARY KEY (job, chunk))",
    "CREATE INDEX import_chunk_state ON import_chunk (job, state)",
    "CREATE TABLE import_result ("
    " job TEXT NOT NULL, fileset_id INTEGER NOT NULL, chunk INTEGER NOT NULL,"
    " images TEXT NOT NULL, plates TEXT NOT NULL, received TEXT NOT NULL,"
    " PRIMARY KEY (job, fileset_id))",
    # schema 1 only: filesets found before the plan (ownership is proven per attempt since 2)
    "CREATE TABLE import_foreign (job TEXT NOT NULL, fileset_id INTEGER NOT NULL,"
    " PRIMARY KEY (job, fileset_id))",
    "CREATE TABLE import_ghost ("
    " job TEXT NOT NULL, fileset_id INTEGER NOT NULL, idx INTEGER NOT NULL,"
    " state TEXT NOT NULL, seen TEXT NOT NULL, PRIMARY KEY (job, fileset_id))",
    "CREATE TABLE import_worker ("
    " job TEXT NOT NULL, host TEXT NOT NULL, pid INTEGER NOT NULL, started TEXT NOT NULL,"
    " heartbeat TEXT NOT NULL, workers INTEGER NOT NULL, stopped TEXT,"
    " PRIMARY KEY (job, host, pid, started))",
)

# schema 2: the job's identity (server, user, group, result-changing options), every importer
# attempt (session, server times) and the objects each attempt announced (ownership proofs),
# the importer's last progress per driver process (liveness)
_V2 = (
    "ALTER TABLE import_job ADD COLUMN identity TEXT",
    "ALTER TABLE import_worker ADD COLUMN progress TEXT",
    "CREATE TABLE import_attempt ("
    " job TEXT NOT NULL, attempt TEXT NOT NULL, chunk INTEGER NOT NULL, host TEXT NOT NULL,"
    " pid INTEGER NOT NULL, session_id INTEGER, server_start TEXT NOT NULL, server_end TEXT,"
    " rc INTEGER, PRIMARY KEY (job, attempt))",
    "CREATE INDEX import_attempt_chunk ON import_attempt (job, chunk)",
    "CREATE TABLE import_announced ("
    " job TEXT NOT NULL, kind TEXT NOT NULL, object_id INTEGER NOT NULL, attempt TEXT NOT NULL,"
    " PRIMARY KEY (job, kind, object_id))",
)
STATEMENTS = STATEMENTS + _V2
UPGRADES = {1: _V2}

FILESET_STATES = ("planned", "running", "done", "failed", "ghost")
UNRESOLVED = ("planned", "running")


def utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def iso(when: _dt.datetime) -> str:
    return when.astimezone(_dt.timezone.utc).isoformat(timespec="milliseconds")


def parse_iso(text: Optional[str]) -> Optional[_dt.datetime]:
    return _dt.datetime.fromisoformat(text) if text else None


def path_text(path: str) -> str:
    """A path as journal text. Undecodable bytes (lone surrogates from surrogateescape) cannot be
    stored as text by SQLite or PostgreSQL: such a path is kept as its JSON string (which starts
    with `"`, never with `/` as the absolute paths of a plan do), so the exact bytes come back."""
    if any("\ud800" <= ch <= "\udfff" for ch in path):
        return json.dumps(path)
    return path


def text_path(text: str) -> str:
    """The path stored by `path_text`."""
    return json.loads(text) if text.startswith('"') else text


def plain_text(text: Optional[str]) -> Optional[str]:
    """A message or command line as journal text: undecodable bytes as `\\xNN` (for reading)."""
    if text is None or not any("\ud800" <= ch <= "\udfff" for ch in text):
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class PlannedFileset:
    """One fileset of the plan: its main file (the importer's group path) and all its files."""
    idx: int
    main: str
    files: tuple
    size: int
    reader: str = ""
    spw: bool = False
    chunk: int = 0


@dataclass(frozen=True)
class JobRecord:
    job: str
    created: str
    user_name: str
    owner_id: int
    paths: tuple
    target: str
    options: tuple
    command: str
    chunk_size: Optional[int]
    chunk_bytes: Optional[int]
    filesets: int
    bytes: int
    chunks: int
    identity: Optional[dict] = None   # None: planned before schema 2 (bound on its next run)


@dataclass(frozen=True)
class Attempt:
    """One importer run of a chunk: the session its importer joined and its span on the server's
    clock (end None: the driver died before the importer ended)."""
    attempt: str
    chunk: int
    session_id: Optional[int]
    server_start: _dt.datetime
    server_end: Optional[_dt.datetime]


@dataclass(frozen=True)
class Ownership:
    """What proves a server fileset is this job's: ids its importers announced (Fileset ids from
    the results, import log ids from IMPORT_STARTED) and its attempts (session and time span)."""
    filesets: frozenset = frozenset()
    logs: frozenset = frozenset()
    attempts: tuple = ()      # tuple[Attempt]

    def attempts_of(self, chunk: int) -> list:
        return [a for a in self.attempts if a.chunk == chunk]


@dataclass(frozen=True)
class Claim:
    """A chunk this process now holds; `doubtful` filesets were running in an attempt that died."""
    chunk: int
    attempts: int
    planned: tuple      # tuple[PlannedFileset]
    doubtful: tuple     # tuple[PlannedFileset]


def ensure_schema(journal) -> None:
    journal.ensure_schema(COMPONENT, VERSION, STATEMENTS, UPGRADES)


def job_names(journal) -> list:
    return [row[0] for row in journal.query("SELECT job FROM import_job ORDER BY job")]


def _fileset(row) -> PlannedFileset:
    idx, chunk, main, files, size, reader, spw = row
    return PlannedFileset(idx=idx, main=text_path(main), files=tuple(json.loads(files)), size=size,
                          reader=reader or "", spw=bool(spw), chunk=chunk)


_FILESET_COLUMNS = "idx, chunk, main, files, size, reader, spw"


class JobStore:
    """One job's rows in one journal."""

    def __init__(self, journal, job: str):
        self.journal = journal
        self.job = job
        self._skip_locked = " FOR UPDATE SKIP LOCKED" if journal.backend == "postgresql" else ""

    # --- the plan ---
    def load(self) -> Optional[JobRecord]:
        row = self.journal.query_one(
            "SELECT job, created, user_name, owner_id, paths, target, options, command, "
            "chunk_size, chunk_bytes, filesets, bytes, chunks, identity FROM import_job "
            "WHERE job = ?", (self.job,))
        if row is None:
            return None
        values = list(row)
        values[4] = tuple(json.loads(values[4]))
        values[6] = tuple(json.loads(values[6]))
        values[13] = json.loads(values[13]) if values[13] else None
        return JobRecord(*values)

    def bind_identity(self, identity: dict) -> None:
        """Record the identity of a job planned before schema 2 (its first run since)."""
        self.journal.execute("UPDATE import_job SET identity = ? WHERE job = ? AND identity IS NULL",
                             (json.dumps(identity, sort_keys=True), self.job))

    def _insert_planned(self, filesets: Sequence[PlannedFileset], chunks: dict, now: str) -> None:
        """The plan's fileset and chunk rows (inside the caller's transaction)."""
        self.journal.executemany(
            "INSERT INTO import_fileset (job, idx, chunk, main, files, nfiles, size, reader, "
            "spw, state, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'planned', ?)",
            [(self.job, fs.idx, fs.chunk, path_text(fs.main), json.dumps(list(fs.files)),
              len(fs.files), fs.size, fs.reader, int(fs.spw), now) for fs in filesets])
        self.journal.executemany(
            "INSERT INTO import_chunk (job, chunk, state, filesets, bytes, attempts) "
            "VALUES (?, ?, 'pending', ?, ?, 0)",
            [(self.job, chunk, count, size) for chunk, (count, size) in sorted(chunks.items())])

    def create(self, record: JobRecord, filesets: Sequence[PlannedFileset]) -> None:
        """The whole plan in one transaction: a job exists completely or not at all."""
        now = iso(utc_now())
        chunks = _chunk_totals(filesets)
        with self.journal.transaction():
            self.journal.execute(
                "INSERT INTO import_job (job, created, user_name, owner_id, paths, target, "
                "options, command, chunk_size, chunk_bytes, filesets, bytes, chunks, identity) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (record.job, record.created, record.user_name, record.owner_id,
                 json.dumps(list(record.paths)), record.target, json.dumps(list(record.options)),
                 plain_text(record.command), record.chunk_size, record.chunk_bytes, record.filesets,
                 record.bytes, record.chunks,
                 json.dumps(record.identity, sort_keys=True) if record.identity else None))
            self._insert_planned(filesets, chunks, now)

    def filesets(self, idxs: Iterable[int]) -> list:
        wanted = sorted(set(idxs))
        found = []
        for start in range(0, len(wanted), 500):
            page = wanted[start:start + 500]
            found += self.journal.query(
                f"SELECT {_FILESET_COLUMNS} FROM import_fileset WHERE job = ? AND idx IN "
                f"({','.join('?' * len(page))})", (self.job, *page))
        return [_fileset(row) for row in found]

    # --- workers and leases ---
    def register_worker(self, host: str, pid: int, started: str, workers: int) -> None:
        self.journal.execute(
            "INSERT INTO import_worker (job, host, pid, started, heartbeat, workers) "
            "VALUES (?, ?, ?, ?, ?, ?)", (self.job, host, pid, started, started, workers))

    def heartbeat(self, host: str, pid: int, started: str, chunks: Sequence[int],
                  lease_seconds: float, progress: Optional[_dt.datetime] = None) -> None:
        """The driver is alive (heartbeat) and its importers last made progress at `progress`
        (their last output line or upload byte; now when no importer runs)."""
        now = utc_now()
        with self.journal.transaction():
            self.journal.execute(
                "UPDATE import_worker SET heartbeat = ?, progress = ? WHERE job = ? AND host = ? "
                "AND pid = ? AND started = ?",
                (iso(now), iso(progress or now), self.job, host, pid, started))
            if chunks:
                self.journal.executemany(
                    "UPDATE import_chunk SET lease_until = ? WHERE job = ? AND chunk = ? "
                    "AND host = ? AND pid = ? AND state = 'running'",
                    [(iso(now + _dt.timedelta(seconds=lease_seconds)), self.job, c, host, pid)
                     for c in chunks])

    def stop_worker(self, host: str, pid: int, started: str) -> None:
        self.journal.execute(
            "UPDATE import_worker SET stopped = ? WHERE job = ? AND host = ? AND pid = ? "
            "AND started = ?", (iso(utc_now()), self.job, host, pid, started))

    def expire_leases(self, host: Optional[str] = None, dead_pids: Sequence[int] = ()) -> int:
        """Make running chunks claimable at once: all of them (SQLite, under the writer lock: their
        holder is dead) or those of `dead_pids` on `host`."""
        past = iso(utc_now() - _dt.timedelta(seconds=1))
        if host is None:
            rows = self.journal.query("SELECT chunk FROM import_chunk WHERE job = ? AND "
                                      "state = 'running'", (self.job,))
            self.journal.execute("UPDATE import_chunk SET lease_until = ? WHERE job = ? "
                                 "AND state = 'running'", (past, self.job))
            return len(rows)
        if not dead_pids:
            return 0
        self.journal.executemany(
            "UPDATE import_chunk SET lease_until = ? WHERE job = ? AND state = 'running' "
            "AND host = ? AND pid = ?", [(past, self.job, host, pid) for pid in dead_pids])
        return len(dead_pids)

    def running_holders(self) -> list:
        """(host, pid) of every process holding a running chunk."""
        return [tuple(r) for r in self.journal.query(
            "SELECT DISTINCT host, pid FROM import_chunk WHERE job = ? AND state = 'running'",
            (self.job,))]

    def claim(self, host: str, pid: int, lease_seconds: float,
              skip: Sequence[int] = ()) -> Optional[Claim]:
        """Take the next chunk that is pending (and past its backoff) or whose lease expired,
        other than the chunks in `skip`."""
        now = utc_now()
        skipped = f" AND chunk NOT IN ({','.join('?' * len(skip))})" if skip else ""
        with self.journal.transaction():
            row = self.journal.query_one(
                "SELECT chunk, attempts FROM import_chunk WHERE job = ? AND ((state = 'pending' "
                "AND (not_before IS NULL OR not_before <= ?)) OR (state = 'running' "
                f"AND lease_until < ?)){skipped} ORDER BY chunk LIMIT 1" + self._skip_locked,
                (self.job, iso(now), iso(now), *skip))
            if row is None:
                return None
            chunk, attempts = row
            self.journal.execute(
                "UPDATE import_chunk SET state = 'running', host = ?, pid = ?, lease_until = ?, "
                "attempts = attempts + 1, started = ?, not_before = NULL WHERE job = ? "
                "AND chunk = ?", (host, pid, iso(now + _dt.timedelta(seconds=lease_seconds)),
                                  iso(now), self.job, chunk))
            rows = self.journal.query(
                f"SELECT {_FILESET_COLUMNS}, state FROM import_fileset WHERE job = ? AND chunk = ? "
                "AND state IN ('planned', 'running') ORDER BY idx", (self.job, chunk))
        planned = tuple(_fileset(r[:-1]) for r in rows if r[-1] == "planned")
        doubtful = tuple(_fileset(r[:-1]) for r in rows if r[-1] == "running")
        return Claim(chunk=chunk, attempts=attempts + 1, planned=planned, doubtful=doubtful)

    def next_opening(self, skip: Sequence[int] = ()) -> Optional[_dt.datetime]:
        """When the next pending or running chunk (not in `skip`) may be claimed: now for a
        pending chunk past its backoff; None when no chunk is left."""
        skipped = f" AND chunk NOT IN ({','.join('?' * len(skip))})" if skip else ""
        row = self.journal.query_one(
            "SELECT min(CASE WHEN state = 'pending' THEN coalesce(not_before, '') "
            "ELSE coalesce(lease_until, '') END), count(*) FROM import_chunk WHERE job = ? "
            f"AND state IN ('pending', 'running'){skipped}", (self.job, *skip))
        if not row or not row[1]:
            return None
        return parse_iso(row[0]) or utc_now()

    def start_attempt(self, chunk: int, idxs: Sequence[int]) -> None:
        now = iso(utc_now())
        self.journal.executemany(
            "UPDATE import_fileset SET state = 'running', updated = ? WHERE job = ? AND idx = ? "
            "AND state = 'planned'", [(now, self.job, i) for i in idxs])

    def release(self, chunk: int, host: str, pid: int, backoff_seconds: float = 0,
                message: Optional[str] = None) -> None:
        """Give a chunk back (pending) unless every fileset is resolved (then done)."""
        now = utc_now()
        with self.journal.transaction():
            left = self.journal.query_one(
                "SELECT count(*) FROM import_fileset WHERE job = ? AND chunk = ? AND state IN "
                "('planned', 'running')", (self.job, chunk))[0]
            if left:
                self.journal.execute(
                    "UPDATE import_chunk SET state = 'pending', lease_until = NULL, "
                    "not_before = ?, message = ? WHERE job = ? AND chunk = ? AND host = ? "
                    "AND pid = ?", (iso(now + _dt.timedelta(seconds=backoff_seconds)),
                                    plain_text(message), self.job, chunk, host, pid))
            else:
                self.journal.execute(
                    "UPDATE import_chunk SET state = 'done', lease_until = NULL, finished = ?, "
                    "message = ? WHERE job = ? AND chunk = ?",
                    (iso(now), plain_text(message), self.job, chunk))

    # --- attempts and what they announced ---
    def begin_attempt(self, attempt: str, chunk: int, host: str, pid: int,
                      session_id: Optional[int], server_start: _dt.datetime) -> None:
        """Journaled before the importer starts: whatever it creates falls in this span."""
        self.journal.execute(
            "INSERT INTO import_attempt (job, attempt, chunk, host, pid, session_id, server_start) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (self.job, attempt, chunk, host, pid, session_id, iso(server_start)))

    def end_attempt(self, attempt: str, server_end: _dt.datetime, rc: Optional[int]) -> None:
        self.journal.execute("UPDATE import_attempt SET server_end = ?, rc = ? WHERE job = ? "
                             "AND attempt = ?", (iso(server_end), rc, self.job, attempt))

    def announce(self, items: Sequence) -> None:
        """(attempt, kind, object id): "fileset" (a result's Fileset) or "log" (IMPORT_STARTED's
        import log OriginalFile)."""
        self.journal.executemany(
            "INSERT INTO import_announced (job, kind, object_id, attempt) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (job, kind, object_id) DO NOTHING",
            [(self.job, kind, oid, attempt) for attempt, kind, oid in items])

    def ownership(self, chunks: Iterable[int]) -> Ownership:
        """The proofs for filesets of these chunks (results of schema 1 jobs count as announced)."""
        wanted = sorted(set(chunks))
        attempts, fids, logs = [], set(), set()
        for start in range(0, len(wanted), 500):
            page = wanted[start:start + 500]
            marks = ",".join("?" * len(page))
            attempts += [Attempt(a, c, sid, parse_iso(s), parse_iso(e)) for a, c, sid, s, e in
                         self.journal.query(
                             "SELECT attempt, chunk, session_id, server_start, server_end FROM "
                             f"import_attempt WHERE job = ? AND chunk IN ({marks})",
                             (self.job, *page))]
            fids.update(r[0] for r in self.journal.query(
                f"SELECT fileset_id FROM import_result WHERE job = ? AND chunk IN ({marks})",
                (self.job, *page)))
            for kind, oid in self.journal.query(
                    "SELECT n.kind, n.object_id FROM import_announced n JOIN import_attempt a "
                    "ON a.job = n.job AND a.attempt = n.attempt WHERE n.job = ? "
                    f"AND a.chunk IN ({marks})", (self.job, *page)):
                (fids if kind == "fileset" else logs).add(oid)
        return Ownership(frozenset(fids), frozenset(logs), tuple(attempts))

    # --- results ---
    def add_results(self, results: Sequence) -> None:
        """Raw importer results as they arrive: (chunk, result with fileset_id, images, plates)
        pairs, all in one commit."""
        now = iso(utc_now())
        self.journal.executemany(
            "INSERT INTO import_result (job, fileset_id, chunk, images, plates, received) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (job, fileset_id) DO UPDATE SET "
            "images = excluded.images, plates = excluded.plates",
            [(self.job, r.fileset_id, chunk, json.dumps(list(r.images)),
              json.dumps(list(r.plates)), now) for chunk, r in results])

    def raw_results(self, chunks: Iterable[int]) -> dict:
        """fileset id -> (image ids, plate ids) the importer reported for these chunks."""
        wanted = sorted(set(chunks))
        found = {}
        for start in range(0, len(wanted), 500):
            page = wanted[start:start + 500]
            for fid, images, plates in self.journal.query(
                    "SELECT fileset_id, images, plates FROM import_result WHERE job = ? AND "
                    f"chunk IN ({','.join('?' * len(page))})", (self.job, *page)):
                found[fid] = (tuple(json.loads(images)), tuple(json.loads(plates)))
        return found

    def mark(self, outcomes: Sequence) -> None:
        """Outcomes: (idx, state, fileset_id, images, plates, message)."""
        now = iso(utc_now())
        self.journal.executemany(
            "UPDATE import_fileset SET state = ?, fileset_id = ?, images = ?, plates = ?, "
            "message = ?, updated = ? WHERE job = ? AND idx = ?",
            [(state, fid, json.dumps(list(images)) if images is not None else None,
              json.dumps(list(plates)) if plates is not None else None, plain_text(message), now,
              self.job, idx) for idx, state, fid, images, plates, message in outcomes])

    def reopen_chunks(self, chunks: Iterable[int]) -> None:
        """Chunks marked done get filesets to import again (ghosts deleted by --clean-ghosts)."""
        self.journal.executemany(
            "UPDATE import_chunk SET state = 'pending', not_before = NULL WHERE job = ? "
            "AND chunk = ? AND state = 'done'", [(self.job, c) for c in sorted(set(chunks))])

    def record_ghosts(self, ghosts: Sequence, state: str) -> None:
        """Ghost filesets (fileset_id, idx) seen on the server: `left` or `deleted`."""
        now = iso(utc_now())
        self.journal.executemany(
            "INSERT INTO import_ghost (job, fileset_id, idx, state, seen) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (job, fileset_id) DO UPDATE SET state = excluded.state",
            [(self.job, fid, idx, state, now) for fid, idx in ghosts])

    # --- reading ---
    def doubtful_filesets(self) -> list:
        """Filesets left `running` by attempts that died (their chunk's lease has expired)."""
        now = iso(utc_now())
        rows = self.journal.query(
            f"SELECT f.{_FILESET_COLUMNS.replace(', ', ', f.')} FROM import_fileset f "
            "JOIN import_chunk c ON c.job = f.job AND c.chunk = f.chunk "
            "WHERE f.job = ? AND f.state = 'running' AND (c.state != 'running' "
            "OR c.lease_until < ?) ORDER BY f.idx", (self.job, now))
        return [_fileset(r) for r in rows]

    def with_ghosts(self) -> list:
        """Filesets waiting for --clean-ghosts, and those with a ghost of this job left beside."""
        rows = self.journal.query(
            f"SELECT {_FILESET_COLUMNS} FROM import_fileset f WHERE job = ? AND (state = 'ghost' "
            "OR EXISTS (SELECT 1 FROM import_ghost g WHERE g.job = f.job AND g.idx = f.idx "
            "AND g.state = 'left')) ORDER BY idx", (self.job,))
        return [_fileset(r) for r in rows]

    def planned_files(self) -> tuple:
        """(every file of the plan, next fileset index, next chunk number)."""
        files = set()
        for (text,) in self.journal.query("SELECT files FROM import_fileset WHERE job = ?",
                                          (self.job,)):
            files.update(json.loads(text))
        idx, chunk = self.journal.query_one(
            "SELECT coalesce(max(idx), -1) + 1, coalesce(max(chunk), -1) + 1 FROM import_fileset "
            "WHERE job = ?", (self.job,))
        return files, idx, chunk

    def extend(self, filesets: Sequence[PlannedFileset]) -> None:
        """Add filesets (new chunks) to the plan in one transaction (--rescan)."""
        now = iso(utc_now())
        chunks = _chunk_totals(filesets)
        with self.journal.transaction():
            self._insert_planned(filesets, chunks, now)
            self.journal.execute(
                "UPDATE import_job SET filesets = filesets + ?, bytes = bytes + ?, "
                "chunks = chunks + ? WHERE job = ?",
                (len(filesets), sum(fs.size for fs in filesets), len(chunks), self.job))

    def retry_failed(self) -> int:
        """Plan the failed filesets again (their chunks pending); how many."""
        with self.journal.transaction():
            chunks = [r[0] for r in self.journal.query(
                "SELECT DISTINCT chunk FROM import_fileset WHERE job = ? AND state = 'failed'",
                (self.job,))]
            n = self.journal.query_one("SELECT count(*) FROM import_fileset WHERE job = ? "
                                       "AND state = 'failed'", (self.job,))[0]
            self.journal.execute("UPDATE import_fileset SET state = 'planned', message = NULL, "
                                 "updated = ? WHERE job = ? AND state = 'failed'",
                                 (iso(utc_now()), self.job))
            self.reopen_chunks(chunks)
        return n

    def settled(self) -> list:
        """Report fields of every done, failed or ghost fileset, in plan order."""
        rows = self.journal.query(
            "SELECT idx, main, state, fileset_id, images, plates, message, size FROM "
            "import_fileset WHERE job = ? AND state IN ('done', 'failed', 'ghost') ORDER BY idx",
            (self.job,))
        return [{"idx": idx, "main": text_path(main), "state": state, "fileset_id": fid,
                 "images": json.loads(images) if images else None,
                 "plates": json.loads(plates) if plates else None, "message": message,
                 "size": size} for idx, main, state, fid, images, plates, message, size in rows]

    def counts(self) -> dict:
        """state -> (filesets, bytes)."""
        return {state: (n, size or 0) for state, n, size in self.journal.query(
            "SELECT state, count(*), sum(size) FROM import_fileset WHERE job = ? GROUP BY state",
            (self.job,))}

    def chunk_states(self) -> dict:
        return {state: n for state, n in self.journal.query(
            "SELECT state, count(*) FROM import_chunk WHERE job = ? GROUP BY state", (self.job,))}

    def ghosts(self, state: str) -> list:
        return [tuple(r) for r in self.journal.query(
            "SELECT fileset_id, idx FROM import_ghost WHERE job = ? AND state = ? "
            "ORDER BY fileset_id", (self.job, state))]


def _chunk_totals(filesets: Sequence[PlannedFileset]) -> dict:
    """chunk -> (filesets, bytes) of a plan."""
    chunks: dict = {}
    for fs in filesets:
        count, size = chunks.get(fs.chunk, (0, 0))
        chunks[fs.chunk] = (count + 1, size + fs.size)
    return chunks
