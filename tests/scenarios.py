"""Scenarios that run unchanged on the simulated server and on a real OMERO server.

Each `scenario_<name>(world)` builds what it needs through a `World` and checks the ServerPort's
answers. tests/test_scenarios_sim.py runs them on tests/sim's SimServer; tests/integration/
test_scenarios_real.py runs them on a real server (omero-test-infra), so the simulation and the
adapter cannot drift apart. Names given to a World are hints: a real server is shared between runs,
so a World may make them unique and returns the names it used.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Optional, Protocol

from omero_cli_ext import pathrules
from omero_cli_ext.server import (
    GROUP_LEVELS, IMPORT_JOB_CLASSES, OTHER_JOB, UPLOAD_JOB, FilesetQuery, PermissionDenied,
    RunningImport, ServerError, ServerPort,
)


class World(Protocol):
    """What a scenario may ask of a server it sets up."""

    def add_group(self, name: str, perms: str) -> str: ...

    def add_user(self, name: str, groups: list, *, admin: bool = False, leads: tuple = ()) -> str:
        """`leads`: groups (among `groups`) the user owns, as a PI."""

    def add_dataset(self, name: str, owner: str, group: str, *, project: Optional[str] = None) -> int: ...

    def import_fake(self, owner: str, group: str, name: str, *, dataset: Optional[int] = None) -> tuple:
        """Write a small `<name>.fake` file and import it (upload); returns (fileset id, local path)."""

    def start_upload(self, owner: str, name: str) -> tuple:
        """Start importing a small `<name>.fake` in the owner's default group as the Java importer
        does (ManagedRepository.importFileset, then half of the file written through its
        uploader) and stop before verifyUpload. Returns (a port on that importer's session, a
        callable that closes the uploader and the ImportProcess)."""

    def port(self, user: str) -> ServerPort: ...

    def timed_port(self, user: str, *, time_to_live_ms: int = 0, time_to_idle_ms: int = 0
                   ) -> ServerPort:
        """A port on a session that an admin created for `user` with these timeouts
        (ISession.createSessionWithTimeouts; 0 is no limit)."""

    def admin_port(self) -> ServerPort: ...

    def wait(self, seconds: float) -> None:
        """Let `seconds` pass on the server's clock."""


def _sha1(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha1(fh.read()).hexdigest()


def scenario_fileset_visibility_by_permission_level(world: World) -> None:
    """Owner and admin always see a fileset; other members only outside private groups;
    non-members never (DESIGN.md §3 Permissions)."""
    admin = world.admin_port()
    for level, perms in GROUP_LEVELS.items():
        group = world.add_group(f"vis-{level}", perms)
        elsewhere = world.add_group(f"vis-{level}-other", perms)
        owner = world.add_user(f"vis-{level}-owner", [group])
        member = world.add_user(f"vis-{level}-member", [group])
        outsider = world.add_user(f"vis-{level}-outsider", [elsewhere])
        fs_id, _ = world.import_fake(owner, group, f"vis-{level}")
        expected = {owner: True, member: perms != "rw----", outsider: False}
        for user, sees in expected.items():
            port = world.port(user)
            try:
                assert (fs_id in port.filesets([fs_id])) == sees, (level, user)
                assert (fs_id in port.activity([fs_id])) == sees, (level, user)
                assert (("Fileset", fs_id) in port.filesets_of([("Fileset", fs_id)])) == sees
            finally:
                port.close()
        assert fs_id in admin.filesets([fs_id]), level
        assert admin.filesets([fs_id])[fs_id].group_perms == perms


def scenario_fileset_listing_with_entries(world: World) -> None:
    """One uploaded file: entry, OriginalFile under the template prefix, checksum, containers."""
    group = world.add_group("listing", "rwr---")
    owner = world.add_user("listing-owner", [group])
    dataset = world.add_dataset("listing-ds", owner, group, project="listing-pr")
    fs_id, local = world.import_fake(owner, group, "listing", dataset=dataset)
    port = world.port(owner)
    try:
        me = port.current_user()
        assert me.name == owner and not me.is_admin
        repo = port.repository()
        fileset = port.filesets([fs_id])[fs_id]
        assert (fileset.owner_name, fileset.group_name, fileset.group_perms) == (owner, group, "rwr---")
        assert fileset.template_prefix.endswith("/") and not fileset.template_prefix.startswith("/")
        assert fileset.image_count >= 1 and fileset.transfer is None
        # the export's form: one query per page, the transfer still read from the fileset's
        # annotation links fetched with it, no image count
        assert port.filesets([fs_id], image_counts=False)[fs_id] == dataclasses.replace(
            fileset, image_count=0)
        (entry,) = fileset.entries
        assert entry.client_path == local.lstrip("/")
        ofile = entry.original_file
        assert ofile.path.startswith(fileset.template_prefix) and ofile.path.endswith("/")
        assert ofile.repo_path.endswith(local.rsplit("/", 1)[1])
        assert ofile.repo == repo.uuid
        assert (ofile.size, ofile.hasher, ofile.hash) == (
            len(open(local, "rb").read()), "SHA1-160", _sha1(local))
        assert not ofile.binary_restricted
        assert [f.id for f in port.find_filesets(FilesetQuery(owner_id=me.id, ids=(fs_id,)))] == [fs_id]
        assert port.filesets_by_client_paths([entry.client_path], me.id) == {entry.client_path: (fs_id,)}
        assert port.filesets_of([("Dataset", dataset)]) == {("Dataset", dataset): (fs_id,)}
        (container,) = port.containers_of([fs_id]).values()
        assert container[0::2] == ("Project", "Dataset")
        reader = port.open_original_file(ofile.id)
        try:
            assert reader.size == ofile.size
            assert reader.read(0, reader.size) == open(local, "rb").read()
        finally:
            reader.close()
    finally:
        port.close()


def scenario_activity_of_a_finished_import(world: World) -> None:
    """After a successful import only the UploadJob is Finished; the others stay as created
    (DESIGN.md §3: completion shows in images, log size and EventLog, not in job statuses)."""
    group = world.add_group("activity", "rw----")
    owner = world.add_user("activity-owner", [group])
    fs_id, _ = world.import_fake(owner, group, "activity")
    port = world.port(owner)
    try:
        act = port.activity([fs_id])[fs_id]
        (upload,) = [job for job in act.jobs if job.kind == UPLOAD_JOB]
        others = [job for job in act.jobs if job is not upload]
        assert upload.status == "Finished"
        assert others and all(job.kind == OTHER_JOB for job in others)
        assert len(act.jobs) <= len(IMPORT_JOB_CLASSES)
        assert all(job.status == "Submitted" for job in others)
        assert act.image_count >= 1
        assert act.log is not None and act.log.size > 0 and act.log.updated is not None
        created = port.filesets([fs_id])[fs_id].created
        assert act.last_event is not None and act.last_event >= created
        assert all(r.fileset_id != fs_id for r in port.running_imports())
    finally:
        port.close()


def scenario_admin_acts_for_a_user_with_sudo(world: World) -> None:
    """A session created for a user sees exactly what that user sees, not what the admin sees."""
    group = world.add_group("sudo", "rw----")
    owner = world.add_user("sudo-owner", [group])
    member = world.add_user("sudo-member", [group])
    fs_id, _ = world.import_fake(owner, group, "sudo")
    admin = world.admin_port()
    assert "Sudo" in admin.current_user().privileges
    assert fs_id in admin.filesets([fs_id])
    as_member = admin.sudo(member)
    try:
        assert as_member.current_user().name == member
        assert as_member.filesets([fs_id]) == {}
    finally:
        as_member.close()
    users = admin.lookup_users([owner, member, "no-such-user-anywhere"])
    assert set(users) == {owner, member} and users[owner].group_name == group


def scenario_import_process_closed_after_upload_and_listed_for_ever(world: World) -> None:
    """The Java importer closes its ImportProcess right after verifyUpload; listImports still
    lists it (ProcessContainer never removes one), but only its own session could ask it: from
    another session it is `own_session=False` and names no fileset. The import log's size was
    saved 1 to 6 times (each step and the cleanup, only when changed)."""
    group = world.add_group("process", "rw----")
    owner = world.add_user("process-owner", [group])
    fs_id, _ = world.import_fake(owner, group, "process")
    port = world.port(owner)
    try:
        running = port.running_imports()
        assert all(r.fileset_id != fs_id for r in running)
        assert any(not r.own_session and r.fileset_id == 0 for r in running)
        act = port.activity([fs_id])[fs_id]
        assert act.image_count >= 1 and 1 <= act.log.updates <= 6
        assert act.log.repo_path.endswith(".log")
    finally:
        port.close()


def scenario_client_paths_and_names_follow_the_path_rules(world: World) -> None:
    """clientPath is the local path through the default path rules (`:`→`;`, `?`→`%`, a `$`
    name prefixed), and so is the repository name (ClientFilePathTransformer,
    MakePathComponentSafe)."""
    group = world.add_group("rules", "rw----")
    owner = world.add_user("rules-owner", [group])
    fs_id, local = world.import_fake(owner, group, "$odd:name?")
    port = world.port(owner)
    try:
        (entry,) = port.filesets([fs_id])[fs_id].entries
        assert entry.client_path == pathrules.client_path(local)
        assert entry.original_file.name == "_$odd;name%.fake"
    finally:
        port.close()


def scenario_group_leader_reads_links_and_sudoes_members(world: World) -> None:
    """A PI reads everything of a private group they lead (AllGroupsSecurityFilter), may link
    into a member's dataset (BasicACLVoter) and create a session for a member, not for others
    (SessionBean.createSessionWithTimeouts, groupsLed)."""
    group = world.add_group("led", "rw----")
    elsewhere = world.add_group("not-led", "rw----")
    pi = world.add_user("led-pi", [group], leads=(group,))
    student = world.add_user("led-student", [group])
    stranger = world.add_user("led-stranger", [elsewhere])
    dataset = world.add_dataset("led-data", student, group)
    fs_id, _ = world.import_fake(student, group, "led", dataset=dataset)
    port = world.port(pi)
    try:
        assert fs_id in port.filesets([fs_id])
        assert port.can_link([("Dataset", dataset)]) == {("Dataset", dataset): True}
        as_student = port.sudo(student)
        try:
            assert as_student.current_user().name == student
            assert fs_id in as_student.filesets([fs_id])
        finally:
            as_student.close()
        try:
            port.sudo(stranger).close()
        except PermissionDenied:
            pass
        else:
            raise AssertionError("a group leader created a session for a user of another group")
    finally:
        port.close()


def scenario_live_upload_answers_only_its_own_session(world: World) -> None:
    """While a client uploads (importFileset done, verifyUpload not yet), its ImportProcess is
    listed to every session of the fileset's group members that can edit it, but only the
    importer's own session may ask it anything: there it is live with no fileset yet
    (getHandle is null before verifyUpload); from the owner's other login it is
    `own_session=False`; a user of another group does not see it (listImports filters by
    memberOfGroups). Once closed, its own session leaves it out (ObjectNotExistException) and
    the other login still lists it (ProcessContainer never removes a process)."""
    group = world.add_group("live", "rw----")
    elsewhere = world.add_group("live-other", "rw----")
    owner = world.add_user("live-owner", [group])
    stranger = world.add_user("live-stranger", [elsewhere])
    importer, close_process = world.start_upload(owner, "live")
    other_login, outsider = world.port(owner), world.port(stranger)
    try:
        assert [r for r in importer.running_imports() if r.own_session] == [
            RunningImport(fileset_id=0)]
        foreign = [RunningImport(fileset_id=0, own_session=False)]
        assert other_login.running_imports() == foreign
        assert outsider.running_imports() == []
        close_process()
        assert importer.running_imports() == []
        assert other_login.running_imports() == foreign
    finally:
        for port in (importer, other_login, outsider):
            port.close()


def scenario_session_timeouts_end_a_session(world: World) -> None:
    """A session's time to live is a hard lifetime, whatever its use; its time to idle ends it
    only after that long without a call (SessionCache: `0 < timeToLive < alive`, then
    `0 < timeToIdle < idle`, checked on each call, which also renews the access time)."""
    group = world.add_group("timeouts", "rw----")
    user = world.add_user("timeouts-user", [group])
    lived = world.timed_port(user, time_to_live_ms=3000)
    idled = world.timed_port(user, time_to_idle_ms=3000)
    try:
        for step in range(3):    # 4.5 s in all, never 3 s without a call on `idled`
            world.wait(1.5)
            assert idled.current_user().name == user
            if step == 0:        # a call at 1.5 s does not lengthen a time to live
                assert lived.current_user().name == user
        _assert_expired(lived)
        world.wait(4)
        _assert_expired(idled)
    finally:
        lived.close()
        idled.close()


def _assert_expired(port: ServerPort) -> None:
    try:
        port.current_user()
    except ServerError:
        return
    raise AssertionError("a session outlived its timeout")


SCENARIOS = {name[len("scenario_"):]: fn for name, fn in sorted(globals().items())
             if name.startswith("scenario_") and callable(fn)}
