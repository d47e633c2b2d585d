"""The look at import log files: on disk when readable, else RawFileStore sizes remembered
between looks (in a crash-safe file)."""
from __future__ import annotations

import datetime as dt
import json
import os

from omero_cli_ext.server import ImportLog, Repository
from omero_cli_ext.status import logwatch

T0 = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.timezone.utc)


class Port:
    def __init__(self, sizes):
        self.sizes, self.asked = sizes, []

    def file_sizes(self, ids):
        self.asked.append(list(ids))
        return {i: self.sizes[i] for i in ids if i in self.sizes}


def log(of_id, path="u_1/2026-11/27/12-00-00.000.log"):
    return ImportLog(fileset_id=of_id // 10, original_file_id=of_id, size=0, repo_path=path)


def test_a_readable_log_is_looked_at_on_disk(tmp_path):
    path = tmp_path / "u_1" / "a.log"
    path.parent.mkdir()
    path.write_bytes(b"x" * 42)
    os.utime(path, (T0.timestamp(), T0.timestamp()))
    port = Port({})
    probes = logwatch.probe_logs(port, Repository("uuid", str(tmp_path)),
                                 [(1, log(10, "u_1/a.log"))], T0, logwatch.SizeMemory())
    assert probes == {1: logwatch.LogProbe(size=42, grew=T0, source="disk")}
    assert port.asked == []


def test_a_log_mtime_later_than_the_servers_clock_is_compared_by_size(tmp_path):
    """A file written by another clock (or touched) must not show an import active for ever."""
    path = tmp_path / "u_1" / "a.log"
    path.parent.mkdir()
    path.write_bytes(b"x" * 42)
    ahead = T0 + dt.timedelta(hours=5)
    os.utime(path, (ahead.timestamp(), ahead.timestamp()))
    repo, memory = Repository("uuid", str(tmp_path)), logwatch.SizeMemory()
    first = logwatch.probe_logs(Port({}), repo, [(1, log(10, "u_1/a.log"))], T0, memory)
    assert first == {1: logwatch.LogProbe(size=42, grew=None, source="disk")}
    later = T0 + dt.timedelta(minutes=10)
    same = logwatch.probe_logs(Port({}), repo, [(1, log(10, "u_1/a.log"))], later, memory)
    assert same[1].grew is None                   # no growth seen since the first look
    with open(path, "ab") as fh:
        fh.write(b"more")
    os.utime(path, (ahead.timestamp(), ahead.timestamp()))
    grown = logwatch.probe_logs(Port({}), repo, [(1, log(10, "u_1/a.log"))], later, memory)
    assert grown == {1: logwatch.LogProbe(size=46, grew=later, source="disk")}
    assert set(memory.seen) == {"uuid/10"}


def test_an_unreadable_repository_asks_the_server_and_remembers(tmp_path):
    memory_file = tmp_path / "mem" / "sizes.json"
    repo = Repository("uuid", str(tmp_path / "absent"))
    port = Port({10: 100, 20: 200})
    first = logwatch.probe_logs(port, repo, [(1, log(10)), (2, log(20)), (3, log(30))], T0,
                                logwatch.SizeMemory(str(memory_file)))
    assert port.asked == [[10, 20, 30]]
    assert first == {1: logwatch.LogProbe(100, None, "server"), 2: logwatch.LogProbe(200, None, "server")}
    memory = logwatch.SizeMemory(str(memory_file))
    assert memory.seen == {}                    # nothing saved yet
    memory = logwatch.SizeMemory(str(memory_file))
    logwatch.probe_logs(port, repo, [(1, log(10)), (2, log(20))], T0, memory)
    memory.save()
    assert json.loads(memory_file.read_text())["uuid/10"][0] == 100
    later = T0 + dt.timedelta(minutes=5)
    port.sizes[20] = 250                        # one log grew, the other did not
    memory = logwatch.SizeMemory(str(memory_file))
    again = logwatch.probe_logs(port, repo, [(1, log(10)), (2, log(20))], later, memory)
    memory.save()
    # unchanged since a first look: no growth seen at all (the first look is not growth)
    assert again == {1: logwatch.LogProbe(100, None, "server"), 2: logwatch.LogProbe(250, later, "server")}
    last = logwatch.probe_logs(port, repo, [(1, log(10)), (2, log(20))], later + dt.timedelta(hours=1),
                               logwatch.SizeMemory(str(memory_file)))
    assert last[2] == logwatch.LogProbe(250, later, "server")   # no change since: grew then


def test_server_looks_are_bounded_to_the_first_candidates(monkeypatch, tmp_path):
    monkeypatch.setattr(logwatch, "MAX_SERVER_PROBES", 2)
    port = Port({10: 1, 20: 2, 30: 3})
    probes = logwatch.probe_logs(port, Repository("uuid", str(tmp_path / "absent")),
                                 [(3, log(30)), (2, log(20)), (1, log(10))], T0,
                                 logwatch.SizeMemory())
    assert port.asked == [[30, 20]] and set(probes) == {3, 2}


def test_a_damaged_memory_file_starts_afresh(tmp_path):
    memory_file = tmp_path / "sizes.json"
    memory_file.write_text("{not json")
    assert logwatch.SizeMemory(str(memory_file)).seen == {}
    for damaged in ("[]", "null", '"x"', "3"):      # valid JSON, not an object
        memory_file.write_text(damaged)
        assert logwatch.SizeMemory(str(memory_file)).seen == {}


def test_a_remembered_look_with_no_time_or_one_not_come_yet_is_a_first_look(tmp_path):
    """A damaged entry, or one a clock ahead wrote, would keep an import log "unchanged since"
    no time or a time to come (for ever alive): it counts as a first look, now."""
    memory_file = tmp_path / "sizes.json"
    later = (T0 + dt.timedelta(days=400)).strftime("%Y-%m-%dT%H:%M:%S.%f%z")
    now = T0.strftime("%Y-%m-%dT%H:%M:%S.%f%z")
    memory_file.write_text(json.dumps({"r/1": [7, None, None, now], "r/2": [7, None, later, now]}))
    memory = logwatch.SizeMemory(str(memory_file))
    assert memory.unchanged_since("r/1", 7, T0) == T0
    assert memory.unchanged_since("r/2", 7, T0) == T0
    assert memory.unchanged_since("r/2", 7, T0 + dt.timedelta(hours=13)) == T0


def test_memory_forgets_only_the_logs_no_look_renewed_for_a_month():
    memory = logwatch.SizeMemory()
    memory.look("a/1", 5, T0)
    memory.look("b/1", 5, T0)
    memory.look("a/2", 5, T0 + dt.timedelta(days=29))
    memory.forget_stale(T0 + dt.timedelta(days=30))
    assert set(memory.seen) == {"a/2"}


def test_runs_of_other_scopes_never_forget_each_others_looks(tmp_path):
    """A `--watch` of one user's imports and a cron `--all-users` status share the file: each
    looks at other logs, and neither erases the other's remembered sizes (a log's next look
    would otherwise be a first look again, and a stalled step never be seen stalled)."""
    memory_file = str(tmp_path / "sizes.json")
    repo = Repository("R", str(tmp_path / "absent"))
    watch, cron = logwatch.SizeMemory(memory_file), logwatch.SizeMemory(memory_file)
    logwatch.probe_logs(Port({10: 1, 20: 2}), repo, [(1, log(10)), (2, log(20))], T0, watch)
    watch.save()
    logwatch.probe_logs(Port({30: 3}), repo, [(3, log(30))], T0, cron)
    cron.save()
    logwatch.probe_logs(Port({10: 1, 20: 2}), repo, [(1, log(10)), (2, log(20))], T0, watch)
    watch.save()
    assert set(logwatch.SizeMemory(memory_file).seen) == {"R/10", "R/20", "R/30"}


def test_a_log_path_leaving_the_repository_or_not_a_file_is_never_looked_at_on_disk(tmp_path):
    """An owner may edit their own OriginalFile rows: `..`, or a link planted in the repository,
    must not make a privileged status reveal another file's size and mtime."""
    (tmp_path / "repo" / "u").mkdir(parents=True)
    (tmp_path / "secret").write_bytes(b"s" * 99)
    os.symlink(str(tmp_path / "secret"), str(tmp_path / "repo" / "u" / "x.log"))
    port = Port({10: 5, 20: 6, 30: 7})
    probes = logwatch.probe_logs(
        port, Repository("uuid", str(tmp_path / "repo")),
        [(1, log(10, "../secret")), (2, log(20, "u/x.log")), (3, log(30, "u/./../../secret"))],
        T0, logwatch.SizeMemory())
    assert {p.source for p in probes.values()} == {"server"} and port.asked == [[10, 20, 30]]


def test_two_runs_saving_the_memory_keep_each_others_looks(tmp_path):
    """Two runs (two import jobs of one user) read the memory at their start and save after
    their looks: neither save drops the other's looks (each would otherwise give its ghosts a
    first look again on every rerun, and never let them die while the other job runs)."""
    memory_file = str(tmp_path / "sizes.json")
    first, second = logwatch.SizeMemory(memory_file), logwatch.SizeMemory(memory_file)
    first.unchanged_since("r/1", 5, T0)
    second.unchanged_since("r/2", 6, T0)
    first.save()
    second.save()
    later = T0 + dt.timedelta(hours=13)
    again = logwatch.SizeMemory(memory_file)
    assert again.unchanged_since("r/1", 5, later) == T0
    assert again.unchanged_since("r/2", 6, later) == T0
    second.unchanged_since("r/2", 6, later + dt.timedelta(days=31))
    second.forget_stale(later + dt.timedelta(days=31))     # r/1: no look for a month
    first.unchanged_since("r/1", 8, later)
    first.save()
    second.save()
    assert set(logwatch.SizeMemory(memory_file).seen) == {"r/1", "r/2"}   # r/1 renewed meanwhile
