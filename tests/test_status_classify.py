"""The pure classifier: stage and state of server imports from hand-made port dataclasses."""
from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, strategies as st

from omero_cli_ext.server import (
    Fileset, FilesetActivity, FilesetEntry, ImportLog, Job, OriginalFile, RunningImport,
)
from omero_cli_ext.status import classify as c

T0 = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.timezone.utc)
STALL = 15 * 60
ALICE, BOB = 7, 8


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def fileset(fid, owner=ALICE, created=0.0, sizes=(100,)):
    entries = tuple(FilesetEntry("data/f%d_%d.fake" % (fid, i),
                                 OriginalFile(id=fid * 100 + i, path="p/", name="f%d" % i, size=s))
                    for i, s in enumerate(sizes))
    return Fileset(id=fid, template_prefix="u_%d/2026-11/27/12-00-00.000/" % owner, owner_id=owner,
                   owner_name={ALICE: "alice", BOB: "bob"}[owner], group_id=3, group_name="lab",
                   group_perms="rwr---", entries=entries, created=at(created))


def activity(fid, upload="Finished", images=0, steps=0, last=0.0, log=True, message=""):
    jobs = (Job(id=fid * 10, fileset_id=fid, kind="UploadJob", status=upload, message=message,
                finished=at(last) if upload == "Finished" else None),
            Job(id=fid * 10 + 1, fileset_id=fid, kind="MetadataImportJob", status="Submitted"))
    import_log = ImportLog(fileset_id=fid, original_file_id=fid * 1000, size=80 * steps,
                           updated=at(last) if steps else None, updates=steps) if log else None
    return FilesetActivity(fileset_id=fid, jobs=jobs, image_count=images, log=import_log,
                           last_event=at(last))


def one(fs, act, now=0.0, live=(), viewer=ALICE, probe=None):
    (status,) = c.classify([fs], {fs.id: act}, [RunningImport(i) for i in live], now=at(now),
                           stalled_after=STALL, viewer_id=viewer,
                           probes={fs.id: probe} if probe else None)
    return status


@pytest.mark.parametrize("steps, images, stage, state", [
    (0, 0, c.PROCESSING, c.ACTIVE),
    (0, 2, c.PROCESSING, c.ACTIVE),        # images saved, the step's log update not yet
    (1, 2, c.PIXEL_DATA, c.ACTIVE),
    (2, 2, c.THUMBNAILS, c.ACTIVE),
    (3, 2, c.DONE, c.DONE),
    (5, 2, c.DONE, c.DONE),
])
def test_stage_follows_the_import_log_updates_once_uploaded(steps, images, stage, state):
    status = one(fileset(1), activity(1, images=images, steps=steps, last=60), now=120, live=[1])
    assert (status.stage, status.state, status.steps_done) == (stage, state, steps)


def test_the_submitted_jobs_of_a_done_import_do_not_matter():
    status = one(fileset(1), activity(1, images=1, steps=5, last=60), now=10 * 86400)
    assert (status.stage, status.state) == (c.DONE, c.DONE)
    assert status.reason == "1 images, thumbnail step ended"


def test_an_upload_in_progress_is_active_then_stalled():
    act = activity(1, upload="Submitted", last=300)
    assert (one(fileset(1), act, now=400, live=[1]).stage,
            one(fileset(1), act, now=400, live=[1]).state) == (c.UPLOADING, c.ACTIVE)
    stalled = one(fileset(1), act, now=300 + STALL, live=[1])
    assert (stalled.stage, stalled.state, stalled.idle_seconds) == (c.UPLOADING, c.STALLED, STALL)
    assert stalled.reason == "no activity for 15m (UploadJob Submitted)"


@pytest.mark.parametrize("status", ["Error", "Cancelled"])
def test_an_upload_job_in_error_is_failed(status):
    result = one(fileset(1), activity(1, upload=status, last=5, message="disk full"), now=10)
    assert (result.stage, result.state, result.reason) == (c.FAILED, c.FAILED,
                                                          "UploadJob %s: disk full" % status)


def test_a_step_that_ended_without_images_is_a_ghost():
    result = one(fileset(1), activity(1, images=0, steps=1, last=50), now=60)
    assert (result.stage, result.state) == (c.FAILED, c.FAILED)
    assert "ghost" in result.reason


def test_a_verified_upload_without_images_is_processing_and_never_failed_for_lack_of_a_process():
    """The Java importer closes its process right after verifyUpload: no process means nothing."""
    act = activity(1, images=0, steps=0, last=0)
    assert one(fileset(1), act, now=STALL - 1).state == c.ACTIVE
    quiet = one(fileset(1), act, now=10 * STALL)
    assert (quiet.stage, quiet.state, quiet.process) == (c.PROCESSING, c.STALLED, c.NOT_VISIBLE)
    assert quiet.reason.startswith("no activity for 2h30m (upload verified, no server step ended")


def test_a_growing_import_log_keeps_a_long_first_step_active():
    act = activity(1, images=0, steps=0, last=0)
    growing = one(fileset(1), act, now=5 * STALL,
                  probe=c.LogProbe(size=4096, grew=at(5 * STALL - 60), source="disk"))
    assert (growing.stage, growing.state, growing.log_grew) == (
        c.PROCESSING, c.ACTIVE, at(5 * STALL - 60))
    assert growing.reason.endswith("import log 4096 bytes on disk, grew 1m00s ago")
    still = one(fileset(1), act, now=5 * STALL,
                probe=c.LogProbe(size=4096, grew=at(3 * STALL), source="server"))
    assert (still.state, still.idle_seconds) == (c.STALLED, 2 * STALL)
    assert "via RawFileStore, grew 30m ago" in still.reason
    first = one(fileset(1), act, now=5 * STALL, probe=c.LogProbe(4096, None, "server"))
    assert first.state == c.STALLED and first.reason.endswith("first look)")


def test_only_imports_in_a_server_step_need_a_look_at_their_log():
    assert c.needs_log_probe(activity(1, images=0, steps=0))
    assert c.needs_log_probe(activity(1, images=2, steps=2))
    assert not c.needs_log_probe(activity(1, images=2, steps=3))      # done
    assert not c.needs_log_probe(activity(1, images=0, steps=1))      # ghost
    assert not c.needs_log_probe(activity(1, upload="Submitted"))    # still uploading
    assert not c.needs_log_probe(activity(1, log=False))
    assert not c.needs_log_probe(None)


def test_processes_of_other_sessions_are_never_asked_nor_matched():
    status = c.classify([fileset(1, created=0)], {1: activity(1, upload="Submitted", last=10)},
                        [RunningImport(c.UNATTRIBUTED, own_session=False)], now=at(20),
                        stalled_after=STALL, viewer_id=ALICE)[0]
    assert status.process == c.NOT_VISIBLE


def test_without_an_import_log_images_decide():
    assert one(fileset(1), activity(1, images=3, log=False), now=1).state == c.DONE
    assert one(fileset(1), activity(1, images=0, log=False), now=1).state == c.FAILED


def test_an_import_not_started_is_queued_while_another_of_its_owner_is_active():
    running = fileset(1, created=0)
    waiting = fileset(2, created=10, sizes=(None,))
    acts = {1: activity(1, images=1, steps=1, last=100), 2: activity(2, upload="Submitted", last=10)}
    statuses = {s.fileset_id: s for s in c.classify(
        [running, waiting], acts, [], now=at(STALL + 50), stalled_after=STALL, viewer_id=ALICE)}
    assert statuses[1].state == c.ACTIVE
    assert (statuses[2].stage, statuses[2].state) == (c.UPLOADING, c.QUEUED)
    assert statuses[2].reason == "not started, another import of alice is active"


def test_an_import_not_started_behind_a_stalled_one_is_stalled_too():
    acts = {1: activity(1, images=1, steps=1, last=0), 2: activity(2, upload="Submitted", last=10)}
    statuses = c.classify([fileset(1), fileset(2, created=10, sizes=(None,))], acts, [],
                          now=at(STALL + 20),
                          stalled_after=STALL, viewer_id=ALICE)
    assert [(s.fileset_id, s.state) for s in statuses] == [(2, c.STALLED), (1, c.STALLED)]


def test_bytes_received_mean_started_even_without_an_event():
    acts = {1: activity(1, images=1, steps=1, last=100), 2: activity(2, upload="Submitted", last=10)}
    statuses = {s.fileset_id: s for s in c.classify(
        [fileset(1), fileset(2, created=10, sizes=(100, None))], acts, [], now=at(120),
        stalled_after=STALL, viewer_id=ALICE)}
    assert (statuses[2].state, statuses[2].reason) == (c.ACTIVE, "UploadJob Submitted")


def test_processes_still_uploading_are_matched_to_the_newest_uploads_of_the_viewer():
    filesets = [fileset(1, created=0), fileset(2, created=10), fileset(3, created=20),
                fileset(4, owner=BOB, created=30), fileset(5, created=5)]
    acts = {i: activity(i, upload="Submitted", last=40) for i in (1, 2, 3, 4)}
    acts[5] = activity(5, images=1, steps=1, last=40)
    running = [RunningImport(c.UNATTRIBUTED), RunningImport(c.UNATTRIBUTED), RunningImport(5)]
    process = {s.fileset_id: s.process for s in c.classify(
        filesets, acts, running, now=at(50), stalled_after=STALL, viewer_id=ALICE)}
    assert process == {1: c.NOT_VISIBLE, 2: c.LIVE, 3: c.LIVE, 4: c.NOT_VISIBLE, 5: c.LIVE}


def test_another_owners_activity_does_not_queue_an_import():
    acts = {1: activity(1, images=1, steps=1, last=100), 2: activity(2, upload="Submitted", last=90)}
    statuses = {s.fileset_id: s for s in c.classify(
        [fileset(1, owner=BOB), fileset(2, created=90, sizes=(None,))], acts, [], now=at(120),
        stalled_after=STALL, viewer_id=ALICE)}
    assert (statuses[2].state, statuses[2].reason) == (c.ACTIVE, "just created, nothing received yet")


def test_worst_state_first_then_most_recent_activity():
    acts = {1: activity(1, images=1, steps=5, last=0),        # done
            2: activity(2, images=0, steps=1, last=0),        # failed
            3: activity(3, upload="Submitted", last=5),       # active, older activity
            4: activity(4, upload="Submitted", last=50),      # active, newer
            5: activity(5, images=1, steps=1, last=-STALL)}   # stalled
    filesets = [fileset(i, created=-2 * STALL) for i in range(1, 6)]
    order = [s.fileset_id for s in c.classify(filesets, acts, [], now=at(60), stalled_after=STALL,
                                              viewer_id=ALICE)]
    assert order == [2, 5, 4, 3, 1]


def test_status_reports_sizes_files_and_times():
    status = one(fileset(1, sizes=(100, 50)), activity(1, images=2, steps=1, last=70), now=100)
    assert (status.files, status.bytes, status.images) == (2, 150, 2)
    assert (status.started, status.last_activity, status.idle_seconds) == (at(0), at(70), 30)
    assert status.upload_finished == at(70)


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (59, "59s"), (61, "1m01s"), (599, "9m59s"),
                                           (900, "15m"), (3600, "1h00m"), (3 * 3600 + 5 * 60, "3h05m"),
                                           (2 * 86400 + 4 * 3600, "2d04h")])
def test_duration_text(seconds, text):
    assert c.duration_text(seconds) == text


@given(upload=st.sampled_from(["Submitted", "Running", "Finished", "Error", "Cancelled"]),
       images=st.integers(0, 3), steps=st.integers(0, 6), last=st.floats(-86400, 0),
       now=st.floats(0, 86400), live=st.booleans(), log=st.booleans(), own=st.booleans())
def test_every_combination_of_signals_has_one_consistent_state(upload, images, steps, last, now,
                                                               live, log, own):
    status = one(fileset(1, owner=ALICE if own else BOB, created=-86400),
                 activity(1, upload=upload, images=images, steps=steps, last=last, log=log),
                 now=now, live=[1] if live else [])
    assert status.stage in c.STAGES and status.state in c.STATES
    assert (status.state == c.FAILED) == (status.stage == c.FAILED)
    assert (status.state == c.DONE) == (status.stage == c.DONE)
    if status.state == c.DONE:
        assert images > 0
    if status.state in c.IN_PROGRESS:
        assert (status.state == c.STALLED) == (status.idle_seconds >= STALL)
