"""`omero mv`'s arguments as the core reads them: which mode they ask for, how a path given
relative to the repository is meant, and the command line that reruns a job. Plain values in
(an argparse namespace), plain values or MvError(EXIT_USAGE) out."""
from __future__ import annotations

import os
import re

from omero_cli_ext.mv.errors import EXIT_USAGE, MvError
from omero_cli_ext.mv.tree import fs_path, shell_word

FILESET_REF = re.compile(r"^Fileset:(\d+)$")


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
        return "inline"
    if not a.source or not a.destination:
        raise _usage("usage: omero mv SRC DST (see omero mv -h)")
    if a.links_only:
        return "links-only"
    if FILESET_REF.match(a.source):
        return "offload"
    return "path"


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
