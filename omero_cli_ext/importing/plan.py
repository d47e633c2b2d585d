"""The plan of a job: the importer's fileset grouping (`-f --output=yaml`), sizes, chunks.

The listing is parsed line by line rather than with a YAML parser: the Java importer
(ImportCandidates.printYaml) prints paths unquoted, so a file named `a: b`, `#1` or `*x` would
be misread by YAML, while its fixed layout (`- group: PATH`, `  spw:`, `  reader:`, `  files:`,
`   - PATH`) is unambiguous. Lines before the first `---` (login chatter) are ignored.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

from omero_cli_ext.importing.store import PlannedFileset
from omero_cli_ext.output import printable
from omero_cli_ext.pathrules import client_path

NOTHING_IMPORTABLE_RC = 125     # CommandLineImporter -f: no import candidates found
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(i?B)?\s*$", re.I)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


class PlanError(Exception):
    """The listing or the files it names cannot make a plan; the message says why."""


@dataclass(frozen=True)
class Group:
    """One import candidate as the importer listed it."""
    main: str
    files: tuple
    reader: str
    spw: bool


def parse_size(text: str) -> int:
    """`500G`, `2T`, `1.5GiB`, `1048576` → bytes (binary units: K = 1024)."""
    match = _SIZE.match(text or "")
    if not match:
        raise ValueError(f"not a size: {text!r} (use e.g. 500G, 2T or a number of bytes)")
    value = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if value <= 0:
        raise ValueError(f"a size must be more than 0, got {text!r}")
    return value


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$", re.I)
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text) -> float:
    """`90`, `90s`, `30m`, `12h`, `2d` -> seconds (more than 0)."""
    match = _DURATION.match(str(text))
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"not a duration: {text!r} (use e.g. 900, 30m, 12h)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]


def parse_groups(lines: Iterable[str]) -> list:
    """Groups from the `-f --output=yaml` listing."""
    groups: list = []
    current: Optional[dict] = None
    in_files = False
    started = False

    def close():
        if current is not None:
            if not current["files"]:
                current["files"].append(current["main"])
            groups.append(Group(current["main"], tuple(current["files"]), current["reader"],
                                current["spw"]))

    for raw in lines:
        line = raw.rstrip("\r\n")
        if not started:
            started = line.strip() == "---"
            continue
        if line.startswith("- group: "):
            close()
            current = {"main": line[len("- group: "):], "files": [], "reader": "", "spw": False}
            in_files = False
        elif current is None:
            continue
        elif line.startswith("  spw: "):
            current["spw"] = line[len("  spw: "):].strip().lower() == "true"
        elif line.startswith("  reader: "):
            current["reader"] = line[len("  reader: "):].strip()
        elif line.rstrip() == "  files:":
            in_files = True
        elif in_files and line.lstrip(" ").startswith("- ") and line.startswith("   "):
            current["files"].append(line.lstrip(" ")[2:])
    close()
    return groups


def new_groups(groups: Sequence[Group], known_files: set) -> list:
    """The groups of a new listing none of whose files is in the plan yet (--rescan)."""
    return [g for g in groups if not any(f in known_files for f in g.files)]


def check_server_names(groups: Sequence[Group], known_files: Iterable[str] = ()) -> None:
    """Refuse files that reach the server under the same name (`a:b` and `a;b`, `CON` and
    `CON_`, names differing only in bytes that are not UTF-8): the server's entries could not
    tell their filesets apart, so one would be counted done for the other."""
    seen = {client_path(f): f for f in known_files}
    for group in groups:
        for path in group.files:
            name = client_path(path)
            other = seen.setdefault(name, path)
            if other != path:
                raise PlanError(f"{printable(other)} and {printable(path)} reach the server under "
                                f"the same name (/{name}): rename one of them")


def file_sizes(groups: Sequence[Group]) -> dict:
    """Size of every listed file (following symlinks, as the importer reads them)."""
    sizes = {}
    for group in groups:
        for path in group.files:
            if path not in sizes:
                try:
                    sizes[path] = os.stat(path).st_size
                except OSError as err:
                    raise PlanError(f"cannot read {path}: {err.strerror}") from None
    return sizes


def chunk_filesets(groups: Sequence[Group], sizes: dict, chunk_size: Optional[int],
                   chunk_bytes: Optional[int], first_idx: int = 0, first_chunk: int = 0) -> list:
    """Planned filesets in listing order, cut into chunks of at most `chunk_size` filesets and
    `chunk_bytes` bytes, whichever fills first (a fileset larger than `chunk_bytes` gets a chunk
    of its own). Indexes and chunks are numbered from `first_idx` and `first_chunk`."""
    planned = []
    chunk, count, total = first_chunk, 0, 0
    for idx, group in enumerate(groups, start=first_idx):
        size = sum(sizes[f] for f in group.files)
        if count and ((chunk_size and count >= chunk_size)
                      or (chunk_bytes and total + size > chunk_bytes)):
            chunk, count, total = chunk + 1, 0, 0
        planned.append(PlannedFileset(idx=idx, main=group.main, files=group.files, size=size,
                                      reader=group.reader, spw=group.spw, chunk=chunk))
        count, total = count + 1, total + size
    return planned

