"""`omero mv`'s arguments as the core reads them: which mode they ask for, whether it needs the
server, the Request it makes, how a path given relative to the repository is meant, and the
command line that reruns a job. Plain values in (an argparse namespace), plain values or
MvError(EXIT_USAGE) out; what the Request needs from the server comes through the caller."""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Optional

from omero_cli_ext.mv.errors import EXIT_USAGE, MvError
from omero_cli_ext.mv.plan import Request
from omero_cli_ext.mv.serverfacts import fileset_files
from omero_cli_ext.mv.tree import canonical, fs_path, is_under, shell_word
from omero_cli_ext.server import parse_id
from omero_cli_ext.workers import default_workers

FILESET = "Fileset:"


def fileset_ref(source: str) -> Optional[int]:
    """The id of a `Fileset:ID` SRC (ASCII digits, an id OMERO can have), else None."""
    return parse_id(source[len(FILESET):]) if source.startswith(FILESET) else None


def _usage(message: str) -> MvError:
    return MvError(EXIT_USAGE, message)


def choose_mode(a) -> str:
    """abandon, status, execute-plan, repair, inline, links-only, offload (Fileset:ID) or path
    (a move, or an offload when SRC is inside the repository)."""
    chosen = [flag for flag, on in (("--links-only", a.links_only), ("--inline", a.inline),
                                    ("--repair", a.repair), ("--abandon", a.abandon),
                                    ("--status", a.status), ("--execute-plan", a.execute_plan),
                                    ("--plan", a.plan)) if on]
    if len(chosen) > 1:
        raise _usage(f"choose one of {', '.join(chosen)}")
    if a.abandon:
        return "abandon"
    if a.status:
        return "status"
    if a.execute_plan:
        if a.source or a.destination or a.search:
            raise _usage("--execute-plan takes no SRC/DST: they are in the plan")
        return "execute-plan"
    if a.repair:
        if a.source or a.destination:
            raise _usage("--repair takes no SRC/DST; name where to look with --search")
        if not a.search:
            raise _usage("--repair needs at least one --search DIR")
        return "repair"
    if a.search:
        raise _usage("--search goes with --repair")
    if a.inline:
        if not a.source or a.destination:
            raise _usage("--inline takes one repository path: omero mv --inline PATH")
        _check_fileset_ref(a.source)
        return "inline"
    if not a.source or not a.destination:
        raise _usage("usage: omero mv SRC DST (see omero mv -h)")
    _check_fileset_ref(a.source)
    if a.links_only:
        return "links-only"
    if fileset_ref(a.source) is not None:
        return "offload"
    return "path"


def _check_fileset_ref(source: str) -> None:
    """`Fileset:abc`, `Fileset:-1`, `fileset:3`, an id beyond OMERO's longs: a mistyped Fileset:ID,
    not a path (unless a file of that name exists)."""
    if source.lower().startswith(FILESET.lower()) and fileset_ref(source) is None \
            and not os.path.lexists(source):
        raise _usage(f"{source} is not Fileset:ID (the id is a number) and no such path exists")


def needs_server(mode: str, a) -> bool:
    """Offloading, inlining a Fileset:ID and the render checks ask the server."""
    return mode == "offload" or render_checking(a) \
        or (mode == "inline" and fileset_ref(a.source) is not None)


def render_checking(a) -> bool:
    return a.render_check or a.render_check_all


def request_for(mode: str, a, repo: bytes, readable_fileset: Callable[[int], object],
                check_offload_rights: Callable[[], None]) -> Request:
    """The Request `mode`'s arguments make, with the processes it may use. The server's part is
    the caller's, which ends the command when the server says no: `readable_fileset(id)` (the
    fileset as the port gives it) and `check_offload_rights()`."""
    return dataclasses.replace(_request(mode, a, repo, readable_fileset, check_offload_rights),
                               workers=a.workers or default_workers(),
                               skip_mismatched=a.skip_mismatched)


def _request(mode: str, a, repo: bytes, readable_fileset: Callable[[int], object],
             check_offload_rights: Callable[[], None]) -> Request:
    checksums = a.verify == "checksum"
    if mode == "repair":
        return Request("repair", repo, search=tuple(fs_path(s) for s in a.search),
                       checksums=checksums)
    if mode == "offload":
        fileset_id, dst = fileset_ref(a.source), fs_path(a.destination)
        check_offload_rights()
        src, files = fileset_files(readable_fileset(fileset_id), repo)
        return Request("offload", repo, src=src, dst=dst, fileset=fileset_id,
                       fileset_files=files, checksums=checksums, force=a.force)
    fileset_id = fileset_ref(a.source) if mode == "inline" else None
    if fileset_id is not None:
        prefix = readable_fileset(fileset_id).template_prefix
        return Request("inline", repo, src=os.path.join(repo, os.fsencode(prefix.rstrip("/"))),
                       checksums=checksums, force=a.force, fileset=fileset_id)
    src = repo_path(a.source, repo)
    if mode == "inline":
        return Request("inline", repo, src=src, checksums=checksums, force=a.force)
    dst = fs_path(a.destination)
    if mode == "links-only":
        return Request("links-only", repo, src=src, dst=dst, checksums=checksums)
    inside = (is_under(src, repo) or is_under(canonical(src), canonical(repo))) \
        and src != repo and canonical(src) != canonical(repo)
    if inside:
        check_offload_rights()
        return Request("offload", repo, src=src, dst=dst, checksums=checksums, force=a.force)
    return Request("move", repo, src=src, dst=dst, force=a.force, checksums=checksums)


def repo_path(given: str, repo: bytes) -> bytes:
    """A path as given; a relative one that exists only below the repository means that."""
    path = fs_path(given)
    raw = os.fsencode(given)
    if not os.path.isabs(raw) and not os.path.lexists(path) \
            and os.path.lexists(os.path.join(repo, raw)):
        return os.path.normpath(os.path.join(repo, raw))
    return path


def command_line(a) -> str:
    """The command that reruns (and so resumes) the job these arguments started."""
    words = ["omero", "mv"]
    for flag, on in (("--links-only", a.links_only), ("--inline", a.inline),
                     ("--repair", a.repair), ("--force", a.force), ("--no-server", a.no_server),
                     ("--skip-mismatched", a.skip_mismatched)):
        if on:
            words.append(flag)
    for root in a.search:
        words += ["--search", root]
    if a.repo:
        words += ["--repo", a.repo]
    if a.journal:
        words += ["--journal", a.journal]
    if a.execute_plan:
        words += ["--execute-plan", a.execute_plan]
    words += [w for w in (a.source, a.destination) if w]
    return " ".join(shell_word(w) for w in words)
