"""The ServerPort on omero-py: the only module that speaks HQL or Ice.

Every query works on pages of `PAGE_SIZE` ids (`in (:ids)`), and reads run with the all-groups
context `{"omero.group": "-1"}` so that the answer is exactly what the session's user may read.
Each HQL string is a module-level constant named `HQL_*`; docs/server-contract.md lists them with
the ome/omero-model mapping files that back every class and field, and tests/test_hql_model.py
resolves each one against ../shared/omero-model.json.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as _dt
from typing import Iterable, Mapping, Optional, Sequence

import Glacier2
import Ice
import omero
import omero.callbacks  # noqa: F401  (client.submit needs it loaded)
import omero.clients  # noqa: F401  (registers the omero.model object factories)
import omero.cmd
import omero.grid
import omero.sys
from omero.constants.permissions import BINARYACCESS
from omero.fs import TRANSFERS
from omero.rtypes import rlist, rstring, rtime, unwrap
from omero_sys_ParametersI import ParametersI

from omero_cli_ext import server
from omero_cli_ext.server import (
    MIMETYPE_IMPORT_LOG, NS_FILE_TRANSFER, Fileset, FilesetActivity, FilesetEntry, FilesetQuery,
    FileMissing, ImportLog, Job, NotFound, OriginalFile, PermissionDenied, Repository, RunningImport,
    ServerError, User, batched,
)
# RawFileStore (PublicRepositoryI.checkId) on a repository file it cannot find or give
REPO_FILE_REFUSED_PREFIXES = ("FileNotFound", "FileNotAccessible")

PAGE_SIZE = 500
FILESET_PAGE_SIZE = 1000          # filesets(): ids per page (their entries are paged apart)
ENTRY_PAGE_SIZE = 5000            # fileset entries per answer (one Ice message each)
ALL_GROUPS = {"omero.group": "-1"}
# sudo sessions (SessionBean.createSessionWithTimeouts; SessionCache: a time to live of 0 never
# ends the session, the idle timeout counts from the last call): no lifetime, an idle timeout,
# and the client pings the session (omero.client.enableKeepAlive) so a long export that makes
# no call for a while (hard links) keeps it
SUDO_TIME_TO_LIVE_MS = 0
SUDO_TIME_TO_IDLE_MS = server.SUDO_TIME_TO_IDLE_MS
SUDO_KEEP_ALIVE_S = 60
GROUP_SUDO_REFUSED = "Group sudo is not permitted"   # SessionManagerImpl.validateSessionInputs
DELETE_POLL_MS = 500
DELETE_POLL_LOOPS = 2400          # 20 minutes before a delete counts as "still running"
UNKNOWN_FILESET = 0               # RunningImport.fileset_id of a process that is still uploading

# EventLog.entityType holds the server's Java class names (as `omero fs importtime` queries them)
EVENT_TYPE_ORIGINAL_FILE = "ome.model.core.OriginalFile"
EVENT_TYPE_IMAGE = "ome.model.core.Image"
EVENT_TYPES_JOBS = tuple("ome.model.jobs." + kind for kind in server.IMPORT_JOB_CLASSES)

# --- HQL (docs/server-contract.md) -------------------------------------------------------------

# filesets with their owner, group and creation event: single-valued joins only (no collection
# fetched, so no `distinct` and no row per entry); entries and annotations come by themselves
HQL_FILESETS = (
    "select fs from Fileset fs"
    " join fetch fs.details.owner o"
    " join fetch fs.details.group g"
    " join fetch fs.details.creationEvent ce"
    " where fs.id in (:ids)")

HQL_ENTRY_COUNTS = (
    "select fe.fileset.id, count(fe.id) from FilesetEntry fe"
    " where fe.fileset.id in (:ids) group by fe.fileset.id")

# paged by entries (server.entry_pages): `offset`/`limit` of ParametersI.page for a big fileset
HQL_FILESET_ENTRIES = (
    "select fe from FilesetEntry fe"
    " join fetch fe.originalFile f"
    " left outer join fetch f.hasher h"
    " where fe.fileset.id in (:ids) order by fe.fileset.id, fe.id")

HQL_FILESET_TRANSFERS = (
    "select al.parent.id, a.id, a.textValue from FilesetAnnotationLink al, CommentAnnotation a"
    " where al.child.id = a.id and al.parent.id in (:ids) and a.ns = :ns")

HQL_IMAGE_COUNTS = (
    "select i.fileset.id, count(i.id) from Image i"
    " where i.fileset.id in (:ids) group by i.fileset.id")

_FIND_FILESETS = (
    "select fs.id from Fileset fs"
    " where (:owner < 0 or fs.details.owner.id = :owner)"
    " and (:grp < 0 or fs.details.group.id = :grp)"
    " and fs.details.creationEvent.time >= :since")
HQL_FIND_FILESET_IDS = _FIND_FILESETS + " order by fs.id desc"
HQL_FIND_FILESET_IDS_AMONG = _FIND_FILESETS + " and fs.id in (:ids) order by fs.id desc"

HQL_FILESETS_BY_CLIENT_PATH = (
    "select fe.clientPath, fs.id from FilesetEntry fe join fe.fileset fs"
    " where fe.clientPath in (:paths) and fs.details.owner.id = :owner")

# (container type) -> rows (container id, fileset id or null)
HQL_FILESETS_OF = {
    "Fileset": "select fs.id, fs.id from Fileset fs where fs.id in (:ids)",
    "Image": (
        "select i.id, fs.id from Image i left outer join i.fileset fs"
        " where i.id in (:ids)"),
    "Dataset": (
        "select distinct d.id, fs.id from Dataset d"
        " left outer join d.imageLinks dil left outer join dil.child i"
        " left outer join i.fileset fs where d.id in (:ids)"),
    "Project": (
        "select distinct p.id, fs.id from Project p"
        " left outer join p.datasetLinks pdl left outer join pdl.child d"
        " left outer join d.imageLinks dil left outer join dil.child i"
        " left outer join i.fileset fs where p.id in (:ids)"),
    "Plate": (
        "select distinct p.id, fs.id from Plate p"
        " left outer join p.wells w left outer join w.wellSamples ws"
        " left outer join ws.image i left outer join i.fileset fs where p.id in (:ids)"),
    "Screen": (
        "select distinct s.id, fs.id from Screen s"
        " left outer join s.plateLinks spl left outer join spl.child p"
        " left outer join p.wells w left outer join w.wellSamples ws"
        " left outer join ws.image i left outer join i.fileset fs where s.id in (:ids)"),
}

HQL_FILESET_CREATED = (
    "select fs.id, fs.details.creationEvent.time from Fileset fs where fs.id in (:ids)")

HQL_FILESET_JOBS = (
    "select l.parent.id, j.id, s.value, j.submitted, j.started, j.finished, j.message"
    " from FilesetJobLink l join l.child j join j.status s where l.parent.id in (:ids)")

HQL_FILESET_UPLOAD_JOBS = (
    "select l.child.id from FilesetJobLink l, UploadJob u"
    " where u.id = l.child.id and l.parent.id in (:ids)")

HQL_IMPORT_LOGS = (
    "select l.parent.id, f.id, f.size, f.path, f.name from FilesetJobLink l join l.child j"
    " join j.originalFileLinks jl join jl.child f"
    " where l.parent.id in (:ids) and f.mimetype = :mimetype")

HQL_LAST_UPDATES = (
    "select el.entityId, max(el.event.time), count(el.id) from EventLog el"
    " where el.entityType = :type and el.action = :action and el.entityId in (:ids)"
    " group by el.entityId")

HQL_LAST_JOB_EVENTS = (
    "select l.parent.id, max(el.event.time) from FilesetJobLink l, EventLog el"
    " where el.entityType in (:types) and el.entityId = l.child.id and l.parent.id in (:ids)"
    " group by l.parent.id")

HQL_LAST_IMAGE_EVENTS = (
    "select i.fileset.id, max(el.event.time) from Image i, EventLog el"
    " where el.entityType = :type and el.entityId = i.id and i.fileset.id in (:ids)"
    " group by i.fileset.id")

# every used file's transfer ends in RawFileStore.save (RawFileBean.save: size and hash, one UPDATE
# EventLog on the OriginalFile): before verifyUpload the only sign of an upload at work
HQL_LAST_FILE_EVENTS = (
    "select fe.fileset.id, max(el.event.time) from FilesetEntry fe, EventLog el"
    " where el.entityType = :type and el.entityId = fe.originalFile.id and fe.fileset.id in (:ids)"
    " group by fe.fileset.id")

# a readable fileset without images gives one row with a null image id
HQL_IMAGES_OF = (
    "select fs.id, i.id from Fileset fs left outer join fs.images i where fs.id in (:ids)")

# the Session each fileset was created in (the importer joins the driver's session with -k)
HQL_FILESET_SESSIONS = (
    "select fs.id, e.session.id from Fileset fs join fs.details.creationEvent e"
    " where fs.id in (:ids)")

# plates reach a fileset only through Plate -> Well -> WellSample -> Image -> Fileset
HQL_PLATES_OF = (
    "select distinct i.fileset.id, w.plate.id from WellSample ws join ws.image i join ws.well w"
    " where i.fileset.id in (:ids)")

HQL_FILES_BY_PATH = (
    "select o.id, o.path, o.name, o.size, o.hash, h.value, o.mimetype, o.repo, fe.fileset.id"
    " from OriginalFile o left outer join o.hasher h left outer join o.filesetEntries fe"
    " where o.path in (:paths) and o.repo = :repo")

HQL_DATASET_CONTAINERS = (
    "select distinct i.fileset.id, p.name, d.name from DatasetImageLink dil"
    " join dil.child i join dil.parent d"
    " left outer join d.projectLinks pdl left outer join pdl.parent p"
    " where i.fileset.id in (:ids)")

HQL_PLATE_CONTAINERS = (
    "select distinct i.fileset.id, s.name, p.name from WellSample ws"
    " join ws.image i join ws.well w join w.plate p"
    " left outer join p.screenLinks spl left outer join spl.parent s"
    " where i.fileset.id in (:ids)")

HQL_USERS = (
    "select distinct e from Experimenter e"
    " left outer join fetch e.groupExperimenterMap m left outer join fetch m.parent g"
    " where e.omeName in (:names)")

HQL_GROUPS = "select g.name, g.id from ExperimenterGroup g where g.name in (:names)"

# --- zarr export: (container type) -> (ref id, image id) or (ref id, plate id) pairs
HQL_ZARR_REACH = {
    "Image": "select i.id, i.id from Image i where i.id in (:ids)",
    "Dataset": (
        "select distinct d.id, i.id from Dataset d"
        " left outer join d.imageLinks dil left outer join dil.child i where d.id in (:ids)"),
    "Project": (
        "select distinct p.id, i.id from Project p"
        " left outer join p.datasetLinks pdl left outer join pdl.child d"
        " left outer join d.imageLinks dil left outer join dil.child i where p.id in (:ids)"),
    "Plate": "select p.id, p.id from Plate p where p.id in (:ids)",
    "Screen": (
        "select distinct s.id, p.id from Screen s"
        " left outer join s.plateLinks spl left outer join spl.child p where s.id in (:ids)"),
}

# Image objects (their details.permissions tell BINARYACCESS) with Pixels and PixelsType
HQL_ZARR_IMAGES = (
    "select distinct i from Image i join fetch i.pixels p join fetch p.pixelsType"
    " where i.id in (:ids)")

HQL_ZARR_IMAGE_CONTAINERS = (
    "select distinct i.id, p.name, d.name from DatasetImageLink dil"
    " join dil.child i join dil.parent d"
    " left outer join d.projectLinks pdl left outer join pdl.parent p"
    " where i.id in (:ids)")

HQL_ZARR_PLATES = (
    "select p.id, p.name, p.rows, p.columns from Plate p where p.id in (:ids)")

HQL_ZARR_PLATE_SCREENS = (
    "select spl.child.id, s.name from ScreenPlateLink spl join spl.parent s"
    " where spl.child.id in (:ids)")

HQL_ZARR_WELL_SAMPLES = (
    "select w.plate.id, w.row, w.column, ws.id, i.id, pa.id from WellSample ws"
    " join ws.well w join ws.image i left outer join ws.plateAcquisition pa"
    " where w.plate.id in (:ids)")

HQL_ZARR_ACQUISITIONS = (
    "select pa.plate.id, pa.id, pa.name from PlateAcquisition pa where pa.plate.id in (:ids)")

# (container type) -> the containers, whose details.permissions answer canLink() for the session
HQL_LINK_TARGETS = {
    kind: f"select x from {kind} x where x.id in (:ids)"
    for kind in ("Project", "Dataset", "Screen", "Plate")}


# --- errors ------------------------------------------------------------------------------------

def _message(err) -> str:
    text = getattr(err, "message", None) or str(err) or type(err).__name__
    return text.strip().splitlines()[0] if text.strip() else type(err).__name__


def _reason(err) -> str:
    """Glacier2's exceptions carry `reason` (Glacier2/Session.ice), not omero's `message`."""
    text = (getattr(err, "reason", None) or "").strip()
    return text.splitlines()[0] if text else type(err).__name__


@contextlib.contextmanager
def _server_call(what: str):
    """Turn omero/Ice exceptions into the port's exceptions, naming what was being done."""
    try:
        yield
    except server.ServerError:
        raise
    except omero.SecurityViolation as err:
        raise PermissionDenied(f"{what}: {_message(err)}") from err
    except (omero.ApiUsageException, omero.ValidationException) as err:
        raise ServerError(f"{what}: {_message(err)}") from err
    except omero.SessionException as err:
        raise ServerError(f"{what}: session expired or invalid ({_message(err)}); log in again") from err
    except omero.ServerError as err:
        raise ServerError(f"{what}: {_message(err)}") from err
    except Glacier2.PermissionDeniedException as err:
        raise PermissionDenied(f"{what}: the server refused the login ({_reason(err)})") from err
    except Glacier2.CannotCreateSessionException as err:
        raise ServerError(f"{what}: the server cannot create a session ({_reason(err)})") from err
    except Ice.UserException as err:
        raise ServerError(f"{what}: {_reason(err)}") from err
    except Ice.ConnectionRefusedException as err:
        raise ServerError(f"{what}: the server refused the connection (is OMERO running?)") from err
    except (Ice.ConnectionLostException, Ice.TimeoutException, Ice.ConnectTimeoutException) as err:
        raise ServerError(f"{what}: connection to the server lost or timed out") from err
    except Ice.LocalException as err:
        raise ServerError(f"{what}: Ice error {type(err).__name__}") from err
    except omero.ClientError as err:
        raise ServerError(f"{what}: {_message(err)}") from err


# --- unwrapping --------------------------------------------------------------------------------

def _val(rtype):
    return None if rtype is None else rtype.val


def _time(millis) -> _dt.datetime | None:
    """OMERO timestamps are milliseconds since the epoch (UTC)."""
    if millis is None:
        return None
    return _dt.datetime.fromtimestamp(millis / 1000.0, tz=_dt.timezone.utc)


def _millis(when: _dt.datetime) -> int:
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return int(when.timestamp() * 1000)


def _later(*times):
    known = [t for t in times if t is not None]
    return max(known) if known else None


def _original_file(obj) -> OriginalFile:
    hasher = obj.hasher
    perms = obj.details.permissions
    return OriginalFile(
        id=obj.id.val, path=_val(obj.path), name=_val(obj.name), size=_val(obj.size),
        hash=_val(obj.hash), hasher=_val(hasher.value) if hasher is not None and hasher.isLoaded() else None,
        mimetype=_val(obj.mimetype), repo=_val(obj.repo),
        binary_restricted=bool(perms is not None and perms.isRestricted(BINARYACCESS)))


def _transfer_name(text: str | None) -> str | None:
    """The CLI symbol of the importer's transfer class (omero.fs.TRANSFERS); None = upload."""
    if not text:
        return None
    return TRANSFERS.get(text, text) or None


def _ids_params(ids: Sequence[int]) -> ParametersI:
    return ParametersI().addIds([int(i) for i in ids])


def _ids_by_type(refs: Sequence[tuple], known, refusal) -> dict:
    """Group ("Type", id) refs by type, refusing (before any query) a type with no query."""
    by_type: dict[str, set] = {}
    for kind, obj_id in refs:
        if kind not in known:
            raise ServerError(refusal(kind))
        by_type.setdefault(kind, set()).add(int(obj_id))
    return by_type


def _pages(ids: Iterable[int]) -> Iterable[list]:
    return batched(sorted({int(i) for i in ids}), PAGE_SIZE)


# --- connection --------------------------------------------------------------------------------

def connect(ctx, args) -> "OmeroPort":
    """Log in as every omero CLI plugin does (`ctx.conn(args)`: session store, -s/-u/-k, prompts)."""
    with _server_call("login"):
        client = ctx.conn(args)
    if client is None:
        raise ServerError("login failed: no session (run `omero login` or pass -s/-u/-k)")
    return OmeroPort(client)


def _join_session(client, session_uuid: str):
    """A new client on the same server, joined to an existing session (for sudo)."""
    new_client = omero.client(client.getPropertyMap())
    new_client.joinSession(session_uuid)
    return new_client


class _RawFile:
    """RawFileStore opened on one OriginalFile (server.RawFileReader)."""

    def __init__(self, store, size: int):
        self._store = store
        self.size = size

    def read(self, offset: int, length: int) -> bytes:
        with _server_call("reading original file"):
            return self._store.read(offset, length)

    def close(self) -> None:
        with _server_call("closing original file"):
            self._store.close()


class _RawPixels:
    """RawPixelsStore opened on one Pixels (server.PixelsReader): getTile is big-endian."""

    def __init__(self, store):
        self._store = store

    def tile(self, z: int, c: int, t: int, x: int, y: int, w: int, h: int) -> bytes:
        with _server_call("reading a tile"):
            return self._store.getTile(z, c, t, x, y, w, h, ALL_GROUPS)

    def close(self) -> None:
        with _server_call("closing the pixels"):
            self._store.close()


def _micrometres(length):
    """An omero.model.Length in micrometres (None when unset)."""
    if length is None:
        return None
    value = omero.model.LengthI(length, "MICROMETER").getValue()
    return float(value) if value else None


class OmeroPort:
    """server.ServerPort on an omero-py client (`client.sf` is the ServiceFactory)."""

    def __init__(self, client, *, owns_client: bool = False):
        self._client = client
        self._owns_client = owns_client
        self._repository = None
        self._repository_prx = None

    @property
    def _sf(self):
        return self._client.sf

    def _projection(self, hql: str, params, what: str) -> list:
        with _server_call(what):
            return self._sf.getQueryService().projection(hql, params, ALL_GROUPS)

    def _find_all(self, hql: str, params, what: str) -> list:
        with _server_call(what):
            return self._sf.getQueryService().findAllByQuery(hql, params, ALL_GROUPS)

    # --- who and where ---

    def _managed_repository(self):
        if self._repository is None:
            with _server_call("listing repositories"):
                repos = self._sf.sharedResources().repositories()
                for desc, prx in zip(repos.descriptions, repos.proxies):
                    managed = prx and omero.grid.ManagedRepositoryPrx.checkedCast(prx)
                    if managed:
                        self._repository = Repository(
                            uuid=desc.hash.val, root=desc.path.val + desc.name.val)
                        self._repository_prx = managed
                        break
            if self._repository is None:
                raise ServerError("the server offers no managed repository")
        return self._repository, self._repository_prx

    def repository(self) -> Repository:
        return self._managed_repository()[0]

    def current_user(self) -> User:
        with _server_call("reading the session's user"):
            admin = self._sf.getAdminService()
            ec = admin.getEventContext()
            privileges = admin.getCurrentAdminPrivileges()
        return User(id=ec.userId, name=ec.userName, group_id=ec.groupId, group_name=ec.groupName,
                    is_admin=bool(ec.isAdmin),
                    privileges=frozenset(p.getValue().val for p in privileges))

    def lookup_groups(self, names: Sequence[str]) -> Mapping[str, int]:
        found = {}
        for page in batched(sorted(set(names)), PAGE_SIZE):
            params = ParametersI().add("names", rlist([rstring(n) for n in page]))
            found.update(unwrap(self._projection(HQL_GROUPS, params, "looking up groups")))
        return found

    def lookup_users(self, names: Sequence[str]) -> Mapping[str, User]:
        found = {}
        for page in batched(sorted(set(names)), PAGE_SIZE):
            params = ParametersI().add("names", rlist([rstring(n) for n in page]))
            for exp in self._find_all(HQL_USERS, params, "looking up users"):
                groups = [m.parent for m in exp.copyGroupExperimenterMap() if m.parent is not None]
                default = groups[0] if groups else None
                found[exp.omeName.val] = User(
                    id=exp.id.val, name=exp.omeName.val,
                    group_id=default.id.val if default is not None else -1,
                    group_name=_val(default.name) if default is not None else "",
                    is_admin=any(_val(g.name) == "system" for g in groups),
                    groups=tuple((g.id.val, _val(g.name)) for g in groups))
        return found

    def server_time(self) -> _dt.datetime:
        with _server_call("reading the server clock"):
            return _time(self._sf.getConfigService().getServerTime().val)

    def sudo(self, user_name: str) -> "OmeroPort":
        user = self.lookup_users([user_name]).get(user_name)
        if user is None:
            raise NotFound(f"no user named {user_name!r}", missing=(user_name,))
        what = f"creating a session for {user_name} (needs the Sudo privilege or leading a group of theirs)"
        sessions = self._sf.getSessionService()
        with _server_call(what):
            try:
                session = sessions.createSessionWithTimeouts(
                    omero.sys.Principal(user_name, user.group_name, "User"),
                    SUDO_TIME_TO_LIVE_MS, SUDO_TIME_TO_IDLE_MS)
            except omero.SecurityViolation as err:
                # SessionManagerImpl.validateSessionInputs: a group leader's session (groupsLed) must be
                # in a group they lead; the user's default group need not be one
                led = set(self._sf.getAdminService().getEventContext().leaderOfGroups or ())
                shared = [name for gid, name in user.groups if gid in led]
                if not _message(err).startswith(GROUP_SUDO_REFUSED) or not shared:
                    raise
                session = sessions.createSessionWithTimeouts(
                    omero.sys.Principal(user_name, shared[0], "User"),
                    SUDO_TIME_TO_LIVE_MS, SUDO_TIME_TO_IDLE_MS)
            new_client = _join_session(self._client, session.getUuid().val)
            new_client.enableKeepAlive(SUDO_KEEP_ALIVE_S)
        return OmeroPort(new_client, owns_client=True)

    # --- filesets ---

    def filesets(self, ids: Iterable[int], image_counts: bool = True) -> Mapping[int, Fileset]:
        """Per page of FILESET_PAGE_SIZE ids: the filesets, their transfer comments, their entry
        counts, their entries in answers of at most ENTRY_PAGE_SIZE (server.entry_pages), and the
        image counts. Entries come from their own query, so a hole in the indexed `usedFiles`
        list (a null element) never shows."""
        found: dict[int, Fileset] = {}
        for page in batched(sorted({int(i) for i in ids}), FILESET_PAGE_SIZE):
            params = _ids_params(page)
            loaded = self._find_all(HQL_FILESETS, params, "loading filesets")
            if not loaded:
                continue
            transfers: dict[int, tuple] = {}
            for fs_id, ann_id, text in unwrap(self._projection(
                    HQL_FILESET_TRANSFERS, _ids_params(page).addString("ns", NS_FILE_TRANSFER),
                    "reading file transfers")):
                if fs_id not in transfers or ann_id < transfers[fs_id][0]:
                    transfers[fs_id] = (ann_id, text)   # the lowest id wins (as the simulation)
            counts = dict(unwrap(self._projection(HQL_ENTRY_COUNTS, params, "counting entries")))
            entries: dict[int, list] = {}
            for fs_ids, offset, limit in server.entry_pages(counts, ENTRY_PAGE_SIZE):
                entry_params = _ids_params(fs_ids)
                if limit is not None:
                    entry_params.page(offset, limit)
                for e in self._find_all(HQL_FILESET_ENTRIES, entry_params, "loading fileset entries"):
                    entries.setdefault(e.fileset.id.val, []).append(FilesetEntry(
                        client_path=e.clientPath.val, original_file=_original_file(e.originalFile)))
            image_count = dict(unwrap(self._projection(HQL_IMAGE_COUNTS, params, "counting images"))) \
                if image_counts else {}
            for fs in loaded:
                fs_id = fs.id.val
                owner, group = fs.details.owner, fs.details.group
                found[fs_id] = Fileset(
                    id=fs_id, template_prefix=fs.templatePrefix.val,
                    owner_id=owner.id.val, owner_name=_val(owner.omeName),
                    group_id=group.id.val, group_name=_val(group.name),
                    group_perms=str(group.details.permissions),
                    entries=tuple(entries.get(fs_id, ())),
                    image_count=int(image_count.get(fs_id, 0)),
                    transfer=_transfer_name(transfers[fs_id][1]) if fs_id in transfers else None,
                    created=_time(_val(fs.details.creationEvent.time)))
        return found

    def filesets_of(self, refs: Sequence[tuple]) -> Mapping[tuple, tuple]:
        by_type = _ids_by_type(refs, HQL_FILESETS_OF, lambda kind: (
            f"cannot reach filesets from {kind} (use one of {', '.join(server.CONTAINER_TYPES)})"))
        reached: dict[tuple, set] = {}
        for kind, ids in by_type.items():
            for page in _pages(ids):
                rows = unwrap(self._projection(HQL_FILESETS_OF[kind], _ids_params(page),
                                               f"resolving {kind} to filesets"))
                for obj_id, fs_id in rows:
                    found = reached.setdefault((kind, obj_id), set())
                    if fs_id is not None:
                        found.add(fs_id)
        return {ref: tuple(sorted(ids)) for ref, ids in reached.items()}

    def find_filesets(self, query: FilesetQuery) -> Sequence[Fileset]:
        def params():
            return (ParametersI()
                    .addLong("owner", -1 if query.owner_id is None else query.owner_id)
                    .addLong("grp", -1 if query.group_id is None else query.group_id)
                    .add("since", rtime(0 if query.since is None else _millis(query.since))))
        if query.ids is None:
            ids = unwrap(self._projection(HQL_FIND_FILESET_IDS, params(), "finding filesets"))
        else:
            ids = []
            for page in _pages(query.ids):
                ids += unwrap(self._projection(HQL_FIND_FILESET_IDS_AMONG, params().addIds(page),
                                               "finding filesets"))
        ordered = sorted((row[0] for row in ids), reverse=True)
        loaded = self.filesets(ordered)
        return [loaded[i] for i in ordered if i in loaded]

    def filesets_by_client_paths(self, client_paths: Sequence[str], owner_id: int) -> Mapping[str, tuple]:
        found: dict[str, set] = {}
        for page in batched(sorted(set(client_paths)), PAGE_SIZE):
            params = (ParametersI().add("paths", rlist([rstring(p) for p in page]))
                      .addLong("owner", owner_id))
            for path, fs_id in unwrap(self._projection(
                    HQL_FILESETS_BY_CLIENT_PATH, params, "finding filesets by client path")):
                found.setdefault(path, set()).add(fs_id)
        return {path: tuple(sorted(ids)) for path, ids in found.items()}

    def activity(self, fileset_ids: Iterable[int]) -> Mapping[int, FilesetActivity]:
        result: dict[int, FilesetActivity] = {}
        for page in _pages(fileset_ids):
            params = _ids_params(page)
            created = dict(unwrap(self._projection(HQL_FILESET_CREATED, params, "reading filesets")))
            jobs: dict[int, list] = {}
            uploads = {job_id for (job_id,) in unwrap(self._projection(
                HQL_FILESET_UPLOAD_JOBS, params, "finding upload jobs"))}
            for fs_id, job_id, status, submitted, started, finished, message in unwrap(
                    self._projection(HQL_FILESET_JOBS, params, "reading import jobs")):
                kind = server.UPLOAD_JOB if job_id in uploads else server.OTHER_JOB
                jobs.setdefault(fs_id, []).append(Job(
                    id=job_id, fileset_id=fs_id, kind=kind, status=status, submitted=_time(submitted), started=_time(started),
                    finished=_time(finished), message=message or ""))
            counts = dict(unwrap(self._projection(HQL_IMAGE_COUNTS, params, "counting images")))
            logs = {fs_id: (log_id, size, (path or "") + (name or ""))
                    for fs_id, log_id, size, path, name in unwrap(self._projection(
                HQL_IMPORT_LOGS, _ids_params(page).addString("mimetype", MIMETYPE_IMPORT_LOG),
                "finding import logs"))}
            log_updates = {}
            if logs:
                log_updates = {log_id: (last, count) for log_id, last, count in unwrap(self._projection(
                    HQL_LAST_UPDATES,
                    _ids_params([log_id for log_id, _, _ in logs.values()])
                    .addString("type", EVENT_TYPE_ORIGINAL_FILE).addString("action", "UPDATE"),
                    "reading import log updates"))}
            job_events = dict(unwrap(self._projection(
                HQL_LAST_JOB_EVENTS,
                _ids_params(page).add("types", rlist([rstring(t) for t in EVENT_TYPES_JOBS])),
                "reading job events")))
            image_events = dict(unwrap(self._projection(
                HQL_LAST_IMAGE_EVENTS, _ids_params(page).addString("type", EVENT_TYPE_IMAGE),
                "reading image events")))
            file_events = dict(unwrap(self._projection(
                HQL_LAST_FILE_EVENTS, _ids_params(page).addString("type", EVENT_TYPE_ORIGINAL_FILE),
                "reading the used files' events")))
            for fs_id, created_ms in created.items():
                log = None
                if fs_id in logs:
                    log_id, size, repo_path = logs[fs_id]
                    last_update, update_count = log_updates.get(log_id, (None, 0))
                    log = ImportLog(fileset_id=fs_id, original_file_id=log_id, size=size or 0,
                                    updated=_time(last_update), updates=int(update_count),
                                    repo_path=repo_path)
                fs_jobs = sorted(jobs.get(fs_id, ()), key=lambda j: j.id)
                result[fs_id] = FilesetActivity(
                    fileset_id=fs_id, jobs=tuple(fs_jobs), image_count=int(counts.get(fs_id, 0)),
                    log=log,
                    last_event=_later(_time(created_ms), _time(job_events.get(fs_id)),
                                      _time(image_events.get(fs_id)), _time(file_events.get(fs_id)),
                                      log.updated if log is not None else None))
        return result

    def running_imports(self) -> Sequence[RunningImport]:
        """The processes listImports lists, told apart by session without asking them.

        listImports (ManagedRepositoryI) lists every ImportProcess of the caller's groups since
        the server started: ProcessContainer never removes one, and the Java importer closes its
        process right after verifyUpload (ImportLibrary). Each servant lives under its session's
        identity category (ServantHolder.getIdentity), and Glacier2 routes only the caller's own
        categories: a process of another session is reported `own_session=False` without a call.
        This session's processes are asked getHandle (pipelined: one round trip for all), a
        closed one answers ObjectNotExistException and is left out, and the handles' ImportRequest
        (one more pipelined round trip) names the fileset of a verified upload. Processes are
        never closed here (closing one ends its import)."""
        _, mrepo = self._managed_repository()
        with _server_call("listing running imports"):
            processes = mrepo.listImports()
            session = self._client.getSessionId()
        own = [p for p in processes if p.ice_getIdentity().category == session]
        running = [RunningImport(fileset_id=UNKNOWN_FILESET, own_session=False)
                   for _ in range(len(processes) - len(own))]
        handles = []
        for process, pending in [(p, p.begin_getHandle()) for p in own]:
            try:
                handles.append(process.end_getHandle(pending))
            except Ice.ObjectNotExistException:
                continue   # closed (by its importer after verifyUpload, or its session ended)
            except (omero.ServerError, Ice.LocalException) as err:
                with _server_call("reading an import process"):
                    raise err
        for handle, pending in [(h, h.begin_getRequest() if h else None) for h in handles]:
            fileset_id = UNKNOWN_FILESET
            if handle:
                try:
                    fileset_id = handle.end_getRequest(pending).activity.parent.id.val
                except Ice.ObjectNotExistException:
                    continue   # the handle was closed: its import is over
                except (omero.ServerError, Ice.LocalException) as err:
                    with _server_call("reading an import request"):
                        raise err
            running.append(RunningImport(fileset_id=fileset_id))
        return running

    def containers_of(self, fileset_ids: Iterable[int]) -> Mapping[int, tuple]:
        """Readable filesets only; of several containers a plate's are reported before a
        dataset's, and among those the least (type, name, ...) tuple (server.py)."""
        plates: dict[int, list] = {}
        datasets: dict[int, list] = {}
        visible: set = set()
        for page in _pages(fileset_ids):
            params = _ids_params(page)
            visible.update(fs_id for fs_id, _ in unwrap(self._projection(
                HQL_FILESETS_OF["Fileset"], params, "reading filesets")))
            for fs_id, project, dataset in unwrap(self._projection(
                    HQL_DATASET_CONTAINERS, params, "reading datasets")):
                datasets.setdefault(fs_id, []).append(
                    ("Project", project, "Dataset", dataset) if project is not None
                    else ("Dataset", dataset))
            for fs_id, screen, plate in unwrap(self._projection(
                    HQL_PLATE_CONTAINERS, params, "reading plates")):
                plates.setdefault(fs_id, []).append(
                    ("Screen", screen, "Plate", plate) if screen is not None else ("Plate", plate))
        return {fs_id: min(plates.get(fs_id) or datasets.get(fs_id) or [()])
                for fs_id in sorted(visible)}

    def images_of(self, fileset_ids: Iterable[int]) -> Mapping[int, tuple]:
        found: dict[int, list] = {}
        for page in _pages(fileset_ids):
            for fs_id, image_id in unwrap(self._projection(HQL_IMAGES_OF, _ids_params(page),
                                                           "reading images of filesets")):
                images = found.setdefault(fs_id, [])
                if image_id is not None:
                    images.append(image_id)
        return {fs_id: tuple(sorted(ids)) for fs_id, ids in found.items()}

    def plates_of(self, fileset_ids: Iterable[int]) -> Mapping[int, tuple]:
        found: dict[int, set] = {}
        for page in _pages(fileset_ids):
            for fs_id, plate_id in unwrap(self._projection(HQL_PLATES_OF, _ids_params(page),
                                                           "reading plates of filesets")):
                found.setdefault(fs_id, set()).add(plate_id)
        return {fs_id: tuple(sorted(ids)) for fs_id, ids in found.items()}

    def fileset_sessions(self, fileset_ids: Iterable[int]) -> Mapping[int, int]:
        found = {}
        for page in _pages(fileset_ids):
            for fs_id, session_id in unwrap(self._projection(
                    HQL_FILESET_SESSIONS, _ids_params(page), "reading filesets' sessions")):
                if session_id is not None:
                    found[fs_id] = session_id
        return found

    def session_id(self) -> int:
        with _server_call("reading the session"):
            return self._sf.getAdminService().getEventContext().sessionId

    def files_by_repo_paths(self, repo_paths: Sequence[str]) -> Mapping[str, tuple]:
        """Queries whole directories (`o.path in`) of the managed repository (`o.repo`: not an
        attachment or a file of another repository with the same path), then keeps the exact
        path + name; of several rows at one path the lowest OriginalFile id wins."""
        repo_uuid = self._managed_repository()[0].uuid
        wanted = {p.lstrip("/") for p in repo_paths}
        dirs = sorted({p.rsplit("/", 1)[0] + "/" if "/" in p else "/" for p in wanted})
        found = {}
        for page in batched(dirs, PAGE_SIZE):
            params = (ParametersI().add("paths", rlist([rstring(d) for d in page]))
                      .addString("repo", repo_uuid))
            for (of_id, path, name, size, digest, hasher, mimetype, repo,
                 fs_id) in unwrap(self._projection(HQL_FILES_BY_PATH, params,
                                                   "finding files by repository path")):
                key = (path + name).lstrip("/")
                if key in wanted and (key not in found or of_id < found[key][1].id):
                    found[key] = (fs_id, OriginalFile(id=of_id, path=path, name=name, size=size,
                                                      hash=digest, hasher=hasher,
                                                      mimetype=mimetype, repo=repo))
        return found

    # --- pixels (the zarr export) ---

    def images_and_plates_of(self, refs: Sequence[tuple]) -> Mapping[tuple, tuple]:
        by_type = _ids_by_type(refs, HQL_ZARR_REACH, lambda kind: (
            f"cannot export a {kind} to zarr (use one of {', '.join(HQL_ZARR_REACH)})"))
        found: dict = {}
        for kind, ids in by_type.items():
            for page in _pages(ids):
                for ref_id, child in unwrap(self._projection(
                        HQL_ZARR_REACH[kind], _ids_params(page), f"reading {kind} contents")):
                    children = found.setdefault((kind, ref_id), set())
                    if child is not None:
                        children.add(child)
        plates = ("Plate", "Screen")
        return {ref: ((), tuple(sorted(found[ref]))) if ref[0] in plates
                else (tuple(sorted(found[ref])), ()) for ref in refs if ref in found}

    def pixels_info(self, image_ids: Iterable[int]) -> Mapping[int, server.PixelsInfo]:
        result = {}
        for page in _pages(image_ids):
            params = _ids_params(page)
            containers: dict = {}
            for image_id, project, dataset in unwrap(self._projection(
                    HQL_ZARR_IMAGE_CONTAINERS, params, "reading datasets of images")):
                entry = (("Project", project) if project is not None else ()) + ("Dataset", dataset)
                containers[image_id] = min(containers.get(image_id, entry), entry)
            for image in self._find_all(HQL_ZARR_IMAGES, params, "reading pixels"):
                pixels = image.getPrimaryPixels()
                result[image.id.val] = server.PixelsInfo(
                    image_id=image.id.val, name=unwrap(image.getName()) or "",
                    pixels_id=pixels.id.val, size_x=pixels.getSizeX().val,
                    size_y=pixels.getSizeY().val, size_z=pixels.getSizeZ().val,
                    size_c=pixels.getSizeC().val, size_t=pixels.getSizeT().val,
                    pixel_type=pixels.getPixelsType().getValue().val,
                    physical_size_x=_micrometres(pixels.getPhysicalSizeX()),
                    physical_size_y=_micrometres(pixels.getPhysicalSizeY()),
                    physical_size_z=_micrometres(pixels.getPhysicalSizeZ()),
                    containers=containers.get(image.id.val, ()),
                    binary_restricted=bool(image.details.permissions.isRestricted(BINARYACCESS)))
        return result

    def rendering_settings(self, image_ids: Iterable[int]) -> Mapping[int, server.RenderingSettings]:
        """As `omero render info` reads them (omero-cli-render's RenderObject on a rendering
        engine, one per image: the user's own settings, else the owner's, else defaults)."""
        from omero.gateway import BlitzGateway
        from omero_cli_render import RenderObject
        gateway = BlitzGateway(client_obj=self._client)
        gateway.SERVICE_OPTS.setOmeroGroup("-1")
        result = {}
        for image_id in sorted({int(i) for i in image_ids}):
            with _server_call(f"reading the rendering settings of Image:{image_id}"):
                image = gateway.getObject("Image", image_id)
                if image is None:
                    continue
                try:
                    try:
                        rendered = RenderObject(image)
                    except Exception as err:
                        if type(err) is not Exception:
                            raise
                        # RenderObject's own refusal: _prepareRenderingEngine answered False
                        raise ServerError(f"reading the rendering settings of Image:{image_id}: "
                                          f"{err}") from err
                    channels = []
                    for wrapper, ch in zip(image.getChannels(noRE=False), rendered.channels):
                        channels.append(server.ChannelRendering(
                            label=ch.label or "", color=ch.color.getHtml(),
                            start=float(ch.start), end=float(ch.end), min=float(ch.min),
                            max=float(ch.max), active=bool(ch.active),
                            inverted=bool(wrapper.isInverted()),
                            family=str(wrapper.getFamily().getValue()),
                            coefficient=float(wrapper.getCoefficient())))
                    result[image_id] = server.RenderingSettings(
                        image_id=image_id, default_z=int(rendered.defaultZ),
                        default_t=int(rendered.defaultT), model=rendered.model,
                        channels=tuple(channels))
                finally:
                    image._closeRE()
        return result

    def plates(self, plate_ids: Iterable[int]) -> Mapping[int, server.PlateInfo]:
        result = {}
        for page in _pages(plate_ids):
            params = _ids_params(page)
            rows = unwrap(self._projection(HQL_ZARR_PLATES, params, "reading plates"))
            screens: dict = {}
            for plate_id, screen in unwrap(self._projection(
                    HQL_ZARR_PLATE_SCREENS, params, "reading screens of plates")):
                screens[plate_id] = min(screens.get(plate_id, screen), screen)
            wells: dict = {}
            for plate_id, row, column, ws_id, image_id, acq in unwrap(self._projection(
                    HQL_ZARR_WELL_SAMPLES, params, "reading wells")):
                wells.setdefault(plate_id, {}).setdefault((row, column), []).append(
                    (ws_id, image_id, acq))
            acquisitions: dict = {}
            for plate_id, acq_id, name in unwrap(self._projection(
                    HQL_ZARR_ACQUISITIONS, params, "reading plate acquisitions")):
                acquisitions.setdefault(plate_id, []).append((acq_id, name or "Run %d" % acq_id))
            for plate_id, name, n_rows, n_columns in rows:
                plate_wells = wells.get(plate_id, {})
                infos = tuple(server.WellInfo(row=r, column=c, fields=tuple(
                    (image_id, acq) for _ws, image_id, acq in sorted(samples)))
                    for (r, c), samples in sorted(plate_wells.items()))
                result[plate_id] = server.PlateInfo(
                    id=plate_id, name=name or "", wells=infos,
                    rows=n_rows or max((r for r, _c in plate_wells), default=-1) + 1,
                    columns=n_columns or max((c for _r, c in plate_wells), default=-1) + 1,
                    acquisitions=tuple(sorted(acquisitions.get(plate_id, ()))),
                    containers=("Screen", screens[plate_id]) if plate_id in screens else ())
        return result

    def open_pixels(self, image_id: int) -> "_RawPixels":
        what = f"opening the pixels of Image:{image_id}"
        info = self.pixels_info([image_id]).get(image_id)
        if info is None:
            raise NotFound(f"{what}: no such image or not readable", missing=(image_id,))
        with _server_call(what):
            store = self._sf.createRawPixelsStore()
        try:
            store.setPixelsId(info.pixels_id, True, ALL_GROUPS)
        except omero.SecurityViolation as err:
            store.close()
            raise PermissionDenied(f"{what}: {_message(err)}") from err
        except Exception as err:
            store.close()
            with _server_call(what):
                raise err
        return _RawPixels(store)

    def pixels_readable(self, image_ids: Sequence[int], concurrency: int = 4
                        ) -> Mapping[int, Optional[str]]:
        """RawPixelsStore.setPixelsId(id, False, fail_if_missing) per image, as omero-cli-render's
        `test` does: the server opens the pixel buffer, which for pixels without a pyramid of
        their own opens the original file (PixelsService.createBfPixelBuffer)."""
        infos = self.pixels_info(image_ids)
        context = dict(ALL_GROUPS, **{"omero.pixeldata.fail_if_missing": "true"})

        def check(info) -> Optional[str]:
            with _server_call(f"opening a pixels service for Image:{info.image_id}"):
                store = self._sf.createRawPixelsStore()
            try:
                store.setPixelsId(info.pixels_id, False, context)
                return None
            except omero.MissingPyramidException:
                return server.PYRAMID_NOT_BUILT   # omero-romio PixelsService: no original read
            except omero.SessionException:
                raise      # the session is over: no image's problem (mapped below)
            except (omero.ServerError, Ice.UserException) as err:
                return f"{type(err).__name__}: {_message(err)}".split("\n")[0]
            finally:
                with contextlib.suppress(Exception):
                    store.close()
        ordered = [infos[i] for i in image_ids if i in infos]
        if not ordered:
            return {}
        # a lost connection or session (Ice.LocalException, SessionException) ends the check
        with _server_call("opening the pixels of images"), \
                concurrent.futures.ThreadPoolExecutor(max(1, min(concurrency, len(ordered)))) as pool:
            return {info.image_id: problem for info, problem in zip(ordered, pool.map(check, ordered))}

    # --- importing ---

    def session_login(self) -> tuple:
        client = self._client
        with _server_call("reading the session's login"):
            return (client.getProperty("omero.host"), client.getProperty("omero.port"),
                    client.getSessionId())

    def can_link(self, refs: Sequence[tuple]) -> Mapping[tuple, bool]:
        by_type = _ids_by_type(refs, HQL_LINK_TARGETS, lambda kind: (
            f"cannot link into a {kind} (use one of {', '.join(HQL_LINK_TARGETS)})"))
        found = {}
        for kind, ids in by_type.items():
            for page in _pages(ids):
                for obj in self._find_all(HQL_LINK_TARGETS[kind], _ids_params(page),
                                          f"reading {kind} permissions"):
                    found[(kind, obj.id.val)] = bool(obj.details.permissions.canLink())
        return found

    # --- files ---

    def file_sizes(self, original_file_ids: Sequence[int]) -> Mapping[int, int]:
        """One RawFileStore, moved from file to file (setFileId + size each); a file the server
        refuses (SecurityViolation FileNotFound/FileNotAccessible, not readable) is left out and
        the store replaced, since a refused setFileId leaves it in no defined state."""
        sizes: dict = {}
        store = None
        try:
            for file_id in original_file_ids:
                if store is None:
                    with _server_call("opening a RawFileStore"):
                        store = self._sf.createRawFileStore()
                try:
                    store.setFileId(int(file_id), ALL_GROUPS)
                    sizes[int(file_id)] = int(store.size())
                except (omero.SecurityViolation, omero.ValidationException,
                        omero.ApiUsageException, omero.ResourceError):
                    with contextlib.suppress(Exception):
                        store.close()
                    store = None
                except Exception as err:
                    with _server_call(f"reading the size of OriginalFile:{file_id}"):
                        raise err
        finally:
            if store is not None:
                with contextlib.suppress(Exception):
                    store.close()
        return sizes

    def open_original_file(self, original_file_id: int) -> _RawFile:
        what = f"opening OriginalFile:{original_file_id}"
        with _server_call(what):
            store = self._sf.createRawFileStore()
        try:
            store.setFileId(original_file_id, ALL_GROUPS)
            size = store.size()
        except omero.SecurityViolation as err:
            store.close()
            if _message(err).startswith(REPO_FILE_REFUSED_PREFIXES):
                # PublicRepositoryI.checkId, reached through RawFileStoreI.__redirect: no row of
                # this repository with that id (FileNotFound), or a row the security filter
                # hides from the caller (FileNotAccessible) -- the database's answer, not the disk's
                raise NotFound(f"{what}: no such file or not readable ({_message(err)})",
                               missing=(original_file_id,)) from err
            raise PermissionDenied(f"{what}: download not allowed ({_message(err)})") from err
        except omero.ResourceError as err:
            store.close()      # RawFileBean.size: FileBuffer cannot open the bytes on the server's disk
            raise FileMissing(f"{what}: missing on the server ({_message(err)})") from err
        except (omero.ValidationException, omero.ApiUsageException) as err:
            store.close()
            raise NotFound(f"{what}: no such file or not readable", missing=(original_file_id,)) from err
        except Exception as err:
            store.close()
            with _server_call(what):
                raise err
        return _RawFile(store, size)

    # --- changes (admins) ---

    def delete_filesets(self, ids: Sequence[int]) -> None:
        targets = sorted({int(i) for i in ids})
        if not targets:
            return
        request = omero.cmd.Delete2(targetObjects={"Fileset": targets})
        what = f"deleting {len(targets)} fileset(s)"
        try:
            callback = self._client.submit(request, loops=DELETE_POLL_LOOPS, ms=DELETE_POLL_MS,
                                           failonerror=True, ctx=ALL_GROUPS)
        except omero.CmdError as err:
            rsp = err.err
            detail = f"{getattr(rsp, 'category', '')}/{getattr(rsp, 'name', '')}"
            params = getattr(rsp, "parameters", None) or {}
            message = params.get("message") or detail
            raise ServerError(f"{what}: the server refused ({message})") from err
        except omero.LockTimeout as err:
            raise ServerError(f"{what}: still running on the server after "
                              f"{DELETE_POLL_LOOPS * DELETE_POLL_MS // 1000} s") from err
        except Exception as err:
            with _server_call(what):
                raise err
        callback.close(True)

    def close(self) -> None:
        if self._owns_client:
            with contextlib.suppress(Exception):
                self._client.closeSession()
            self._owns_client = False
