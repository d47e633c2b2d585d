"""The simulated server reproduces OMERO's model, permissions and surprising import states."""
import os
import re
import subprocess
import sys

import pytest

from omero_cli_ext.server import (
    IMPORT_JOB_CLASSES, FilesetQuery, NotFound, PermissionDenied, RunningImport, ServerPort,
    MIMETYPE_DIRECTORY, MIMETYPE_IMPORT_LOG,
)
from sim.server import SimServer, IMPORT_STEPS

LEVELS = ("rw----", "rwr---", "rwra--", "rwrw--")


def write(path, data=b"original bytes\n"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


@pytest.fixture
def sim(tmp_path):
    server = SimServer(str(tmp_path / "server"))
    for level in LEVELS:
        server.add_group("g" + level.replace("-", "_"), level)
    server.add_group("other", "rwrw--")
    return server


def group_of(level):
    return "g" + level.replace("-", "_")


def people(sim, level):
    g = group_of(level)
    sim.add_user("owner", [g])
    sim.add_user("member", [g])
    sim.add_user("outsider", ["other"])
    sim.add_user("admin", ["other"], admin=True)
    sim.add_user("radmin", ["other"], admin=True, privileges={"WriteManagedRepo"})


@pytest.mark.parametrize("level", LEVELS)
def test_read_rules_per_permission_level(sim, tmp_path, level):
    people(sim, level)
    fid = sim.import_fileset("owner", [write(str(tmp_path / "src" / "a.fake"))])
    of_id = sim.port("owner").filesets([fid])[fid].entries[0].original_file.id
    expected = {"owner": True, "member": level != "rw----", "outsider": False,
                "admin": True, "radmin": True}
    for user, sees in expected.items():
        port = sim.port(user)
        assert (fid in port.filesets([fid])) is sees, user
        assert ([f.id for f in port.find_filesets(FilesetQuery())] == [fid]) is sees, user
        assert (("Fileset", fid) in port.filesets_of([("Fileset", fid)])) is sees, user
        if sees:
            reader = port.open_original_file(of_id)
            assert reader.read(0, 100) == b"original bytes\n"
            reader.close()
        else:
            with pytest.raises(NotFound):
                port.open_original_file(of_id)


def test_binary_access_restricts_non_owners_only(sim, tmp_path):
    people(sim, "rwr---")
    fid = sim.import_fileset("owner", [write(str(tmp_path / "src" / "a.fake")),
                                       write(str(tmp_path / "src" / "notes.txt"))])
    data_id, txt_id = [e.original_file.id for e in sim.port("owner").filesets([fid])[fid].entries]
    sim.set_binary_access(True, group=group_of("rwr---"))
    refused = sim.port("member").open_original_file(data_id)   # RawFileBean.read checks, not open
    with pytest.raises(PermissionDenied, match="Download is restricted"):
        refused.read(0, 4)
    refused.close()
    entry = sim.port("member").filesets([fid])[fid].entries[0]
    assert entry.original_file.binary_restricted
    sim.port("member").open_original_file(txt_id).close()      # *.txt is never restricted
    for user in ("owner", "admin", "radmin"):
        sim.port(user).open_original_file(data_id).close()
    sim.set_binary_access(False, group=group_of("rwr---"))
    sim.port("member").open_original_file(data_id).close()
    sim.set_binary_access(True)                                 # server-wide
    with pytest.raises(PermissionDenied):
        sim.port("member").open_original_file(data_id).read(0, 4)


def test_per_user_binary_restriction(sim, tmp_path):
    sim.add_user("owner", ["grwr___"])
    sim.add_user("viewer", ["grwr___"], binary_restricted=True)
    fid = sim.import_fileset("owner", [write(str(tmp_path / "a.fake"))])
    of_id = sim.port("owner").filesets([fid])[fid].entries[0].original_file.id
    with pytest.raises(PermissionDenied):
        sim.port("viewer").open_original_file(of_id).read(0, 4)


def test_privileges_for_sudo_and_delete(sim, tmp_path):
    people(sim, "rwrw--")
    fid = sim.import_fileset("owner", [write(str(tmp_path / "a.fake"))])
    assert sim.port("admin").sudo("owner").current_user().name == "owner"
    assert sim.port("admin").current_user().is_full_admin
    assert not sim.port("radmin").current_user().is_full_admin
    with pytest.raises(PermissionDenied):
        sim.port("radmin").sudo("owner")
    assert not hasattr(sim.port("radmin"), "update_original_files")   # relocations are SQL work
    with pytest.raises(PermissionDenied):
        sim.port("member").delete_filesets([fid])
    with pytest.raises(PermissionDenied):
        sim.port("radmin").delete_filesets([fid])
    assert fid in sim.port("owner").filesets([fid])


def test_delete_removes_rows_and_repository_files_but_not_link_targets(sim, tmp_path):
    sim.add_user("owner", ["grw____"])
    source = write(str(tmp_path / "src" / "a.fake"))
    linked = sim.import_fileset("owner", [source], transfer="ln_s")
    uploaded = sim.import_fileset("owner", [write(str(tmp_path / "src" / "b.fake"))])
    paths = [os.path.join(sim.repo_dir, e.original_file.repo_path)
             for f in sim.port("owner").filesets([linked, uploaded]).values() for e in f.entries]
    sim.port("owner").delete_filesets([linked, uploaded])
    assert sim.port("owner").filesets([linked, uploaded]) == {}
    assert not any(os.path.lexists(p) for p in paths)
    assert os.path.exists(source)
    assert sim.query("SELECT count(*) FROM Image")[0][0] == 0
    assert sim.query("SELECT count(*) FROM Job")[0][0] == 0
    with pytest.raises(NotFound):
        sim.port("owner").delete_filesets([linked])


def log_updates(sim, log_id):
    return sim.query("SELECT count(*) FROM EventLog WHERE entityType = "
                     "'ome.model.core.OriginalFile' AND entityId = ? AND action = 'UPDATE'",
                     (log_id,))[0][0]


def test_only_the_upload_job_changes_and_steps_save_the_log_size(sim, tmp_path):
    """ManagedImportRequestI: each step's `finally` saves the log size, the cleanup once more,
    each only when the size changed (6 updates for an import whose steps all log)."""
    sim.add_user("owner", ["grw____"])
    fid = sim.import_fileset("owner", [write(str(tmp_path / "a.fake"))], steps=0)
    port = sim.port("owner")
    act = port.activity([fid])[fid]
    assert [(j.kind, j.status) for j in act.jobs] == [
        ("UploadJob", "Finished"), ("Job", "Submitted"), ("Job", "Submitted"),
        ("Job", "Submitted"), ("Job", "Submitted")]
    assert [kind for (kind,) in sim.query(
        "SELECT j.kind FROM FilesetJobLink l JOIN Job j ON j.id = l.child WHERE l.parent = ? "
        "ORDER BY l.id", (fid,))] == list(IMPORT_JOB_CLASSES)
    assert act.image_count == 0 and act.log.size == 0 and act.log.updates == 0
    sizes = []
    for step in range(1, len(IMPORT_STEPS) + 1):
        sim.advance(1)
        sim.advance_import(fid)
        act = port.activity([fid])[fid]
        sizes.append(act.log.size)
        assert act.log.updated == sim.now() == act.last_event
        assert act.image_count == 1
        assert act.log.updates == step + (step == len(IMPORT_STEPS))   # the cleanup's at the end
    assert sizes == sorted(set(sizes))
    assert log_updates(sim, act.log.original_file_id) == len(IMPORT_STEPS) + 1
    assert [j.status for j in act.jobs][1:] == ["Submitted"] * 4
    with pytest.raises(ValueError):
        sim.advance_import(fid)


def test_a_step_that_logs_nothing_saves_no_size(sim, tmp_path):
    sim.add_user("owner", ["grw____"])
    fid = sim.import_fileset("owner", [write(str(tmp_path / "a.fake"))], steps=3)
    port = sim.port("owner")
    assert port.activity([fid])[fid].log.updates == 3
    sim.advance_import(fid, 2, quiet=True)   # launchProcessing and the objects step write nothing
    act = port.activity([fid])[fid]
    assert act.log.updates == 4              # only the cleanup's line changed the size


def test_step_one_is_silent_until_it_ends_while_the_log_grows_on_disk(sim, tmp_path):
    """setId + saveToDB run in one transaction: no EventLog, no size, no image until the step
    ends; the logback appender writes the import log on disk meanwhile."""
    sim.add_user("owner", ["grw____"])
    fid = sim.import_fileset("owner", [write(str(tmp_path / "a.fake"))], steps=0)
    port = sim.port("owner")
    before = port.activity([fid])[fid]
    log_path = os.path.join(sim.repo_dir, sim.query(
        "SELECT path || name FROM OriginalFile WHERE id = ?", (before.log.original_file_id,))[0][0])
    events = sim.query("SELECT count(*) FROM EventLog")[0][0]
    for _ in range(3):
        sim.advance(600)
        sim.grow_import_log(fid)
        assert os.path.getmtime(log_path) == sim.now().timestamp()
    assert os.path.getsize(log_path) > 0
    assert port.activity([fid])[fid] == before
    assert sim.query("SELECT count(*) FROM EventLog")[0][0] == events
    sim.advance_import(fid)
    after = port.activity([fid])[fid]
    assert (after.image_count, after.log.updates, after.log.size) == (
        1, 1, os.path.getsize(log_path))


def test_the_importer_closes_its_process_right_after_verify_upload(sim, tmp_path):
    """ImportLibrary: `finally { proc.close(); }` after verifyUpload; listImports still lists
    it (ProcessContainer never removes), but it no longer answers."""
    sim.add_user("owner", ["grw____"])
    port = sim.port("owner")
    session = port.session_login()[2]
    fid = sim.create_import("owner", [write(str(tmp_path / "a.fake"))], session=session)
    assert port.running_imports() == [RunningImport(fileset_id=0)]
    sim.store_file(fid, 0)
    sim.verify_upload(fid)           # a client that keeps its process: the handle names the fileset
    assert [r.fileset_id for r in port.running_imports()] == [fid]
    sim.close_import_process(fid)
    assert port.running_imports() == []
    done = sim.import_fileset("owner", [write(str(tmp_path / "b.fake"))], session=session, steps=1)
    assert port.running_imports() == []
    assert sim.query("SELECT fileset, closed FROM sim_process ORDER BY id") == [(fid, 1), (done, 1)]


def test_list_imports_lists_every_process_but_only_the_own_session_answers(sim, tmp_path):
    people(sim, "rwrw--")
    mine, other_login = sim.port("owner"), sim.port("owner")
    a = sim.create_import("owner", [write(str(tmp_path / "a.fake"))],
                          session=mine.session_login()[2])
    b = sim.create_import("owner", [write(str(tmp_path / "b.fake"))],
                          session=other_login.session_login()[2])
    closed = sim.import_fileset("member", [write(str(tmp_path / "c.fake"))])
    sim.delete_fileset(closed)       # still listed: its process was never removed
    foreign = RunningImport(fileset_id=0, own_session=False)
    assert mine.running_imports() == [RunningImport(0), foreign, foreign]
    assert other_login.running_imports() == [foreign, RunningImport(0), foreign]
    assert sim.port("member").running_imports() == [foreign] * 3   # rwrw--: may edit them
    assert sim.port("admin").running_imports() == []     # not a member of the group
    assert sim.port("outsider").running_imports() == []
    joined = sim.port("owner", session=mine.session_login()[2])
    assert [r.own_session for r in joined.running_imports()] == [True, False, False]
    sim.store_file(b, 0)
    sim.verify_upload(b)
    assert other_login.running_imports()[1] == RunningImport(fileset_id=b)


def test_list_imports_leaves_out_filesets_the_caller_cannot_edit(sim, tmp_path):
    people(sim, "rwr---")
    sim.create_import("owner", [write(str(tmp_path / "a.fake"))])
    assert sim.port("owner").running_imports() == [RunningImport(fileset_id=0, own_session=False)]
    assert sim.port("member").running_imports() == []    # read-only group: cannot edit it


def test_list_imports_keeps_filesets_the_caller_cannot_read(sim, tmp_path):
    """ManagedRepositoryI.listImports drops a process only when loadFilesets (a query in the
    session's group, under the security filter) returns its fileset and canEdit() is false: a
    fileset the caller cannot even read is not returned, so its process stays listed."""
    people(sim, "rw----")
    sim.create_import("owner", [write(str(tmp_path / "a.fake"))])
    assert sim.port("member").running_imports() == [RunningImport(fileset_id=0, own_session=False)]


def test_ghost_fileset_after_server_failure(sim, tmp_path):
    sim.add_user("owner", ["grw____"])
    source = write(str(tmp_path / "a.fake"), b"x" * 1000)
    fid = sim.import_fileset("owner", [source], outcome="server-failure")
    port = sim.port("owner")
    act = port.activity([fid])[fid]
    assert act.image_count == 0
    assert act.jobs[0].status == "Finished"
    fileset = port.filesets([fid])[fid]
    assert fileset.size == 1000
    log_path = sim.query("SELECT path || name FROM OriginalFile WHERE id = ?",
                         (act.log.original_file_id,))[0][0]
    with open(os.path.join(sim.repo_dir, log_path)) as log:
        assert "ERROR" in log.read()


def test_half_uploaded_fileset_after_client_death(sim, tmp_path):
    sim.add_user("owner", ["grw____"])
    sources = [write(str(tmp_path / "src" / ("f%d.fake" % i)), b"y" * 1000) for i in range(4)]
    fid = sim.import_fileset("owner", sources, outcome="client-death")
    port = sim.port("owner")
    act = port.activity([fid])[fid]
    assert act.jobs[0].kind == "UploadJob" and act.jobs[0].status != "Finished"
    assert act.image_count == 0
    entries = port.filesets([fid])[fid].entries
    on_disk = [os.path.join(sim.repo_dir, e.original_file.repo_path) for e in entries]
    assert [e.original_file.size for e in entries] == [1000, 1000, None, None]
    assert os.path.getsize(on_disk[2]) == 500
    assert not os.path.exists(on_disk[3])
    assert port.running_imports() == [RunningImport(fileset_id=0, own_session=False)]
    dead = sim.query("SELECT session FROM sim_process WHERE fileset = ?", (fid,))[0][0]
    running = sim.port("owner", session=dead).running_imports()   # the dead client's session
    assert [r.fileset_id for r in running] == [0]      # unknown before verifyUpload
    assert running[0].upload_offsets == ()   # the adapter never asks getUploadOffset


def test_client_paths_prefixes_directories_and_log(sim, tmp_path):
    sim.add_user("alice", ["grw____"])
    real = tmp_path / "real"
    write(str(real / "sub" / "b.fake"))
    write(str(real / "a:b?.fake"))
    os.symlink(str(real), str(tmp_path / "via"))          # a non-canonical client path
    files = [str(tmp_path / "via" / "a:b?.fake"), str(tmp_path / "via" / "sub" / "b.fake")]
    first = sim.import_fileset("alice", files)
    second = sim.import_fileset("alice", files[:1])
    port = sim.port("alice")
    fs1, fs2 = port.filesets([first, second]).values()
    assert re.fullmatch(r"alice_\d+/2026-11/27/15-58-01\.123/", fs1.template_prefix)
    assert fs2.template_prefix.endswith("/15-58-01.124/")  # unique per import, by milliseconds
    # sanitised by the path rules (ClientFilePathTransformer), the symlink not resolved
    assert [e.client_path for e in fs1.entries] == [
        str(tmp_path / "via" / "a;b%.fake").lstrip("/"), files[1].lstrip("/")]
    assert [e.original_file.repo_path for e in fs1.entries] == [
        fs1.template_prefix + "a;b%.fake", fs1.template_prefix + "sub/b.fake"]
    assert all(e.original_file.hasher == "SHA1-160" and len(e.original_file.hash) == 40
               for e in fs1.entries)
    dirs = {p + n for p, n in sim.query("SELECT path, name FROM OriginalFile WHERE mimetype = ?",
                                        (MIMETYPE_DIRECTORY,))}
    prefix = fs1.template_prefix.rstrip("/")
    parts = prefix.split("/")
    assert {"/" + parts[0]} | {"/".join(parts[:i]) for i in range(2, len(parts) + 1)} <= dirs
    assert prefix + "/sub" in dirs
    logs = sim.query("SELECT path || name FROM OriginalFile WHERE mimetype = ?",
                     (MIMETYPE_IMPORT_LOG,))
    assert (prefix + ".log",) in logs


def test_on_disk_transfers(sim, tmp_path):
    sim.add_user("owner", ["grw____"])
    port = sim.port("owner")

    def repo_file(fid):
        return os.path.join(sim.repo_dir, port.filesets([fid])[fid].entries[0].original_file.repo_path)

    src = write(str(tmp_path / "src" / "s.fake"))
    link = repo_file(sim.import_fileset("owner", [src], transfer="ln_s"))
    assert os.readlink(link) == src and os.path.isabs(os.readlink(link))
    hard_src = write(str(tmp_path / "src" / "h.fake"))
    hard = repo_file(sim.import_fileset("owner", [hard_src], transfer="ln"))
    assert os.stat(hard).st_ino == os.stat(hard_src).st_ino
    moved_src = write(str(tmp_path / "src" / "m.fake"))
    moved = repo_file(sim.import_fileset("owner", [moved_src], transfer="ln_rm"))
    assert not os.path.exists(moved_src) and open(moved, "rb").read() == b"original bytes\n"
    copy_src = write(str(tmp_path / "src" / "c.fake"))
    copy = repo_file(sim.import_fileset("owner", [copy_src], transfer="upload"))
    assert os.stat(copy).st_ino != os.stat(copy_src).st_ino and not os.path.islink(copy)
    transfers = [f.transfer for f in port.find_filesets(FilesetQuery())]
    assert transfers == [None, "ln_rm", "ln", "ln_s"]


def test_containers_and_filesets_of(sim, tmp_path):
    sim.add_user("owner", ["grw____"])
    project = sim.add_project("P", "owner")
    dataset = sim.add_dataset("D", "owner", project=project)
    screen = sim.add_screen("S", "owner")
    img_fs = sim.import_fileset("owner", [write(str(tmp_path / "a.fake"))], target=("Dataset", dataset),
                                images=2)
    spw_fs = sim.import_fileset("owner", [write(str(tmp_path / "p.screen"))], spw=True, images=4,
                                target=("Screen", screen))
    orphan = sim.import_fileset("owner", [write(str(tmp_path / "o.fake"))])
    port = sim.port("owner")
    assert port.containers_of([img_fs, spw_fs, orphan]) == {
        img_fs: ("Project", "P", "Dataset", "D"), spw_fs: ("Screen", "S", "Plate", "p.screen"),
        orphan: ()}
    plate = sim.import_result(spw_fs)["Plate"][0]
    image = sim.import_result(img_fs)["Image"][0]
    assert port.filesets_of([("Project", project), ("Dataset", dataset), ("Image", image),
                             ("Screen", screen), ("Plate", plate), ("Fileset", orphan),
                             ("Fileset", 999)]) == {
        ("Project", project): (img_fs,), ("Dataset", dataset): (img_fs,), ("Image", image): (img_fs,),
        ("Screen", screen): (spw_fs,), ("Plate", plate): (spw_fs,), ("Fileset", orphan): (orphan,)}
    assert sim.query("SELECT count(*) FROM WellSample")[0][0] == 4


def test_port_protocol_and_round_trips(sim, tmp_path):
    sim.add_user("owner", ["grw____"])
    fid = sim.import_fileset("owner", [write(str(tmp_path / "a.fake"))])
    port = sim.port("owner")
    assert isinstance(port, ServerPort)
    sim.reset_round_trips()
    # three pages of 1000 ids: the fileset query each; for the page that has one, its transfer
    # comments, entry counts, one page of entries and the image counts
    port.filesets(range(1, 2201))
    assert sim.round_trips == 3 + 4
    port.filesets(range(1, 2201), image_counts=False)   # no counting query
    assert sim.round_trips == 7 + 3 + 3
    port.activity([fid])                          # eight queries and one for its import log
    port.current_user()
    assert port.server_time() == sim.now()
    assert SimServer(sim.root).round_trips == 24  # persisted, shared by every process
    reader = port.open_original_file(
        port.filesets([fid], image_counts=False)[fid].entries[0].original_file.id)
    reader.read(0, 4)
    assert sim.round_trips == 30                  # filesets (4) + open + one read


def test_filesets_by_client_paths_and_find_since(sim, tmp_path):
    sim.add_user("owner", ["grw____"])
    sim.add_user("other", ["grw____"])
    a = write(str(tmp_path / "a.fake"))
    old = sim.import_fileset("owner", [a])
    sim.advance(3600)
    new = sim.import_fileset("owner", [a])
    sim.import_fileset("other", [a])
    owner = sim.port("owner")
    uid = owner.current_user().id
    assert owner.filesets_by_client_paths([a.lstrip("/"), "not/there"], uid) == {a.lstrip("/"): (old, new)}
    since = owner.find_filesets(FilesetQuery(owner_id=uid, since=sim.now()))
    assert [f.id for f in since] == [new]


def test_two_processes_share_one_server(sim, tmp_path):
    sim.add_user("owner", ["grw____"])
    for i in range(10):
        write(str(tmp_path / "src" / ("f%d.fake" % i)))
    script = (
        "import sys; sys.path.insert(0, %r)\n"
        "from sim.server import SimServer\n"
        "s = SimServer(%r)\n"
        "for i in range(10):\n"
        "    s.import_fileset('owner', [%r + '/f%%d.fake' %% i])\n"
    ) % (os.path.dirname(os.path.abspath(__file__)), sim.root, str(tmp_path / "src"))
    procs = [subprocess.Popen([sys.executable, "-c", script]) for _ in range(2)]
    assert [p.wait() for p in procs] == [0, 0]
    filesets = sim.port("owner").find_filesets(FilesetQuery())
    assert len(filesets) == 20
    assert len({f.template_prefix for f in filesets}) == 20


def test_bad_world_building_inputs(sim, tmp_path):
    sim.add_user("owner", ["grw____"])
    with pytest.raises(ValueError):
        sim.add_group("bad", "rwx---")
    with pytest.raises(ValueError):
        sim.import_fileset("owner", [write(str(tmp_path / "a.fake"))], outcome="maybe")
    with pytest.raises(ValueError):
        sim.import_fileset("owner", [str(tmp_path / "a.fake")], group="other")
    with pytest.raises(ValueError):
        sim.add_user("x", ["grw____"], privileges={"Sudo"})


def test_group_leaders_read_edit_link_and_sudo_in_the_groups_they_lead(sim, tmp_path):
    """AllGroupsSecurityFilter (`group_id in (:leader_of_groups)`), BasicACLVoter (a leader gets
    every scope), SessionBean (a leader may create sessions for members of the groups led)."""
    private = group_of("rw----")
    sim.add_user("pi", [private], leads=[private])
    sim.add_user("student", [private])
    sim.add_user("stranger", ["other"])
    fid = sim.import_fileset("student", [write(str(tmp_path / "s.fake"))])
    dataset = sim.add_dataset("d", "student")
    sim.set_binary_access(True)
    pi, peer = sim.port("pi"), sim.port("stranger")
    assert set(pi.filesets([fid])) == {fid}                    # private, yet read by the leader
    assert [f.id for f in pi.find_filesets(FilesetQuery())] == [fid]
    entry = pi.filesets([fid])[fid].entries[0]
    assert not entry.original_file.binary_restricted           # a leader may edit: may download
    pi.open_original_file(entry.original_file.id).close()
    assert pi.can_link([("Dataset", dataset)]) == {("Dataset", dataset): True}
    as_student = pi.sudo("student")
    assert as_student.current_user().name == "student"
    assert [f.id for f in as_student.find_filesets(FilesetQuery())] == [fid]
    with pytest.raises(PermissionDenied):
        pi.sudo("stranger")                                    # not a member of a group led
    with pytest.raises(PermissionDenied):
        sim.port("student").sudo("pi")
    assert peer.filesets([fid]) == {}
    pi.delete_filesets([fid])                                  # no DeleteOwned needed
    assert sim.port("student").filesets([fid]) == {}
    with pytest.raises(ValueError):
        sim.add_user("pi2", ["other"], leads=[private])


def test_reserved_names_and_dollar_prefixes_are_renamed_in_client_paths_and_the_repository(
        sim, tmp_path):
    """MakePathComponentSafe ("Windows required" + "UNIX required"): reserved names suffixed,
    case-insensitive, `$` names prefixed, characters mapped, in every component."""
    sim.add_user("alice", ["grw____"])
    files = [write(str(tmp_path / "con" / "AUX")), write(str(tmp_path / "con" / "$x:y")),
             write(str(tmp_path / "con" / "lpt1"))]
    fid = sim.import_fileset("alice", files)
    fs = sim.port("alice").filesets([fid])[fid]
    base = str(tmp_path).lstrip("/")
    assert [e.client_path for e in fs.entries] == [
        base + "/con_/AUX_", base + "/con_/_$x;y", base + "/con_/lpt1_"]
    assert [e.original_file.name for e in fs.entries] == ["AUX_", "_$x;y", "lpt1_"]
    for entry in fs.entries:
        assert os.path.isfile(os.path.join(sim.repo_dir, entry.original_file.repo_path))
