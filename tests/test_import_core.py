"""Pure core of `omero import --resume`: listing and result parsing, chunking, reconciliation."""
from __future__ import annotations

import datetime as _dt
import os

import pytest

from omero_cli_ext.importing import plan, reconcile, results, store
from omero_cli_ext.server import FilesetActivity, Job, RunningImport

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


def test_client_path_is_stored_without_leading_slash_and_undecodable_bytes_replaced():
    assert plan.client_path("/data/x.fake") == "data/x.fake"
    assert plan.client_path(os.fsdecode(b"/d/\xff.fake")) == "d/\ufffd.fake"


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

class FakePort:
    """The three calls reconcile makes, with counters (each is one batched server call)."""

    def __init__(self, by_path, activity, live=()):
        self.by_path, self._activity, self.live = by_path, activity, live
        self.calls, self.deleted = [], []

    def filesets_by_client_paths(self, paths, owner_id):
        self.calls.append("paths")
        return {p: self.by_path[p] for p in paths if p in self.by_path}

    def activity(self, ids):
        self.calls.append("activity")
        return {i: self._activity[i] for i in ids if i in self._activity}

    def running_imports(self):
        self.calls.append("running")
        return [RunningImport(fileset_id=i) for i in self.live]

    def delete_filesets(self, ids):
        self.calls.append("delete")
        self.deleted += list(ids)


NOW = _dt.datetime(2024, 5, 1, 12, 0, tzinfo=_dt.timezone.utc)


def act(fid, images=0, uploaded=True, last=None):
    jobs = (Job(id=fid * 10, fileset_id=fid, kind="UploadJob",
                status="Finished" if uploaded else "Running"),
            Job(id=fid * 10 + 1, fileset_id=fid, kind="MetadataImportJob", status="Submitted"))
    return FilesetActivity(fileset_id=fid, jobs=jobs, image_count=images, last_event=last)


def fs(idx, *files):
    return store.PlannedFileset(idx=idx, main=files[0], files=files, size=1)


def scenario():
    doubtful = [fs(0, "/d/done.fake"), fs(1, "/d/half.fake"), fs(2, "/d/ghost.fake"),
                fs(3, "/d/none.fake"), fs(4, "/d/foreign.fake"), fs(5, "/d/busy.fake"),
                fs(6, "/d/multi.fake", "/d/multi.fake.ini")]
    by_path = {"d/done.fake": (1,), "d/half.fake": (2,), "d/ghost.fake": (3,),
               "d/foreign.fake": (4,), "d/busy.fake": (5,),
               "d/multi.fake": (6, 7), "d/multi.fake.ini": (7,)}
    activity = {1: act(1, images=2), 2: act(2, uploaded=False), 3: act(3), 4: act(4),
                5: act(5, last=NOW - _dt.timedelta(seconds=30)), 6: act(6), 7: act(7, images=1)}
    return doubtful, FakePort(by_path, activity, live=(5,))


def test_reconcile_with_clean_ghosts_deletes_only_this_jobs_ghosts_in_one_batch():
    doubtful, port = scenario()
    decision = reconcile.reconcile(port, 9, doubtful, foreign={4}, clean_ghosts=True,
                                   raw_results={1: ((11, 12), ())}, now=NOW)
    assert [d[:4] for d in decision.done] == [(0, 1, (11, 12), ()), (6, 7, None, None)]
    assert sorted(decision.replan) == [1, 2, 3, 4]
    assert decision.waiting == [5]
    # never 4 (foreign), 5 (still importing) or 6 (lacks one of the fileset's files)
    assert port.deleted == [2, 3]
    assert port.calls == ["paths", "activity", "running", "delete"]


def test_reconcile_without_clean_ghosts_reports_and_deletes_nothing():
    doubtful, port = scenario()
    decision = reconcile.reconcile(port, 9, doubtful, foreign={4}, clean_ghosts=False, now=NOW)
    assert sorted(idx for idx, _ in decision.blocked) == [1, 2]
    assert sorted(fid for fid, _ in decision.ghosts_left) == [2, 3]
    assert sorted(decision.replan) == [3, 4]
    assert port.deleted == [] and "delete" not in port.calls


def test_reconcile_after_a_clean_importer_exit_fails_silent_filesets_and_accepts_excluded_ones():
    doubtful = [fs(0, "/d/gone.fake"), fs(1, "/d/old.fake"), fs(2, "/d/bad.fake")]
    port = FakePort({"d/old.fake": (4,), "d/bad.fake": (5,)}, {4: act(4, images=1), 5: act(5)})
    decision = reconcile.reconcile(port, 9, doubtful, foreign={4}, clean_ghosts=True, final=True,
                                   reported={2: "INTERNAL_EXCEPTION"}, now=NOW)
    assert decision.failed[0] == (0, "the importer reported no result for it")
    assert decision.done[0][:2] == (1, 4) and "before this job" in decision.done[0][4]
    assert decision.failed[1][0] == 2 and "ghost fileset 5 deleted" in decision.failed[1][1]
    assert port.deleted == [5]


def test_nothing_in_doubt_asks_the_server_nothing():
    port = FakePort({}, {})
    assert reconcile.reconcile(port, 9, [], foreign=set(), clean_ghosts=True).replan == []
    assert port.calls == []
