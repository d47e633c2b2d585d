"""Turning an `omero mv` request into a plan: the ordered, journaled list of steps that relocate
files and retarget repository symlinks.

Every mode yields the same step kinds, executed phase by phase (`PHASES`): directories and file
copies first, then link changes, then removal of the sources. No link is changed before the file
it will point at exists, and no source is removed before every link has left it, so at every
instant each repository link resolves (to the old or to the new copy).
"""
from __future__ import annotations

import collections
import errno
import filecmp
import json
import os
import stat
from dataclasses import dataclass, field, replace
from operator import attrgetter
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from omero_cli_ext.fsops import checksum
from omero_cli_ext.mv.errors import (EXIT_BAD_RELATION, EXIT_DST_EXISTS, EXIT_DST_UNWRITABLE,
                                     EXIT_IMPORTING, EXIT_MISMATCH, EXIT_NO_LINKS,
                                     EXIT_REPO_OVERLAP, EXIT_SRC_MISSING, EXIT_SYMLINK_LOOP,
                                     MvError)
from omero_cli_ext.mv.mounts import repository_views
from omero_cli_ext.mv.preflight import check_space, check_writable
from omero_cli_ext.mv.tree import (Node, below, canonical, is_under, shell_word, show,
                                   split_tree, walk_links, walk_tree)
from omero_cli_ext.workers import parallel_map
from omero_cli_ext.compat import DATACLASS_SLOTS

# step kind -> phase; steps run in phase order, each phase finished and journaled before the next
PHASES = {"mkdir": 0, "place": 1, "place_link": 1, "dirmeta": 2, "retarget": 3, "swap": 3,
          "materialize": 3, "unlink": 4, "rmdir": 5}
MODES = ("move", "links-only", "offload", "inline", "repair")
DEFAULT_HASHER = "SHA1-160"


@dataclass(**DATACLASS_SLOTS)
class Step:
    """One idempotent change. `path` is what it changes; `other` the file it depends on (the
    source of a copy, the copy a source may be removed after, the file a link resolved to).
    Slots: a plan holds one per link, hundreds of thousands of them."""
    kind: str
    path: bytes
    other: Optional[bytes] = None
    old: Optional[bytes] = None      # link target before (retarget)
    new: Optional[bytes] = None      # link target after (retarget, swap, place_link)
    size: Optional[int] = None
    mode: Optional[int] = None
    uid: Optional[int] = None
    gid: Optional[int] = None
    mtime_ns: Optional[int] = None
    hasher: Optional[str] = None
    hash: Optional[str] = None
    fileset: Optional[int] = None
    state: str = "pending"           # pending, done, skipped
    note: Optional[str] = None
    seq: int = 0

    @property
    def phase(self) -> int:
        return PHASES[self.kind]


@dataclass(frozen=True)
class FileFacts:
    """What the server knows about the file behind a repository path."""
    fileset: Optional[int] = None
    owner: Optional[str] = None
    size: Optional[int] = None
    hasher: Optional[str] = None
    hash: Optional[str] = None
    file_id: Optional[int] = None    # the OriginalFile's id


FactsLookup = Callable[[Sequence[bytes]], Mapping[bytes, FileFacts]]
NO_FACTS = FileFacts()


def no_facts(paths: Sequence[bytes]) -> Mapping[bytes, FileFacts]:
    return {}


@dataclass
class Request:
    """What the user asked for, with paths as absolute bytes in the user's spelling."""
    mode: str
    repo: bytes
    src: Optional[bytes] = None
    dst: Optional[bytes] = None
    search: Tuple[bytes, ...] = ()
    force: bool = False
    checksums: bool = False          # --verify checksum
    fileset: Optional[int] = None    # offload of Fileset:ID
    fileset_files: Tuple[Tuple[bytes, bytes], ...] = ()   # (repository file, path below DST)
    workers: int = 1                 # processes for per-link system calls (not part of the key)
    skip_mismatched: bool = False    # leave originals that do not match the server's record

    def key(self) -> str:
        """The job's identity: a rerun with the same key resumes it."""
        return json.dumps({"mode": self.mode, "repo": _text(self.repo), "src": _text(self.src),
                           "dst": _text(self.dst), "search": [_text(s) for s in self.search],
                           "fileset": self.fileset, "force": self.force}, sort_keys=True)


def _text(path: Optional[bytes]) -> Optional[str]:
    return None if path is None else os.fsdecode(path)


@dataclass
class Plan:
    request: Request
    steps: List[Step]
    same_fs: bool = True
    notes: List[str] = field(default_factory=list)
    unresolved: List[dict] = field(default_factory=list)   # repair: links left dangling, why
    # originals whose size on disk is not the server's (path, original_file, fileset, problem)
    mismatched: List[dict] = field(default_factory=list)

    def count(self, kind: str) -> int:
        return sum(1 for s in self.steps if s.kind == kind)

    @property
    def bytes_to_copy(self) -> int:
        if self.same_fs:
            return 0
        return sum(s.size or 0 for s in self.steps if s.kind in ("place", "materialize"))

    def summary(self) -> dict:
        kinds = dict(collections.Counter(map(attrgetter("kind"), self.steps)))
        return {"mode": self.request.mode, "steps": len(self.steps), "by_kind": kinds,
                "links": kinds.get("retarget", 0) + kinds.get("swap", 0)
                + kinds.get("materialize", 0),
                "files": kinds.get("place", 0), "same_filesystem": self.same_fs,
                "bytes_to_copy": self.bytes_to_copy, "unresolved": len(self.unresolved)}


# --------------------------------------------------------------------------- validation

def _exists(path: bytes) -> bool:
    return os.path.lexists(path)


def _directory_id(path: bytes) -> Optional[Tuple[int, int]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


def _within_directory(path: bytes, ident: Optional[Tuple[int, int]]) -> Optional[bool]:
    """Is `path` the directory `ident` (True: the same), or below it (False)? None when neither.
    By device and inode of `path`'s resolved existing ancestors, so that a spelling through a
    bind mount (which realpath does not see) is caught too."""
    if ident is None:
        return None
    probe, first = os.path.realpath(path), True
    while True:
        if _directory_id(probe) == ident:
            return first
        parent = os.path.dirname(probe)
        if parent == probe:
            return None
        probe, first = parent, False


def _repo_ids(repo: bytes) -> set:
    """(device, inode) of the repository root and of every mount point showing a directory of
    it (bind mounts)."""
    ident = _directory_id(repo)
    return repository_views(repo) | ({ident} if ident else set())


def _existing_ancestor(path: bytes) -> bytes:
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def check_source(request: Request) -> None:
    """SRC exists and does not hold the repository."""
    src, repo = request.src, request.repo
    if not _exists(src):
        raise MvError(EXIT_SRC_MISSING, f"SRC {show(src)} does not exist; nothing was changed")
    if is_under(canonical(repo), canonical(src)) or is_under(repo, src) \
            or _within_directory(repo, _directory_id(src)) is not None:
        raise MvError(EXIT_REPO_OVERLAP, f"SRC {show(src)} is or contains the repository root "
                      f"{show(repo)}; omero mv never moves the repository itself")
    if request.mode == "move" and _inside(src, _repo_ids(repo)):
        # named by the repository's path it would be an offload; through a bind mount it is
        # still managed files, never to be moved out as if they were users' originals
        raise MvError(EXIT_REPO_OVERLAP, f"SRC {show(src)} is inside the repository {show(repo)} "
                      "(reached through another mount); name it by its path in the repository "
                      "to offload it; nothing was changed")


def check_destination(request: Request, *, must_not_exist: bool = True) -> None:
    """DST differs from SRC, is not inside SRC or the repository, does not exist, and its parent
    directory exists and is writable."""
    src, dst, repo = request.src, request.dst, request.repo
    dst_c = canonical(dst)
    if src is not None:
        src_c = canonical(src)
        # by identity too: SRC and DST spelled through a bind mount of one of them
        within = _within_directory(dst, _directory_id(src))
        if dst == src or dst_c == src_c or within is True:
            raise MvError(EXIT_BAD_RELATION, f"SRC and DST are the same place ({show(src)})")
        if request.mode != "links-only" and (is_under(dst, src) or is_under(dst_c, src_c)
                                             or within is False):
            raise MvError(EXIT_BAD_RELATION,
                          f"DST {show(dst)} is inside SRC {show(src)}; choose a DST outside it")
    if is_under(dst, repo) or is_under(dst_c, canonical(repo)) \
            or _inside(_existing_ancestor(dst), _repo_ids(repo)):
        raise MvError(EXIT_REPO_OVERLAP, f"DST {show(dst)} is inside the repository "
                      f"{show(repo)}; the destination must be outside it")
    if not must_not_exist:
        return
    if _exists(dst):
        if os.path.isdir(dst) and not os.path.islink(dst):
            return   # a second pass: merged into (merge_into_existing), nothing overwritten
        raise MvError(EXIT_DST_EXISTS, f"DST {show(dst)} exists and is not a directory"
                      f"{' (a symlink: name the directory itself)' if os.path.islink(dst) else ''}"
                      "; nothing was changed")
    parent = os.path.dirname(dst)
    if not os.path.isdir(parent):
        raise MvError(EXIT_SRC_MISSING, f"the directory {show(parent)} that would hold DST does "
                      "not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        why = "is on a read-only filesystem" if _read_only(parent) else "is not writable by you"
        raise MvError(EXIT_DST_UNWRITABLE, f"the destination directory {show(parent)} {why}; "
                      "nothing was changed")


def _read_only(path: bytes) -> bool:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def same_filesystem(a: bytes, b: bytes) -> bool:
    """Whether `b` (or its nearest existing parent) is on the device of `a`."""
    dev = os.lstat(a).st_dev
    probe = b
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    return os.stat(probe).st_dev == dev


# --------------------------------------------------------------------------- link matching

class Scope:
    """Decides which repository links point at or under SRC: textually (the stored target,
    made absolute, under SRC as the user spelt it) or by location (the target's directory is a
    directory of the SRC tree by device and inode, which sees through symlinked paths and bind
    mounts; when SRC is gone, by resolved path instead)."""

    def __init__(self, src: bytes, nodes: Optional[Sequence[Node]] = None):
        self.src = src
        self._src_slash = src.rstrip(b"/") + b"/"
        self._dir_rel: Dict[Tuple[int, int], bytes] = {}
        self._src_spot: Optional[Tuple[int, int, bytes]] = None
        self._src_canon = canonical(src)
        self._dir_ids: Dict[bytes, Optional[Tuple[int, int]]] = {}
        self._dir_canon: Dict[bytes, bytes] = {}
        self.loops: List[bytes] = []
        if nodes:
            for node in nodes:
                if node.kind == "dir":
                    self._dir_rel[(node.dev, node.ino)] = node.rel
            parent = self._dir_id(os.path.dirname(src))
            if parent is not None:
                self._src_spot = (parent[0], parent[1], os.path.basename(src))

    def match(self, link: bytes, target: bytes) -> Optional[bytes]:
        """The path below SRC that `link` (storing `target`) points at, or None."""
        if target.startswith(self._src_slash) and is_normal_absolute(target):
            return target[len(self._src_slash):]   # the common case, without normpath
        absolute = os.path.normpath(os.path.join(os.path.dirname(link), target))
        if is_under(absolute, self.src):
            return below(absolute, self.src)
        head, name = os.path.split(absolute)
        if self._dir_rel or self._src_spot:
            ident = self._dir_id(head)
            if ident is None:
                return None
            rel = self._dir_rel.get(ident)
            if rel is not None:
                return os.path.join(rel, name) if rel else name
            if self._src_spot == (ident[0], ident[1], name):
                return b""
            return None
        resolved = os.path.join(self._canon(head), name)
        return below(resolved, self._src_canon) if is_under(resolved, self._src_canon) else None

    def _dir_id(self, directory: bytes) -> Optional[Tuple[int, int]]:
        if directory not in self._dir_ids:
            try:
                st = os.stat(directory)
                self._dir_ids[directory] = (st.st_dev, st.st_ino)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    self.loops.append(directory)
                self._dir_ids[directory] = None
        return self._dir_ids[directory]

    def _canon(self, directory: bytes) -> bytes:
        found = self._dir_canon.get(directory)
        if found is None:
            found = self._dir_canon[directory] = os.path.realpath(directory)
        return found


SUBTREES_PER_WORKER = 16   # enough pieces that workers finish at about the same time


def matching_links(repo: bytes, scope: Scope, workers: int,
                   examine: Optional[Callable[[bytes], object]] = None) -> List[tuple]:
    """(link, stored target, path below SRC, examine(that path) or None) for every repository
    link `scope` matches, in walk order. Big trees are walked, matched and examined in `workers`
    processes, a subtree at a time; what the scope learns (loops) comes back with the results."""
    subtrees, top = split_tree(repo, workers * SUBTREES_PER_WORKER) if workers > 1 \
        else ([repo], [])

    def matches(links) -> tuple:
        before = len(scope.loops)
        found = []
        for link, target in links:
            rel = scope.match(link, target)
            if rel is not None:
                found.append((link, target, rel, examine(rel) if examine else None))
        return found, scope.loops[before:]

    known = len(scope.loops)
    pieces = [matches(top)]
    if workers > 1 and len(subtrees) >= workers * SUBTREES_PER_WORKER:
        pieces += parallel_map(lambda root: matches(walk_links(root)), subtrees, workers,
                               min_items=2, chunk=1).results()
    else:
        pieces += [matches(walk_links(root)) for root in subtrees]
    del scope.loops[known:]   # in this process they are there already, from a worker they are not
    for found, loops in pieces:
        scope.loops.extend(loops)
    return [match for found, _ in pieces for match in found]


def is_normal_absolute(path: bytes) -> bool:
    """True when os.path.normpath would return the absolute `path` unchanged (a cheap test
    that lets most link targets skip normpath)."""
    return (path[:1] == b"/" and b"//" not in path and b"/./" not in path
            and b"/../" not in path and not path.endswith((b"/", b"/.", b"/..")))


def new_target(old_target: bytes, link: bytes, new_absolute: bytes) -> bytes:
    """What `link` should store to reach `new_absolute`: absolute stays absolute (in the user's
    spelling of DST), relative stays relative (computed between resolved directories, as the
    kernel resolves `..`)."""
    if os.path.isabs(old_target):
        return new_absolute
    return os.path.relpath(canonical(new_absolute), os.path.realpath(os.path.dirname(link)))


def _stat_target(link: bytes) -> Tuple[Optional[os.stat_result], Optional[int]]:
    try:
        return os.stat(link), None
    except OSError as exc:
        return None, exc.errno


def _size_or_errno(path: bytes) -> int:
    """The size of the file at `path`, or minus the errno of its stat (small, cheap to send back
    from a worker process)."""
    try:
        return os.stat(path).st_size
    except OSError as exc:
        return -(exc.errno or errno.EIO)


def _loop_error(link: bytes, target: bytes) -> MvError:
    return MvError(EXIT_SYMLINK_LOOP, f"the repository link {show(link)} -> {show(target)} "
                   "ends in a symlink loop; fix or remove that link first (nothing was changed)")


# --------------------------------------------------------------------------- planners

# which of these filesets are still being imported: [(fileset id, stage, reason)]
ImportsCheck = Callable[[Sequence[int]], List[Tuple[int, str, str]]]
SHOWN = 10


def plan_for(request: Request, facts_for: FactsLookup = no_facts,
             unfinished: Optional[ImportsCheck] = None) -> Plan:
    """The plan, pre-flight checked before anything changes: originals that do not match the
    server's record (refused, or left out with --skip-mismatched), imports still running among
    the filesets an offload/inline touches (refused unless --force; `unfinished` asks the
    server), room on the destination, write access to every directory changed."""
    planner = {"move": plan_move, "links-only": plan_links_only, "offload": plan_offload,
               "inline": plan_inline, "repair": plan_repair}[request.mode]
    plan = planner(request, facts_for)
    _vet_mismatched(plan)
    if request.mode in ("offload", "inline"):
        _vet_unfinished(plan, unfinished)
    check_space(plan)
    check_writable(plan)
    plan.steps.sort(key=lambda s: PHASES[s.kind])   # stable: the planner's order within a phase
    for seq, step in enumerate(plan.steps):
        step.seq = seq
    return plan


def _check_size(found: List[dict], path: bytes, size: int, fact: FileFacts) -> None:
    if fact.size is not None and fact.size != size:
        found.append({"path": path, "original_file": fact.file_id, "fileset": fact.fileset,
                      "problem": f"{size} bytes on disk, {fact.size} recorded by the server"})


def mismatch_lines(entries: Sequence[dict]) -> str:
    """The first entries as lines: OriginalFile id, fileset, path, problem."""
    lines = [f"OriginalFile:{e['original_file']} (Fileset:{e['fileset']}) {show(e['path'])}: "
             f"{e['problem']}" for e in entries[:SHOWN]]
    if len(entries) > SHOWN:
        lines.append(f"... and {len(entries) - SHOWN} more")
    return "\n  ".join(lines)


def _vet_mismatched(plan: Plan) -> None:
    """Originals whose size differs from the server's record are damaged or were changed after
    their import: moving them would spread the damage and the final verification could only
    fail. Refused (listed) unless --skip-mismatched, which leaves them, their links and their
    sources where they are and moves the rest."""
    if not plan.mismatched:
        return
    if not plan.request.skip_mismatched:
        raise MvError(EXIT_MISMATCH, f"{len(plan.mismatched)} original file(s) do not match "
                      f"what the server recorded:\n  {mismatch_lines(plan.mismatched)}\n"
                      "Check or restore them; --skip-mismatched moves the others and leaves "
                      "these where they are. Nothing was changed")
    bad = {e["path"] for e in plan.mismatched}
    plan.steps = [s for s in plan.steps if s.path not in bad and s.other not in bad]
    plan.notes.append(f"{len(bad)} original file(s) not matching the server's record were left "
                      f"where they are (--skip-mismatched):\n  {mismatch_lines(plan.mismatched)}")


def _vet_unfinished(plan: Plan, unfinished: Optional[ImportsCheck]) -> None:
    """Offloading or inlining the files of an import the server is still running (uploading,
    or in its metadata/pixel-data/thumbnail steps) swaps files under it: refused unless
    --force."""
    filesets = sorted({s.fileset for s in plan.steps if s.fileset is not None})
    if unfinished is None:
        plan.notes.append("without a server, imports still running among these files cannot "
                          "be detected")
        return
    if not filesets:
        return
    running = unfinished(filesets)
    if not running:
        return
    shown = "\n  ".join(f"Fileset:{fid}: {stage} ({reason})" for fid, stage, reason
                        in running[:SHOWN])
    if not plan.request.force:
        raise MvError(EXIT_IMPORTING, f"{len(running)} of the filesets involved are still "
                      f"being imported:\n  {shown}\nWait until they finish (omero status "
                      "imports), or pass --force; nothing was changed")
    plan.notes.append(f"--force: {len(running)} fileset(s) still being imported are included:"
                      f"\n  {shown}")


def _hash_before(step: Step, path: bytes, request: Request) -> None:
    """With --verify checksum and no server hash: a checksum taken now, before anything moves."""
    if request.checksums and step.hash is None:
        step.hasher = step.hasher or DEFAULT_HASHER
        step.hash = checksum(path, step.hasher)


def _under(root: bytes) -> Callable[[bytes], bytes]:
    """`rel -> root/rel` (root itself for b""), by concatenation: `rel` comes from a walk, so it
    is relative and normalised (os.path.join per node costs seconds on a million files)."""
    prefix = root.rstrip(b"/") + b"/"
    return lambda rel: prefix + rel if rel else root


def _tree_steps(nodes: Sequence[Node], src: bytes, dst: bytes, same_fs: bool,
                facts_by_rel: Mapping[bytes, FileFacts], scope: "Scope") -> List[Step]:
    """mkdir / place / place_link / dirmeta steps that rebuild the tree `nodes` (below `src`)
    at `dst`."""
    at_dst, at_src = _under(dst), _under(src)
    steps = []
    for node in nodes:
        target = at_dst(node.rel)
        if node.kind == "dir":
            steps.append(Step("mkdir", target, mode=node.mode))
        elif node.kind == "file":
            facts = facts_by_rel.get(node.rel, NO_FACTS)
            steps.append(Step("place", target, other=at_src(node.rel), size=node.size,
                              mode=node.mode, uid=node.uid, gid=node.gid,
                              mtime_ns=node.mtime_ns, hasher=facts.hasher if facts.hash else None,
                              hash=facts.hash, fileset=facts.fileset))
        else:
            source = at_src(node.rel)
            steps.append(Step("place_link", target, other=source,
                              new=_moved_link_target(scope, source, node.target, target, dst)))
    for node in reversed(nodes):
        if node.kind == "dir":
            steps.append(Step("dirmeta", at_dst(node.rel), mode=node.mode, uid=node.uid,
                              gid=node.gid, mtime_ns=node.mtime_ns))
    return steps


CONFLICTS_SHOWN = 10


def merge_into_existing(steps: List[Step], dst: bytes) -> Tuple[List[Step], int]:
    """A move into an existing DST (the runbook's second pass): what is already there and the
    same is adopted (its mkdir / place / place_link / dirmeta step dropped, so nothing there is
    changed, and a roll-back never removes it); anything else in the way is a conflict, and
    conflicts refuse the job before any change (MvError EXIT_DST_EXISTS, listed): nothing is
    ever overwritten. Returns the remaining steps and the number of entries adopted."""
    kept, conflicts, adopted, existing_dirs = [], [], 0, set()
    for step in steps:
        if step.kind == "dirmeta":
            if step.path not in existing_dirs:
                kept.append(step)
            continue
        try:
            have = os.lstat(step.path)
        except FileNotFoundError:
            kept.append(step)
            continue
        why = _difference(step, have)
        if why is None:
            if step.kind == "mkdir":
                existing_dirs.add(step.path)
            else:
                adopted += 1
        else:
            conflicts.append((step.path, why))
    if conflicts:
        shown = "\n  ".join(f"{show(path)}: {why}" for path, why in conflicts[:CONFLICTS_SHOWN])
        more = f"\n  ... and {len(conflicts) - CONFLICTS_SHOWN} more" \
            if len(conflicts) > CONFLICTS_SHOWN else ""
        raise MvError(EXIT_DST_EXISTS, f"DST {show(dst)} exists and {len(conflicts)} entr"
                      f"{'y' if len(conflicts) == 1 else 'ies'} in it differ from what would be "
                      f"placed there:\n  {shown}{more}\nNothing is ever overwritten: move or "
                      "remove those entries, or choose another DST; nothing was changed")
    return kept, adopted


def _difference(step: Step, have: os.stat_result) -> Optional[str]:
    """None when the entry already at `step.path` is what the step would make, else why not."""
    if step.kind == "mkdir":
        return None if stat.S_ISDIR(have.st_mode) else "not a directory"
    if step.kind == "place_link":
        if not stat.S_ISLNK(have.st_mode):
            return "not a symlink"
        current = os.readlink(step.path)
        return None if current == step.new else f"a symlink to {show(current)}"
    if not stat.S_ISREG(have.st_mode):
        return "not a regular file"
    try:
        source = os.stat(step.other)
    except OSError as exc:
        return f"its source cannot be read ({exc.strerror})"
    if os.path.samestat(have, source):
        return None
    if have.st_size != source.st_size:
        return f"{have.st_size} bytes, the file being moved has {source.st_size}"
    if not filecmp.cmp(step.path, step.other, shallow=False):
        return "same size, different content"
    return None


def _moved_link_target(scope: "Scope", source: bytes, stored: bytes, placed: bytes,
                       dst: bytes) -> bytes:
    """What a symlink inside SRC stores once recreated at `placed` (under DST) so that it reaches
    the same file: a target inside SRC, by any spelling (SRC's real path, a symlinked path: the
    scope matches by device and inode), becomes the same place under DST; a relative target that
    leaves the tree is recomputed from the new place; a relative target that stays inside the
    tree (textually) moves with it unchanged."""
    inside = scope.match(source, stored)
    if os.path.isabs(stored):
        return _under(dst)(inside) if inside is not None else stored
    if is_under(os.path.normpath(os.path.join(os.path.dirname(source), stored)), scope.src):
        return stored
    new_dir = canonical(os.path.dirname(placed))
    if inside is not None:
        return os.path.relpath(canonical(_under(dst)(inside)), new_dir)
    head, name = os.path.split(os.path.join(os.path.dirname(source), stored))
    return os.path.relpath(os.path.join(os.path.realpath(head), name), new_dir)


def _removal_steps(nodes: Sequence[Node], src: bytes, dst: bytes) -> List[Step]:
    at_dst, at_src = _under(dst), _under(src)
    steps = []
    for node in nodes:
        if node.kind != "dir":
            steps.append(Step("unlink", at_src(node.rel), other=at_dst(node.rel),
                              size=node.size if node.kind == "file" else None))
    for node in reversed(nodes):
        if node.kind == "dir":
            steps.append(Step("rmdir", at_src(node.rel)))
    return steps


def plan_move(request: Request, facts_for: FactsLookup) -> Plan:
    """Mode 1: SRC (outside the repository) to DST, retargeting the links into SRC."""
    check_source(request)
    check_destination(request)
    src, dst, repo = request.src, request.dst, request.repo
    nodes = walk_tree(src)
    same_fs = same_filesystem(src, dst)
    scope = Scope(src, nodes)
    by_rel = {node.rel: node for node in nodes}
    at_src, at_dst = _under(src), _under(dst)
    matched = matching_links(repo, scope, request.workers)
    facts = facts_for([link for link, _, _, _ in matched])
    retargets, dangling, plan_mismatched = [], [], []
    for link, target, rel, _ in matched:
        node = by_rel.get(rel)
        if node is not None and node.kind != "link" and is_under(target, src) \
                and is_normal_absolute(target):
            size = node.size   # the kernel resolves this target to the node walk_tree stat'ed
        else:
            st, err = _stat_target(link)
            if err == errno.ELOOP:
                raise _loop_error(link, target)
            if node is None or st is None:
                dangling.append(link)
                continue
            size = st.st_size
        new_abs = at_dst(rel)
        fact = facts.get(link, NO_FACTS)
        step = Step("retarget", link, other=at_src(rel),
                    old=target, new=new_target(target, link, new_abs),
                    size=size if node.kind == "file" else None,
                    hasher=fact.hasher if fact.hash else None, hash=fact.hash,
                    fileset=fact.fileset)
        if node.kind == "file":
            _check_size(plan_mismatched, step.other, size, fact)
            _hash_before(step, link, request)
        retargets.append(step)
    if not retargets and not request.force:
        raise MvError(EXIT_NO_LINKS, f"no repository link points into {show(src)}: it holds no "
                      "in-place imported file of this repository. Nothing was moved; pass "
                      "--force to move it anyway")
    facts_by_rel = {}
    for step in retargets:
        if step.hash:
            facts_by_rel[below(step.other, src)] = FileFacts(step.fileset, None, step.size,
                                                             step.hasher, step.hash)
    tree_steps = _tree_steps(nodes, src, dst, same_fs, facts_by_rel, scope)
    adopted = 0
    if os.path.isdir(dst):
        tree_steps, adopted = merge_into_existing(tree_steps, dst)
    plan = Plan(request, tree_steps + retargets + _removal_steps(nodes, src, dst),
                same_fs=same_fs, mismatched=plan_mismatched)
    if adopted:
        plan.notes.append(f"DST exists: {adopted} file(s) and link(s) already there and "
                          "identical were adopted (not copied again)")
    if dangling:
        plan.notes.append(f"{len(dangling)} repository link(s) into SRC were already dangling "
                          "and are left as they are (see omero mv --repair)")
    _note_loops(plan, scope)
    return plan


def _note_loops(plan: Plan, scope: Scope) -> None:
    if scope.loops:
        plan.notes.append(f"{len(scope.loops)} link target(s) in the repository loop "
                          f"(e.g. {show(scope.loops[0])}); they are not part of this move and "
                          "were left alone")


def plan_links_only(request: Request, facts_for: FactsLookup) -> Plan:
    """`--links-only OLD NEW`: the files are at NEW already; retarget the links only."""
    old, new, repo = request.src, request.dst, request.repo
    if not _exists(new):
        raise MvError(EXIT_SRC_MISSING, f"NEW {show(new)} does not exist: --links-only expects "
                      "the files to be there already; nothing was changed")
    check_destination(request, must_not_exist=False)
    if is_under(canonical(repo), canonical(old)) or is_under(repo, old):
        raise MvError(EXIT_REPO_OVERLAP, f"OLD {show(old)} is or contains the repository root")
    scope = Scope(old)
    new_slash = new.rstrip(b"/") + b"/"
    matched = matching_links(repo, scope, request.workers,
                             lambda rel: _size_or_errno(new_slash + rel if rel else new))
    facts = facts_for([link for link, _, _, _ in matched])
    steps, missing, in_old = [], [], []
    for link, target, rel, size in matched:
        new_abs = new_slash + rel if rel else new
        if size < 0:
            if -size == errno.ELOOP:
                raise _loop_error(link, target)
            (in_old if os.path.exists(link) else missing).append(link)
            continue
        step = Step("retarget", link, None, target,
                    new_abs if target[:1] == b"/" else new_target(target, link, new_abs), size)
        fact = facts.get(link) if facts else None
        if fact is not None:
            step.hasher, step.hash, step.fileset = fact.hasher if fact.hash else None, \
                fact.hash, fact.fileset
        if request.checksums:
            _hash_before(step, new_abs, request)
        steps.append(step)
    if not steps and not missing and not in_old:
        raise MvError(EXIT_NO_LINKS, f"no repository link points into {show(old)}; nothing "
                      "was changed")
    plan = Plan(request, steps)
    if in_old:
        plan.notes.append(
            f"{len(in_old)} link(s) point at files still in OLD and not at NEW (imported after "
            f"the files were moved?); they resolve and were left alone (e.g. {show(in_old[0])}). "
            "To move those files and retarget their links (NEW is merged into, nothing "
            f"overwritten), run: omero mv --repo {shell_word(repo)} "
            f"{shell_word(old)} {shell_word(new)}")
    if missing:
        plan.notes.append(f"{len(missing)} link(s) into OLD have no file at NEW and were left "
                          f"alone (e.g. {show(missing[0])})")
        plan.unresolved.extend({"link": link, "reason": "no file at NEW"} for link in missing)
    _note_loops(plan, scope)
    return plan


def plan_offload(request: Request, facts_for: FactsLookup) -> Plan:
    """Mode 2: real files under a repository path (or of one fileset) go to DST; absolute links
    to them take their place in the repository."""
    src, dst, repo = request.src, request.dst, request.repo
    check_destination(request)
    if request.fileset is None:
        if not _exists(src):
            raise MvError(EXIT_SRC_MISSING, f"{show(src)} does not exist; nothing was changed")
        if src == repo or canonical(src) == canonical(repo):
            raise MvError(EXIT_REPO_OVERLAP, "the repository root itself cannot be offloaded; "
                          "name a directory inside it")
        nodes = walk_tree(src)
        pairs = [(os.path.join(src, n.rel) if n.rel else src, n) for n in nodes]
    else:
        pairs = []
        dirs = set()
        for repo_file, rel in request.fileset_files:
            try:
                node = walk_tree(repo_file)[0]
            except MvError:
                continue
            parts = rel.split(b"/")[:-1]
            for depth in range(1, len(parts) + 1):
                dirs.add(b"/".join(parts[:depth]))
            pairs.append((repo_file, replace(node, rel=rel)))
        root_st = os.stat(os.path.dirname(dst))
        dir_nodes = [Node(b"", "dir", 0, 0o755, root_st.st_uid, root_st.st_gid, 0, 0, 0)]
        for rel in sorted(dirs, key=lambda r: (r.count(b"/"), r)):
            dir_nodes.append(Node(rel, "dir", 0, 0o755, root_st.st_uid, root_st.st_gid, 0, 0, 0))
        pairs = [(None, n) for n in dir_nodes] + pairs
    same_fs = same_filesystem(repo, dst)
    files = [(path, node) for path, node in pairs if node.kind == "file"]
    facts = facts_for([path for path, _ in files])
    steps, swaps, skipped, mismatched = [], [], 0, []
    for path, node in pairs:
        target = os.path.join(dst, node.rel) if node.rel else dst
        if node.kind == "dir":
            steps.append(Step("mkdir", target, mode=node.mode))
        elif node.kind == "link":
            skipped += 1
        else:
            fact = facts.get(path, NO_FACTS)
            _check_size(mismatched, path, node.size, fact)
            place = Step("place", target, other=path, size=node.size, mode=node.mode,
                         uid=node.uid, gid=node.gid, mtime_ns=node.mtime_ns,
                         hasher=fact.hasher if fact.hash else None, hash=fact.hash,
                         fileset=fact.fileset or request.fileset)
            _hash_before(place, path, request)
            steps.append(place)
            swaps.append(Step("swap", path, other=target, new=target, size=node.size,
                              hasher=place.hasher, hash=place.hash, fileset=place.fileset))
    if request.fileset is None:
        for node in reversed(walk_tree(src)):
            if node.kind == "dir":
                steps.append(Step("dirmeta", os.path.join(dst, node.rel) if node.rel else dst,
                                  mode=node.mode, uid=node.uid, gid=node.gid,
                                  mtime_ns=node.mtime_ns))
    adopted = 0
    if os.path.isdir(dst):
        steps, adopted = merge_into_existing(steps, dst)
    if not swaps:
        raise MvError(EXIT_NO_LINKS, f"{show(src)} holds no real file to offload (only links or "
                      "nothing); nothing was changed")
    plan = Plan(request, steps + swaps, same_fs=same_fs, mismatched=mismatched)
    if adopted:
        plan.notes.append(f"DST exists: {adopted} file(s) already there and identical were "
                          "adopted (not copied again)")
    if skipped:
        plan.notes.append(f"{skipped} symlink(s) under the path are links already (in-place "
                          "imports or offloaded files) and were left alone")
    return plan


def plan_inline(request: Request, facts_for: FactsLookup) -> Plan:
    """`--inline`: the links under a repository path become real files again (copies of, or hard
    links to, what they point at). The link targets are never removed: they may be a user's
    originals of an in-place import."""
    src, repo = request.src, request.repo
    if not _exists(src):
        raise MvError(EXIT_SRC_MISSING, f"{show(src)} does not exist; nothing was changed")
    if not (is_under(src, repo) or is_under(canonical(src), canonical(repo))):
        raise MvError(EXIT_REPO_OVERLAP, f"--inline works on paths inside the repository "
                      f"{show(repo)}, not {show(src)}")
    links = list(walk_links(src)) if os.path.isdir(src) and not os.path.islink(src) \
        else [(src, os.readlink(src))] if os.path.islink(src) else []
    facts = facts_for([link for link, _ in links])
    steps, dangling, mismatched = [], [], []
    same_fs = True
    for link, target in links:
        st, err = _stat_target(link)
        if err == errno.ELOOP:
            raise _loop_error(link, target)
        if st is None or not os.path.isfile(link):
            dangling.append(link)
            continue
        resolved = os.path.realpath(link)
        if st.st_dev != os.lstat(os.path.dirname(link)).st_dev:
            same_fs = False
        fact = facts.get(link, NO_FACTS)
        _check_size(mismatched, link, st.st_size, fact)
        step = Step("materialize", link, other=resolved, old=target, size=st.st_size,
                    hasher=fact.hasher if fact.hash else None, hash=fact.hash,
                    fileset=fact.fileset)
        _hash_before(step, link, request)
        steps.append(step)
    if not steps:
        raise MvError(EXIT_NO_LINKS, f"no link to a file under {show(src)}; nothing was changed")
    plan = Plan(request, steps, same_fs=same_fs, mismatched=mismatched)
    if dangling:
        plan.notes.append(f"{len(dangling)} dangling link(s) were left alone "
                          "(see omero mv --repair)")
    return plan


def plan_repair(request: Request, facts_for: FactsLookup) -> Plan:
    """Mode 3: dangling repository links, matched to files under the search roots by name (and
    size and hash when the server knows them); unambiguous ones are retargeted."""
    for root in request.search:
        if not os.path.isdir(root):
            raise MvError(EXIT_SRC_MISSING, f"search root {show(root)} is not a directory")
    dangling, loops = [], []
    for link, target in walk_links(request.repo):
        st, err = _stat_target(link)
        if err == errno.ELOOP:
            loops.append((link, target))
        elif st is None:
            dangling.append((link, target))
    plan = Plan(request, [])
    for link, target in loops:
        plan.unresolved.append({"link": link, "target": target, "reason": "symlink loop"})
    if not dangling:
        return plan
    index, in_repo = _name_index(request.search, {os.path.basename(t) for _, t in dangling},
                                 request.repo)
    if in_repo:
        plan.notes.append(f"{in_repo} file(s) of the right name inside the ManagedRepository "
                          "were not considered: a link to another fileset's file breaks when "
                          "that fileset is deleted")
    facts = facts_for([link for link, _ in dangling])
    hashed = hashed_bytes = 0
    for link, target in dangling:
        fact = facts.get(link, NO_FACTS)
        candidates = index.get(os.path.basename(target), [])
        if fact.size is not None:
            candidates = [c for c in candidates if c[1] == fact.size]
        if fact.hash and fact.hasher:
            hashed += len(candidates)
            hashed_bytes += sum(c[1] for c in candidates)
            candidates = [c for c in candidates if checksum(c[0], fact.hasher) == fact.hash]
        chosen = _closest(os.path.normpath(os.path.join(os.path.dirname(link), target)),
                          [c[0] for c in candidates])
        if chosen is None:
            plan.unresolved.append({
                "link": link, "target": target,
                "reason": "no candidate" if not candidates
                else f"ambiguous: {len(candidates)} candidates",
                "candidates": [c[0] for c in candidates][:10]})
            continue
        size = os.stat(chosen).st_size
        step = Step("retarget", link, other=chosen, old=target,
                    new=new_target(target, link, chosen), size=size,
                    hasher=fact.hasher if fact.hash else None, hash=fact.hash,
                    fileset=fact.fileset)
        _hash_before(step, chosen, request)
        plan.steps.append(step)
    if hashed:
        plan.notes.append(f"{hashed} candidate file(s) of the right name and size "
                          f"({hashed_bytes} bytes) were read to compare their checksum with the "
                          "server's record")
    return plan


def _name_index(roots: Iterable[bytes], names: set, repo: bytes
                ) -> Tuple[Dict[bytes, List[Tuple[bytes, int]]], int]:
    """(path, size) of the regular files under `roots` whose name is one of `names`, and how
    many such files were left out because they are inside the repository `repo` (found by
    device and inode, whatever the spelling): a managed file belongs to another fileset, and a
    link to it would break silently when that fileset is deleted."""
    # the root, and directories of it mounted elsewhere (bind mounts): found by identity
    repo_ids = _repo_ids(repo)
    index: Dict[bytes, List[Tuple[bytes, int]]] = {}
    skipped = 0
    stack = [(root, _inside(root, repo_ids)) for root in roots]
    seen = set()
    while stack:
        directory, in_repo = stack.pop()
        try:
            st = os.stat(directory)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            entries = list(os.scandir(directory))
        except OSError:
            continue
        in_repo = in_repo or (st.st_dev, st.st_ino) in repo_ids
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append((entry.path, in_repo))
                elif entry.name in names and entry.is_file(follow_symlinks=False):
                    if in_repo:
                        skipped += 1
                        continue
                    index.setdefault(entry.name, []).append(
                        (os.path.normpath(entry.path), entry.stat().st_size))
            except OSError:
                continue
    return index, skipped


def _inside(path: bytes, idents: set) -> bool:
    """Is `path` one of the directories `idents` (device, inode) or below one? (its resolved
    ancestors)"""
    probe = os.path.realpath(path)
    while True:
        try:
            st = os.stat(probe)
            if (st.st_dev, st.st_ino) in idents:
                return True
        except OSError:
            pass
        parent = os.path.dirname(probe)
        if parent == probe:
            return False
        probe = parent


def _closest(old: bytes, candidates: List[bytes]) -> Optional[bytes]:
    """The one candidate sharing the most trailing path parts with the old target; None when
    there is no candidate or a tie (the user must choose)."""
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        return None
    old_parts = old.split(b"/")[::-1]

    def shared(path: bytes) -> int:
        count = 0
        for a, b in zip(old_parts, path.split(b"/")[::-1]):
            if a != b:
                break
            count += 1
        return count

    scored = sorted(((shared(c), c) for c in candidates), reverse=True)
    if scored[0][0] > scored[1][0]:
        return scored[0][1]
    return None
