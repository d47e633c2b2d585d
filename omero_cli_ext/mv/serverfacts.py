"""What the server knows about the files of an `omero mv` job, through the port: the fileset,
owner, size and checksum of repository files, and the files of one fileset."""
from __future__ import annotations

import os
from typing import Callable, Tuple

from omero_cli_ext import server
from omero_cli_ext.mv.plan import FactsLookup, FileFacts, no_facts
from omero_cli_ext.mv.tree import is_under


def facts_lookup(port, repo: bytes, warn: Callable[[str], None]) -> FactsLookup:
    """FileFacts of repository paths (others left out); without a port, or when the server
    does not answer (a note through `warn`), none."""
    if port is None:
        return no_facts

    def lookup(paths):
        wanted = {}
        for path in paths:
            if is_under(path, repo):
                wanted[os.fsdecode(path[len(repo.rstrip(b"/")) + 1:])] = path
        if not wanted:
            return {}
        try:
            found = port.files_by_repo_paths(list(wanted))
            owners = {f.id: f.owner_name for f in port.filesets(
                {fid for fid, _ in found.values() if fid is not None}).values()}
        except server.ServerError as err:
            warn(f"note: the server did not answer ({err}); continuing without server "
                 "information")
            return {}
        return {wanted[p]: FileFacts(fid, owners.get(fid), f.size, f.hasher, f.hash, f.id)
                for p, (fid, f) in found.items() if p in wanted}
    return lookup


def fileset_files(fileset, repo: bytes) -> Tuple[bytes, tuple]:
    """(the fileset's directory, ((repository file, path below that directory), ...))."""
    prefix = fileset.template_prefix
    files = []
    for entry in fileset.entries:
        repo_path = entry.original_file.repo_path
        rel = repo_path[len(prefix):] if repo_path.startswith(prefix) else repo_path
        files.append((os.path.join(repo, os.fsencode(repo_path.lstrip("/"))),
                      os.fsencode(rel.lstrip("/"))))
    return os.path.join(repo, os.fsencode(prefix.rstrip("/"))), tuple(files)
