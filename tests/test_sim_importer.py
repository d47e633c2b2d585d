"""The fake importer speaks the real CommandLineImporter's interface (omero-blitz formats, exit codes)."""
import os
import re
import signal
import subprocess
import sys

import pytest
import yaml

from sim.builder import lab_server

FAKE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sim", "fake_importer.py")
SUMMARY = re.compile(r"^(\d+) files? uploaded, (\d+) filesets?(?:, (\d+) plates?)? created, "
                     r"(\d+) images? imported, (\d+) errors? in \d+:\d\d:\d\d\.\d\d\d$", re.M)


def write(path, data=b"bytes\n"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


@pytest.fixture
def world(tmp_path):
    sim = lab_server(str(tmp_path / "server"))
    src = tmp_path / "data"
    write(str(src / "a.fake"))
    write(str(src / "a.fake.ini"))
    write(str(src / "b&series=2.fake"))
    write(str(src / "notes.txt"))
    write(str(src / "plate" / "p.screen"))
    write(str(src / "plate" / "w1.fake"))
    write(str(src / "plate" / "w2.fake"))
    return sim, str(src)


def run(sim, args, key="key", **env):
    full_env = dict(os.environ, OMERO_CLI_EXT_SIM_ROOT=sim.root, OMERO_CLI_EXT_SIM_USER="alice")
    full_env.update(env)
    return subprocess.run([sys.executable, FAKE, "-s", "localhost", "-p", "4064", "-k", key]
                          + args, capture_output=True, text=True, env=full_env)


def test_used_files_listing(world):
    sim, src = world
    done = run(sim, ["-f", "--output=yaml", src])
    assert done.returncode == 0
    assert done.stdout.startswith("---\n- group: ")
    groups = yaml.safe_load(done.stdout)
    assert [(g["group"], g["spw"], g["files"]) for g in groups] == [
        (src + "/a.fake", False, [src + "/a.fake", src + "/a.fake.ini"]),
        (src + "/b&series=2.fake", False, [src + "/b&series=2.fake"]),
        (src + "/plate/p.screen", True, [src + "/plate/p.screen", src + "/plate/w1.fake",
                                         src + "/plate/w2.fake"])]
    assert {g["reader"] for g in groups} == {"loci.formats.in.FakeReader"}


def test_nothing_importable_exits_125(world):
    sim, src = world
    done = run(sim, ["-f", "--output=yaml", src + "/notes.txt"])
    assert (done.returncode, done.stdout) == (125, "---\n")


def test_import_outputs_yaml_progress_and_summary(world):
    sim, src = world
    dataset = sim.add_dataset("D", "alice")
    done = run(sim, ["--output=yaml", "--transfer=ln_s", "-d", str(dataset), src])
    assert done.returncode == 0, done.stderr
    docs = list(yaml.safe_load_all(done.stdout))
    assert [list(d[0]) for d in docs] == [["Fileset", "Image"], ["Fileset", "Image"],
                                          ["Fileset", "Plate", "Image"]]
    assert [len(d[0]["Image"]) for d in docs] == [1, 2, 2]
    first = docs[0][0]["Fileset"]
    log_id = sim.import_log_id(first)
    err = done.stderr
    order = ["FILE_UPLOAD_STARTED: %s/a.fake" % src, "FILE_UPLOAD_COMPLETE: %s/a.fake" % src,
             "IMPORT_STARTED Logfile: %d" % log_id,
             "METADATA_IMPORTED Step: 1 of 5  Logfile: %d" % log_id,
             "OBJECTS_RETURNED Step: 5 of 5  Logfile: %d" % log_id,
             "IMPORT_DONE Imported file: %s/a.fake" % src]
    positions = [err.index(line) for line in order]
    assert positions == sorted(positions)
    assert "\n==> Summary\n" in err
    assert SUMMARY.search(err).groups() == ("6", "3", "1", "5", "0")
    port = sim.port("alice")
    fileset = port.filesets([first])[first]
    assert [e.client_path for e in fileset.entries] == [(src + "/a.fake").lstrip("/"),
                                                       (src + "/a.fake.ini").lstrip("/")]
    assert fileset.transfer == "ln_s"
    assert port.containers_of([first])[first] == ("Dataset", "D")


def test_failed_fileset_stops_the_import_with_exit_2(world):
    sim, src = world
    done = run(sim, ["--output=yaml", src], OMERO_CLI_EXT_SIM_FAIL_PATTERN="b&*")
    assert done.returncode == 2
    assert "INTERNAL_EXCEPTION: %s/b&series=2.fake" % src in done.stderr
    assert "Failure response on import!" in done.stderr
    assert SUMMARY.search(done.stderr).groups() == ("3", "1", None, "1", "1")
    filesets = sim.query("SELECT id FROM Fileset ORDER BY id")
    assert len(filesets) == 2                       # the plate was never started
    ghost = filesets[1][0]
    act = sim.port("alice").activity([ghost])[ghost]
    assert act.image_count == 0 and act.jobs[0].status == "Finished"


def test_failed_fileset_with_continue_exits_0(world):
    sim, src = world
    done = run(sim, ["-c", "--output=yaml", src], OMERO_CLI_EXT_SIM_FAIL_PATTERN="b&*")
    assert done.returncode == 0
    assert len(list(yaml.safe_load_all(done.stdout))) == 2
    assert SUMMARY.search(done.stderr).groups() == ("6", "2", "1", "3", "1")


def test_crash_after_n_filesets_leaves_a_half_upload(world):
    sim, src = world
    session = sim.open_session("alice")
    done = run(sim, ["--output=yaml", src], key=session, OMERO_CLI_EXT_SIM_CRASH_AFTER="1")
    assert done.returncode == -signal.SIGKILL
    assert len(list(yaml.safe_load_all(done.stdout))) == 1
    half = sim.query("SELECT max(id) FROM Fileset")[0][0]
    port = sim.port("alice", session=session)
    assert port.activity([half])[half].jobs[0].status == "Submitted"
    # the first fileset's process was closed after verifyUpload; the dead one's is still open
    assert [r.fileset_id for r in port.running_imports()] == [0]
    assert [r.own_session for r in sim.port("alice").running_imports()] == [False, False]


def test_the_importer_joins_the_session_and_closes_each_process_after_verify_upload(world):
    """omero-py passes `-k SESSION`; ImportLibrary closes the process right after verifyUpload."""
    sim, src = world
    session = sim.open_session("alice")
    assert run(sim, [src], key=session).returncode == 0
    processes = sim.query("SELECT session, closed FROM sim_process")
    assert len(processes) == 3 and set(processes) == {(session, 1)}
    assert sim.port("alice", session=session).running_imports() == []
    assert run(sim, [src]).returncode == 0     # an unknown key: a login of its own
    assert len({s for (s,) in sim.query("SELECT session FROM sim_process")}) == 2


def test_hang_after_first_fileset(world):
    sim, src = world
    env = dict(os.environ, OMERO_CLI_EXT_SIM_ROOT=sim.root, OMERO_CLI_EXT_SIM_USER="alice",
               OMERO_CLI_EXT_SIM_HANG="1")
    proc = subprocess.Popen([sys.executable, FAKE, "--output=yaml", src], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        assert lines[1].startswith("- Fileset: ")
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
    assert sim.query("SELECT count(*) FROM Fileset")[0][0] == 1


def test_exclude_clientpath_skips_imported_filesets(world):
    sim, src = world
    assert run(sim, ["--output=yaml", src + "/a.fake"]).returncode == 0
    again = run(sim, ["--output=yaml", "--exclude=clientpath", src + "/a.fake",
                      src + "/b&series=2.fake"])
    assert again.returncode == 0
    assert [d[0]["Fileset"] for d in yaml.safe_load_all(again.stdout)] == [2]


def test_checksum_and_thumbnail_options(world):
    sim, src = world
    done = run(sim, ["--output=yaml", "--checksum-algorithm=File-Size-64", "--no-thumbnails",
                     src + "/a.fake"])
    assert done.returncode == 0
    fid = yaml.safe_load(done.stdout)[0]["Fileset"]
    fileset = sim.port("alice").filesets([fid])[fid]
    assert fileset.entries[0].original_file.hasher == "File-Size-64"
    assert fileset.entries[0].original_file.hash == "0600000000000000"   # 6 bytes, little-endian
    kinds = [kind for (kind,) in sim.query("SELECT j.kind FROM FilesetJobLink l JOIN Job j "
                                           "ON j.id = l.child WHERE l.parent = ?", (fid,))]
    assert "UploadJob" in kinds and "ThumbnailGenerationJob" not in kinds


def test_default_output_prints_ids(world):
    sim, src = world
    done = run(sim, [src + "/plate"])
    assert done.returncode == 0
    assert re.fullmatch(r"Plate:\d+\n", done.stdout)


def test_usage_errors_exit_1(world):
    sim, src = world
    assert run(sim, ["--no-such-option", src]).returncode == 1
    assert run(sim, ["--transfer=teleport", src]).returncode == 1
    assert sim.query("SELECT count(*) FROM Fileset")[0][0] == 0
