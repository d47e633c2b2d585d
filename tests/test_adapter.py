"""OmeroPort against autospec'd Ice proxies and real omero.model objects.

`create_autospec` of the generated proxy classes makes a wrong method name or argument count fail
here; the fakes answer each HQL constant like the server would, so the tests check the HQL sent,
its parameters (ids paged at 500, the all-groups context) and the unwrapping into the port's
dataclasses.
"""
from __future__ import annotations

import datetime as dt
import inspect
from unittest import mock

import pytest

import Glacier2
import Ice
import omero
import omero.api
import omero.clients  # noqa: F401
import omero.cmd
import omero.grid
import omero.model
import omero.sys
from omero.constants.permissions import LINKRESTRICTION
from omero.rtypes import rlong, rstring, rtime

from omero_cli_ext import omero_adapter as adapter
from omero_cli_ext import server
from omero_cli_ext.server import FilesetQuery, NotFound, PermissionDenied, ServerError

T0 = 1_700_000_000_000          # ms since the epoch
ALL = {"omero.group": "-1"}


def when(ms):
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc)


def ids_of(params) -> list:
    return [x.val for x in params.map["ids"].val]


class Server:
    """Autospec'd services behind one client; `answers[hql]` = function(params) -> result."""

    def __init__(self):
        self.client = mock.create_autospec(omero.clients.BaseClient, instance=True)
        self.sf = mock.create_autospec(omero.api.ServiceFactoryPrx, instance=True)
        self.query = mock.create_autospec(omero.api.IQueryPrx, instance=True)
        self.update = mock.create_autospec(omero.api.IUpdatePrx, instance=True)
        self.admin = mock.create_autospec(omero.api.IAdminPrx, instance=True)
        self.sessions = mock.create_autospec(omero.api.ISessionPrx, instance=True)
        self.store = mock.create_autospec(omero.api.RawFileStorePrx, instance=True)
        self.shared = mock.create_autospec(omero.grid.SharedResourcesPrx, instance=True)
        self.client.sf = self.sf
        self.sf.getQueryService.return_value = self.query
        self.sf.getUpdateService.return_value = self.update
        self.sf.getAdminService.return_value = self.admin
        self.sf.getSessionService.return_value = self.sessions
        self.sf.createRawFileStore.return_value = self.store
        self.sf.sharedResources.return_value = self.shared
        self.answers = {}
        self.query.projection.side_effect = self._answer
        self.query.findAllByQuery.side_effect = self._answer
        self.port = adapter.OmeroPort(self.client)

    def managed_repository(self, uuid="repo-uuid"):
        """The port's cached managed repository (as `_managed_repository` finds it)."""
        managed = mock.create_autospec(omero.grid.ManagedRepositoryPrx, instance=True)
        self.port._repository, self.port._repository_prx = server.Repository(uuid, "/repo"), managed
        return managed

    def _answer(self, hql, params, ctx):
        assert ctx == ALL, f"query without the all-groups context: {hql}"
        assert hql in self.answers, f"unexpected HQL: {hql}"
        return self.answers[hql](params)

    def calls(self, hql):
        return [c for c in self.query.projection.call_args_list + self.query.findAllByQuery.call_args_list
                if c.args[0] == hql]


@pytest.fixture
def srv():
    return Server()


def group(gid=3, name="lab", perms="rwr---"):
    g = omero.model.ExperimenterGroupI(gid, True)
    g.name = rstring(name)
    g.details.setPermissions(omero.model.PermissionsI(perms))
    return g


def experimenter(uid=7, name="alice"):
    e = omero.model.ExperimenterI(uid, True)
    e.omeName = rstring(name)
    return e


def original_file(fid, name="a.fake", restricted=False, hasher="SHA1-160"):
    f = omero.model.OriginalFileI(fid, True)
    f.path = rstring("alice_7/2024-01/02/03-04-05.678/data/")
    f.name = rstring(name)
    f.size = rlong(100 + fid)
    f.hash = rstring("ab" * 20)
    f.mimetype = rstring("application/octet-stream")
    f.repo = rstring("repo-uuid")
    if hasher:
        algo = omero.model.ChecksumAlgorithmI(1, True)
        algo.value = rstring(hasher)
        f.hasher = algo
    perms = omero.model.PermissionsI("rwr---")
    perms._extendedRestrictions = [adapter.BINARYACCESS] if restricted else []
    f.details.setPermissions(perms)
    return f


def fileset(fs_id, files=(), owner=None, grp=None):
    fs = omero.model.FilesetI(fs_id, True)
    fs.templatePrefix = rstring("alice_7/2024-01/02/03-04-05.678/")
    fs.details.setOwner(owner or experimenter())
    fs.details.setGroup(grp or group())
    event = omero.model.EventI(1, True)
    event.time = rtime(T0 + fs_id)
    fs.details.setCreationEvent(event)
    for n, (client_path, ofile) in enumerate(files):
        entry = omero.model.FilesetEntryI(fs_id * 100000 + n, True)
        entry.clientPath = rstring(client_path)
        entry.originalFile = ofile
        fs.addFilesetEntry(entry)
        entry.fileset = omero.model.FilesetI(fs_id, False)
    return fs


# --- protocol ----------------------------------------------------------------------------------

def test_omero_port_implements_every_port_method_with_its_signature(srv):
    assert isinstance(srv.port, server.ServerPort)
    for name, member in vars(server.ServerPort).items():
        if name.startswith("_") or not callable(member):
            continue
        ours = inspect.signature(getattr(adapter.OmeroPort, name))
        theirs = inspect.signature(member)
        assert list(ours.parameters) == list(theirs.parameters), name


def test_connect_logs_in_through_the_cli_context():
    ctx = mock.Mock()
    client = mock.create_autospec(omero.clients.BaseClient, instance=True)
    ctx.conn.return_value = client
    args = object()
    port = adapter.connect(ctx, args)
    ctx.conn.assert_called_once_with(args)
    assert isinstance(port, adapter.OmeroPort)


def test_connect_without_a_session_is_a_server_error():
    ctx = mock.Mock()
    ctx.conn.return_value = None
    with pytest.raises(ServerError, match="login failed"):
        adapter.connect(ctx, object())


# --- who and where -----------------------------------------------------------------------------

def test_repository_is_the_managed_one_and_is_cached(srv, monkeypatch):
    script_desc, managed_desc = omero.model.OriginalFileI(1, True), omero.model.OriginalFileI(2, True)
    for desc, path, name, uuid in ((script_desc, "/opt/omero/", "lib/scripts", "ScriptRepo"),
                                   (managed_desc, "/OMERO/", "ManagedRepository", "5f3c-uuid")):
        desc.path, desc.name, desc.hash = rstring(path), rstring(name), rstring(uuid)
        desc.mimetype = rstring("Repository")
    script_prx = mock.create_autospec(omero.grid.RepositoryPrx, instance=True)
    managed_prx = mock.create_autospec(omero.grid.RepositoryPrx, instance=True)
    managed = mock.create_autospec(omero.grid.ManagedRepositoryPrx, instance=True)
    srv.shared.repositories.return_value = omero.grid.RepositoryMap(
        [script_desc, managed_desc], [script_prx, managed_prx])
    monkeypatch.setattr(omero.grid.ManagedRepositoryPrx, "checkedCast",
                        staticmethod(lambda prx: managed if prx is managed_prx else None))
    repo = srv.port.repository()
    assert repo == server.Repository(uuid="5f3c-uuid", root="/OMERO/ManagedRepository")
    assert srv.port.repository() is repo
    srv.shared.repositories.assert_called_once_with()


def test_no_managed_repository_is_a_server_error(srv, monkeypatch):
    srv.shared.repositories.return_value = omero.grid.RepositoryMap([], [])
    with pytest.raises(ServerError, match="no managed repository"):
        srv.port.repository()


def test_current_user_reads_event_context_and_privileges(srv):
    srv.admin.getEventContext.return_value = omero.sys.EventContext(
        userId=5, userName="ops", groupId=0, groupName="system", isAdmin=True)
    privileges = []
    for value in ("Sudo", "WriteManagedRepo"):
        p = omero.model.AdminPrivilegeI()
        p.value = rstring(value)
        privileges.append(p)
    srv.admin.getCurrentAdminPrivileges.return_value = privileges
    user = srv.port.current_user()
    assert user == server.User(id=5, name="ops", group_id=0, group_name="system", is_admin=True,
                               privileges=frozenset({"Sudo", "WriteManagedRepo"}))
    assert not user.is_full_admin


def _with_groups(exp, *groups):
    for g in groups:
        m = omero.model.GroupExperimenterMapI()
        m.parent, m.child = g, exp
        exp.addGroupExperimenterMap(m)
    return exp


def test_lookup_users_takes_the_first_group_as_default(srv):
    alice = _with_groups(experimenter(7, "alice"), group(3, "lab"), group(1, "user"))
    root = _with_groups(experimenter(0, "root"), group(0, "system"), group(1, "user"))
    srv.answers[adapter.HQL_USERS] = lambda params: [alice, root]
    found = srv.port.lookup_users(["root", "alice", "nobody"])
    assert found == {
        "alice": server.User(id=7, name="alice", group_id=3, group_name="lab", is_admin=False),
        "root": server.User(id=0, name="root", group_id=0, group_name="system", is_admin=True)}
    (call,) = srv.calls(adapter.HQL_USERS)
    assert sorted(x.val for x in call.args[1].map["names"].val) == ["alice", "nobody", "root"]


def test_sudo_creates_a_session_for_the_user_in_their_default_group(srv, monkeypatch):
    alice = _with_groups(experimenter(7, "alice"), group(3, "lab"))
    srv.answers[adapter.HQL_USERS] = lambda params: [alice]
    session = omero.model.SessionI(1, True)
    session.uuid = rstring("sess-uuid")
    srv.sessions.createSessionWithTimeouts.return_value = session
    joined = {}
    new_client = mock.create_autospec(omero.clients.BaseClient, instance=True)

    def join(client, uuid):
        joined.update(client=client, uuid=uuid)
        return new_client
    monkeypatch.setattr(adapter, "_join_session", join)
    port = srv.port.sudo("alice")
    (principal, ttl, idle), _ = srv.sessions.createSessionWithTimeouts.call_args
    assert (principal.name, principal.group, principal.eventType) == ("alice", "lab", "User")
    # no hard lifetime (createSessionWithTimeout's would end a long export), an idle timeout,
    # and the session kept alive by the client
    assert ttl == 0 and idle == adapter.SUDO_TIME_TO_IDLE_MS > 0
    srv.sessions.createSessionWithTimeout.assert_not_called()
    new_client.enableKeepAlive.assert_called_once_with(adapter.SUDO_KEEP_ALIVE_S)
    assert joined == {"client": srv.client, "uuid": "sess-uuid"}
    port.close()
    new_client.closeSession.assert_called_once_with()
    srv.port.close()
    srv.client.closeSession.assert_not_called()


def test_sudo_without_the_privilege_is_permission_denied(srv):
    srv.answers[adapter.HQL_USERS] = lambda params: [
        _with_groups(experimenter(7, "alice"), group(3, "lab"))]
    srv.sessions.createSessionWithTimeouts.side_effect = omero.SecurityViolation(message="Admin restrictions")
    with pytest.raises(PermissionDenied, match="Sudo privilege"):
        srv.port.sudo("alice")


def test_a_group_leader_sudo_goes_to_a_group_they_lead(srv, monkeypatch):
    """SessionManagerImpl.validateSessionInputs: a leader's sudo session (groupsLed) must be in a
    group they lead ("Group sudo is not permitted for group ..."); the member's default group may
    be another one: the adapter asks again in the first of the member's groups the caller leads."""
    alice = _with_groups(experimenter(7, "alice"), group(3, "lab"), group(9, "led"), group(1, "user"))
    srv.answers[adapter.HQL_USERS] = lambda params: [alice]
    srv.admin.getEventContext.return_value = omero.sys.EventContext(
        userId=5, userName="pi", leaderOfGroups=[9], isAdmin=False)
    session = omero.model.SessionI(1, True)
    session.uuid = rstring("sess-uuid")

    def create(principal, ttl, idle):
        if principal.group != "led":
            raise omero.SecurityViolation(
                message="Group sudo is not permitted for group %s (gid=3)" % principal.group)
        return session
    srv.sessions.createSessionWithTimeouts.side_effect = create
    monkeypatch.setattr(adapter, "_join_session", lambda client, uuid: mock.create_autospec(
        omero.clients.BaseClient, instance=True))
    srv.port.sudo("alice")
    assert [c.args[0].group for c in srv.sessions.createSessionWithTimeouts.call_args_list] == [
        "lab", "led"]
    srv.admin.getEventContext.return_value = omero.sys.EventContext(
        userId=5, userName="pi", leaderOfGroups=[], isAdmin=False)
    with pytest.raises(PermissionDenied, match="Group sudo is not permitted"):
        srv.port.sudo("alice")


def test_sudo_to_an_unknown_user_is_not_found(srv):
    srv.answers[adapter.HQL_USERS] = lambda params: []
    with pytest.raises(NotFound) as err:
        srv.port.sudo("ghost")
    assert err.value.missing == ("ghost",)
    srv.sessions.createSessionWithTimeouts.assert_not_called()


# --- filesets ----------------------------------------------------------------------------------

def _comment(ann_id, ns, text):
    comment = omero.model.CommentAnnotationI(ann_id, True)
    comment.ns = rstring(ns)
    comment.textValue = rstring(text)
    return comment


def _fileset_answers(srv, loaded: dict, counts=None, transfers=None):
    """The fileset query answers the filesets alone; transfer comments (the lowest id wins, a
    later one ignored), entry counts and entries (ordered by fileset and id, honouring the page's
    offset and limit) come from their own queries."""
    counts, transfers = counts or {}, transfers or {}
    srv.answers[adapter.HQL_FILESETS] = lambda p: [loaded[i] for i in ids_of(p) if i in loaded]

    def comments(params):
        assert params.map["ns"].val == server.NS_FILE_TRANSFER
        return [row for i in ids_of(params) if i in transfers
                for row in ([rlong(i), rlong(100 + i), rstring(transfers[i])],
                            [rlong(i), rlong(200 + i), rstring("ignored.LaterTransfer")])]
    srv.answers[adapter.HQL_FILESET_TRANSFERS] = comments
    srv.answers[adapter.HQL_ENTRY_COUNTS] = lambda p: [
        [rlong(i), rlong(len(loaded[i].copyUsedFiles()))] for i in ids_of(p)
        if i in loaded and loaded[i].copyUsedFiles()]

    def entries(params):
        rows = [e for i in sorted(ids_of(params)) if i in loaded for e in loaded[i].copyUsedFiles()]
        f = params.theFilter
        if f is not None and f.limit is not None:
            rows = rows[f.offset.val:f.offset.val + f.limit.val]
        return rows
    srv.answers[adapter.HQL_FILESET_ENTRIES] = entries
    srv.answers[adapter.HQL_IMAGE_COUNTS] = lambda p: [
        [rlong(i), rlong(counts[i])] for i in ids_of(p) if i in counts]


def test_filesets_unwraps_entries_owner_group_counts_and_transfer(srv):
    restricted = original_file(12, "b.fake", restricted=True, hasher=None)
    fs = fileset(1, [("data/a.fake", original_file(11)), ("data/b.fake", restricted)],
                 grp=group(3, "lab", "rwra--"))
    _fileset_answers(srv, {1: fs}, counts={1: 2},
                     transfers={1: "ome.formats.importer.transfers.SymlinkFileTransfer"})
    result = srv.port.filesets([1, 2])
    assert list(result) == [1]
    got = result[1]
    assert (got.template_prefix, got.owner_id, got.owner_name, got.group_id, got.group_name,
            got.group_perms, got.image_count, got.transfer, got.created) == (
        "alice_7/2024-01/02/03-04-05.678/", 7, "alice", 3, "lab", "rwra--", 2, "ln_s", when(T0 + 1))
    first, second = got.entries
    assert first == server.FilesetEntry("data/a.fake", server.OriginalFile(
        id=11, path="alice_7/2024-01/02/03-04-05.678/data/", name="a.fake", size=111,
        hash="ab" * 20, hasher="SHA1-160", mimetype="application/octet-stream", repo="repo-uuid",
        binary_restricted=False))
    assert second.original_file.binary_restricted and second.original_file.hasher is None
    assert got.size == 111 + 112


def test_filesets_without_image_counts_make_one_query_per_page(srv):
    _fileset_answers(srv, {1: fileset(1)}, counts={1: 2},
                     transfers={1: "ome.formats.importer.transfers.SymlinkFileTransfer"})
    got = srv.port.filesets([1], image_counts=False)[1]
    assert (got.image_count, got.transfer) == (0, "ln_s")
    assert srv.calls(adapter.HQL_IMAGE_COUNTS) == []
    assert len(srv.calls(adapter.HQL_FILESETS)) == 1


def test_filesets_read_entries_in_answers_of_bounded_size(srv, monkeypatch):
    """An HCS fileset of thousands of files must not come back as one Ice message."""
    monkeypatch.setattr(adapter, "ENTRY_PAGE_SIZE", 4)
    files = lambda fs_id, n: [("d/%d_%d" % (fs_id, k), original_file(fs_id * 100 + k)) for k in range(n)]
    loaded = {1: fileset(1, files(1, 2)), 2: fileset(2, files(2, 2)), 3: fileset(3, files(3, 9)),
              4: fileset(4, files(4, 1)), 5: fileset(5)}
    _fileset_answers(srv, loaded)
    result = srv.port.filesets([1, 2, 3, 4, 5])
    assert {i: [e.client_path for e in f.entries] for i, f in result.items()} == {
        i: [c for c, _ in files(i, n)] for i, n in ((1, 2), (2, 2), (3, 9), (4, 1), (5, 0))}
    pages = [(ids_of(c.args[1]), c.args[1].theFilter and c.args[1].theFilter.offset.val)
             for c in srv.calls(adapter.HQL_FILESET_ENTRIES)]
    assert pages == [([1, 2], None), ([3], 0), ([3], 4), ([3], 8), ([4], None)]
    assert len(srv.calls(adapter.HQL_FILESETS)) == len(srv.calls(adapter.HQL_ENTRY_COUNTS)) == 1


def test_entry_pages_pack_filesets_and_split_big_ones():
    assert server.entry_pages({}, 10) == []
    assert server.entry_pages({1: 4, 2: 6, 3: 1, 4: 25, 5: 10}, 10) == [
        ((1, 2), 0, None), ((3,), 0, None), ((4,), 0, 10), ((4,), 10, 10), ((4,), 20, 10),
        ((5,), 0, None)]


def test_upload_transfer_annotation_means_upload(srv):
    _fileset_answers(srv, {1: fileset(1)},
                     transfers={1: "ome.formats.importer.transfers.UploadFileTransfer"})
    assert srv.port.filesets([1])[1].transfer is None


def test_filesets_pages_ids_by_1000(srv):
    _fileset_answers(srv, {i: fileset(i) for i in (1, 1400, 2201)})
    result = srv.port.filesets(range(1, 2202))
    assert sorted(result) == [1, 1400, 2201]
    pages = [ids_of(c.args[1]) for c in srv.calls(adapter.HQL_FILESETS)]
    assert [len(p) for p in pages] == [1000, 1000, 201]
    assert pages[0][0] == 1 and pages[2][-1] == 2201


@pytest.mark.parametrize("method, item, extra, hql, param", [
    ("images_of", lambda i: i, (), adapter.HQL_IMAGES_OF, "ids"),
    ("plates_of", lambda i: i, (), adapter.HQL_PLATES_OF, "ids"),
    ("fileset_sessions", lambda i: i, (), adapter.HQL_FILESET_SESSIONS, "ids"),
    ("can_link", lambda i: ("Plate", i), (), adapter.HQL_LINK_TARGETS["Plate"], "ids"),
    ("files_by_repo_paths", lambda i: f"u_7/d{i:04}/f.fake", (), adapter.HQL_FILES_BY_PATH, "paths"),
    ("filesets_by_client_paths", lambda i: f"data/{i}.fake", (7,), adapter.HQL_FILESETS_BY_CLIENT_PATH,
     "paths"),
    ("lookup_users", lambda i: f"user{i}", (), adapter.HQL_USERS, "names"),
])
def test_batch_methods_send_each_distinct_value_once_in_pages_of_500(srv, method, item, extra, hql,
                                                                      param):
    srv.managed_repository()
    srv.answers[hql] = lambda p: []
    values = [item(i) for i in range(1, 1002)]
    getattr(srv.port, method)(values + values[:7], *extra)
    sent = [[x.val for x in c.args[1].map[param].val] for c in srv.calls(hql)]
    assert [len(page) for page in sent] == [500, 500, 1]
    assert len({v for page in sent for v in page}) == 1001


def test_filesets_of_resolves_each_container_type(srv):
    answers = {"Project": {4: [10, 11]}, "Image": {8: [None]}, "Plate": {2: [12]}}
    for kind, rows in answers.items():
        srv.answers[adapter.HQL_FILESETS_OF[kind]] = lambda p, rows=rows: [
            [rlong(i), None if fs is None else rlong(fs)] for i in ids_of(p) for fs in rows.get(i, [])]
    result = srv.port.filesets_of([("Project", 4), ("Image", 8), ("Image", 9), ("Plate", 2)])
    assert result == {("Project", 4): (10, 11), ("Image", 8): (), ("Plate", 2): (12,)}


def test_filesets_of_rejects_unknown_types_before_any_query(srv):
    with pytest.raises(ServerError, match="cannot reach filesets from Roi"):
        srv.port.filesets_of([("Project", 1), ("Roi", 3)])
    srv.query.projection.assert_not_called()


def test_find_filesets_filters_and_orders_newest_first(srv):
    _fileset_answers(srv, {i: fileset(i) for i in (3, 5, 9)})
    seen = {}

    def find(params):
        seen.update({k: v.val for k, v in params.map.items() if k != "ids"})
        return [[rlong(3)], [rlong(9)], [rlong(5)]]
    srv.answers[adapter.HQL_FIND_FILESET_IDS] = find
    since = dt.datetime(2024, 1, 2, tzinfo=dt.timezone.utc)
    found = srv.port.find_filesets(FilesetQuery(owner_id=7, since=since))
    assert [f.id for f in found] == [9, 5, 3]
    assert seen == {"owner": 7, "grp": -1, "since": int(since.timestamp() * 1000)}


def test_find_filesets_among_ids_pages_them(srv):
    _fileset_answers(srv, {600: fileset(600)})
    srv.answers[adapter.HQL_FIND_FILESET_IDS_AMONG] = lambda p: [
        [rlong(i)] for i in ids_of(p) if i == 600]
    found = srv.port.find_filesets(FilesetQuery(ids=tuple(range(1, 601))))
    assert [f.id for f in found] == [600]
    assert [len(ids_of(c.args[1])) for c in srv.calls(adapter.HQL_FIND_FILESET_IDS_AMONG)] == [500, 100]


def test_filesets_by_client_paths(srv):
    def answer(params):
        assert params.map["owner"].val == 7
        paths = [x.val for x in params.map["paths"].val]
        return [[rstring(p), rlong(fs)] for p, fs in (("d/a.fake", 1), ("d/a.fake", 4)) if p in paths]
    srv.answers[adapter.HQL_FILESETS_BY_CLIENT_PATH] = answer
    assert srv.port.filesets_by_client_paths(["d/a.fake", "d/b.fake"], 7) == {"d/a.fake": (1, 4)}


def test_activity_combines_jobs_images_log_and_events(srv):
    srv.answers[adapter.HQL_FILESET_CREATED] = lambda p: [[rlong(5), rtime(T0)]]
    srv.answers[adapter.HQL_FILESET_JOBS] = lambda p: [
        [rlong(5), rlong(1), rstring("Finished"), rtime(T0), None, rtime(T0 + 10), rstring("")],
        [rlong(5), rlong(2), rstring("Submitted"), rtime(T0), None, None, None]]
    srv.answers[adapter.HQL_FILESET_UPLOAD_JOBS] = lambda p: [[rlong(1)]]
    srv.answers[adapter.HQL_IMAGE_COUNTS] = lambda p: [[rlong(5), rlong(3)]]
    srv.answers[adapter.HQL_IMPORT_LOGS] = lambda p: (
        [[rlong(5), rlong(77), rlong(4096), rstring("alice_7/2024-01/02/"),
          rstring("03-04-05.678.log")]]
        if p.map["mimetype"].val == server.MIMETYPE_IMPORT_LOG else [])

    def log_updates(params):
        assert ids_of(params) == [77]
        assert (params.map["type"].val, params.map["action"].val) == (
            "ome.model.core.OriginalFile", "UPDATE")
        return [[rlong(77), rtime(T0 + 500), rlong(2)]]
    srv.answers[adapter.HQL_LAST_UPDATES] = log_updates
    srv.answers[adapter.HQL_LAST_JOB_EVENTS] = lambda p: [[rlong(5), rtime(T0 + 10)]]
    srv.answers[adapter.HQL_LAST_IMAGE_EVENTS] = lambda p: [[rlong(5), rtime(T0 + 900)]]
    srv.answers[adapter.HQL_LAST_FILE_EVENTS] = lambda p: [[rlong(5), rtime(T0 + 800)]]
    act = srv.port.activity([5, 6])
    assert list(act) == [5]
    a = act[5]
    assert [(j.kind, j.status, j.fileset_id) for j in a.jobs] == [
        ("UploadJob", "Finished", 5), ("Job", "Submitted", 5)]
    assert a.jobs[0].finished == when(T0 + 10) and a.jobs[1].finished is None
    assert a.jobs[0].submitted == when(T0) and a.jobs[0].started is None and a.jobs[1].message == ""
    assert [ids_of(c.args[1]) for c in srv.calls(adapter.HQL_FILESET_UPLOAD_JOBS)] == [[5, 6]]
    assert srv.query.findAllByQuery.call_args_list == []   # scalar rows only, no Job objects
    assert a.image_count == 3
    assert a.log == server.ImportLog(fileset_id=5, original_file_id=77, size=4096, updated=when(T0 + 500),
                                     updates=2, repo_path="alice_7/2024-01/02/03-04-05.678.log")
    assert a.last_event == when(T0 + 900)
    (types,) = [c.args[1].map["types"].val for c in srv.calls(adapter.HQL_LAST_JOB_EVENTS)]
    assert [t.val for t in types] == [f"ome.model.jobs.{k}" for k in server.IMPORT_JOB_CLASSES]


def test_activity_without_log_skips_the_eventlog_query_for_it(srv):
    srv.answers[adapter.HQL_FILESET_CREATED] = lambda p: [[rlong(5), rtime(T0)]]
    for hql in (adapter.HQL_FILESET_JOBS, adapter.HQL_FILESET_UPLOAD_JOBS, adapter.HQL_IMAGE_COUNTS,
                adapter.HQL_IMPORT_LOGS, adapter.HQL_LAST_JOB_EVENTS, adapter.HQL_LAST_IMAGE_EVENTS,
                adapter.HQL_LAST_FILE_EVENTS):
        srv.answers[hql] = lambda p: []
    a = srv.port.activity([5])[5]
    assert (a.jobs, a.image_count, a.log, a.last_event) == ((), 0, None, when(T0))
    assert srv.calls(adapter.HQL_LAST_UPDATES) == []


def test_activity_last_event_counts_the_used_files_updates(srv):
    """Each used file's transfer ends with RawFileStore.close/save, which saves its size and hash
    (omero-server RawFileBean.save: an UPDATE EventLog on the OriginalFile): before verifyUpload
    the only trace of an upload at work. The simulated server counts them (SimServer.store_file,
    SimPort._last_events), so the adapter must read them too."""
    srv.answers[adapter.HQL_FILESET_CREATED] = lambda p: [[rlong(5), rtime(T0)]]
    for hql in (adapter.HQL_FILESET_JOBS, adapter.HQL_FILESET_UPLOAD_JOBS, adapter.HQL_IMAGE_COUNTS,
                adapter.HQL_IMPORT_LOGS, adapter.HQL_LAST_JOB_EVENTS, adapter.HQL_LAST_IMAGE_EVENTS):
        srv.answers[hql] = lambda p: []

    def file_events(params):
        assert ids_of(params) == [5]
        assert params.map["type"].val == "ome.model.core.OriginalFile"
        return [[rlong(5), rtime(T0 + 700)]]
    srv.answers[adapter.HQL_LAST_FILE_EVENTS] = file_events
    assert srv.port.activity([5])[5].last_event == when(T0 + 700)


def test_server_time_is_the_config_service_clock(srv):
    config = mock.create_autospec(omero.api.IConfigPrx, instance=True)
    config.getServerTime.return_value = rtime(T0)
    srv.sf.getConfigService.return_value = config
    assert srv.port.server_time() == when(T0)


def _process(session, handle=None, refuse=None):
    process = mock.create_autospec(omero.grid.ImportProcessPrx, instance=True)
    process.ice_getIdentity.return_value = Ice.Identity(name="proc-%d" % id(process), category=session)
    if refuse is not None:
        process.end_getHandle.side_effect = refuse
    else:
        process.end_getHandle.return_value = handle
    return process


def _handle(fileset_id):
    handle = mock.create_autospec(omero.cmd.HandlePrx, instance=True)
    link = omero.model.FilesetJobLinkI(1, True)
    link.parent = omero.model.FilesetI(fileset_id, False)
    handle.end_getRequest.return_value = omero.grid.ImportRequest(activity=link)
    return handle


def _managed(srv, processes, session="my-session"):
    managed = mock.create_autospec(omero.grid.ManagedRepositoryPrx, instance=True)
    srv.port._repository, srv.port._repository_prx = server.Repository("u", "/r"), managed
    managed.listImports.return_value = processes
    srv.client.getSessionId.return_value = session
    return managed


def test_running_imports_asks_only_this_sessions_processes(srv):
    """Identity category = the session uuid (ServantHolder); Glacier2 routes only our own."""
    verified = _process("my-session", _handle(42))
    uploading = _process("my-session", None)
    closed = _process("my-session", refuse=Ice.ObjectNotExistException())
    foreign = [_process("other-session", _handle(7)) for _ in range(3)]
    _managed(srv, [foreign[0], verified, uploading, foreign[1], closed, foreign[2]])
    assert srv.port.running_imports() == [
        server.RunningImport(fileset_id=0, own_session=False)] * 3 + [
        server.RunningImport(fileset_id=42), server.RunningImport(fileset_id=adapter.UNKNOWN_FILESET)]
    for process in foreign:
        assert process.method_calls == [mock.call.ice_getIdentity()]   # no remote call at all
    for process in (verified, uploading, closed):
        process.begin_getHandle.assert_called_once_with()
        process.close.assert_not_called()


def test_running_imports_pipelines_the_calls(srv):
    """Every getHandle is sent before the first answer is awaited (one round trip for all)."""
    order = []
    processes = [_process("my-session", _handle(i)) for i in (1, 2)]
    for n, process in enumerate(processes):
        process.begin_getHandle.side_effect = lambda n=n: order.append(("begin", n))
        process.end_getHandle.side_effect = lambda r, n=n, h=_handle(n + 1): (
            order.append(("end", n)) or h)
    _managed(srv, processes)
    assert [r.fileset_id for r in srv.port.running_imports()] == [1, 2]
    assert order == [("begin", 0), ("begin", 1), ("end", 0), ("end", 1)]


def test_running_imports_leaves_out_a_closed_handle(srv):
    handle = _handle(42)
    handle.end_getRequest.side_effect = Ice.ObjectNotExistException()
    _managed(srv, [_process("my-session", handle)])
    assert srv.port.running_imports() == []


def test_running_imports_maps_a_refusing_process_to_a_port_error(srv):
    _managed(srv, [_process("my-session", refuse=omero.SecurityViolation(message="not your import"))])
    with pytest.raises(PermissionDenied, match="reading an import process: not your import"):
        srv.port.running_imports()


def test_containers_of_names_project_dataset_and_screen_plate(srv):
    srv.answers[adapter.HQL_DATASET_CONTAINERS] = lambda p: [
        [rlong(1), rstring("P"), rstring("D")], [rlong(2), None, rstring("Lone")]]
    srv.answers[adapter.HQL_PLATE_CONTAINERS] = lambda p: [[rlong(3), rstring("S"), rstring("Pl")]]
    srv.answers[adapter.HQL_FILESETS_OF["Fileset"]] = lambda p: [
        [rlong(i), rlong(i)] for i in ids_of(p) if i != 5]
    assert srv.port.containers_of([1, 2, 3, 4, 5]) == {
        1: ("Project", "P", "Dataset", "D"), 2: ("Dataset", "Lone"),
        3: ("Screen", "S", "Plate", "Pl"), 4: ()}


def _image_rows(images: dict):
    """Rows of HQL_IMAGES_OF: fileset left outer join images (null image for an empty fileset)."""
    return lambda p: [[rlong(fs_id), None if image is None else rlong(image)]
                      for fs_id in ids_of(p) if fs_id in images
                      for image in (images[fs_id] or [None])]


def test_images_of_gives_ascending_ids_and_an_empty_tuple_for_imageless_filesets(srv):
    srv.answers[adapter.HQL_IMAGES_OF] = _image_rows({1: [12, 10, 11], 2: []})
    assert srv.port.images_of([2, 1, 3, 1]) == {1: (10, 11, 12), 2: ()}
    (call,) = srv.calls(adapter.HQL_IMAGES_OF)
    assert ids_of(call.args[1]) == [1, 2, 3]


def test_images_of_matches_the_simulated_server_on_unreadable_filesets(srv):
    """Unreadable or unknown filesets are absent; readable ones appear even without images."""
    srv.answers[adapter.HQL_IMAGES_OF] = _image_rows({4: []})
    assert srv.port.images_of([4, 5]) == {4: ()}


# --- importing ---------------------------------------------------------------------------------

def test_session_login_is_what_omero_import_passes_to_the_importer_without_a_server_call(srv):
    props = {"omero.host": "omero.example.org", "omero.port": "4064"}
    srv.client.getProperty.side_effect = props.__getitem__
    srv.client.getSessionId.return_value = "8c1b-session-uuid"
    assert srv.port.session_login() == ("omero.example.org", "4064", "8c1b-session-uuid")
    assert srv.sf.mock_calls == []


def test_session_login_without_a_session_is_a_server_error(srv):
    srv.client.getProperty.return_value = ""
    srv.client.getSessionId.side_effect = omero.ClientError("No session available")
    with pytest.raises(ServerError, match="No session available"):
        srv.port.session_login()


def container(cls, obj_id, linkable):
    """A container as the server returns it: details.permissions carry the session's restrictions."""
    obj = cls(obj_id, True)
    perms = omero.model.PermissionsI("rwra--")
    perms._restrictions = [False] * 6
    perms._restrictions[LINKRESTRICTION] = not linkable
    obj.details.setPermissions(perms)
    return obj


def test_can_link_reads_can_link_of_each_readable_container(srv):
    loaded = {"Dataset": {5: container(omero.model.DatasetI, 5, True),
                          6: container(omero.model.DatasetI, 6, False)},
              "Screen": {9: container(omero.model.ScreenI, 9, True)},
              "Project": {}}
    for kind, objs in loaded.items():
        srv.answers[adapter.HQL_LINK_TARGETS[kind]] = lambda p, objs=objs: [
            objs[i] for i in ids_of(p) if i in objs]
    found = srv.port.can_link([("Dataset", 6), ("Screen", 9), ("Project", 1), ("Dataset", 5),
                               ("Dataset", 6)])
    assert found == {("Dataset", 5): True, ("Dataset", 6): False, ("Screen", 9): True}
    assert [ids_of(c.args[1]) for c in srv.calls(adapter.HQL_LINK_TARGETS["Dataset"])] == [[5, 6]]
    assert srv.calls(adapter.HQL_LINK_TARGETS["Plate"]) == []
    srv.query.projection.assert_not_called()


def test_can_link_rejects_other_types_before_any_query(srv):
    with pytest.raises(ServerError, match="cannot link into a Image"):
        srv.port.can_link([("Dataset", 1), ("Image", 2)])
    srv.query.findAllByQuery.assert_not_called()


# --- files -------------------------------------------------------------------------------------

def test_open_original_file_reads_through_the_raw_file_store(srv):
    srv.store.size.return_value = 10
    srv.store.read.return_value = b"abc"
    reader = srv.port.open_original_file(11)
    srv.store.setFileId.assert_called_once_with(11, ALL)
    assert isinstance(reader, server.RawFileReader)
    assert reader.size == 10 and reader.read(3, 3) == b"abc"
    srv.store.read.assert_called_once_with(3, 3)
    reader.close()
    srv.store.close.assert_called_once_with()


def test_another_security_violation_at_open_is_permission_denied_and_closes_the_store(srv):
    srv.store.setFileId.side_effect = omero.SecurityViolation(message="not permitted")
    with pytest.raises(PermissionDenied, match="download not allowed"):
        srv.port.open_original_file(11)
    srv.store.close.assert_called_once_with()


def test_binary_access_is_refused_by_the_read_not_the_open(srv):
    """omero-server RawFileBean.read is where BINARYACCESS is checked (`sec.checkRestriction`);
    setFileId and size answer (PublicRepositoryI.checkId only asks the database)."""
    srv.store.size.return_value = 10
    srv.store.read.side_effect = omero.SecurityViolation(
        message="Download is restricted for ome.model.core.OriginalFile:Id_11")
    reader = srv.port.open_original_file(11)
    with pytest.raises(PermissionDenied, match="Download is restricted"):
        reader.read(0, 10)


def test_a_repository_file_missing_on_the_server_is_named_so(srv):
    """RawFileBean.size: the FileBuffer cannot open the bytes on the server's disk (ResourceError):
    the file is missing there, not restricted (BINARYACCESS)."""
    srv.store.size.side_effect = omero.ResourceError(message="/OMERO/ManagedRepository/x (No such file)")
    with pytest.raises(server.FileMissing, match="missing on the server"):
        srv.port.open_original_file(11)
    srv.store.close.assert_called_once_with()


@pytest.mark.parametrize("message", ["FileNotFound: 11", "FileNotAccessible: 11"])
def test_a_repository_file_the_database_refuses_is_not_found(srv, message):
    """PublicRepositoryI.checkId (setFileId redirected by RawFileStoreI.__redirect) answers from
    the database: no row of this repository (FileNotFound) or a row the caller may not read
    (FileNotAccessible). Neither says the bytes are missing, nor is it BINARYACCESS."""
    srv.store.setFileId.side_effect = omero.SecurityViolation(message=message)
    with pytest.raises(NotFound) as err:
        srv.port.open_original_file(11)
    assert err.value.missing == (11,)
    srv.store.close.assert_called_once_with()


def test_unknown_original_file_is_not_found(srv):
    srv.store.setFileId.side_effect = omero.ValidationException(message="no row")
    with pytest.raises(NotFound) as err:
        srv.port.open_original_file(99)
    assert err.value.missing == (99,)


DATA_DIR = "alice_7/2024-01/02/03-04-05.678/data/"


def _file_row(of_id, path, name, fs_id=None, hasher="SHA1-160"):
    """A row of HQL_FILES_BY_PATH: id, path, name, size, hash, hasher, mimetype, repo, fileset."""
    return [rlong(of_id), rstring(path), rstring(name), rlong(100 + of_id), rstring("ab" * 20),
            rstring(hasher) if hasher else None, rstring("application/octet-stream"),
            rstring("repo-uuid"), None if fs_id is None else rlong(fs_id)]


def _rows_in_dirs(rows):
    return lambda p: [r for r in rows if r[1].val in {x.val for x in p.map["paths"].val}]


def test_files_by_repo_paths_asks_for_directories_and_keeps_exact_matches(srv):
    srv.managed_repository()
    srv.answers[adapter.HQL_FILES_BY_PATH] = _rows_in_dirs([
        _file_row(11, DATA_DIR, "a.fake", fs_id=5), _file_row(12, DATA_DIR, "b.fake", fs_id=5, hasher=None),
        _file_row(13, DATA_DIR, "c.fake", fs_id=5), _file_row(20, "/", "top.txt")])
    found = srv.port.files_by_repo_paths(
        [DATA_DIR + "a.fake", "/" + DATA_DIR + "b.fake", DATA_DIR + "gone.fake", "top.txt"])
    assert found == {
        DATA_DIR + "a.fake": (5, server.OriginalFile(
            id=11, path=DATA_DIR, name="a.fake", size=111, hash="ab" * 20, hasher="SHA1-160",
            mimetype="application/octet-stream", repo="repo-uuid")),
        DATA_DIR + "b.fake": (5, server.OriginalFile(
            id=12, path=DATA_DIR, name="b.fake", size=112, hash="ab" * 20, hasher=None,
            mimetype="application/octet-stream", repo="repo-uuid")),
        "top.txt": (None, server.OriginalFile(
            id=20, path="/", name="top.txt", size=120, hash="ab" * 20, hasher="SHA1-160",
            mimetype="application/octet-stream", repo="repo-uuid"))}
    (call,) = srv.calls(adapter.HQL_FILES_BY_PATH)
    assert sorted(x.val for x in call.args[1].map["paths"].val) == ["/", DATA_DIR]
    assert call.args[1].map["repo"].val == "repo-uuid"    # never an attachment at that path


def test_files_by_repo_paths_takes_the_lowest_id_of_rows_at_one_path(srv):
    srv.managed_repository()
    """As the simulated server does: the answer must not depend on the order of the rows."""
    srv.answers[adapter.HQL_FILES_BY_PATH] = _rows_in_dirs([
        _file_row(31, DATA_DIR, "a.fake", fs_id=8), _file_row(30, DATA_DIR, "a.fake", fs_id=7),
        _file_row(32, DATA_DIR, "a.fake", fs_id=9)])
    (fs_id, ofile), = srv.port.files_by_repo_paths([DATA_DIR + "a.fake"]).values()
    assert (fs_id, ofile.id) == (7, 30)


# --- changes -----------------------------------------------------------------------------------

def test_delete_filesets_submits_one_delete2(srv):
    srv.port.delete_filesets([3, 1, 3])
    (call,) = srv.client.submit.call_args_list
    request = call.args[0]
    assert isinstance(request, omero.cmd.Delete2)
    assert request.targetObjects == {"Fileset": [1, 3]}
    assert call.kwargs["ctx"] == ALL
    srv.client.submit.return_value.close.assert_called_once_with(True)


def test_delete_refused_by_the_server_is_a_server_error(srv):
    err = omero.cmd.GraphException(category="graph", name="denied",
                                   parameters={"message": "not permitted to delete"})
    srv.client.submit.side_effect = omero.CmdError(err)
    with pytest.raises(ServerError, match="not permitted to delete"):
        srv.port.delete_filesets([1])


# --- error mapping -----------------------------------------------------------------------------

@pytest.mark.parametrize("raised, expected, text", [
    (Ice.ConnectionRefusedException(), ServerError, "refused the connection"),
    (Ice.ConnectionLostException(), ServerError, "lost or timed out"),
    (omero.SessionTimeoutException(message="expired"), ServerError, "log in again"),
    (omero.ApiUsageException(message="bad HQL"), ServerError, "bad HQL"),
    (omero.SecurityViolation(message="nope"), PermissionDenied, "nope"),
])
def test_ice_and_omero_errors_become_port_errors(srv, raised, expected, text):
    srv.query.projection.side_effect = raised
    with pytest.raises(expected, match=text):
        srv.port.containers_of([1])


def test_pixels_readable_opens_each_image_like_render_test(srv, monkeypatch):
    """RawPixelsStore.setPixelsId(pixels, False, all groups + fail_if_missing) per image, as
    omero-cli-render's `test` does; a server error is that image's problem; stores are closed."""
    infos = {img: server.PixelsInfo(image_id=img, name="i", pixels_id=img + 100, size_x=1,
                                    size_y=1, size_z=1, size_c=1, size_t=1, pixel_type="uint8")
             for img in (1, 2, 3)}
    monkeypatch.setattr(srv.port, "pixels_info", lambda ids: {i: infos[i] for i in ids if i in infos})
    stores = {}

    def create():
        store = mock.create_autospec(omero.api.RawPixelsStorePrx, instance=True)

        def set_pixels(pixels_id, bypass, ctx):
            stores[pixels_id] = (store, bypass, ctx)
            if pixels_id == 102:
                raise omero.ResourceError(None, None, "Error instantiating pixel buffer: /x")
            if pixels_id == 103:     # omero-romio PixelsService: a big image, no pyramid yet
                raise omero.MissingPyramidException(None, None, "Missing pyramid")
        store.setPixelsId.side_effect = set_pixels
        return store
    srv.sf.createRawPixelsStore.side_effect = create
    found = srv.port.pixels_readable([1, 2, 3, 4], concurrency=2)
    assert found[1] is None and "Error instantiating pixel buffer" in found[2] and 4 not in found
    assert found[3] == server.PYRAMID_NOT_BUILT
    for pixels_id, (store, bypass, ctx) in stores.items():
        assert bypass is False
        assert ctx == {"omero.group": "-1", "omero.pixeldata.fail_if_missing": "true"}
        store.close.assert_called_once_with()


@pytest.mark.parametrize("raised, text", [
    (Ice.ConnectionLostException(), "lost or timed out"),
    (Ice.ObjectNotExistException(), "Ice error ObjectNotExistException"),
    (omero.SessionTimeoutException(message="expired"), "log in again"),
])
def test_pixels_readable_a_lost_session_or_connection_is_a_port_error_not_an_image_problem(
        srv, monkeypatch, raised, text):
    """The port raises only its own errors (ServerError), and the simulated server raises one
    for a session that is over (SimPort._check_open): an image is not unreadable because the
    session or the connection ended during the check."""
    info = server.PixelsInfo(image_id=1, name="i", pixels_id=101, size_x=1, size_y=1, size_z=1,
                             size_c=1, size_t=1, pixel_type="uint8")
    monkeypatch.setattr(srv.port, "pixels_info", lambda ids: {1: info})
    store = mock.create_autospec(omero.api.RawPixelsStorePrx, instance=True)
    store.setPixelsId.side_effect = raised
    srv.sf.createRawPixelsStore.return_value = store
    with pytest.raises(ServerError, match=text):
        srv.port.pixels_readable([1])
    store.close.assert_called_once_with()


@pytest.mark.parametrize("error, kind, text", [
    (Glacier2.PermissionDeniedException(reason="Password check failed"), PermissionDenied,
     "login: the server refused the login (Password check failed)"),
    (Glacier2.CannotCreateSessionException(reason="Too many sessions"), ServerError,
     "login: the server cannot create a session (Too many sessions)"),
])
def test_glacier2_refusals_are_port_errors_not_tracebacks(error, kind, text):
    """Glacier2 exceptions are Ice.UserExceptions, not omero.ServerErrors (Glacier2/Session.ice)."""
    ctx = mock.Mock()
    ctx.conn.side_effect = error
    with pytest.raises(kind) as raised:
        adapter.connect(ctx, mock.Mock())
    assert str(raised.value) == text


def test_sudo_refused_by_glacier2_is_a_permission_error(srv, monkeypatch):
    user = server.User(id=8, name="bob", group_id=3, group_name="lab")
    monkeypatch.setattr(adapter.OmeroPort, "lookup_users", lambda self, names: {"bob": user})
    monkeypatch.setattr(adapter, "_join_session", mock.Mock(
        side_effect=Glacier2.PermissionDeniedException(reason="session expired")))
    with pytest.raises(PermissionDenied, match="refused the login .session expired."):
        srv.port.sudo("bob")


def test_file_sizes_moves_one_store_from_file_to_file_and_skips_refused_ones(srv):
    """RawFileStore.size of each log (status: is it growing?); a refused file (SecurityViolation
    FileNotFound/FileNotAccessible) is left out and the store replaced, never reused."""
    stores = []

    def create():
        store = mock.create_autospec(omero.api.RawFileStorePrx, instance=True)
        current = {}

        def set_file(file_id, ctx):
            assert ctx == ALL
            if file_id == 2:
                raise omero.SecurityViolation(message="FileNotAccessible")
            current["id"] = file_id
        store.setFileId.side_effect = set_file
        store.size.side_effect = lambda: 1000 + current["id"]
        stores.append(store)
        return store
    srv.sf.createRawFileStore.side_effect = create
    assert srv.port.file_sizes([1, 2, 3]) == {1: 1001, 3: 1003}
    assert len(stores) == 2
    for store in stores:
        store.close.assert_called_once_with()
    assert srv.port.file_sizes([]) == {} and len(stores) == 2   # nothing asked: no store


def test_lookup_groups_by_name(srv):
    srv.answers[adapter.HQL_GROUPS] = lambda p: [
        [rstring(n.val), rlong(5)] for n in p.map["names"].val if n.val == "lab"]
    assert srv.port.lookup_groups(["lab", "nowhere", "lab"]) == {"lab": 5}
