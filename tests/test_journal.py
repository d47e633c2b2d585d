"""journal: SQLite and PostgreSQL backends behind one interface (schema, batches,
transactions, writer lock across connections and processes), plus the failure messages."""
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from omero_cli_ext import journal as journal_module
from omero_cli_ext.journal import (JournalCorrupt, JournalError, JournalIntegrityError,
                                   JournalLocked, open_journal)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STEPS_V1 = [
    "CREATE TABLE IF NOT EXISTS steps (id INTEGER PRIMARY KEY AUTOINCREMENT, "
    "path TEXT NOT NULL UNIQUE, size INTEGER NOT NULL, digest BLOB, done INTEGER NOT NULL "
    "DEFAULT 0, ratio REAL)",
    "CREATE INDEX IF NOT EXISTS steps_done ON steps (done)",
]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def location(request, tmp_path):
    """Where a fresh journal lives, for each backend."""
    if request.param == "sqlite":
        return str(tmp_path / "jobs" / "journal.db")
    return request.getfixturevalue("postgres_db_url")


@pytest.fixture
def journal(location):
    opened = open_journal(location)
    opened.ensure_schema("test", 1, STEPS_V1)
    yield opened
    opened.close()


def _child(code, *args, **kwargs):
    """A Python child process running `code` with the package importable."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)


# --------------------------------------------------------------------------- both backends

def test_schema_is_created_once_and_recorded(journal, location):
    assert journal.backend == ("postgresql" if location.startswith("postgresql") else "sqlite")
    journal.ensure_schema("test", 1, STEPS_V1)  # second time: nothing to do
    assert journal.query(f"SELECT component, version FROM {journal_module.SCHEMA_TABLE}") \
        == [("test", 1)]
    journal.execute("INSERT INTO steps (path, size, digest, ratio) VALUES (?, ?, ?, ?)",
                    ("/data/a b?.tif", 5_000_000_000, b"\x00\xff", 0.25))
    assert journal.query_one("SELECT id, path, size, digest, done, ratio FROM steps") \
        == (1, "/data/a b?.tif", 5_000_000_000, b"\x00\xff", 0, 0.25)
    assert journal.query_one("SELECT path FROM steps WHERE path LIKE '%?.tif'") \
        == ("/data/a b?.tif",)  # ? and % inside literals are left alone
    assert journal.query_one("SELECT path FROM steps WHERE size > ?", (10 ** 10,)) is None


def test_newer_schema_is_refused_and_older_needs_an_upgrade_path(journal, location):
    with pytest.raises(JournalError, match="written by a newer omero-cli-ext .*schema 1; this "
                                           "one reads 0.*upgrade omero-cli-ext"):
        journal.ensure_schema("test", 0, STEPS_V1)
    with pytest.raises(JournalError, match="older omero-cli-ext .*schema 1; this one needs 3"):
        journal.ensure_schema("test", 3, STEPS_V1, upgrades={1: ["SELECT 1"]})
    journal.ensure_schema("test", 3, STEPS_V1, upgrades={
        1: ["ALTER TABLE steps ADD COLUMN owner TEXT"],
        2: ["CREATE TABLE IF NOT EXISTS notes (step INTEGER, note TEXT)"]})
    journal.execute("INSERT INTO steps (path, size, owner) VALUES (?, ?, ?)", ("p", 1, "me"))
    journal.execute("INSERT INTO notes (step, note) VALUES (?, ?)", (1, "ok"))
    reopened = open_journal(location)
    try:
        with pytest.raises(JournalError, match="newer"):
            reopened.ensure_schema("test", 2, STEPS_V1)
        reopened.ensure_schema("other", 1, ["CREATE TABLE IF NOT EXISTS other (x INTEGER)"])
        assert sorted(reopened.query(f"SELECT component, version FROM "
                                     f"{journal_module.SCHEMA_TABLE}")) == [("other", 1),
                                                                            ("test", 3)]
    finally:
        reopened.close()


def test_transaction_commits_rolls_back_and_nested_joins_outer(journal):
    with journal.transaction():
        journal.execute("INSERT INTO steps (path, size) VALUES (?, ?)", ("kept", 1))
    with pytest.raises(RuntimeError):
        with journal.transaction():
            journal.execute("INSERT INTO steps (path, size) VALUES (?, ?)", ("outer", 1))
            with journal.transaction():
                journal.execute("INSERT INTO steps (path, size) VALUES (?, ?)", ("inner", 1))
            raise RuntimeError("step failed")
    assert journal.query("SELECT path FROM steps ORDER BY id") == [("kept",)]


def test_uncommitted_rows_are_invisible_to_another_connection(journal, location):
    other = open_journal(location)
    try:
        with journal.transaction():
            journal.execute("INSERT INTO steps (path, size) VALUES (?, ?)", ("pending", 1))
            assert other.query("SELECT path FROM steps") == []
        assert other.query("SELECT path FROM steps") == [("pending",)]
    finally:
        other.close()


def test_constraint_violation_is_a_journal_integrity_error(journal):
    journal.execute("INSERT INTO steps (path, size) VALUES (?, ?)", ("dup", 1))
    with pytest.raises(JournalIntegrityError):
        journal.execute("INSERT INTO steps (path, size) VALUES (?, ?)", ("dup", 2))
    journal.execute("INSERT INTO steps (path, size) VALUES (?, ?) ON CONFLICT (path) DO UPDATE "
                    "SET size = excluded.size", ("dup", 3))
    assert journal.query("SELECT size FROM steps") == [(3,)]


def test_batch_commits_every_max_rows_and_at_the_end(journal, location):
    other = open_journal(location)
    try:
        with journal.batch(max_rows=3, max_seconds=3600) as batch:
            for index in range(8):  # 11 rows: 3 commits of 3, 2 left for the end
                batch.add("INSERT INTO steps (path, size) VALUES (?, ?)", (f"f{index}", index))
                if index % 3 == 1:
                    batch.add("UPDATE steps SET done = 1 WHERE path = ?", (f"f{index}",))
            assert len(batch) == 2
            assert other.query_one("SELECT count(*) FROM steps") == (7,)
        assert other.query_one("SELECT count(*), sum(done) FROM steps") == (8, 3)
    finally:
        other.close()


def test_batch_commits_after_max_seconds_and_keeps_rows_when_a_block_raises(journal):
    batch = journal.batch(max_rows=1000, max_seconds=0)
    batch.add("INSERT INTO steps (path, size) VALUES (?, ?)", ("at once", 1))
    assert len(batch) == 0
    with pytest.raises(KeyboardInterrupt):
        with journal.batch(max_rows=1000, max_seconds=3600) as batch:
            batch.add("INSERT INTO steps (path, size) VALUES (?, ?)", ("then interrupted", 1))
            raise KeyboardInterrupt
    assert journal.query("SELECT path FROM steps ORDER BY id") == [("at once",),
                                                                   ("then interrupted",)]


def test_batch_keeps_pending_rows_when_a_flush_fails(journal):
    batch = journal.batch(max_rows=1000, max_seconds=3600)
    batch.add("INSERT INTO steps (path, size) VALUES (?, ?)", ("a", 1))
    batch.add("INSERT INTO steps (path, size) VALUES (?, ?)", ("a", 2))
    with pytest.raises(JournalIntegrityError):
        batch.flush()
    assert len(batch) == 2 and journal.query("SELECT path FROM steps") == []


def test_threads_share_one_journal_without_mixing_transactions(journal):
    def worker(prefix):
        for index in range(20):
            with journal.transaction():
                journal.execute("INSERT INTO steps (path, size) VALUES (?, ?)",
                                (f"{prefix}{index}", index))
                journal.execute("UPDATE steps SET done = 1 WHERE path = ?", (f"{prefix}{index}",))

    threads = [threading.Thread(target=worker, args=(name,)) for name in "abc"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert journal.query_one("SELECT count(*), sum(done) FROM steps") == (60, 60)


def test_writer_lock_excludes_a_second_connection_and_names_the_holder(journal, location):
    other = open_journal(location)
    try:
        with journal.writer_lock("mv:/OMERO/ManagedRepository"):
            with pytest.raises(JournalLocked) as raised:
                with other.writer_lock("mv:/OMERO/ManagedRepository"):
                    pass
            assert raised.value.pid == os.getpid()
            assert f"in use by process {os.getpid()} on " in str(raised.value)
            assert raised.value.host and raised.value.since
            with other.writer_lock("mv:/other/repository"):  # other names are independent
                pass
        with other.writer_lock("mv:/OMERO/ManagedRepository"):
            pass
    finally:
        other.close()


_HOLD_LOCK = """
    import sys, time
    from omero_cli_ext.journal import open_journal
    journal = open_journal(sys.argv[1])
    with journal.writer_lock(sys.argv[2]):
        print("locked", flush=True)
        time.sleep(120)
"""

_TRY_LOCK = """
    import sys
    from omero_cli_ext.journal import open_journal, JournalLocked
    journal = open_journal(sys.argv[1])
    try:
        with journal.writer_lock(sys.argv[2]):
            print("acquired")
    except JournalLocked as exc:
        print(exc)
        sys.exit(3)
"""


def test_writer_lock_excludes_a_second_process_and_is_freed_by_sigkill(journal, location):
    holder = _child(_HOLD_LOCK, location, "job-42")
    try:
        assert holder.stdout.readline().strip() == "locked", holder.stderr.read()
        contender = _child(_TRY_LOCK, location, "job-42")
        out, err = contender.communicate(timeout=60)
        assert contender.returncode == 3, err
        assert f"job-42 is in use by process {holder.pid} on " in out
        with pytest.raises(JournalLocked):
            with journal.writer_lock("job-42"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    deadline = time.monotonic() + 30  # the server notices the dead client's socket
    while True:
        try:
            with journal.writer_lock("job-42"):
                break
        except JournalLocked:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_committed_rows_survive_kill_9_and_the_open_transaction_does_not(journal, location):
    child = _child("""
        import os, signal, sys
        from omero_cli_ext.journal import open_journal
        journal = open_journal(sys.argv[1])
        with journal.batch(max_rows=10) as batch:
            for index in range(25):
                batch.add("INSERT INTO steps (path, size) VALUES (?, ?)", (f"c{index}", index))
        with journal.transaction():
            journal.execute("INSERT INTO steps (path, size) VALUES ('never committed', 0)")
            os.kill(os.getpid(), signal.SIGKILL)
        """, location)
    child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert journal.query_one("SELECT count(*), sum(size) FROM steps") == (25, 300)
    journal.execute("INSERT INTO steps (path, size) VALUES ('after', 1)")  # no lock left over


# --------------------------------------------------------------------------- SQLite specifics

def test_sqlite_journal_is_wal_and_creates_a_private_directory(tmp_path):
    location = tmp_path / "new" / "journal.db"
    with open_journal(location) as opened:
        assert opened.location == str(location)
        assert opened.query_one("PRAGMA journal_mode") == ("wal",)
        assert opened.query_one("PRAGMA synchronous") == (1,)  # NORMAL
    assert stat.S_IMODE(os.stat(tmp_path / "new").st_mode) & 0o077 == 0


def test_a_file_that_is_not_sqlite_is_reported_corrupt_and_left_alone(tmp_path):
    path = tmp_path / "journal.db"
    garbage = b"this is not a database at all, " * 200
    path.write_bytes(garbage)
    with pytest.raises(JournalCorrupt) as raised:
        open_journal(path)
    assert str(raised.value).startswith(f"not a journal/database: {path} (")
    assert "move it away or pass --journal" in str(raised.value)
    assert path.read_bytes() == garbage
    assert sorted(os.listdir(tmp_path)) == ["journal.db"]


def test_a_damaged_sqlite_journal_is_reported_corrupt(tmp_path):
    path = tmp_path / "journal.db"
    with open_journal(path) as opened:
        opened.ensure_schema("test", 1, STEPS_V1)
        opened.executemany("INSERT INTO steps (path, size) VALUES (?, ?)",
                           [(f"p{index}" * 50, index) for index in range(2000)])
    with open(path, "r+b") as stream:  # keep the header, scramble the pages after it
        stream.seek(4096)
        stream.write(os.urandom(os.path.getsize(path) - 4096))
    with pytest.raises(JournalCorrupt, match="not a journal/database"):
        with open_journal(path) as opened:
            opened.query("SELECT count(*), sum(size) FROM steps")


def test_a_directory_as_journal_location_is_refused(tmp_path):
    with pytest.raises(JournalError, match="is a directory; pass a file path"):
        open_journal(tmp_path)


def test_sqlite_writer_lock_can_live_in_another_directory(tmp_path):
    shared = tmp_path / "locks"
    shared.mkdir()
    first = open_journal(tmp_path / "a.db")
    second = open_journal(tmp_path / "b.db")
    try:
        with first.writer_lock("repo:/OMERO", directory=str(shared)):
            with pytest.raises(JournalLocked) as raised:
                with second.writer_lock("repo:/OMERO", directory=str(shared)):
                    pass
            assert raised.value.lock.startswith(str(shared))
            with second.writer_lock("repo:/OMERO"):  # beside b.db: a different lock
                pass
    finally:
        first.close()
        second.close()


def test_sqlite_waits_for_a_busy_writer_instead_of_failing(tmp_path):
    location = tmp_path / "journal.db"
    with open_journal(location) as opened:
        opened.ensure_schema("test", 1, STEPS_V1)
    writer = _child("""
        import sys, time
        from omero_cli_ext.journal import open_journal
        journal = open_journal(sys.argv[1])
        with journal.transaction():
            journal.execute("INSERT INTO steps (path, size) VALUES ('child', 1)")
            print("writing", flush=True)
            time.sleep(0.5)
        """, location)
    try:
        assert writer.stdout.readline().strip() == "writing"
        with open_journal(location) as opened:
            opened.execute("INSERT INTO steps (path, size) VALUES ('parent', 2)")
            assert sorted(opened.query("SELECT path FROM steps")) == [("child",), ("parent",)]
    finally:
        writer.wait(timeout=60)
    assert writer.returncode == 0, writer.stderr.read()


# --------------------------------------------------------------------------- PostgreSQL specifics

@pytest.mark.postgres
def test_postgres_claims_with_skip_locked_are_disjoint(postgres_db_url):
    first, second = open_journal(postgres_db_url), open_journal(postgres_db_url)
    try:
        first.ensure_schema("test", 1, STEPS_V1)
        first.executemany("INSERT INTO steps (path, size) VALUES (?, ?)",
                          [(f"f{index}", index) for index in range(10)])
        claim = "SELECT id FROM steps WHERE done = 0 ORDER BY id LIMIT 4 FOR UPDATE SKIP LOCKED"
        with first.transaction():
            mine = [row[0] for row in first.query(claim)]
            with second.transaction():
                theirs = [row[0] for row in second.query(claim)]
                second.executemany("UPDATE steps SET done = 1 WHERE id = ?", [(i,) for i in theirs])
            first.executemany("UPDATE steps SET done = 1 WHERE id = ?", [(i,) for i in mine])
        assert mine == [1, 2, 3, 4] and theirs == [5, 6, 7, 8]
        assert first.query_one("SELECT count(*) FROM steps WHERE done = 1") == (8,)
    finally:
        first.close()
        second.close()


@pytest.mark.postgres
def test_postgres_ddl_translation_gives_64_bit_integers_and_identity_keys(postgres_db_url):
    with open_journal(postgres_db_url) as opened:
        opened.ensure_schema("test", 1, STEPS_V1)
        types = dict(opened.query("SELECT column_name, data_type FROM information_schema.columns "
                                  "WHERE table_name = 'steps'"))
        assert types == {"id": "bigint", "path": "text", "size": "bigint", "digest": "bytea",
                         "done": "bigint", "ratio": "double precision"}


def test_postgres_location_hides_the_password(monkeypatch):
    pytest.importorskip("psycopg")
    with pytest.raises(JournalError) as raised:
        open_journal("postgresql://someone:s3cret@127.0.0.1:1/journal")
    assert "s3cret" not in str(raised.value)


def test_unreachable_postgres_names_host_and_port_without_traceback():
    pytest.importorskip("psycopg")
    child = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import sys
        from omero_cli_ext.journal import open_journal, JournalError
        try:
            open_journal("postgresql://journal@127.0.0.1:1/jobs")
        except JournalError as exc:
            print(exc)
            sys.exit(2)
        """)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert child.returncode == 2
    assert child.stdout.startswith("cannot connect to the PostgreSQL journal at 127.0.0.1:1/jobs: ")
    assert "Traceback" not in child.stdout + child.stderr


def test_placeholder_translation_leaves_quoted_text_alone():
    translate = journal_module._translate_placeholders
    assert translate("SELECT * FROM t WHERE a = ? AND b LIKE 'x?%' AND \"c?\" = ?") \
        == "SELECT * FROM t WHERE a = %s AND b LIKE 'x?%%' AND \"c?\" = %s"
    assert translate("SELECT 5 % 3, 'it''s ?'") == "SELECT 5 %% 3, 'it''s ?'"


@pytest.mark.parametrize("rows", [0, 1, 99, 100, 101, 1234])
def test_insert_rows_writes_every_row_once(journal, rows):
    journal.ensure_schema("insert_rows_test", 1, ["CREATE TABLE t (a INTEGER PRIMARY KEY, b BLOB, c TEXT)"])
    data = [(n, b"x\0%d" % n, None if n % 3 else "c") for n in range(rows)]
    journal.insert_rows("t", ("a", "b", "c"), data)
    assert [(a, bytes(b), c) for a, b, c in journal.query("SELECT a, b, c FROM t ORDER BY a")] == data
