"""Pure core of `omero import --resume`: listing and result parsing, chunking, reconciliation."""
from __future__ import annotations

import datetime as _dt

import pytest

from omero_cli_ext.importing import plan, reconcile, results, store
from omero_cli_ext.server import Fileset, FilesetActivity, ImportLog, Job

LISTING = """Previously logged in to localhost:4064 as root
---
- group: /data/a: b.fake
  spw: false
  reader: loci.formats.in.FakeReader
  files:
   - /data/a: b.fake
   - /data/a: b.fake.ini
- group: /data/#plate/p.screen
  spw: true
  reader: loci.formats.in.FakeReader
  files:
   - /data/#plate/p.screen
   - /data/#plate/w1.tif
"""


def test_listing_tolerates_chatter_and_names_yaml_would_misread():
    groups = plan.parse_groups(LISTING.splitlines())
    assert [g.main for g in groups] == ["/data/a: b.fake", "/data/#plate/p.screen"]
    assert groups[0].files == ("/data/a: b.fake", "/data/a: b.fake.ini")
    assert (groups[0].spw, groups[1].spw) == (False, True)
    assert groups[1].reader == "loci.formats.in.FakeReader"


def test_chunks_fill_by_count_or_bytes_whichever_first():
    groups = [plan.Group(f"/d/{i}", (f"/d/{i}",), "", False) for i in range(7)]
    sizes = {f"/d/{i}": s for i, s in enumerate([10, 10, 10, 50, 10, 10, 10])}
    by_count = plan.chunk_filesets(groups, sizes, 3, None)
    assert [f.chunk for f in by_count] == [0, 0, 0, 1, 1, 1, 2]
    by_bytes = plan.chunk_filesets(groups, sizes, None, 30)
    assert [f.chunk for f in by_bytes] == [0, 0, 0, 1, 2, 2, 2]   # 50 > 30: a chunk of its own
    both = plan.chunk_filesets(groups, sizes, 2, 30)
    assert [f.chunk for f in both] == [0, 0, 1, 2, 3, 3, 4]


@pytest.mark.parametrize("text,expected", [("1024", 1024), ("2K", 2048), ("1.5G", 3 << 29),
                                           ("2TiB", 2 << 40), ("500g", 500 << 30)])
def test_sizes(text, expected):
    assert plan.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "0", "-5G", "lots", "5X"])
def test_bad_sizes_are_refused(text):
    with pytest.raises(ValueError):
        plan.parse_size(text)


def test_results_are_parsed_in_any_key_order_after_chatter():
    out = ["Previously logged in to x", "---", "- Fileset: 7", "  Plate: [3]",
           "  Image: [10,11]", "---", "- Fileset: 8", "  Image: [12]"]
    assert list(results.parse_results(out)) == [
        results.ImportResult(7, (10, 11), (3,)), results.ImportResult(8, (12,), ())]


def test_log_reader_finds_failures_with_their_exception_and_the_summary():
    reader = results.LogReader()
    lines = [
        "2024-01-01 10:00:00,000 1 [main] INFO  LoggingImportMonitor  - IMPORT_DONE Imported "
        "file: /d/a.fake",
        "2024-01-01 10:00:00,000 1 [main] ERROR ErrorHandler  - INTERNAL_EXCEPTION: /d/b.fake",
        "java.lang.RuntimeException: Failure response on import!",
        "1 file uploaded, 1 fileset created, 1 image imported, 1 error in 0:00:01.250",
    ]
    events = [e for line in lines for e in reader.feed(line)] + reader.close()
    assert [e.kind for e in events] == ["imported", "failed", "summary"]
    assert events[1].path == "/d/b.fake"
    assert "Failure response on import" in events[1].message
    assert (events[2].errors, events[2].seconds) == (1, 1.25)


# --- reconciliation ---------------------------------------------------------------------------

NOW = _dt.datetime(2024, 5, 1, 12, 0, tzinfo=_dt.timezone.utc)
HOUR = _dt.timedelta(hours=1)
SESSION, OTHER_SESSION, GROUP = 70, 71, 3


class FakePort:
    """The batched calls reconcile makes, with a log of them."""

    def __init__(self, by_path, activity, sessions=None, created=None, groups=None, logs=None,
                 target=(), containers=None):
        self.by_path, self._activity = by_path, activity
        self.sessions, self.created = sessions or {}, created or {}
        self.groups, self.logs, self.target = groups or {}, logs or {}, tuple(target)
        self.containers = containers or {}
        self.calls, self.deleted = [], []

    def filesets_by_client_paths(self, paths, owner_id):
        self.calls.append("paths")
        return {p: self.by_path[p] for p in paths if p in self.by_path}

    def activity(self, ids):
        self.calls.append("activity")
        return {i: self._activity[i] for i in ids if i in self._activity}

    def filesets(self, ids, image_counts=True):
        self.calls.append("filesets")
        return {i: Fileset(id=i, template_prefix="u/", owner_id=9, owner_name="u",
                           group_id=self.groups.get(i, GROUP), group_name="g",
                           group_perms="rw----", created=self.created.get(i, NOW - HOUR))
                for i in ids if i in self._activity}

    def fileset_sessions(self, ids):
        self.calls.append("sessions")
        return {i: self.sessions[i] for i in ids if i in self.sessions}

    def open_original_file(self, of_id):
        self.calls.append("log")
        data = self.logs.get(of_id, b"")

        class Reader:
            size = len(data)

            def read(self, offset, length):
                return data[offset:offset + length]

            def close(self):
                pass
        return Reader()

    def filesets_of(self, refs):
        self.calls.append("target")
        return {refs[0]: self.target}

    def containers_of(self, ids):
        self.calls.append("containers")
        return {i: self.containers.get(i, ()) for i in ids}

    def delete_filesets(self, ids):
        self.calls.append("delete")
        self.deleted += list(ids)


def act(fid, images=0, upload="Finished", last=None, verified_at=None):
    jobs = (Job(id=fid * 10, fileset_id=fid, kind="UploadJob", status=upload,
                finished=verified_at if upload == "Finished" else None),
            Job(id=fid * 10 + 1, fileset_id=fid, kind="MetadataImportJob", status="Submitted"))
    return FilesetActivity(fileset_id=fid, jobs=jobs, image_count=images, last_event=last,
                           log=ImportLog(fileset_id=fid, original_file_id=1000 + fid, size=0))


def fs(idx, *files, chunk=0):
    return store.PlannedFileset(idx=idx, main=files[0], files=files, size=1, chunk=chunk)


ATTEMPT = store.Attempt("0.1", 0, SESSION, NOW - 2 * HOUR, NOW - 30 * 60 * _dt.timedelta(seconds=1))
OURS = store.Ownership(attempts=(ATTEMPT,))


def decide(port, doubtful, ownership=OURS, **kwargs):
    kwargs.setdefault("clean_ghosts", True)
    return reconcile.reconcile(port, 9, GROUP, doubtful, ownership=ownership, server_now=NOW,
                               limits=reconcile.Limits(lease=600, server_step_timeout=12 * 3600),
                               target_filesets=lambda: set(port.filesets_of([("Dataset", 5)])[
                                   ("Dataset", 5)]), **kwargs)


def test_only_filesets_proven_ours_and_proven_dead_are_deleted_in_one_batch():
    quiet = NOW - HOUR
    doubtful = [fs(i, f"/d/{i}.fake") for i in range(8)]
    by_path = {f"d/{i}.fake": (10 + i,) for i in range(8)}
    activity = {
        10: act(10, images=2, last=quiet),                        # ours, complete
        11: act(11, upload="Running", last=quiet),                 # ours, upload dead (lease)
        12: act(12, upload="Running", last=NOW - _dt.timedelta(seconds=60)),  # ours, uploading
        13: act(13, last=quiet, verified_at=quiet),                # ours, metadata step (1 h)
        14: act(14, last=quiet, verified_at=quiet),                # ours, log has an ERROR
        15: act(15, upload="Running", last=quiet),                 # other session: foreign
        16: act(16, upload="Error", last=quiet),                   # ours, UploadJob Error
        17: act(17, last=NOW - 13 * HOUR, verified_at=NOW - 13 * HOUR),  # ours, step timed out
    }
    sessions = {fid: SESSION for fid in activity}
    sessions[15] = OTHER_SESSION
    port = FakePort(by_path, activity, sessions=sessions, created={17: NOW - 14 * HOUR + HOUR},
                    target=(10,),
                    logs={1014: b"2024-05-01 10:00:00,000 ERROR [ome.services.blitz.repo."
                                b"ManagedImportRequestI] Failure response on import!\n"})
    # fileset 17 was created before the attempt's span: the attempt must cover it to own it
    ownership = store.Ownership(attempts=(ATTEMPT, store.Attempt(
        "0.0", 0, SESSION, NOW - 15 * HOUR, NOW - 13 * HOUR)))
    decision = decide(port, doubtful, ownership)
    assert [d[:2] for d in decision.done] == [(0, 10)]
    assert sorted(port.deleted) == [11, 14, 16, 17]
    assert [idx for idx, _ in decision.waiting] == [2, 3]
    assert "still processing" in dict(decision.waiting)[3]
    assert [(idx, fid) for idx, fid, _, _ in decision.foreign] == [(5, 15)]
    assert sorted(decision.replan) == [1, 4, 5, 6, 7]
    assert port.calls.count("delete") == 1


def test_without_clean_ghosts_nothing_is_deleted_and_the_reason_is_given():
    port = FakePort({"d/a.fake": (11,)}, {11: act(11, upload="Running", last=NOW - HOUR)},
                    sessions={11: SESSION})
    decision = decide(port, [fs(0, "/d/a.fake")], clean_ghosts=False)
    assert port.deleted == [] and "delete" not in port.calls
    assert decision.blocked == [(0, (11,), decision.blocked[0][2])]
    assert "never verified" in decision.blocked[0][2]


@pytest.mark.parametrize("why, ownership, sessions, groups, created", [
    ("other session", OURS, {11: OTHER_SESSION}, {}, {}),
    ("before the attempt", OURS, {11: SESSION}, {}, {11: NOW - 3 * HOUR}),
    ("after the attempt ended", OURS, {11: SESSION}, {}, {11: NOW - 10 * 60 * _dt.timedelta(seconds=1)}),
    ("other group", OURS, {11: SESSION}, {11: GROUP + 1}, {}),
    ("attempt of another chunk", store.Ownership(attempts=(store.Attempt(
        "1.1", 1, SESSION, NOW - 2 * HOUR, None),)), {11: SESSION}, {}, {}),
])
def test_a_dead_looking_fileset_not_proven_ours_is_foreign_and_never_deleted(
        why, ownership, sessions, groups, created):
    port = FakePort({"d/a.fake": (11,)}, {11: act(11, upload="Running", last=NOW - 5 * HOUR)},
                    sessions=sessions, groups=groups, created=created)
    decision = decide(port, [fs(0, "/d/a.fake")], ownership)
    assert port.deleted == [], why
    assert [fid for _, fid, _, _ in decision.foreign] == [11]
    assert decision.replan == [0]


@pytest.mark.parametrize("target, ours", [((11,), True), ((), False), (None, True)])
def test_a_complete_fileset_proven_by_session_alone_is_ours_only_in_the_target(target, ours):
    port = FakePort({"d/a.fake": (11,)}, {11: act(11, images=1)}, sessions={11: SESSION},
                    target=target or ())
    decision = reconcile.reconcile(
        port, 9, GROUP, [fs(0, "/d/a.fake")], ownership=OURS, clean_ghosts=True,
        server_now=NOW, final=True,
        target_filesets=None if target is None else (lambda: set(target)))
    assert ([d[:2] for d in decision.done] == [(0, 11)]) is ours
    assert bool(decision.foreign) is not ours


def test_announced_filesets_and_import_logs_prove_ownership_without_a_session():
    port = FakePort({"d/a.fake": (11,), "d/b.fake": (12,)},
                    {11: act(11, last=NOW - 13 * HOUR, verified_at=NOW - 13 * HOUR),
                     12: act(12, images=1)})
    ownership = store.Ownership(filesets=frozenset({12}), logs=frozenset({1011}))
    decision = decide(port, [fs(0, "/d/a.fake"), fs(1, "/d/b.fake")], ownership)
    assert port.deleted == [11]
    assert [d[:2] for d in decision.done] == [(1, 12)]


def test_a_complete_foreign_fileset_is_done_only_when_in_the_target():
    activity = {11: act(11, images=1), 12: act(12, images=1)}
    port = FakePort({"d/a.fake": (11,), "d/b.fake": (12,)}, activity,
                    sessions={11: OTHER_SESSION, 12: OTHER_SESSION}, target=(11,),
                    containers={12: ("Project", "P", "Dataset", "elsewhere")})
    decision = decide(port, [fs(0, "/d/a.fake"), fs(1, "/d/b.fake")], final=True)
    assert [d[:2] for d in decision.done] == [(0, 11)]
    assert "another client" in decision.done[0][4]
    assert decision.failed == [(1, "the importer reported no result for it (complete Fileset 12 "
                                   "of another client uses its files: an importer with "
                                   "--exclude=clientpath skips it)")]
    assert (1, 12, True, ("Project", "P", "Dataset", "elsewhere")) in decision.foreign
    assert port.deleted == []


def test_after_a_clean_exit_a_reported_failure_names_its_deleted_ghost():
    port = FakePort({"d/bad.fake": (5,)}, {5: act(5, last=NOW - HOUR, verified_at=NOW - HOUR)},
                    sessions={5: SESSION}, logs={1005: b"x ERROR y\n"})
    decision = decide(port, [fs(0, "/d/bad.fake")], final=True,
                      reported={0: "INTERNAL_EXCEPTION"})
    assert decision.failed[0][0] == 0 and "ghost fileset 5 deleted" in decision.failed[0][1]
    assert port.deleted == [5]


def test_nothing_in_doubt_asks_the_server_nothing():
    port = FakePort({}, {})
    assert decide(port, []).replan == []
    assert port.calls == []


def test_a_result_is_yielded_once_it_names_its_images_and_completed_by_a_later_plate():
    lines = iter(["---", "- Fileset: 7", "  Image: [10]", "  Plate: [3]"])
    got = results.parse_results(lines)
    assert next(got) == results.ImportResult(7, (10,), ())      # before any further line
    assert next(got) == results.ImportResult(7, (10,), (3,))
    assert list(got) == []
    assert list(results.parse_results(["---", "- Fileset: 9", "---"])) == [
        results.ImportResult(9, (), ())]
