"""A simulated OMERO server: the OMERO model rows that omero-cli-ext reads, in SQLite, plus a real
ManagedRepository directory on disk.

State lives in `<root>/sim.sqlite` (WAL mode) so that several processes see one server: the CLI under
test, the fake importer it starts and the test's assertions. Tables and columns carry the OMERO model
names (ome/omero-model `src/main/resources/mappings/*.ome.xml`); `details` members are the real
database columns `owner_id`, `group_id`, `creation_id`. docs/development.md lists, for each behaviour,
the OMERO source it reproduces.

All datetimes are timezone-aware UTC and come from a clock stored in the state: tests move it.
"""
from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import math
import os
import shutil
import sqlite3
import uuid as _uuid
from contextlib import contextmanager
from typing import Iterable, Mapping, Optional, Sequence

from omero_cli_ext import pathrules
from omero_cli_ext import server as port_api
from omero_cli_ext.server import (
    FilesetActivity, FilesetQuery, ImportLog, Job, NotFound, PermissionDenied, Repository,
    RunningImport, User,
)
from sim import pixels

# AdminPrivilege values (ome/omero-model mappings/meta.ome.xml, enum AdminPrivilege)
ADMIN_PRIVILEGES = frozenset((
    "Chgrp", "Chown", "DeleteFile", "DeleteManagedRepo", "DeleteOwned", "DeleteScriptRepo",
    "ModifyGroup", "ModifyGroupMembership", "ModifyUser", "ReadSession", "Sudo", "WriteFile",
    "WriteManagedRepo", "WriteOwned", "WriteScriptRepo"))
# omero-blitz ManagedRepositoryI: the repository template default (omero.fs.repo.path)
TEMPLATE = "%user%_%userId%//%year%-%month%/%day%/%time%"
# Transfer names -> the class named by the fileTransfer CommentAnnotation (omero-py omero/fs/__init__.py)
TRANSFER_CLASSES = {
    "cp": "ome.formats.importer.transfers.CopyFileTransfer",
    "cp_rm": "ome.formats.importer.transfers.CopyMoveFileTransfer",
    "ln": "ome.formats.importer.transfers.HardlinkFileTransfer",
    "ln_rm": "ome.formats.importer.transfers.MoveFileTransfer",
    "ln_s": "ome.formats.importer.transfers.SymlinkFileTransfer",
    "upload_rm": "ome.formats.importer.transfers.UploadRmFileTransfer",
}
TRANSFERS = ("upload",) + tuple(TRANSFER_CLASSES)
# The five server-side steps an ImportCallback reports (omero-blitz ImportLibrary.ImportCallback.step)
IMPORT_STEPS = ("METADATA_IMPORTED", "PIXELDATA_PROCESSED", "THUMBNAILS_GENERATED",
                "METADATA_PROCESSED", "OBJECTS_RETURNED")
OUTCOMES = ("ok", "server-failure", "client-death")
# EventLog.entityType is the server-side Java class name (as queried by omero-py plugins/fs.py importtime)
ENTITY_TYPES = {
    "Fileset": "ome.model.fs.Fileset", "FilesetEntry": "ome.model.fs.FilesetEntry",
    "OriginalFile": "ome.model.core.OriginalFile", "Image": "ome.model.core.Image",
    "Plate": "ome.model.screen.Plate", "Well": "ome.model.screen.Well",
    "WellSample": "ome.model.screen.WellSample", "FilesetJobLink": "ome.model.fs.FilesetJobLink",
    "DatasetImageLink": "ome.model.containers.DatasetImageLink",
    "ScreenPlateLink": "ome.model.screen.ScreenPlateLink",
    "CommentAnnotation": "ome.model.annotations.CommentAnnotation",
    "FilesetAnnotationLink": "ome.model.annotations.FilesetAnnotationLink",
    "JobOriginalFileLink": "ome.model.jobs.JobOriginalFileLink",
    "Project": "ome.model.containers.Project", "Dataset": "ome.model.containers.Dataset",
    "ProjectDatasetLink": "ome.model.containers.ProjectDatasetLink",
    "Screen": "ome.model.screen.Screen",
}
for _kind in port_api.IMPORT_JOB_CLASSES:
    ENTITY_TYPES[_kind] = "ome.model.jobs." + _kind
DATA_MIMETYPE = "application/octet-stream"   # the database default for OriginalFile.mimetype
PAGE = 500                                   # ids per `in (:ids)` page of the real adapter
FILESET_PAGE = 1000                          # its pages of Port.filesets (FILESET_PAGE_SIZE)
ENTRY_PAGE = 5000                            # its entries per answer (ENTRY_PAGE_SIZE)
ACTIVITY_QUERIES = 8                         # its queries per page of Port.activity
START_TIME = _dt.datetime(2026, 11, 27, 15, 58, 1, 123000, tzinfo=_dt.timezone.utc)
_TIME_FMT = "%Y-%m-%dT%H:%M:%S.%f"

SCHEMA = """
CREATE TABLE IF NOT EXISTS sim_meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS ExperimenterGroup (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE NOT NULL, permissions TEXT NOT NULL,
    binary_access TEXT);                                 -- config omero.policy.binary_access
CREATE TABLE IF NOT EXISTS Experimenter (
    id INTEGER PRIMARY KEY AUTOINCREMENT, omeName TEXT UNIQUE NOT NULL, admin INTEGER NOT NULL,
    privileges TEXT NOT NULL, binary_restricted INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS GroupExperimenterMap (
    id INTEGER PRIMARY KEY AUTOINCREMENT, parent INTEGER NOT NULL, child INTEGER NOT NULL,
    owner INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS Event (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, experimenter INTEGER,
    experimenterGroup INTEGER, type TEXT NOT NULL, session INTEGER);
CREATE TABLE IF NOT EXISTS EventLog (
    id INTEGER PRIMARY KEY AUTOINCREMENT, entityType TEXT NOT NULL, entityId INTEGER NOT NULL,
    action TEXT NOT NULL, event INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS EventLog_entity ON EventLog (entityType, entityId);
CREATE TABLE IF NOT EXISTS Project (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT,
    owner_id INTEGER, group_id INTEGER, creation_id INTEGER);
CREATE TABLE IF NOT EXISTS Dataset (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT,
    owner_id INTEGER, group_id INTEGER, creation_id INTEGER);
CREATE TABLE IF NOT EXISTS ProjectDatasetLink (id INTEGER PRIMARY KEY AUTOINCREMENT,
    parent INTEGER, child INTEGER);
CREATE TABLE IF NOT EXISTS Screen (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT,
    owner_id INTEGER, group_id INTEGER, creation_id INTEGER);
CREATE TABLE IF NOT EXISTS Plate (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT,
    owner_id INTEGER, group_id INTEGER, creation_id INTEGER);
CREATE TABLE IF NOT EXISTS ScreenPlateLink (id INTEGER PRIMARY KEY AUTOINCREMENT,
    parent INTEGER, child INTEGER);
CREATE TABLE IF NOT EXISTS Well (id INTEGER PRIMARY KEY AUTOINCREMENT, plate INTEGER,
    "row" INTEGER, "column" INTEGER, owner_id INTEGER, group_id INTEGER);
CREATE TABLE IF NOT EXISTS WellSample (id INTEGER PRIMARY KEY AUTOINCREMENT, well INTEGER,
    image INTEGER, owner_id INTEGER, group_id INTEGER);
CREATE TABLE IF NOT EXISTS Image (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT,
    series INTEGER, fileset INTEGER, owner_id INTEGER, group_id INTEGER, creation_id INTEGER);
CREATE INDEX IF NOT EXISTS Image_fileset ON Image (fileset);
CREATE TABLE IF NOT EXISTS DatasetImageLink (id INTEGER PRIMARY KEY AUTOINCREMENT,
    parent INTEGER, child INTEGER);
CREATE TABLE IF NOT EXISTS Fileset (id INTEGER PRIMARY KEY AUTOINCREMENT,
    templatePrefix TEXT NOT NULL, owner_id INTEGER, group_id INTEGER, creation_id INTEGER);
CREATE TABLE IF NOT EXISTS FilesetEntry (id INTEGER PRIMARY KEY AUTOINCREMENT,
    fileset INTEGER NOT NULL, originalFile INTEGER NOT NULL, clientPath TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS FilesetEntry_fileset ON FilesetEntry (fileset);
CREATE INDEX IF NOT EXISTS FilesetEntry_clientPath ON FilesetEntry (clientPath);
CREATE TABLE IF NOT EXISTS OriginalFile (id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL, name TEXT NOT NULL, size INTEGER, hash TEXT, hasher TEXT,
    mimetype TEXT, repo TEXT, owner_id INTEGER, group_id INTEGER, creation_id INTEGER);
CREATE INDEX IF NOT EXISTS OriginalFile_path ON OriginalFile (path, name);
CREATE TABLE IF NOT EXISTS Job (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL,
    username TEXT, groupname TEXT, type TEXT, message TEXT NOT NULL, status TEXT NOT NULL,
    submitted TEXT, scheduledFor TEXT, started TEXT, finished TEXT,
    owner_id INTEGER, group_id INTEGER);
CREATE TABLE IF NOT EXISTS FilesetJobLink (id INTEGER PRIMARY KEY AUTOINCREMENT,
    parent INTEGER NOT NULL, child INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS FilesetJobLink_parent ON FilesetJobLink (parent);
CREATE TABLE IF NOT EXISTS JobOriginalFileLink (id INTEGER PRIMARY KEY AUTOINCREMENT,
    parent INTEGER NOT NULL, child INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS JobOriginalFileLink_parent ON JobOriginalFileLink (parent);
CREATE INDEX IF NOT EXISTS Fileset_templatePrefix ON Fileset (templatePrefix);
CREATE INDEX IF NOT EXISTS WellSample_image ON WellSample (image);
CREATE INDEX IF NOT EXISTS DatasetImageLink_child ON DatasetImageLink (child);
CREATE INDEX IF NOT EXISTS FilesetEntry_originalFile ON FilesetEntry (originalFile);
CREATE TABLE IF NOT EXISTS Annotation (id INTEGER PRIMARY KEY AUTOINCREMENT,
    discriminator TEXT NOT NULL, ns TEXT, textValue TEXT, owner_id INTEGER, group_id INTEGER);
CREATE TABLE IF NOT EXISTS FilesetAnnotationLink (id INTEGER PRIMARY KEY AUTOINCREMENT,
    parent INTEGER NOT NULL, child INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS FilesetAnnotationLink_parent ON FilesetAnnotationLink (parent);
-- simulation bookkeeping (no OMERO counterpart): where each import stands, live ImportProcesses
CREATE TABLE IF NOT EXISTS sim_import (fileset INTEGER PRIMARY KEY, transfer TEXT NOT NULL,
    outcome TEXT NOT NULL, steps_done INTEGER NOT NULL, planned_images INTEGER NOT NULL,
    spw INTEGER NOT NULL, target_type TEXT, target_id INTEGER, uploaded INTEGER NOT NULL);
-- sessions (a servant's identity category is its session's uuid: omero.util.ServantHolder) and
-- the ImportProcesses of ManagedRepositoryI's ProcessContainer (never removed, only closed)
CREATE TABLE IF NOT EXISTS sim_session (uuid TEXT PRIMARY KEY, user_id INTEGER NOT NULL,
    group_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sim_process (id INTEGER PRIMARY KEY AUTOINCREMENT,
    fileset INTEGER NOT NULL, session TEXT NOT NULL, group_id INTEGER NOT NULL,
    closed INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS sim_source (originalFile INTEGER PRIMARY KEY, source BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS sim_prefix_counter (base TEXT PRIMARY KEY, next_index INTEGER NOT NULL);
"""


def _fmt(when: _dt.datetime) -> str:
    return when.astimezone(_dt.timezone.utc).strftime(_TIME_FMT)


@functools.lru_cache(maxsize=4096)
def _parse(text: Optional[str]) -> Optional[_dt.datetime]:
    if text is None:
        return None
    return _dt.datetime.strptime(text, _TIME_FMT).replace(tzinfo=_dt.timezone.utc)


def _pages(n: int, page: Optional[int] = None) -> int:
    """Round trips of one paged query over n ids, pages of `page` (default PAGE, read at call
    time) ids; at least one call is made."""
    return max(1, math.ceil(n / (page or PAGE)))


def file_hash(path: str, hasher: str = "SHA1-160") -> str:
    """The hash OMERO would store for the bytes at `path`, streamed (omero-common ome.util.checksum)."""
    if hasher == "File-Size-64":
        return os.path.getsize(path).to_bytes(8, "little").hex()
    algorithms = {"SHA1-160": hashlib.sha1, "MD5-128": hashlib.md5}
    if hasher not in algorithms:
        raise ValueError("the simulated server hashes with SHA1-160, MD5-128 or File-Size-64, not %r"
                         % hasher)
    digest = algorithms[hasher]()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def client_path_of(path: str) -> str:
    """FilesetEntry.clientPath as the Java importer stores it: the client's absolute (not canonical)
    path, every component through the default path rules, without the leading '/'
    (omero_cli_ext.pathrules, from omero-blitz ClientFilePathTransformer / MakePathComponentSafe)."""
    return pathrules.client_path(path)


class SimServer:
    """A simulated OMERO server: state in <root>/sim.sqlite (so several processes share it:
    the CLI under test, the fake importer, the test), ManagedRepository at <root>/ManagedRepository."""

    def __init__(self, root: str, repo_uuid: Optional[str] = None):
        self.root = os.path.abspath(root)
        self.repo_dir = os.path.join(self.root, "ManagedRepository")
        os.makedirs(self.repo_dir, exist_ok=True)
        self._db = sqlite3.connect(os.path.join(self.root, "sim.sqlite"), timeout=60,
                                   isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout = 60000")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._depth = 0
        self._dir_cache: set = set()
        self._db.executescript("BEGIN IMMEDIATE;" + SCHEMA + pixels.PIXELS_SCHEMA + "COMMIT;")
        with self.transaction():
            if self._meta("uuid") is None:
                self._init_state(repo_uuid or str(_uuid.uuid4()))
        self.uuid = self._meta("uuid")

    # --- plumbing -----------------------------------------------------------------------------

    def _init_state(self, repo_uuid: str) -> None:
        self._set_meta("uuid", repo_uuid)
        self._set_meta("now", _fmt(START_TIME))
        self._set_meta("round_trips", "0")
        self._set_meta("binary_access", "")
        # the repository root OriginalFile: mimetype Repository, hash = repo UUID (ManagedRepositoryI)
        self._db.execute("INSERT INTO OriginalFile (path, name, hash, mimetype, repo) "
                         "VALUES ('/', 'ManagedRepository', ?, ?, NULL)",
                         (repo_uuid, port_api.MIMETYPE_REPOSITORY))
        system = self._db.execute("INSERT INTO ExperimenterGroup (name, permissions) "
                                  "VALUES ('system', 'rw----')").lastrowid
        root = self._db.execute("INSERT INTO Experimenter (omeName, admin, privileges, "
                                "binary_restricted) VALUES ('root', 1, ?, 0)",
                                (",".join(sorted(ADMIN_PRIVILEGES)),)).lastrowid
        self._db.execute("INSERT INTO GroupExperimenterMap (parent, child, owner) VALUES (?, ?, 1)",
                         (system, root))

    def _meta(self, key: str) -> Optional[str]:
        row = self._db.execute("SELECT value FROM sim_meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO sim_meta (key, value) VALUES (?, ?)", (key, value))

    @contextmanager
    def transaction(self):
        """One SQLite write transaction; nested uses join the outer one (bulk building)."""
        if self._depth:
            self._depth += 1
            try:
                yield self._db
            finally:
                self._depth -= 1
            return
        self._db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            self._db.execute("COMMIT")
        finally:
            self._depth = 0
            self._dir_cache.clear()

    def query(self, sql: str, params: Sequence = ()) -> list:
        """Read rows directly (tests assert on the model tables)."""
        return self._db.execute(sql, params).fetchall()

    def close(self) -> None:
        self._db.close()

    # --- clock ---------------------------------------------------------------------------------
    def now(self) -> _dt.datetime:
        return _parse(self._meta("now"))

    def advance(self, seconds: float) -> None:
        with self.transaction():
            self._set_meta("now", _fmt(self.now() + _dt.timedelta(seconds=seconds)))

    def set_time(self, when: _dt.datetime) -> None:
        if when.tzinfo is None:
            raise ValueError("set_time needs an aware datetime (the simulated clock is UTC)")
        with self.transaction():
            self._set_meta("now", _fmt(when))

    def set_reported_root(self, path: Optional[str]) -> None:
        """The repository root ports report (the server host's path, maybe absent on the client's
        host); None: the real directory."""
        with self.transaction():
            self._set_meta("reported_root", path or "")

    # --- round trips ---------------------------------------------------------------------------
    @property
    def round_trips(self) -> int:
        return int(self._meta("round_trips"))

    def reset_round_trips(self) -> None:
        with self.transaction():
            self._set_meta("round_trips", "0")

    def _count(self, n: int) -> None:
        with self.transaction():
            self._db.execute("UPDATE sim_meta SET value = CAST(value AS INTEGER) + ? "
                             "WHERE key = 'round_trips'", (n,))

    # --- events --------------------------------------------------------------------------------
    def _event(self, user_id: Optional[int], group_id: Optional[int], type_: str = "User",
               session: Optional[int] = None) -> int:
        """An Event; `session` is the Session it happened in (Event.session, meta.ome.xml)."""
        return self._db.execute(
            "INSERT INTO Event (time, experimenter, experimenterGroup, type, session) "
            "VALUES (?, ?, ?, ?, ?)", (_fmt(self.now()), user_id, group_id, type_, session)).lastrowid

    def _log(self, event: int, kind: str, ids: Iterable[int], action: str) -> None:
        self._db.executemany(
            "INSERT INTO EventLog (entityType, entityId, action, event) VALUES (?, ?, ?, ?)",
            [(ENTITY_TYPES[kind], i, action, event) for i in ids])

    # --- users and groups ----------------------------------------------------------------------
    def add_group(self, name: str, perms: str = "rw----") -> int:
        if perms not in port_api.GROUP_LEVELS.values():
            raise ValueError("group permissions must be one of %s" % sorted(port_api.GROUP_LEVELS.values()))
        with self.transaction():
            return self._db.execute("INSERT INTO ExperimenterGroup (name, permissions) VALUES (?, ?)",
                                    (name, perms)).lastrowid

    def add_user(self, name: str, groups: list, *, admin: bool = False,
                 privileges: Optional[set] = None, binary_restricted: bool = False,
                 leads: Sequence[str] = ()) -> int:
        """admin=True with privileges None is a full admin; with a subset, a restricted admin.
        The first group is the default group. `leads`: groups (among `groups`) of which the user
        is an owner (a PI: GroupExperimenterMap.owner)."""
        if set(leads) - set(groups):
            raise ValueError("a group leader must be a member of the groups led")
        if privileges is not None and not admin:
            raise ValueError("privileges are only for admins")
        unknown = set(privileges or ()) - ADMIN_PRIVILEGES
        if unknown:
            raise ValueError("unknown AdminPrivilege values: %s" % sorted(unknown))
        privs = (ADMIN_PRIVILEGES if privileges is None else frozenset(privileges)) if admin else ()
        with self.transaction():
            uid = self._db.execute(
                "INSERT INTO Experimenter (omeName, admin, privileges, binary_restricted) "
                "VALUES (?, ?, ?, ?)",
                (name, int(admin), ",".join(sorted(privs)), int(binary_restricted))).lastrowid
            for group in groups:
                self._db.execute("INSERT INTO GroupExperimenterMap (parent, child, owner) "
                                 "VALUES (?, ?, ?)", (self._group_id(group), uid, int(group in leads)))
            return uid

    def _group_id(self, name: str) -> int:
        row = self._db.execute("SELECT id FROM ExperimenterGroup WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise KeyError("no group %r" % name)
        return row[0]

    def _user_row(self, name: str) -> tuple:
        row = self._db.execute("SELECT id, omeName, admin, privileges, binary_restricted "
                               "FROM Experimenter WHERE omeName = ?", (name,)).fetchone()
        if row is None:
            raise KeyError("no user %r" % name)
        return row

    def _member_groups(self, user_id: int) -> list:
        return [r[0] for r in self._db.execute(
            "SELECT parent FROM GroupExperimenterMap WHERE child = ? ORDER BY id", (user_id,))]

    def _owner_and_group(self, owner: str, group: Optional[str]) -> tuple:
        uid = self._user_row(owner)[0]
        groups = self._member_groups(uid)
        gid = self._group_id(group) if group else groups[0]
        if gid not in groups:
            raise ValueError("%s is not a member of group %s" % (owner, group))
        return uid, gid

    def set_binary_access(self, restricted: bool, *, group: Optional[str] = None) -> None:
        """omero.policy.binary_access: restrict downloads server-wide or per group (for non-owners)."""
        value = "-read" if restricted else ""
        with self.transaction():
            if group is None:
                self._set_meta("binary_access", value)
            else:
                self._db.execute("UPDATE ExperimenterGroup SET binary_access = ? WHERE id = ?",
                                 (value or None, self._group_id(group)))

    # --- containers ----------------------------------------------------------------------------
    def _add_container(self, table: str, name: str, owner: str, group: Optional[str]) -> int:
        with self.transaction():
            uid, gid = self._owner_and_group(owner, group)
            ev = self._event(uid, gid)
            oid = self._db.execute("INSERT INTO %s (name, owner_id, group_id, creation_id) "
                                   "VALUES (?, ?, ?, ?)" % table, (name, uid, gid, ev)).lastrowid
            self._log(ev, table, [oid], "INSERT")
            return oid

    def add_project(self, name, owner, group=None) -> int:
        return self._add_container("Project", name, owner, group)

    def add_dataset(self, name, owner, group=None, project: Optional[int] = None) -> int:
        with self.transaction():
            did = self._add_container("Dataset", name, owner, group)
            if project is not None:
                self._db.execute("INSERT INTO ProjectDatasetLink (parent, child) VALUES (?, ?)",
                                 (project, did))
            return did

    def add_screen(self, name, owner, group=None) -> int:
        return self._add_container("Screen", name, owner, group)

    # --- imports -------------------------------------------------------------------------------
    def import_fileset(self, owner: str, files: list, *, transfer: str = "upload",
                       group: Optional[str] = None, target: Optional[tuple] = None,
                       spw: bool = False, images: int = 1, outcome: str = "ok",
                       steps: Optional[int] = None, hasher: str = "SHA1-160",
                       session: Optional[str] = None) -> int:
        """Import `files` (client paths that exist) the way the Java importer and the server would,
        up to `outcome`: "ok" (after `steps` of the 5 server steps, all by default, and the
        request's cleanup), "server-failure" (ghost: uploaded, UploadJob Finished, no images, error
        in the log) or "client-death" (UploadJob not Finished, the first half of the files stored,
        the next one partially; its ImportProcess never closed). The importer closes its
        ImportProcess right after verifyUpload (ImportLibrary). `session`: the importer's session
        (a port's `session_login()[2]`); None: a session of its own, as another login."""
        if outcome not in OUTCOMES:
            raise ValueError("outcome must be one of %s" % (OUTCOMES,))
        with self.transaction():
            fid = self.create_import(owner, files, transfer=transfer, group=group, target=target,
                                     spw=spw, images=images, hasher=hasher, session=session)
            if outcome == "client-death":
                half = len(files) // 2
                for index in range(half):
                    self.store_file(fid, index)
                self.store_file(fid, half, partial=True)
                self._db.execute("UPDATE sim_import SET outcome = 'client-death' WHERE fileset = ?",
                                 (fid,))
                return fid
            for index in range(len(files)):
                self.store_file(fid, index)
            self.verify_upload(fid)
            self.close_import_process(fid)
            if outcome == "server-failure":
                self.fail_import(fid, "Failure response on import! (simulated server-side failure)")
            else:
                self.advance_import(fid, len(IMPORT_STEPS) if steps is None else steps)
            return fid

    def create_import(self, owner: str, files: Sequence[str], *, transfer: str = "upload",
                      group: Optional[str] = None, target: Optional[tuple] = None,
                      spw: bool = False, images: int = 1, hasher: str = "SHA1-160",
                      thumbnails: bool = True, session: Optional[str] = None) -> int:
        """ManagedRepository.importFileset: every row exists before any byte is sent; an
        ImportProcess is registered in the importer's `session` (None: a new session of the
        owner) and added to the process container; the Fileset's creation Event happens in that
        session (Event.session). Returns the fileset id."""
        if transfer not in TRANSFERS:
            raise ValueError("transfer must be one of %s" % (TRANSFERS,))
        if not files:
            raise ValueError("a fileset needs at least one file")
        if target is not None and target[0] not in ("Dataset", "Screen"):
            raise ValueError("target must be ('Dataset', id) or ('Screen', id)")
        with self.transaction():
            uid, gid = self._owner_and_group(owner, group)
            sources = [os.path.abspath(f) for f in files]
            client_paths = [client_path_of(f) for f in files]
            prefix = self._template_prefix(owner, uid)
            # the clientPaths are sanitised already: the names below the prefix follow them
            rel_paths = [pathrules.safe_path(r) for r in _paths_below_common_root(client_paths)]
            if session is None:
                session = self.open_session(owner, group)
            ev = self._event(uid, gid, "Import", self.session_number(session))
            fid = self._db.execute(
                "INSERT INTO Fileset (templatePrefix, owner_id, group_id, creation_id) "
                "VALUES (?, ?, ?, ?)", (prefix, uid, gid, ev)).lastrowid
            self._log(ev, "Fileset", [fid], "INSERT")
            self._make_dirs([prefix + os.path.dirname(r) for r in rel_paths], uid, gid, ev)
            of_ids, fe_ids = [], []
            for source, client_path, rel in zip(sources, client_paths, rel_paths):
                path, name = prefix + os.path.dirname(rel), os.path.basename(rel)
                of_ids.append(self._db.execute(
                    "INSERT INTO OriginalFile (path, name, hasher, mimetype, repo, owner_id, "
                    "group_id, creation_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (path.rstrip("/") + "/", name, hasher, DATA_MIMETYPE, self.uuid, uid, gid, ev)
                ).lastrowid)
                self._db.execute("INSERT INTO sim_source (originalFile, source) VALUES (?, ?)",
                                 (of_ids[-1], os.fsencode(source)))
                fe_ids.append(self._db.execute(
                    "INSERT INTO FilesetEntry (fileset, originalFile, clientPath) VALUES (?, ?, ?)",
                    (fid, of_ids[-1], client_path)).lastrowid)
            self._log(ev, "OriginalFile", of_ids, "INSERT")
            self._log(ev, "FilesetEntry", fe_ids, "INSERT")
            # the import log beside the prefix, created empty (ManagedRepositoryI.suggestImportPaths)
            log_path, log_name = os.path.split(prefix.rstrip("/") + ".log")
            log_id = self._db.execute(
                "INSERT INTO OriginalFile (path, name, size, mimetype, repo, owner_id, group_id, "
                "creation_id) VALUES (?, ?, 0, ?, ?, ?, ?, ?)",
                (log_path + "/", log_name, port_api.MIMETYPE_IMPORT_LOG, self.uuid, uid, gid, ev)
            ).lastrowid
            on_disk = os.path.join(self.repo_dir, log_path, log_name)
            open(on_disk, "wb").close()
            made = self.now().timestamp()     # written by the server, on the server's clock
            os.utime(on_disk, (made, made))
            self._log(ev, "OriginalFile", [log_id], "INSERT")
            self._create_jobs(fid, log_id, uid, gid, ev, thumbnails)
            if transfer != "upload":
                ann = self._db.execute(
                    "INSERT INTO Annotation (discriminator, ns, textValue, owner_id, group_id) "
                    "VALUES ('CommentAnnotation', ?, ?, ?, ?)",
                    (port_api.NS_FILE_TRANSFER, TRANSFER_CLASSES[transfer], uid, gid)).lastrowid
                link = self._db.execute("INSERT INTO FilesetAnnotationLink (parent, child) "
                                        "VALUES (?, ?)", (fid, ann)).lastrowid
                self._log(ev, "CommentAnnotation", [ann], "INSERT")
                self._log(ev, "FilesetAnnotationLink", [link], "INSERT")
            self._db.execute(
                "INSERT INTO sim_import (fileset, transfer, outcome, steps_done, planned_images, "
                "spw, target_type, target_id, uploaded) VALUES (?, ?, 'ok', 0, ?, ?, ?, ?, 0)",
                (fid, transfer, images, int(spw), target[0] if target else None,
                 target[1] if target else None))
            self._db.execute("INSERT INTO sim_process (fileset, session, group_id) VALUES (?, ?, ?)",
                             (fid, session, gid))
            return fid

    def _create_jobs(self, fid, log_id, uid, gid, ev, thumbnails: bool) -> None:
        """UploadJob from the client, then the server's MetadataImportJob, PixelDataJob,
        ThumbnailGenerationJob (unless --no-thumbnails) and IndexingJob (ManagedRepositoryI.importFileset)."""
        user, group = self._names(uid, gid)
        now = _fmt(self.now())
        kinds = [k for k in port_api.IMPORT_JOB_CLASSES
                 if thumbnails or k != "ThumbnailGenerationJob"]
        for kind in kinds:
            jid = self._db.execute(
                "INSERT INTO Job (kind, username, groupname, type, message, status, submitted, "
                "scheduledFor, owner_id, group_id) VALUES (?, ?, ?, ?, '', 'Submitted', ?, ?, ?, ?)",
                (kind, user, group, kind, now, now, uid, gid)).lastrowid
            link = self._db.execute("INSERT INTO FilesetJobLink (parent, child) VALUES (?, ?)",
                                    (fid, jid)).lastrowid
            self._log(ev, kind, [jid], "INSERT")
            self._log(ev, "FilesetJobLink", [link], "INSERT")
            if kind == "UploadJob":
                jl = self._db.execute("INSERT INTO JobOriginalFileLink (parent, child) VALUES (?, ?)",
                                      (jid, log_id)).lastrowid
                self._log(ev, "JobOriginalFileLink", [jl], "INSERT")

    def _names(self, uid: int, gid: int) -> tuple:
        user = self._db.execute("SELECT omeName FROM Experimenter WHERE id = ?", (uid,)).fetchone()[0]
        group = self._db.execute("SELECT name FROM ExperimenterGroup WHERE id = ?", (gid,)).fetchone()[0]
        return user, group

    def _template_prefix(self, user: str, uid: int) -> str:
        """Expand `%user%_%userId%//%year%-%month%/%day%/%time%`; %time% is HH-mm-ss.SSS with the
        milliseconds counted up until the directory is new (ManagedRepositoryI.expandAndCreateTime)."""
        now = self.now()
        base = "%s_%d/%04d-%02d/%02d/%02d-%02d-%02d" % (user, uid, now.year, now.month, now.day,
                                                       now.hour, now.minute, now.second)
        row = self._db.execute("SELECT next_index FROM sim_prefix_counter WHERE base = ?",
                               (base,)).fetchone()
        index = row[0] if row else 0
        millis = now.microsecond // 1000
        while True:
            prefix = "%s.%03d/" % (base, millis + index)
            index += 1
            taken = os.path.lexists(os.path.join(self.repo_dir, prefix)) or self._db.execute(
                "SELECT 1 FROM Fileset WHERE templatePrefix = ?", (prefix,)).fetchone()
            if not taken:
                break
        self._db.execute("INSERT OR REPLACE INTO sim_prefix_counter (base, next_index) VALUES (?, ?)",
                         (base, index))
        return prefix

    def _make_dirs(self, dirs: Iterable[str], uid: int, gid: int, ev: int) -> None:
        """Create directories on disk and their `Directory` OriginalFile rows, one per level
        (RepositoryDaoImpl.makeDirs; a top-level directory has path "/", CheckedPath.getRelativePath)."""
        new_ids = []
        for d in dirs:
            parts = [p for p in d.split("/") if p]
            for depth in range(1, len(parts) + 1):
                rel = "/".join(parts[:depth])
                if rel in self._dir_cache:
                    continue
                self._dir_cache.add(rel)
                parent, name = "/".join(parts[:depth - 1]), parts[depth - 1]
                path = parent + "/" if parent else "/"
                exists = self._db.execute(
                    "SELECT 1 FROM OriginalFile WHERE path = ? AND name = ? AND mimetype = ?",
                    (path, name, port_api.MIMETYPE_DIRECTORY)).fetchone()
                if not exists:
                    new_ids.append(self._db.execute(
                        "INSERT INTO OriginalFile (path, name, mimetype, repo, owner_id, group_id, "
                        "creation_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (path, name, port_api.MIMETYPE_DIRECTORY, self.uuid, uid, gid, ev)).lastrowid)
                os.makedirs(os.path.join(self.repo_dir, rel), exist_ok=True)
        self._log(ev, "OriginalFile", new_ids, "INSERT")

    def _entries(self, fid: int) -> list:
        """(OriginalFile id, path, name, hasher, the client's real path as bytes) per used file."""
        return self._db.execute(
            "SELECT o.id, o.path, o.name, o.hasher, s.source FROM FilesetEntry fe "
            "JOIN OriginalFile o ON o.id = fe.originalFile "
            "JOIN sim_source s ON s.originalFile = o.id WHERE fe.fileset = ? ORDER BY fe.id",
            (fid,)).fetchall()

    def _import_row(self, fid: int) -> tuple:
        row = self._db.execute("SELECT transfer, outcome, steps_done, planned_images, spw, "
                               "target_type, target_id, uploaded FROM sim_import WHERE fileset = ?",
                               (fid,)).fetchone()
        if row is None:
            raise KeyError("no import of fileset %d" % fid)
        return row

    def store_file(self, fid: int, index: int, *, partial: bool = False,
                   fraction: float = 0.5) -> None:
        """Transfer used file `index` into the repository (RawFileStore writes, or the in-place
        transfer's link/copy). `partial` stops after `fraction` of the bytes, as a client still
        uploading or dead mid-upload: the bytes so far are on disk, OriginalFile.size/hash stay
        unset."""
        with self.transaction():
            transfer = self._import_row(fid)[0]
            of_id, path, name, hasher, source = self._entries(fid)[index]
            source = os.fsdecode(source)
            dest = os.path.join(self.repo_dir, path, name)
            if partial:
                if transfer in ("ln", "ln_rm", "ln_s"):
                    return   # a link is made whole or not at all
                with open(source, "rb") as src, open(dest, "wb") as out:
                    out.write(src.read(max(1, int(os.path.getsize(source) * fraction))))
                return
            if transfer == "ln_s":
                os.symlink(source, dest)
            elif transfer in ("ln", "ln_rm"):
                os.link(source, dest)
            else:
                shutil.copyfile(source, dest)
            size, digest = os.path.getsize(dest), file_hash(dest, hasher)
            if transfer in ("ln_rm", "cp_rm", "upload_rm"):
                os.unlink(source)
            uid, gid = self._db.execute("SELECT owner_id, group_id FROM Fileset WHERE id = ?",
                                        (fid,)).fetchone()
            self._db.execute("UPDATE OriginalFile SET size = ?, hash = ? WHERE id = ?",
                             (size, digest, of_id))
            self._log(self._event(uid, gid, "Import"), "OriginalFile", [of_id], "UPDATE")

    def verify_upload(self, fid: int) -> None:
        """ImportProcess.verifyUpload: the UploadJob (and only it) becomes Finished
        (ManagedImportProcessI.verifyUpload -> RepositoryDao.updateJob)."""
        with self.transaction():
            uid, gid, job = self._db.execute(
                "SELECT f.owner_id, f.group_id, j.id FROM Fileset f JOIN FilesetJobLink l "
                "ON l.parent = f.id JOIN Job j ON j.id = l.child "
                "WHERE f.id = ? AND j.kind = 'UploadJob'", (fid,)).fetchone()
            now = _fmt(self.now())
            self._db.execute("UPDATE Job SET status = 'Finished', message = 'Finished', "
                             "finished = ? WHERE id = ?", (now, job))
            self._log(self._event(uid, gid, "Import"), "UploadJob", [job], "UPDATE")
            self._db.execute("UPDATE sim_import SET uploaded = 1 WHERE fileset = ?", (fid,))

    def advance_import(self, fileset_id: int, steps: int = 1, *, quiet: bool = False) -> None:
        """End the next `steps` of the five server steps (ManagedImportRequestI.step). Each step
        writes its line to the import log on disk (none when `quiet`) and, in its `finally`, saves
        the log's size — one UPDATE EventLog on the log's OriginalFile, only when the size changed
        (a save of an unchanged object writes nothing). Step 1 (setId + saveToDB, one transaction)
        creates the images as it ends, nothing before; after the 5th step the request's cleanup
        writes a last line and saves the size once more: 0 to 6 updates in all."""
        with self.transaction():
            _, outcome, done, planned, spw, ttype, tid, uploaded = self._import_row(fileset_id)
            if outcome != "ok" or not uploaded:
                raise ValueError("fileset %d cannot advance (outcome %s, uploaded %s)"
                                 % (fileset_id, outcome, bool(uploaded)))
            if done + steps > len(IMPORT_STEPS):
                raise ValueError("fileset %d has done %d of %d steps" % (fileset_id, done,
                                                                         len(IMPORT_STEPS)))
            for step in range(done + 1, done + steps + 1):
                if not quiet:
                    self.grow_import_log(fileset_id, ["Step %d of %d: %s" % (
                        step, len(IMPORT_STEPS), IMPORT_STEPS[step - 1])])
                if step == 1:
                    self._create_images(fileset_id, planned, spw, ttype, tid)
                self._save_log_size(fileset_id)
                if step == len(IMPORT_STEPS):
                    self._cleanup_import(fileset_id)
            self._db.execute("UPDATE sim_import SET steps_done = ? WHERE fileset = ?",
                             (done + steps, fileset_id))

    def fail_import(self, fid: int, message: str) -> None:
        """A server-side failure in step 1: the error goes to the log, the step's `finally` saves
        the log size, the cleanup writes and saves once more; no images (a ghost fileset)."""
        with self.transaction():
            self.grow_import_log(fid, [message], level="ERROR")
            self._save_log_size(fid)
            self._cleanup_import(fid)
            self._db.execute("UPDATE sim_import SET outcome = 'server-failure' WHERE fileset = ?",
                             (fid,))

    def _cleanup_import(self, fid: int) -> None:
        """ManagedImportRequestI.cleanup: "Cleaning up import." (the marker that ends the log's
        appender), then setLogFileSize."""
        self.grow_import_log(fid, ["Cleaning up import."])
        self._save_log_size(fid)

    def _import_log(self, fid: int) -> tuple:
        """(OriginalFile id, size saved in the database, path on disk, owner id, group id)."""
        log_id, size, path, name, uid, gid = self._db.execute(
            "SELECT o.id, o.size, o.path, o.name, f.owner_id, f.group_id FROM Fileset f "
            "JOIN FilesetJobLink l ON l.parent = f.id JOIN Job j ON j.id = l.child "
            "AND j.kind = 'UploadJob' JOIN JobOriginalFileLink jl ON jl.parent = j.id "
            "JOIN OriginalFile o ON o.id = jl.child WHERE f.id = ?", (fid,)).fetchone()
        return log_id, size or 0, os.path.join(self.repo_dir, path, name), uid, gid

    def grow_import_log(self, fid: int, lines: Sequence[str] = ("Reading metadata...",),
                        *, level: str = "INFO") -> None:
        """Lines the server's logback appender writes to the import log while a step runs: the
        file on disk grows, the database is not touched (its size is saved when a step ends)."""
        on_disk = self._import_log(fid)[2]
        now = self.now()
        stamp = now.strftime("%Y-%m-%d %H:%M:%S,") + "%03d" % (now.microsecond // 1000)
        with open(on_disk, "a", encoding="utf-8") as log:
            for text in lines:
                log.write("%s %-5s [ome.services.blitz.repo.ManagedImportRequestI] %s\n"
                          % (stamp, level, text))
        os.utime(on_disk, (now.timestamp(), now.timestamp()))

    def _save_log_size(self, fid: int) -> None:
        """setLogFileSize / updateFileSize: the size on disk into OriginalFile.size, with an UPDATE
        EventLog, only when it changed."""
        log_id, saved, on_disk, uid, gid = self._import_log(fid)
        size = os.path.getsize(on_disk)
        if size != saved:
            self._db.execute("UPDATE OriginalFile SET size = ? WHERE id = ?", (size, log_id))
            self._log(self._event(uid, gid, "Import"), "OriginalFile", [log_id], "UPDATE")

    def _create_images(self, fid, planned: int, spw: bool, ttype, tid) -> None:
        uid, gid = self._db.execute("SELECT owner_id, group_id FROM Fileset WHERE id = ?",
                                    (fid,)).fetchone()
        main = self._entries(fid)[0][2]
        ev = self._event(uid, gid, "Import")
        image_ids = [self._db.execute(
            "INSERT INTO Image (name, series, fileset, owner_id, group_id, creation_id) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (main if planned == 1 else "%s [%d]" % (main, s), s, fid, uid, gid, ev)).lastrowid
            for s in range(planned)]
        self._log(ev, "Image", image_ids, "INSERT")
        if spw and pixels.spw_layout(main, planned):   # a FakeReader SPW name: its own plates
            pixels.create_spw(self, main, image_ids, uid, gid, ev, ttype, tid)
        elif spw:
            plate = self._db.execute("INSERT INTO Plate (name, owner_id, group_id, creation_id) "
                                     "VALUES (?, ?, ?, ?)", (main, uid, gid, ev)).lastrowid
            self._log(ev, "Plate", [plate], "INSERT")
            cols = max(1, math.ceil(math.sqrt(planned)))
            for n, image in enumerate(image_ids):
                well = self._db.execute('INSERT INTO Well (plate, "row", "column", owner_id, '
                                        'group_id) VALUES (?, ?, ?, ?, ?)',
                                        (plate, n // cols, n % cols, uid, gid)).lastrowid
                sample = self._db.execute("INSERT INTO WellSample (well, image, owner_id, group_id) "
                                          "VALUES (?, ?, ?, ?)", (well, image, uid, gid)).lastrowid
                self._log(ev, "Well", [well], "INSERT")
                self._log(ev, "WellSample", [sample], "INSERT")
            if ttype == "Screen":
                link = self._db.execute("INSERT INTO ScreenPlateLink (parent, child) VALUES (?, ?)",
                                        (tid, plate)).lastrowid
                self._log(ev, "ScreenPlateLink", [link], "INSERT")
        elif ttype == "Dataset":
            links = [self._db.execute("INSERT INTO DatasetImageLink (parent, child) VALUES (?, ?)",
                                      (tid, image)).lastrowid for image in image_ids]
            self._log(ev, "DatasetImageLink", links, "INSERT")

    def import_log_id(self, fileset_id: int) -> int:
        """The import log's OriginalFile id (what IMPORT_STARTED prints as Logfile)."""
        return self._db.execute(
            "SELECT jl.child FROM FilesetJobLink l JOIN Job j ON j.id = l.child "
            "AND j.kind = 'UploadJob' JOIN JobOriginalFileLink jl ON jl.parent = j.id "
            "WHERE l.parent = ?", (fileset_id,)).fetchone()[0]

    def import_result(self, fileset_id: int) -> dict:
        """The ImportResponse objects by class: {"Plate": [...], "Image": [...]} (Plate only for SPW)."""
        images = [r[0] for r in self._db.execute(
            "SELECT id FROM Image WHERE fileset = ? ORDER BY id", (fileset_id,))]
        plates = [r[0] for r in self._db.execute(
            "SELECT DISTINCT w.plate FROM Image i JOIN WellSample ws ON ws.image = i.id "
            "JOIN Well w ON w.id = ws.well WHERE i.fileset = ? ORDER BY w.plate", (fileset_id,))]
        return {"Plate": plates, "Image": images} if plates else {"Image": images}

    def session_number(self, uuid: str) -> int:
        """The id of the session `uuid` (EventContext.sessionId, Event.session): its row id."""
        return self._db.execute("SELECT rowid FROM sim_session WHERE uuid = ?", (uuid,)).fetchone()[0]

    def open_session(self, user: str, group: Optional[str] = None) -> str:
        """A new session of `user` (a login): its uuid, the category of every servant it owns."""
        with self.transaction():
            uid, gid = self._owner_and_group(user, group)
            uuid = str(_uuid.uuid4())
            self._db.execute("INSERT INTO sim_session (uuid, user_id, group_id) VALUES (?, ?, ?)",
                             (uuid, uid, gid))
            return uuid

    def close_import_process(self, fileset_id: int) -> None:
        """ImportProcess.close: the servant is gone (its proxy raises ObjectNotExistException), but
        the process stays in ManagedRepositoryI's container, so listImports still lists it
        (ProcessContainer.removeProcess has no caller)."""
        with self.transaction():
            self._db.execute("UPDATE sim_process SET closed = 1 WHERE fileset = ?", (fileset_id,))

    # --- deletion ------------------------------------------------------------------------------
    def delete_fileset(self, fileset_id: int) -> None:
        """Delete2 on a Fileset: its images (and plates/wells), entries, files, log, jobs and
        annotations, and the files on disk (links are removed, never their targets)."""
        with self.transaction():
            uid, gid = self._db.execute("SELECT owner_id, group_id FROM Fileset WHERE id = ?",
                                        (fileset_id,)).fetchone()
            ev = self._event(uid, gid)
            q = self._db.execute
            images = [r[0] for r in q("SELECT id FROM Image WHERE fileset = ?", (fileset_id,))]
            marks = ",".join("?" * len(images))
            if images:
                wells = [r[0] for r in q("SELECT DISTINCT well FROM WellSample WHERE image IN (%s)"
                                         % marks, images)]
                plates = [r[0] for r in q("SELECT DISTINCT plate FROM Well WHERE id IN (%s)"
                                          % ",".join("?" * len(wells)), wells)] if wells else []
                q("DELETE FROM WellSample WHERE image IN (%s)" % marks, images)
                q("DELETE FROM DatasetImageLink WHERE child IN (%s)" % marks, images)
                if wells:
                    q("DELETE FROM Well WHERE id IN (%s)" % ",".join("?" * len(wells)), wells)
                for plate in plates:
                    q("DELETE FROM ScreenPlateLink WHERE child = ?", (plate,))
                    q("DELETE FROM Plate WHERE id = ?", (plate,))
                q("DELETE FROM Image WHERE id IN (%s)" % marks, images)
                self._log(ev, "Image", images, "DELETE")
            files = q("SELECT o.id, o.path, o.name FROM FilesetEntry fe JOIN OriginalFile o "
                      "ON o.id = fe.originalFile WHERE fe.fileset = ?", (fileset_id,)).fetchall()
            jobs = [r[0] for r in q("SELECT child FROM FilesetJobLink WHERE parent = ?",
                                    (fileset_id,))]
            logs = q("SELECT o.id, o.path, o.name FROM JobOriginalFileLink jl JOIN OriginalFile o "
                     "ON o.id = jl.child WHERE jl.parent IN (%s)" % ",".join("?" * len(jobs)),
                     jobs).fetchall()
            anns = [r[0] for r in q("SELECT child FROM FilesetAnnotationLink WHERE parent = ?",
                                    (fileset_id,))]
            q("DELETE FROM FilesetAnnotationLink WHERE parent = ?", (fileset_id,))
            q("DELETE FROM Annotation WHERE id IN (%s)" % ",".join("?" * len(anns)), anns)
            q("DELETE FROM JobOriginalFileLink WHERE parent IN (%s)" % ",".join("?" * len(jobs)),
              jobs)
            q("DELETE FROM FilesetJobLink WHERE parent = ?", (fileset_id,))
            q("DELETE FROM Job WHERE id IN (%s)" % ",".join("?" * len(jobs)), jobs)
            q("DELETE FROM FilesetEntry WHERE fileset = ?", (fileset_id,))
            for of_id, path, name in files + logs:
                q("DELETE FROM OriginalFile WHERE id = ?", (of_id,))
                q("DELETE FROM sim_source WHERE originalFile = ?", (of_id,))
                on_disk = os.path.join(self.repo_dir, path, name)
                if os.path.lexists(on_disk):
                    os.unlink(on_disk)
            self._log(ev, "OriginalFile", [f[0] for f in files + logs], "DELETE")
            q("DELETE FROM Fileset WHERE id = ?", (fileset_id,))
            q("DELETE FROM sim_import WHERE fileset = ?", (fileset_id,))   # sim_process stays
            self._log(ev, "Fileset", [fileset_id], "DELETE")

    # --- ports ---------------------------------------------------------------------------------
    def port(self, user: str, group: Optional[str] = None, *, session: Optional[str] = None,
             time_to_live_ms: int = 0, time_to_idle_ms: int = 0) -> "SimPort":
        """A ServerPort on a new session of `user` (in `group`, else the default group), or one
        joined to an existing `session` (its uuid, as `omero login -k` joins one). The port's
        session ends (on the simulated clock) `time_to_live_ms` after it started or
        `time_to_idle_ms` after its last call, 0 meaning never (SessionCache)."""
        if session is None:
            session = self.open_session(user, group)
        row = self._db.execute("SELECT user_id, group_id FROM sim_session WHERE uuid = ?",
                               (session,)).fetchone()
        if row is None:
            raise KeyError("no session %r" % session)
        return SimPort(self, row[0], row[1], session, time_to_live_ms=time_to_live_ms,
                       time_to_idle_ms=time_to_idle_ms)


def _paths_below_common_root(client_paths: Sequence[str]) -> list:
    """Each path relative to the client paths' common directory; the directory itself is not kept
    (ManagedRepositoryI.commonRoot + trimPaths with readers that need no parent directories)."""
    split = [p.split("/") for p in client_paths]
    common = 0
    while all(len(s) > common + 1 for s in split) and len({s[common] for s in split}) == 1:
        common += 1
    return ["/".join(s[common:]) for s in split]


def _fileset_round_trips(ids: Sequence[int], loaded: Mapping, image_counts: bool) -> int:
    """The adapter's Port.filesets: per page of FILESET_PAGE ids the fileset query, and when it
    found some: their transfer comments, entry counts, one query per page of entries
    (server.entry_pages, ENTRY_PAGE entries at most) and the image counts (unless skipped)."""
    trips = 0
    for page in port_api.batched(sorted(set(ids)), FILESET_PAGE):
        found = [loaded[i] for i in page if i in loaded]
        trips += 1
        if found:
            counts = {f.id: len(f.entries) for f in found if f.entries}
            trips += 2 + len(port_api.entry_pages(counts, ENTRY_PAGE)) + int(image_counts)
    return trips


class _Reader:
    """A RawFileStore on one repository file (follows the ln_s link, as the server's open does).
    A binary-restricted file opens (setFileId, size) and refuses each read: RawFileBean.read is
    where the server checks BinaryAccessPolicy (`sec.checkRestriction`)."""

    def __init__(self, server: SimServer, path: str, port: Optional["SimPort"] = None,
                 restricted: Optional[str] = None):
        self._server = server
        self._port = port
        self._restricted = restricted
        self._file = open(path, "rb")
        self.size = os.fstat(self._file.fileno()).st_size

    def read(self, offset: int, length: int) -> bytes:
        if self._port is not None:
            self._port._check_open()     # a call in the session: it must live, and it lives on
        self._server._count(1)
        if self._restricted:
            raise PermissionDenied("reading original file: " + self._restricted)
        return os.pread(self._file.fileno(), length, offset)

    def close(self) -> None:
        self._file.close()


class SimPort:
    """`omero_cli_ext.server.ServerPort` over a SimServer, as one user's session, with OMERO's read
    rules. Each call adds its round trips to the server's count (see docs/development.md)."""

    def __init__(self, server: SimServer, user_id: int, group_id: int, session: str, *,
                 time_to_live_ms: int = 0, time_to_idle_ms: int = 0):
        self._server = server
        self._session = session
        self._started = self._last_call = server.now()
        self._time_to_live = _dt.timedelta(milliseconds=time_to_live_ms)
        self._time_to_idle = _dt.timedelta(milliseconds=time_to_idle_ms)
        self._db = server._db
        self._uid = user_id
        self._gid = group_id
        row = self._db.execute("SELECT omeName, admin, privileges, binary_restricted FROM "
                               "Experimenter WHERE id = ?", (user_id,)).fetchone()
        self._name, self._admin = row[0], bool(row[1])
        self._privileges = frozenset(p for p in row[2].split(",") if p)
        self._binary_restricted = bool(row[3])
        self._groups = set(server._member_groups(user_id))
        self._led = {r[0] for r in self._db.execute(
            "SELECT parent FROM GroupExperimenterMap WHERE child = ? AND owner = 1", (user_id,))}
        self._closed = False

    # --- rules ---------------------------------------------------------------------------------
    def _readable_sql(self, alias: str) -> tuple:
        """SQL condition for rows `alias` the user reads with omero.group=-1: admins read all;
        leaders all of the groups they lead (private ones too); members all of non-private groups
        and their own in private ones (AllGroupsSecurityFilter)."""
        if self._admin:
            return "1", ()
        groups, led = sorted(self._groups), sorted(self._led)
        return ("({a}.group_id IN ({l}) OR ({a}.group_id IN ({m}) AND ({a}.owner_id = ? OR "
                "{a}.group_id IN (SELECT id FROM ExperimenterGroup WHERE permissions != 'rw----'))))"
                .format(a=alias, m=",".join("?" * len(groups)), l=",".join("?" * len(led))),
                tuple(led) + tuple(groups) + (self._uid,))

    def _can_edit(self, owner_id: int, group_id: int, perms: Optional[str] = None) -> bool:
        """Edit, link, delete: admins, owners, leaders of the object's group (BasicACLVoter gives
        a leader every scope), members of read-write groups. `perms`: the group's permissions,
        when the caller has read them already."""
        if self._admin or owner_id == self._uid or group_id in self._led:
            return True
        if perms is None:
            perms = self._db.execute("SELECT permissions FROM ExperimenterGroup WHERE id = ?",
                                     (group_id,)).fetchone()[0]
        return group_id in self._groups and perms == "rwrw--"

    def _binary_restricted_for(self, owner_id: int, group_id: int, name: str,
                               policies: Optional[Mapping] = None) -> bool:
        """BinaryAccessPolicy: never for owners/admins (they can edit), never for *.txt files.
        `policies` (from `_binary_policies`) spares the look-ups when a call checks many files."""
        if self._admin or owner_id == self._uid or group_id in self._led or name.endswith(".txt"):
            return False
        if policies is None:
            policies = self._binary_policies()
        return bool(self._binary_restricted or policies[None] or policies.get(group_id))

    def _binary_policies(self) -> dict:
        """omero.policy.binary_access per group id, and server-wide under the key None."""
        policies = dict(self._db.execute("SELECT id, binary_access FROM ExperimenterGroup"))
        policies[None] = self._server._meta("binary_access")
        return policies

    def _need(self, privilege: str) -> None:
        if not (self._admin and privilege in self._privileges):
            raise PermissionDenied("%s lacks the %s privilege" % (self._name, privilege))

    def _check_open(self) -> None:
        if self._closed:
            raise port_api.ServerError("the session of %s is closed" % self._name)
        now = self._server.now()
        if (self._time_to_live and now - self._started > self._time_to_live) or \
                (self._time_to_idle and now - self._last_call > self._time_to_idle):
            self._closed = True       # SessionCache.isInvalid: timeToLive, then timeToIdle
            raise port_api.ServerError("the session of %s expired; log in again" % self._name)
        self._last_call = now

    # --- who and where -------------------------------------------------------------------------
    def repository(self) -> Repository:
        """The root as the server reports it: its own directory, unless `set_reported_root` says
        the server host's path does not exist here (a client on another machine)."""
        self._check_open()
        self._server._count(1)
        return Repository(uuid=self._server.uuid,
                          root=self._server._meta("reported_root") or self._server.repo_dir)

    def current_user(self) -> User:
        self._check_open()
        self._server._count(1)
        return self._user(self._uid, self._gid)

    def _user(self, uid: int, gid: Optional[int] = None) -> User:
        name, admin, privs = self._db.execute(
            "SELECT omeName, admin, privileges FROM Experimenter WHERE id = ?", (uid,)).fetchone()
        if gid is None:
            gid = self._server._member_groups(uid)[0]
        gname = self._db.execute("SELECT name FROM ExperimenterGroup WHERE id = ?", (gid,)).fetchone()[0]
        return User(id=uid, name=name, group_id=gid, group_name=gname, is_admin=bool(admin),
                    privileges=frozenset(p for p in privs.split(",") if p))

    def lookup_users(self, names: Sequence[str]) -> Mapping[str, User]:
        self._check_open()
        names = list(names)
        self._server._count(_pages(len(names)))
        found = {}
        for name in names:
            row = self._db.execute("SELECT id FROM Experimenter WHERE omeName = ?", (name,)).fetchone()
            if row:
                found[name] = self._user(row[0])
        return found

    def lookup_groups(self, names: Sequence[str]) -> Mapping[str, int]:
        """ExperimenterGroups are readable by every user (a system type)."""
        self._check_open()
        names = list(names)
        self._server._count(_pages(len(names)))
        return {name: gid for name, gid in self._db.execute(
            "SELECT name, id FROM ExperimenterGroup WHERE name IN (SELECT value FROM json_each(?))",
            (json.dumps(names),))}

    def server_time(self) -> _dt.datetime:
        """IConfig.getServerTime: the simulated clock."""
        self._check_open()
        self._server._count(1)
        return self._server.now()

    def sudo(self, user_name: str) -> "SimPort":
        """A session for `user_name`: with the Sudo privilege for anyone; a group leader for the
        members of the groups they lead, in such a group (SessionBean.createSessionWithTimeouts
        passes `groupsLed` to the session manager)."""
        self._check_open()
        self._server._count(1)
        try:
            target = self._server._user_row(user_name)[0]
        except KeyError:
            raise NotFound("no user %s" % user_name, [user_name]) from None
        if self._admin and "Sudo" in self._privileges:
            return self._server.port(user_name, time_to_idle_ms=port_api.SUDO_TIME_TO_IDLE_MS)
        shared = [g for g in self._server._member_groups(target) if g in self._led]
        if not shared:
            self._need("Sudo")
        group = self._db.execute("SELECT name FROM ExperimenterGroup WHERE id = ?",
                                 (shared[0],)).fetchone()[0]
        return self._server.port(user_name, group, time_to_idle_ms=port_api.SUDO_TIME_TO_IDLE_MS)

    # --- filesets ------------------------------------------------------------------------------
    # The reads below run a few set-based queries per page of PAGE ids (a page travels as one JSON
    # array parameter, expanded by json_each), as the real adapter does per `in (:ids)` page.
    _PAGE_IDS = "SELECT value FROM json_each(?)"

    def _readable_pages(self, ids: Iterable[int]) -> Iterable[list]:
        """The readable ones of `ids`, sorted, a page at a time (one query per page); the joins
        are those of `_load_filesets`, so that both agree on which filesets exist."""
        cond, params = self._readable_sql("f")
        for page in port_api.batched(sorted(set(ids)), PAGE):
            readable = [r[0] for r in self._db.execute(
                "SELECT f.id FROM Fileset f JOIN Experimenter u ON u.id = f.owner_id "
                "JOIN ExperimenterGroup g ON g.id = f.group_id JOIN Event e ON e.id = f.creation_id "
                "WHERE f.id IN (%s) AND %s ORDER BY f.id" % (self._PAGE_IDS, cond),
                (json.dumps(page),) + params)]
            if readable:
                yield readable

    def _load_filesets(self, ids: Sequence[int], image_counts: bool = True) -> dict:
        """Readable filesets by id, with entries, image counts (0 unless `image_counts`) and
        transfer (no round-trip count)."""
        cond, params = self._readable_sql("f")
        policies = None if self._admin else self._binary_policies()
        short_names = {v: k for k, v in TRANSFER_CLASSES.items()}
        result = {}
        for page in port_api.batched(sorted(set(ids)), PAGE):
            rows = self._db.execute(
                "SELECT f.id, f.templatePrefix, f.owner_id, u.omeName, f.group_id, g.name, "
                "g.permissions, e.time, "
                "%s, "
                "(SELECT a.textValue FROM FilesetAnnotationLink l JOIN Annotation a ON a.id = l.child "
                " WHERE l.parent = f.id AND a.ns = ? ORDER BY a.id LIMIT 1) "
                "FROM Fileset f JOIN Experimenter u ON u.id = f.owner_id "
                "JOIN ExperimenterGroup g ON g.id = f.group_id JOIN Event e ON e.id = f.creation_id "
                "WHERE f.id IN (%s) AND %s ORDER BY f.id" % (
                    "(SELECT count(*) FROM Image i WHERE i.fileset = f.id)" if image_counts else "0",
                    self._PAGE_IDS, cond),
                (port_api.NS_FILE_TRANSFER, json.dumps(page)) + params).fetchall()
            if not rows:
                continue
            entries: dict = {}
            for row in self._db.execute(
                    "SELECT fe.fileset, fe.clientPath, o.id, o.path, o.name, o.size, o.hash, "
                    "o.hasher, o.mimetype, o.repo, o.owner_id, o.group_id FROM FilesetEntry fe "
                    "JOIN OriginalFile o ON o.id = fe.originalFile WHERE fe.fileset IN (%s) "
                    "ORDER BY fe.id" % self._PAGE_IDS, (json.dumps([r[0] for r in rows]),)):
                of = port_api.OriginalFile(
                    id=row[2], path=row[3], name=row[4], size=row[5], hash=row[6], hasher=row[7],
                    mimetype=row[8], repo=row[9],
                    binary_restricted=self._binary_restricted_for(row[10], row[11], row[4], policies))
                entries.setdefault(row[0], []).append(port_api.FilesetEntry(row[1], of))
            for (fid, prefix, oid, oname, gid, gname, perms, created, nimg, transfer) in rows:
                result[fid] = port_api.Fileset(
                    id=fid, template_prefix=prefix, owner_id=oid, owner_name=oname, group_id=gid,
                    group_name=gname, group_perms=perms, entries=tuple(entries.get(fid, ())),
                    image_count=nimg, transfer=short_names.get(transfer, transfer),
                    created=_parse(created))
        return result

    def filesets(self, ids: Iterable[int], image_counts: bool = True
                 ) -> Mapping[int, port_api.Fileset]:
        """Round trips as the real adapter's (`_fileset_round_trips`); image_count is 0 unless
        `image_counts`, as there."""
        self._check_open()
        ids = list(ids)
        loaded = self._load_filesets(ids, image_counts)
        self._server._count(_fileset_round_trips(ids, loaded, image_counts))
        return loaded

    def filesets_of(self, refs: Sequence[tuple]) -> Mapping[tuple, tuple]:
        """Project->Dataset->Image->Fileset, Dataset->Image->Fileset, Image->Fileset,
        Screen->Plate->Well->WellSample->Image->Fileset, Plate->..., Fileset."""
        self._check_open()
        refs = list(refs)
        by_type: dict = {}
        for kind, oid in refs:
            if kind not in port_api.CONTAINER_TYPES:
                raise ValueError("cannot resolve filesets of %s" % kind)
            by_type.setdefault(kind, []).append(oid)
        self._server._count(sum(_pages(len(v)) for v in by_type.values()) or 1)
        paths = {
            "Fileset": "SELECT f.id, f.id FROM Fileset f WHERE f.id IN (%s)",
            "Image": "SELECT i.id, i.fileset FROM Image i WHERE i.id IN (%s)",
            "Dataset": "SELECT d.id, i.fileset FROM Dataset d LEFT JOIN DatasetImageLink dil "
                       "ON dil.parent = d.id LEFT JOIN Image i ON i.id = dil.child WHERE d.id IN (%s)",
            "Project": "SELECT p.id, i.fileset FROM Project p LEFT JOIN ProjectDatasetLink pdl "
                       "ON pdl.parent = p.id LEFT JOIN DatasetImageLink dil ON dil.parent = pdl.child "
                       "LEFT JOIN Image i ON i.id = dil.child WHERE p.id IN (%s)",
            "Plate": "SELECT p.id, i.fileset FROM Plate p LEFT JOIN Well w ON w.plate = p.id "
                     "LEFT JOIN WellSample ws ON ws.well = w.id LEFT JOIN Image i ON i.id = ws.image "
                     "WHERE p.id IN (%s)",
            "Screen": "SELECT s.id, i.fileset FROM Screen s LEFT JOIN ScreenPlateLink spl "
                      "ON spl.parent = s.id LEFT JOIN Well w ON w.plate = spl.child "
                      "LEFT JOIN WellSample ws ON ws.well = w.id "
                      "LEFT JOIN Image i ON i.id = ws.image WHERE s.id IN (%s)",
        }
        alias = {"Fileset": "f", "Image": "i", "Dataset": "d", "Project": "p", "Plate": "p",
                 "Screen": "s"}
        found: dict = {}   # readable container -> its fileset ids (readable or not)
        for kind, oids in by_type.items():
            cond, params = self._readable_sql(alias[kind])
            for page in port_api.batched(sorted(set(oids)), PAGE):
                for oid, fid in self._db.execute((paths[kind] % self._PAGE_IDS) + " AND " + cond,
                                                 (json.dumps(page),) + params):
                    fileset_ids = found.setdefault((kind, oid), set())
                    if fid is not None:
                        fileset_ids.add(fid)
        readable = {f for page in self._readable_pages(set().union(*found.values()))
                    for f in page}
        return {ref: tuple(sorted(found[ref] & readable)) for ref in refs if ref in found}

    def find_filesets(self, query: FilesetQuery) -> Sequence[port_api.Fileset]:
        self._check_open()
        sql = "SELECT f.id FROM Fileset f JOIN Event e ON e.id = f.creation_id WHERE 1"
        params: list = []
        if query.owner_id is not None:
            sql += " AND f.owner_id = ?"
            params.append(query.owner_id)
        if query.group_id is not None:
            sql += " AND f.group_id = ?"
            params.append(query.group_id)
        if query.since is not None:
            sql += " AND e.time >= ?"
            params.append(_fmt(query.since))
        if query.ids is not None:
            sql += " AND f.id IN (%s)" % self._PAGE_IDS
            params.append(json.dumps(list(query.ids)))
        cond, cparams = self._readable_sql("f")
        sql += " AND " + cond + " ORDER BY e.time DESC, f.id DESC"
        ids = [r[0] for r in self._db.execute(sql, params + list(cparams))]
        # the adapter: the id query (a page of query.ids at a time), then filesets()
        loaded = self._load_filesets(ids)
        self._server._count((1 if query.ids is None else _pages(len(set(query.ids))))
                            + _fileset_round_trips(ids, loaded, True))
        return [loaded[i] for i in ids]

    def filesets_by_client_paths(self, client_paths: Sequence[str], owner_id: int) -> Mapping[str, tuple]:
        """Only paths used by at least one of the owner's readable filesets appear."""
        self._check_open()
        paths = list(client_paths)
        self._server._count(_pages(len(paths)))
        cond, params = self._readable_sql("f")
        found: dict = {}
        for page in port_api.batched(paths, PAGE):
            for path, fid in self._db.execute(
                    "SELECT fe.clientPath, f.id FROM FilesetEntry fe JOIN Fileset f "
                    "ON f.id = fe.fileset WHERE fe.clientPath IN (%s) AND f.owner_id = ? AND %s "
                    "ORDER BY f.id" % (",".join("?" * len(page)), cond),
                    tuple(page) + (owner_id,) + params):
                if fid not in found.setdefault(path, ()):
                    found[path] = found[path] + (fid,)
        return found

    def activity(self, fileset_ids: Iterable[int]) -> Mapping[int, FilesetActivity]:
        """Round trips as the adapter's: per page of ids eight queries (filesets, upload jobs,
        jobs, image counts, import logs, job events, image events, used-file events), a ninth
        when the page has logs. A job's kind is UploadJob or, for every other subclass, Job (the adapter tells only
        UploadJobs apart)."""
        self._check_open()
        ids = list(fileset_ids)
        self._server._count(ACTIVITY_QUERIES * _pages(len(set(ids))))
        result = {}
        for page in self._readable_pages(ids):
            page_json = json.dumps(page)
            images = dict(self._db.execute(
                "SELECT fileset, count(*) FROM Image WHERE fileset IN (%s) GROUP BY fileset"
                % self._PAGE_IDS, (page_json,)))
            jobs: dict = {}
            for r in self._db.execute(
                    "SELECT l.parent, j.id, j.kind, j.status, j.submitted, j.started, j.finished, "
                    "j.message FROM FilesetJobLink l JOIN Job j ON j.id = l.child "
                    "WHERE l.parent IN (%s) ORDER BY l.parent, l.id" % self._PAGE_IDS, (page_json,)):
                kind = port_api.UPLOAD_JOB if r[2] == port_api.UPLOAD_JOB else port_api.OTHER_JOB
                jobs.setdefault(r[0], []).append(Job(
                    id=r[1], fileset_id=r[0], kind=kind, status=r[3], submitted=_parse(r[4]),
                    started=_parse(r[5]), finished=_parse(r[6]), message=r[7]))
            logs: dict = {}
            for fid, of_id, size, updated, updates, repo_path in self._db.execute(
                    "SELECT l.parent, o.id, o.size, max(e.time), count(e.id), o.path || o.name "
                    "FROM FilesetJobLink l "
                    "JOIN JobOriginalFileLink jl ON jl.parent = l.child "
                    "JOIN OriginalFile o ON o.id = jl.child "
                    "LEFT JOIN EventLog el ON el.entityType = ? AND el.entityId = o.id "
                    "AND el.action = 'UPDATE' LEFT JOIN Event e ON e.id = el.event "
                    "WHERE l.parent IN (%s) AND o.mimetype = ? "
                    "GROUP BY l.parent, o.id ORDER BY l.parent, min(l.id), min(jl.id)"
                    % self._PAGE_IDS,
                    (ENTITY_TYPES["OriginalFile"], page_json, port_api.MIMETYPE_IMPORT_LOG)):
                logs.setdefault(fid, ImportLog(fileset_id=fid, original_file_id=of_id,
                                               size=size or 0, updated=_parse(updated),
                                               updates=updates, repo_path=repo_path))
            if logs:
                self._server._count(1)   # the adapter's query of the logs' last updates
            last_events = self._last_events(page_json)
            for fid in page:
                result[fid] = FilesetActivity(
                    fileset_id=fid, jobs=tuple(jobs.get(fid, ())), image_count=images.get(fid, 0),
                    log=logs.get(fid), last_event=_parse(last_events.get(fid)))
        return result

    def _last_events(self, page_json: str) -> dict:
        """Fileset id -> time of the newest EventLog on the fileset, its used files, its jobs, their
        files (the import log) and its images, for the filesets of one page."""
        return dict(self._db.execute(
            "WITH page(id) AS (%s), "
            "kinds(kind, type) AS MATERIALIZED (SELECT key, value FROM json_each(?)), "
            "objects(fileset, type, id) AS ("
            " SELECT id, ?, id FROM page"
            " UNION ALL SELECT fe.fileset, ?, fe.originalFile FROM FilesetEntry fe"
            "  WHERE fe.fileset IN page"
            " UNION ALL SELECT l.parent, ?, jl.child FROM FilesetJobLink l"
            "  JOIN JobOriginalFileLink jl ON jl.parent = l.child WHERE l.parent IN page"
            " UNION ALL SELECT l.parent, k.type, j.id FROM FilesetJobLink l"
            "  JOIN Job j ON j.id = l.child JOIN kinds k ON k.kind = j.kind"
            "  WHERE l.parent IN page"
            " UNION ALL SELECT i.fileset, ?, i.id FROM Image i WHERE i.fileset IN page) "
            "SELECT o.fileset, max(e.time) FROM objects o "
            "JOIN EventLog el ON el.entityType = o.type AND el.entityId = o.id "
            "JOIN Event e ON e.id = el.event GROUP BY o.fileset" % self._PAGE_IDS,
            (page_json, json.dumps(ENTITY_TYPES), ENTITY_TYPES["Fileset"],
             ENTITY_TYPES["OriginalFile"], ENTITY_TYPES["OriginalFile"], ENTITY_TYPES["Image"])))

    def running_imports(self) -> Sequence[RunningImport]:
        """ManagedRepositoryI.listImports: every process the container ever held in the caller's
        groups (admins too: it filters by memberOfGroups; closed ones included, nothing is ever
        removed), less those whose fileset, loaded in the session's group, the caller cannot edit.
        Only proxies of the caller's own session answer (their identity category is the session
        uuid, the only one Glacier2 routes for it): another session's process is reported
        `own_session=False` with no call made; an own closed one raises ObjectNotExistException and
        is left out; an own live one names its fileset once verifyUpload made its handle."""
        self._check_open()
        listed = []
        for session, closed, fid, owner_id, group_id, perms, uploaded in self._db.execute(
                "SELECT p.session, p.closed, p.fileset, f.owner_id, f.group_id, g.permissions, "
                "s.uploaded FROM sim_process p LEFT JOIN Fileset f ON f.id = p.fileset "
                "LEFT JOIN ExperimenterGroup g ON g.id = f.group_id "
                "LEFT JOIN sim_import s ON s.fileset = p.fileset "
                "WHERE p.group_id IN (%s) ORDER BY p.id" % self._PAGE_IDS,
                (json.dumps(sorted(self._groups)),)).fetchall():
            # loadFilesets runs in the session's group under the security filter: a fileset of
            # another group, deleted, or unreadable (a private group's other member's) is not
            # returned, so canEdit is never asked and its process stays listed
            loadable = owner_id is not None and group_id == self._gid and (
                self._admin or group_id in self._led or owner_id == self._uid
                or perms != "rw----")
            if loadable and not self._can_edit(owner_id, group_id, perms):
                continue
            listed.append((session == self._session, closed, fid, bool(uploaded)))
        own_live = [uploaded for own, closed, _, uploaded in listed if own and not closed]
        # the adapter: listImports, then getHandle of this session's processes (pipelined: one
        # round trip) and, for those with a handle, the handles' getRequest (one more)
        self._server._count(1 + any(own for own, *_ in listed)
                            + any(own_live))
        # no upload offsets: the adapter never asks getUploadOffset(i) (ManagedImportProcessI
        # answers it only for an uploader still open, and the number of files is unknown before
        # the handle exists), so a real server's RunningImport has none either
        return [RunningImport(fileset_id=fid if uploaded else 0)
                if own else RunningImport(fileset_id=0, own_session=False)
                for own, closed, fid, uploaded in listed if not (own and closed)]

    def containers_of(self, fileset_ids: Iterable[int]) -> Mapping[int, tuple]:
        self._check_open()
        ids = list(fileset_ids)
        self._server._count(3 * _pages(len(set(ids))))   # the adapter: 3 queries per page
        result = {}
        for page in self._readable_pages(ids):
            # every container of the fileset's images; a plate's before a dataset's, then the
            # least (type, name, ...) tuple, as the adapter picks
            plates: dict = {}
            for fid, screen, plate in self._db.execute(
                    "SELECT DISTINCT i.fileset, s.name, p.name FROM Image i "
                    "JOIN WellSample ws ON ws.image = i.id JOIN Well w ON w.id = ws.well "
                    "JOIN Plate p ON p.id = w.plate LEFT JOIN ScreenPlateLink spl ON spl.child = p.id "
                    "LEFT JOIN Screen s ON s.id = spl.parent WHERE i.fileset IN (%s)"
                    % self._PAGE_IDS, (json.dumps(page),)):
                plates.setdefault(fid, []).append(
                    (("Screen", screen) if screen is not None else ()) + ("Plate", plate))
            datasets: dict = {}
            for fid, project, ds in self._db.execute(
                    "SELECT DISTINCT i.fileset, pr.name, d.name FROM Image i "
                    "JOIN DatasetImageLink dil ON dil.child = i.id JOIN Dataset d ON d.id = dil.parent "
                    "LEFT JOIN ProjectDatasetLink pdl ON pdl.child = d.id "
                    "LEFT JOIN Project pr ON pr.id = pdl.parent WHERE i.fileset IN (%s)"
                    % self._PAGE_IDS, (json.dumps(page),)):
                datasets.setdefault(fid, []).append(
                    (("Project", project) if project is not None else ()) + ("Dataset", ds))
            for fid in page:
                result[fid] = min(plates.get(fid) or datasets.get(fid) or [()])
        return result

    def images_of(self, fileset_ids: Iterable[int]) -> Mapping[int, tuple]:
        self._check_open()
        ids = list(fileset_ids)
        self._server._count(_pages(len(ids)))
        result: dict = {}
        for page in self._readable_pages(ids):
            images: dict = {}
            for fid, image in self._db.execute(
                    "SELECT fileset, id FROM Image WHERE fileset IN (%s) ORDER BY fileset, id"
                    % self._PAGE_IDS, (json.dumps(page),)):
                images.setdefault(fid, []).append(image)
            for fid in page:
                result[fid] = tuple(images.get(fid, ()))
        return result

    def plates_of(self, fileset_ids: Iterable[int]) -> Mapping[int, tuple]:
        self._check_open()
        ids = list(fileset_ids)
        self._server._count(_pages(len(ids)))
        result: dict = {}
        for page in self._readable_pages(ids):
            for fid, plate in self._db.execute(
                    "SELECT DISTINCT i.fileset, w.plate FROM WellSample ws JOIN Image i "
                    "ON i.id = ws.image JOIN Well w ON w.id = ws.well WHERE i.fileset IN (%s) "
                    "ORDER BY i.fileset, w.plate" % self._PAGE_IDS, (json.dumps(page),)):
                result[fid] = result.get(fid, ()) + (plate,)
        return result

    # --- files ---------------------------------------------------------------------------------
    def files_by_repo_paths(self, repo_paths: Sequence[str]) -> Mapping[str, tuple]:
        self._check_open()
        wanted = [p.lstrip("/") for p in repo_paths]
        self._server._count(_pages(len(wanted)))
        cond, params = self._readable_sql("o")

        def path_and_name(key: str) -> tuple:
            path, name = key.rsplit("/", 1) if "/" in key else ("", key)
            return (path + "/" if path else "/", name)
        rows: dict = {}   # (path, name) -> the first readable OriginalFile there
        for page in port_api.batched(sorted(set(wanted)), PAGE):
            pairs = [path_and_name(key) for key in page]
            for row in self._db.execute(
                    "WITH wanted(path, name) AS (VALUES %s) "
                    "SELECT o.id, o.path, o.name, o.size, o.hash, o.hasher, o.mimetype, o.repo, "
                    "(SELECT fe.fileset FROM FilesetEntry fe WHERE fe.originalFile = o.id LIMIT 1) "
                    "FROM wanted w JOIN OriginalFile o ON o.path = w.path AND o.name = w.name "
                    "WHERE o.repo = ? AND %s ORDER BY o.id" % (",".join(["(?, ?)"] * len(pairs)), cond),
                    tuple(v for pair in pairs for v in pair) + (self._server.uuid,) + params):
                rows.setdefault((row[1], row[2]), row)
        found = {}
        for key in wanted:
            row = rows.get(path_and_name(key))
            if row:
                found[key] = (row[8], port_api.OriginalFile(
                    id=row[0], path=row[1], name=row[2], size=row[3], hash=row[4], hasher=row[5],
                    mimetype=row[6], repo=row[7]))
        return found

    def file_sizes(self, original_file_ids: Sequence[int]) -> Mapping[int, int]:
        """RawFileStore.size of readable files, from the bytes on disk; as the adapter: one store,
        then setFileId + size per file, then close."""
        self._check_open()
        ids = list(original_file_ids)
        self._server._count(2 + 2 * len(ids))
        cond, params = self._readable_sql("o")
        sizes = {}
        for of_id in ids:
            row = self._db.execute("SELECT o.path, o.name FROM OriginalFile o WHERE o.id = ? "
                                   "AND o.mimetype != ? AND " + cond,
                                   (of_id, port_api.MIMETYPE_DIRECTORY) + params).fetchone()
            if row is None:
                continue
            try:
                sizes[of_id] = os.path.getsize(os.path.join(self._server.repo_dir, *row))
            except OSError:
                continue
        return sizes

    def open_original_file(self, original_file_id: int):
        self._check_open()
        self._server._count(1)
        cond, params = self._readable_sql("o")
        row = self._db.execute("SELECT o.path, o.name, o.owner_id, o.group_id FROM OriginalFile o "
                               "WHERE o.id = ? AND o.mimetype != ? AND " + cond,
                               (original_file_id, port_api.MIMETYPE_DIRECTORY) + params).fetchone()
        if row is None:
            raise NotFound("OriginalFile:%d not found" % original_file_id, [original_file_id])
        path, name, owner_id, group_id = row
        restricted = ("Download is restricted for OriginalFile:%d" % original_file_id
                      if self._binary_restricted_for(owner_id, group_id, name) else None)
        on_disk = os.path.join(self._server.repo_dir, path, name)
        try:
            return _Reader(self._server, on_disk, self, restricted)
        except OSError:   # PublicRepositoryI.checkId / RawFileBean: named, not a permission
            raise port_api.FileMissing("FileNotFound: %d" % original_file_id) from None

    # --- changes -------------------------------------------------------------------------------
    def session_login(self) -> tuple:
        """The simulated session: the fake importer joins it with `-k` (host and port unused)."""
        self._check_open()
        return ("sim", "4064", self._session)

    def session_id(self) -> int:
        """EventContext.sessionId of this port's session."""
        self._check_open()
        self._server._count(1)
        return self._server.session_number(self._session)

    def fileset_sessions(self, fileset_ids: Iterable[int]) -> Mapping[int, int]:
        """Per readable fileset, the Session its creation Event happened in."""
        self._check_open()
        found = {}
        for page in self._readable_pages(fileset_ids):
            self._server._count(1)
            found.update(self._db.execute(
                "SELECT f.id, e.session FROM Fileset f JOIN Event e ON e.id = f.creation_id "
                "WHERE f.id IN (%s) AND e.session IS NOT NULL" % self._PAGE_IDS,
                (json.dumps(page),)))
        return found

    def can_link(self, refs: Sequence[tuple]) -> Mapping[tuple, bool]:
        """Readable containers; linkable by admins, owners and read-write group members."""
        self._check_open()
        refs = list(refs)
        self._server._count(_pages(len(refs)) or 1)
        found = {}
        for kind, oid in refs:
            if kind not in ("Project", "Dataset", "Screen", "Plate"):
                raise port_api.ServerError("cannot link into a %s" % kind)
            cond, params = self._readable_sql("c")
            row = self._db.execute("SELECT c.owner_id, c.group_id FROM %s c WHERE c.id = ? AND %s"
                                   % (kind, cond), (oid,) + params).fetchone()
            if row is not None:
                found[(kind, oid)] = self._can_edit(row[0], row[1])
        return found

    def delete_filesets(self, ids: Sequence[int]) -> None:
        """One Delete2 request: all or nothing. Owners delete their own; others need DeleteOwned."""
        self._check_open()
        ids = list(ids)
        self._server._count(1)
        readable = self._load_filesets(ids)
        missing = [i for i in ids if i not in readable]
        if missing:
            raise NotFound("Fileset not found: %s" % ", ".join(map(str, missing)), missing)
        for fileset in readable.values():
            if fileset.owner_id != self._uid and fileset.group_id not in self._led:
                self._need("DeleteOwned")
        with self._server.transaction():
            for fid in ids:
                self._server.delete_fileset(fid)

    # --- pixels (tests/sim/pixels.py) -----------------------------------------------------------
    def images_and_plates_of(self, refs):
        return pixels.images_and_plates_of(self, refs)

    def pixels_info(self, image_ids):
        return pixels.pixels_info(self, image_ids)

    def rendering_settings(self, image_ids):
        return pixels.rendering_settings(self, image_ids)

    def plates(self, plate_ids):
        return pixels.plates(self, plate_ids)

    def open_pixels(self, image_id):
        return pixels.open_pixels(self, image_id)

    def pixels_readable(self, image_ids, concurrency=4):
        return pixels.pixels_readable(self, image_ids)

    def close(self) -> None:
        if not self._closed:
            self._server._count(1)
            self._closed = True
