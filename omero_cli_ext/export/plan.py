"""Which files go where: objects -> readable filesets -> DEST-relative entries.

Resolution asks the port as the acting user (all groups), so the set of filesets is exactly what
OMERO lets that user read. The layout is pure: the same filesets (and the same manifest) always
give the same paths, and every clash is settled by a rule a user can predict and is reported.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, NamedTuple, Optional, Sequence

from omero_cli_ext.export import LAYOUTS
from omero_cli_ext.export.paths import (client_path_components, is_safe_relpath, safe_component,
                                        split_common_root)
from omero_cli_ext.server import CONTAINER_TYPES, parse_id

ORPHANED = "orphaned"   # tree layout: filesets whose images are in no Dataset or Plate


class BadObject(ValueError):
    """An OBJ argument that is not `Type:id[,id...]` with a known type."""


def parse_objects(texts: Iterable[str]) -> list:
    """`["Project:1,2", "Image:5"]` -> `[("Project", 1), ("Project", 2), ("Image", 5)]`,
    duplicates dropped, order kept. Types are matched case-insensitively."""
    canonical = {t.lower(): t for t in CONTAINER_TYPES}
    refs: list = []
    for text in texts:
        kind, sep, ids = text.partition(":")
        if not sep or kind.lower() not in canonical:
            raise BadObject(f"{text!r}: expected Type:id with Type one of {', '.join(CONTAINER_TYPES)}")
        for part in ids.split(","):
            oid = parse_id(part)
            if oid is None:
                raise BadObject(f"{text!r}: {part!r} is not an object id")
            ref = (canonical[kind.lower()], oid)
            if ref not in refs:
                refs.append(ref)
    return refs


def format_ref(ref: tuple) -> str:
    return f"{ref[0]}:{ref[1]}"


@dataclass
class Resolution:
    filesets: dict          # fileset id -> server.Fileset, readable by the acting user
    missing: list           # refs that are unknown or unreadable (OMERO does not tell apart)


def resolve(port, refs: Sequence[tuple]) -> Resolution:
    """Filesets reached from `refs`, as the port's user reads them. One `filesets_of` call for
    the containers (Fileset refs need none) and one paged `filesets` call for all of them
    (without image counts, which the export does not use: one query per page)."""
    containers = [r for r in refs if r[0] != "Fileset"]
    reached = dict(port.filesets_of(containers)) if containers else {}
    wanted: set = {r[1] for r in refs if r[0] == "Fileset"}
    for ids in reached.values():
        wanted.update(ids)
    filesets = dict(port.filesets(sorted(wanted), image_counts=False)) if wanted else {}
    missing = [r for r in containers if r not in reached]
    missing += [r for r in refs if r[0] == "Fileset" and r[1] not in filesets]
    return Resolution(filesets=filesets, missing=[r for r in refs if r in missing])


class Entry(NamedTuple):
    """One file DEST should hold: where, and which OriginalFile it shows (a tuple: plans of a
    million files are built and sorted quickly)."""
    path: str                 # DEST-relative, "/"-joined safe components
    fileset_id: int
    original_file_id: int
    repo_path: str            # OriginalFile.path + name, relative to the repository root
    size: Optional[int]
    hash: Optional[str]
    hasher: Optional[str]
    in_place: bool = False    # an ln_s import: the repository entry is a symlink to the real file


@dataclass(frozen=True)
class Skipped:
    fileset_id: int
    original_file_id: int
    client_path: str
    reason: str               # "restricted" (BINARYACCESS) | "incomplete" (upload never verified)


@dataclass(frozen=True)
class Renamed:
    fileset_id: int
    original_file_id: int
    wanted: str               # the path the layout asked for, before sanitising and clashes
    path: str                 # where the entry went
    reasons: tuple            # "unsafe name" and/or "clash"


@dataclass
class Plan:
    entries: list = field(default_factory=list)     # Entry, sorted by path
    skipped: list = field(default_factory=list)     # Skipped
    renamed: list = field(default_factory=list)     # Renamed

    @property
    def directories(self) -> list:
        """Every directory the entries need, parents before children."""
        dirs = set()
        for entry in self.entries:
            parts = entry.path.split("/")
            for depth in range(1, len(parts)):
                dirs.add(tuple(parts[:depth]))
        return ["/".join(d) for d in sorted(dirs, key=lambda d: (len(d), d))]


class _Taken:
    """DEST paths already given out ("/"-joined): a file path blocks itself and everything below
    it; a directory path blocks a file of the same name."""

    def __init__(self):
        self.files: set = set()
        self.dirs: set = set()

    def _file_above(self, path: str) -> bool:
        cut = path.find("/")
        while cut >= 0:
            if path[:cut] in self.files:
                return True
            cut = path.find("/", cut + 1)
        return False

    def fits(self, path: str) -> bool:
        return not (path in self.files or path in self.dirs or self._file_above(path))

    def fits_below(self, base: str, rels: Sequence[str]) -> bool:
        """Would every `base/rel` fit? When nothing is taken below `base` (a fileset in a
        directory of its own, the usual case) looking at `base` is enough."""
        if not base:
            return all(map(self.fits, rels))
        if base in self.files or self._file_above(base):
            return False
        return base not in self.dirs or all(self.fits(base + "/" + rel) for rel in rels)

    def add(self, path: str) -> None:
        self.files.add(path)
        cut = path.rfind("/")
        while cut > 0:
            parent = path[:cut]
            if parent in self.dirs:     # and so are all its ancestors
                return
            self.dirs.add(parent)
            cut = path.rfind("/", 0, cut)


def _join(base: str, rel: str) -> str:
    return f"{base}/{rel}" if base and rel else base or rel


def _layout_root(fileset, layout: str, containers: Mapping[int, tuple]) -> tuple:
    if layout == "clientpath":
        return ()
    if layout == "fileset":
        return (f"Fileset_{fileset.id}",)
    names = containers.get(fileset.id, ())
    if not names:
        return (ORPHANED,)
    return tuple(safe_component(name) for name in names[1::2])


def _prefix_candidates(layout: str, common: Sequence[str], fileset_id: int):
    """Where a fileset may go below its layout directory, in order of preference: below its
    common root's own name (clientpath, tree), then below as many more of the client's own
    directories as it takes to be unique, then `Fileset_<id>/`, `Fileset_<id>~2/`, ..."""
    first = 0 if layout == "fileset" or not common else 1
    for depth in range(first, len(common) + 1):
        yield tuple(common[len(common) - depth:])
    yield (f"Fileset_{fileset_id}",)
    k = 2
    while True:
        yield (f"Fileset_{fileset_id}~{k}",)
        k += 1


def _entry_candidates(rel: tuple, of_id: int):
    """Inside one fileset, two files may sanitise to the same path: the later one gets its
    OriginalFile id appended, then a directory of its own."""
    yield rel
    yield rel[:-1] + (safe_component(f"{rel[-1]}~{of_id}"),)
    k = 1
    while True:
        yield (f"OriginalFile_{of_id}~{k}", rel[-1])
        k += 1


class _Placing:
    """One fileset on its way into the plan: its exportable files, their client paths below the
    fileset's common root (raw and made safe), and the path the layout would like for each."""
    __slots__ = ("fileset", "files", "root", "common", "rels", "wanted", "safe_wanted")

    def __init__(self, fileset, layout: str, containers: Mapping[int, tuple], plan: "Plan"):
        self.fileset = fileset
        common, raws = split_common_root([client_path_components(e.client_path)
                                          for e in fileset.entries])
        self.root = "/".join(_layout_root(fileset, layout, containers))
        self.common = common
        preferred = next(_prefix_candidates(layout, common, fileset.id))
        wanted_base = _join(self.root, "/".join(preferred))
        safe_base = _join(self.root, "/".join(map(safe_component, preferred)))
        self.files, self.rels, self.wanted, self.safe_wanted = [], [], [], []
        for entry, raw in zip(fileset.entries, raws):
            of = entry.original_file
            if of.binary_restricted:
                plan.skipped.append(Skipped(fileset.id, of.id, entry.client_path, "restricted"))
                continue
            if of.size is None:
                plan.skipped.append(Skipped(fileset.id, of.id, entry.client_path, "incomplete"))
                continue
            raw = raw or [f"OriginalFile_{of.id}"]
            rel = "/".join(map(safe_component, raw))
            self.files.append(of)
            self.rels.append(rel)
            self.wanted.append(_join(wanted_base, "/".join(raw)))
            self.safe_wanted.append(_join(safe_base, rel))


def plan_layout(filesets: Mapping[int, object], layout: str = "clientpath",
                containers: Optional[Mapping[int, tuple]] = None,
                keep: Optional[Mapping[int, str]] = None) -> Plan:
    """Place every readable, complete file of `filesets` under a DEST-relative path.

    Below its layout directory (clientpath: DEST itself; tree: the Project and Dataset, or Screen
    and Plate, names, `orphaned` for neither; fileset: `Fileset_<id>`) a fileset keeps the
    client's own structure from its common root down, under that root's name (clientpath, tree).
    Clashes: filesets are placed in id order and keep their files together (multi-file formats
    reference each other by relative path); a fileset whose paths are taken goes whole below
    more of the client's own directories, then below `Fileset_<id>/`. `keep` (original file id ->
    path, from the manifest of an earlier run) is honoured first, so that --sync never moves an
    entry it already made.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}")
    containers = containers or {}
    keep = {k: v for k, v in (keep or {}).items() if is_safe_relpath(v)}
    plan = Plan()
    taken = _Taken()
    pending = []
    for fid in sorted(filesets):
        placing = _Placing(filesets[fid], layout, containers, plan)
        if not placing.files:
            continue
        if keep:
            kept = [keep[of.id] for of in placing.files if of.id in keep]
            if (len(kept) == len(placing.files) and len(set(kept)) == len(kept)
                    and all(map(taken.fits, kept))):
                for index, path in enumerate(kept):
                    taken.add(path)
                    _add(plan, placing, index, path)
                continue
        pending.append(placing)
    for placing in pending:
        fid = placing.fileset.id
        for prefix in _prefix_candidates(layout, [safe_component(c) for c in placing.common], fid):
            base = _join(placing.root, "/".join(prefix))
            if taken.fits_below(base, placing.rels):
                break
        for index, rel in enumerate(placing.rels):
            path = _join(base, rel)
            if not taken.fits(path):
                path = next(p for p in (_join(base, "/".join(c)) for c in _entry_candidates(
                    tuple(rel.split("/")), placing.files[index].id)) if taken.fits(p))
            taken.add(path)
            _add(plan, placing, index, path)
    plan.entries.sort(key=path_order)
    return plan


def path_order(entry) -> str:
    """Sort key walking DEST depth-first (NUL sorts before any character a safe name holds)."""
    return entry.path.replace("/", "\x00")


def _add(plan: Plan, placing: _Placing, index: int, path: str) -> None:
    """Record the entry; a sanitised name or a move away from the wanted path is reported."""
    fileset = placing.fileset
    of = placing.files[index]
    plan.entries.append(Entry(path, fileset.id, of.id, of.path + of.name, of.size, of.hash,
                              of.hasher, fileset.transfer == "ln_s"))
    wanted, safe = placing.wanted[index], placing.safe_wanted[index]
    if wanted != safe or path != safe:
        reasons = (("unsafe name",) if wanted != safe else ()) + (("clash",) if path != safe else ())
        plan.renamed.append(Renamed(fileset.id, of.id, wanted, path, reasons))
