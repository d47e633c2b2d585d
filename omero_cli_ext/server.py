"""The one port between omero-cli-ext and an OMERO server.

Cores take a `ServerPort` and plain values; only `omero_adapter.py` implements it on omero-py
(HQL, Ice), and `tests/sim/` implements it over a simulated server. Every method works on a batch
(ids, paths) so that an implementation can answer with one query per page, never one per object.

Names follow the OMERO model (ome/omero-model mappings): see docs/server-contract.md.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping, Optional, Protocol, Sequence, runtime_checkable

# JobStatus values (ome/omero-model mappings/jobs.ome.xml, enum JobStatus)
JOB_STATUSES = ("Submitted", "Resubmitted", "Queued", "Requeued", "Running",
                "Error", "Waiting", "Finished", "Cancelled")
# Job subclasses an import creates, in the order the server runs them (jobs.ome.xml)
IMPORT_JOB_CLASSES = ("UploadJob", "MetadataImportJob", "PixelDataJob",
                      "ThumbnailGenerationJob", "IndexingJob")
# Job.kind as the port tells it: the client's UploadJob, or "Job" for any other (server) job
UPLOAD_JOB = "UploadJob"
OTHER_JOB = "Job"
# ChecksumAlgorithm values (mappings/fs.ome.xml enum ChecksumAlgorithm)
HASHERS = ("Adler-32", "CRC-32", "MD5-128", "Murmur3-32", "Murmur3-128", "SHA1-160", "File-Size-64")
# Container classes an object reference may name
CONTAINER_TYPES = ("Project", "Dataset", "Image", "Screen", "Plate", "Fileset")
# Ids are Java longs (ome.model's Long id): a longer number names no object
MAX_ID = 2 ** 63 - 1


def parse_id(text: str) -> Optional[int]:
    """An object id written in ASCII digits that fits OMERO's ids (Java longs), else None
    (`int` would also take "٣", "1_000", " 7" and numbers no object has)."""
    if text.isascii() and text.isdigit() and int(text) <= MAX_ID:
        return int(text)
    return None
# Group permission levels as omero.model.PermissionsI strings
GROUP_LEVELS = {"private": "rw----", "read-only": "rwr---",
                "read-annotate": "rwra--", "read-write": "rwrw--"}
# Mimetypes the managed repository gives its own rows (omero-blitz ManagedRepositoryI)
MIMETYPE_DIRECTORY = "Directory"
MIMETYPE_REPOSITORY = "Repository"
MIMETYPE_IMPORT_LOG = "application/omero-log-file"
# `ServerPort.sudo` sessions have no lifetime and end after this long without a call (the
# adapter keeps them alive while the command runs)
SUDO_TIME_TO_IDLE_MS = 10 * 60 * 1000
# CommentAnnotation namespace naming the transfer of an in-place import
NS_FILE_TRANSFER = "openmicroscopy.org/omero/import/fileTransfer"


class ServerError(Exception):
    """A server call failed for a reason a user can act on (message is shown as is)."""


class NotFound(ServerError):
    """Objects that do not exist or that the current user cannot read (OMERO does not tell apart)."""

    def __init__(self, message: str, missing: Sequence[object] = ()):
        super().__init__(message)
        self.missing = tuple(missing)


class PermissionDenied(ServerError):
    """The current user lacks a privilege or right the call needs."""


class FileMissing(ServerError):
    """The OriginalFile's bytes are missing or unreadable in the server's repository (a real
    RawFileStore raises ResourceError for it: RawFileBean.size/read, the FileBuffer cannot open
    the file): not a permission the user lacks. SecurityViolation "FileNotFound"/"FileNotAccessible"
    (PublicRepositoryI.checkId) are the database's answers: no such row, or not readable (NotFound)."""


@dataclass(frozen=True)
class Repository:
    """The managed repository: its root directory on the server host and its UUID."""
    uuid: str
    root: str


@dataclass(frozen=True)
class User:
    """An Experimenter, with the admin privileges the server reports for the session's user."""
    id: int
    name: str
    group_id: int = -1
    group_name: str = ""
    is_admin: bool = False
    privileges: frozenset = frozenset()   # AdminPrivilege values, e.g. {"Sudo", "WriteManagedRepo"}
    # (id, name) of every group the user is a member of, the default first (lookup_users only)
    groups: tuple = field(default=(), compare=False)

    @property
    def is_full_admin(self) -> bool:
        return self.is_admin and "ModifyUser" in self.privileges and "Sudo" in self.privileges


@dataclass(frozen=True)
class OriginalFile:
    id: int
    path: str            # repository-relative directory, ending with "/"
    name: str
    size: Optional[int] = None
    hash: Optional[str] = None
    hasher: Optional[str] = None       # one of HASHERS, None when the server stored no hash
    mimetype: Optional[str] = None
    repo: Optional[str] = None
    binary_restricted: bool = False   # details.permissions isRestricted(BINARYACCESS)

    @property
    def repo_path(self) -> str:
        """Path relative to the repository root: path + name."""
        return self.path + self.name


@dataclass(frozen=True)
class FilesetEntry:
    client_path: str      # as stored: the client's absolute path without the leading "/"
    original_file: OriginalFile


@dataclass(frozen=True)
class Fileset:
    id: int
    template_prefix: str  # repository-relative, ends with "/"
    owner_id: int
    owner_name: str
    group_id: int
    group_name: str
    group_perms: str      # "rw----", "rwr---", "rwra--", "rwrw--"
    entries: tuple = ()   # tuple[FilesetEntry, ...]
    image_count: int = 0
    transfer: Optional[str] = None    # fileTransfer CommentAnnotation text ("ln_s", ...), None = upload
    created: Optional[_dt.datetime] = None

    @property
    def size(self) -> int:
        return sum(e.original_file.size or 0 for e in self.entries)


@dataclass(frozen=True)
class Job:
    """A Job linked to a fileset via FilesetJobLink."""
    id: int
    fileset_id: int
    kind: str             # UPLOAD_JOB or OTHER_JOB
    status: str           # one of JOB_STATUSES
    submitted: Optional[_dt.datetime] = None
    started: Optional[_dt.datetime] = None
    finished: Optional[_dt.datetime] = None
    message: str = ""


@dataclass(frozen=True)
class ImportLog:
    """The import log OriginalFile of a fileset (mimetype application/omero-log-file)."""
    fileset_id: int
    original_file_id: int
    size: int
    updated: Optional[_dt.datetime] = None   # time of the last UPDATE EventLog on that file
    # UPDATE EventLogs on that file: the server sets the log's size after each import step, so the
    # 1st, 2nd and 3rd mark the end of metadata, pixel data and thumbnails (`omero fs importtime`);
    # only changed sizes are saved: 0 to 6 in all (5 steps and the cleanup, ManagedImportRequestI)
    updates: int = 0
    repo_path: str = ""   # path + name in the repository (the file grows there while a step runs)


@dataclass(frozen=True)
class FilesetActivity:
    """What really changes while a fileset is imported (DESIGN.md §3: only the UploadJob moves)."""
    fileset_id: int
    jobs: tuple = ()                       # tuple[Job, ...]
    image_count: int = 0
    log: Optional[ImportLog] = None
    last_event: Optional[_dt.datetime] = None   # newest EventLog on the fileset's objects


@dataclass(frozen=True)
class RunningImport:
    """An ImportProcess that ManagedRepository.listImports lists.

    listImports lists every process of the caller's groups since the server started (closed ones
    too: nothing removes them), but only the caller's own session's processes answer; the Java
    importer closes its process right after verifyUpload. So a process of this session that
    answers is still uploading or was left open by its client: its fileset is known only after
    verifyUpload (ImportProcess.getHandle), before that `fileset_id` is 0. A process of another
    session (`own_session=False`: another login, cron, web, another host) cannot be asked
    anything: it may be live or long closed, its fileset is 0 (docs/server-contract.md)."""
    fileset_id: int
    upload_offsets: tuple = ()   # never filled from a real server (docs/server-contract.md)
    own_session: bool = True


@dataclass(frozen=True)
class FilesetQuery:
    """Which filesets to list for a status or export view; None means no filter."""
    owner_id: Optional[int] = None
    group_id: Optional[int] = None
    since: Optional[_dt.datetime] = None
    ids: Optional[tuple] = None


# pixels_readable's answer for an image whose pixel data the server serves from a pyramid that
# is not built yet (MissingPyramidException, as omero-cli-render's `test` reports "miss:"): the
# check could not say whether its original is readable, and is no failure.
PYRAMID_NOT_BUILT = "pyramid not built yet: the server reads this image from its pyramid"

# PixelsType values (ome/omero-model mappings/acquisition.ome.xml enum PixelsType) that the zarr
# export writes, with their numpy dtypes; "bit" is not exported.
PIXEL_TYPES = {"int8": "i1", "uint8": "u1", "int16": "i2", "uint16": "u2", "int32": "i4",
               "uint32": "u4", "float": "f4", "double": "f8"}


@dataclass(frozen=True)
class PixelsInfo:
    """An Image with its Pixels as the current user reads them (for the zarr export)."""
    image_id: int
    name: str
    pixels_id: int
    size_x: int
    size_y: int
    size_z: int
    size_c: int
    size_t: int
    pixel_type: str                          # a PixelsType value (PIXEL_TYPES keys, or "bit")
    physical_size_x: Optional[float] = None  # micrometres; None when the image has none
    physical_size_y: Optional[float] = None
    physical_size_z: Optional[float] = None
    containers: tuple = ()       # ("Project","P","Dataset","D"), ("Dataset","D") or () (as containers_of)
    binary_restricted: bool = False          # details.permissions isRestricted(BINARYACCESS)


@dataclass(frozen=True)
class ChannelRendering:
    """One ChannelBinding of the user's rendering settings, with its channel's label."""
    label: str
    color: str             # "RRGGBB"
    start: float           # window: inputStart / inputEnd
    end: float
    min: float             # StatsInfo globalMin / globalMax, else the pixel type's range
    max: float
    active: bool
    inverted: bool = False
    family: str = "linear"
    coefficient: float = 1.0


@dataclass(frozen=True)
class RenderingSettings:
    """The RenderingDef the user sees for an image (what `omero render info` reports)."""
    image_id: int
    default_z: int
    default_t: int
    model: str             # "color" or "greyscale"
    channels: tuple = ()   # tuple[ChannelRendering, ...]


@dataclass(frozen=True)
class WellInfo:
    row: int
    column: int
    fields: tuple = ()     # ((image id, PlateAcquisition id or None), ...) in WellSample order


@dataclass(frozen=True)
class PlateInfo:
    id: int
    name: str
    rows: int
    columns: int
    wells: tuple = ()          # tuple[WellInfo, ...], readable wells only
    acquisitions: tuple = ()   # ((id, name), ...)
    containers: tuple = ()     # ("Screen", "S") or ()


@runtime_checkable
class PixelsReader(Protocol):
    """A RawPixelsStore opened on one image's Pixels."""

    def tile(self, z: int, c: int, t: int, x: int, y: int, w: int, h: int) -> bytes:
        """The w x h region at (x, y) of plane (z, c, t), row by row, big-endian (getTile)."""

    def close(self) -> None: ...


@runtime_checkable
class RawFileReader(Protocol):
    """A RawFileStore opened on one OriginalFile."""

    size: int

    def read(self, offset: int, length: int) -> bytes: ...

    def close(self) -> None: ...


@runtime_checkable
class ServerPort(Protocol):
    """Everything the four commands ask of an OMERO server."""

    # --- who and where ---
    def repository(self) -> Repository:
        """The managed repository (root path and UUID)."""

    def current_user(self) -> User:
        """The session's user, with admin privileges."""

    def lookup_users(self, names: Sequence[str]) -> Mapping[str, User]:
        """Experimenters by omeName; absent names are left out."""

    def sudo(self, user_name: str) -> "ServerPort":
        """A port on a session created for `user_name` (needs the Sudo privilege)."""

    def lookup_groups(self, names: Sequence[str]) -> Mapping[str, int]:
        """ExperimenterGroup ids by name; absent names are left out."""

    def server_time(self) -> _dt.datetime:
        """The server's clock (IConfig.getServerTime), UTC: ages of server events must not depend
        on the client's clock."""

    # --- filesets ---
    def filesets(self, ids: Iterable[int], image_counts: bool = True) -> Mapping[int, Fileset]:
        """Filesets with entries, as visible to the current user in all groups; unreadable ids are
        left out. `image_counts=False` saves the counting query (image_count is then 0)."""

    def filesets_of(self, refs: Sequence[tuple]) -> Mapping[tuple, tuple]:
        """Fileset ids reached from each (ContainerType, id); unreadable or unknown refs are left out."""

    def find_filesets(self, query: FilesetQuery) -> Sequence[Fileset]:
        """Filesets by owner / group / creation time, newest first, entries included."""

    def filesets_by_client_paths(self, client_paths: Sequence[str], owner_id: int) -> Mapping[str, tuple]:
        """For each clientPath (stored form, no leading '/'), the ids of the owner's filesets using it."""

    def activity(self, fileset_ids: Iterable[int]) -> Mapping[int, FilesetActivity]:
        """Jobs, image counts, import log and last event for many filesets at once."""

    def running_imports(self) -> Sequence[RunningImport]:
        """Import processes listImports lists: this session's that answer (closed ones left out),
        and one entry with `own_session=False` per process of another session (not asked)."""

    def containers_of(self, fileset_ids: Iterable[int]) -> Mapping[int, tuple]:
        """Per fileset, the container names above its images: ("Project","P","Dataset","D") or
        ("Screen","S","Plate","P"); empty tuple for orphans. Of several, a plate's come before a
        dataset's, then the least tuple (so the same fileset always lands in the same place)."""

    def images_of(self, fileset_ids: Iterable[int]) -> Mapping[int, tuple]:
        """Per readable fileset, the ids of its images in ascending order (for render checks)."""

    def plates_of(self, fileset_ids: Iterable[int]) -> Mapping[int, tuple]:
        """Per fileset with plates, their ids ascending (Plate -> Well -> WellSample -> Image)."""

    def fileset_sessions(self, fileset_ids: Iterable[int]) -> Mapping[int, int]:
        """Per readable fileset, the id of the Session its creation Event happened in
        (Event.session): an importer that joined this port's session creates filesets in it."""

    def session_id(self) -> int:
        """This port's Session id (EventContext.sessionId)."""

    # --- files ---
    def files_by_repo_paths(self, repo_paths: Sequence[str]) -> Mapping[str, tuple]:
        """For repository-relative paths ("path" + "name" of an OriginalFile, no leading '/'),
        `(fileset id or None, OriginalFile)` of the readable file stored there; others left out."""

    def file_sizes(self, original_file_ids: Sequence[int]) -> Mapping[int, int]:
        """The size of each file as the server reads it now (RawFileStore.size, not the database
        row); files that cannot be read are left out. Costs 2 round trips per file: keep it small."""

    def open_original_file(self, original_file_id: int) -> RawFileReader:
        """A reader on the file's bytes (RawFileStore). A BINARYACCESS-restricted file opens and
        each read raises PermissionDenied (the server checks RawFileBean.read, not setFileId)."""

    # --- pixels (the zarr export) ---
    def images_and_plates_of(self, refs: Sequence[tuple]) -> Mapping[tuple, tuple]:
        """For each readable (ContainerType, id): `(image ids, plate ids)` it reaches: Project,
        Dataset and Image refs reach images, Screen and Plate refs reach plates. Unknown or
        unreadable refs are left out; Fileset refs are refused (ValueError)."""

    def pixels_info(self, image_ids: Iterable[int]) -> Mapping[int, PixelsInfo]:
        """Readable images with their Pixels, physical sizes and containers; others left out."""

    def rendering_settings(self, image_ids: Iterable[int]) -> Mapping[int, RenderingSettings]:
        """The rendering settings the current user sees for each readable image."""

    def plates(self, plate_ids: Iterable[int]) -> Mapping[int, PlateInfo]:
        """Readable plates with their readable wells, fields and acquisitions."""

    def open_pixels(self, image_id: int) -> PixelsReader:
        """A RawPixelsStore on the image's Pixels (one service: close it)."""

    def pixels_readable(self, image_ids: Sequence[int], concurrency: int = 4
                        ) -> Mapping[int, Optional[str]]:
        """Can the server open each image's pixel data (for most images: its original file, with
        Bio-Formats)? None when it can, PYRAMID_NOT_BUILT for a big image whose pyramid is still
        missing (nothing was read), else the server's error, for each readable image (others
        left out); at most `concurrency` checks at once. What `omero render test` does, without
        asking the server to build a missing pyramid."""

    # --- importing ---
    def session_login(self) -> tuple:
        """(host, port, session key) with which a child process (the Java importer) joins this
        session: the `-s/-p/-k` arguments `omero import` passes to it."""

    def can_link(self, refs: Sequence[tuple]) -> Mapping[tuple, bool]:
        """For each readable container ("Project"/"Dataset"/"Screen"/"Plate", id): whether the
        current user may link objects into it (details.permissions.canLink()); unknown or
        unreadable refs are left out."""

    # --- changes ---
    def delete_filesets(self, ids: Sequence[int]) -> None:
        """Delete filesets with their images and files (a Delete2 request)."""

    def close(self) -> None:
        """Close the session if this port opened it."""


# The function that turns CLI login arguments into a port. The real one (omero_adapter.connect)
# logs in through the CLI's session store; tests/sim/launcher.py swaps it for the simulated server.
Connect = Callable[..., ServerPort]


def _default_connect(ctx, args) -> ServerPort:
    from omero_cli_ext.omero_adapter import connect
    return connect(ctx, args)


connect: Connect = _default_connect


def open_port(ctx, args) -> ServerPort:
    """Open the port for a CLI invocation (resolved at call time so that launchers can swap it)."""
    return connect(ctx, args)


def entry_pages(counts: Mapping[int, int], limit: int) -> list:
    """Plan the reads of fileset entries so that no answer holds more than `limit` entries:
    (fileset ids, offset, page size or None) per query. Filesets are packed in id order while
    their counts fit; a fileset larger than `limit` is read alone, `limit` entries at a time
    (an HCS plate can have tens of thousands of files: one Ice message each would not do)."""
    pages: list = []
    batch: list = []
    size = 0
    for fs_id in sorted(counts):
        n = counts[fs_id]
        if batch and (n > limit or size + n > limit):
            pages.append((tuple(batch), 0, None))
            batch, size = [], 0
        if n > limit:
            pages += [((fs_id,), offset, limit) for offset in range(0, n, limit)]
            continue
        batch.append(fs_id)
        size += n
    if batch:
        pages.append((tuple(batch), 0, None))
    return pages


def batched(items: Iterable, size: int) -> Iterator[list]:
    """Split `items` into lists of at most `size` (the page size of `in (:ids)` queries)."""
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
