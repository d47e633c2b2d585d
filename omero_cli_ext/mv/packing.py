"""A compact, safe encoding of plan steps for the journal: a few thousand steps per BLOB.

A plan is written whole before the first change, so its cost is paid up front: one SQLite row
per step cost ~3.5 µs (0.7 s for a relink of 200k links), a pack of 4096 steps costs less than
a row of them did. The encoding is by column: the path columns are NUL-joined (a path or a link
target never holds NUL and is never empty, so the empty string stands for None), the others are
JSON lists, or one value when a column holds just one (a relink's `kind` and `state`); the
whole is zlib-compressed (paths repeat their prefixes: 50 MB of paths become ~2 MB). Nothing in
it is executed when read, unlike pickle, so a shared journal cannot be made to run code.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import zlib
from operator import attrgetter
from typing import List, Sequence

from omero_cli_ext.journal import JournalError
from omero_cli_ext.mv.plan import Step

FORMAT = 1
STEPS_PER_PACK = 4096
_FIELDS = tuple(f.name for f in dataclasses.fields(Step) if f.name != "seq")
_PATH_FIELDS = ("path", "other", "old", "new")   # in Step's order, which is the blocks' order


class PackError(JournalError):
    """A pack that does not decode: the journal was damaged or written by something else."""


def pack_steps(steps: Sequence[Step]) -> bytes:
    """Encode `steps` (their seq is not stored: a pack holds consecutive ones)."""
    count = len(steps)
    header = {"format": FORMAT, "count": count, "columns": {}, "paths": {}}
    blocks = []
    for name in _FIELDS:
        column = list(map(attrgetter(name), steps))
        if name in _PATH_FIELDS:
            if column.count(None) == count:
                header["paths"][name] = None
                continue
            if b"" in column:
                raise ValueError(f"a step's {name} is empty")
            block = b"\0".join([value or b"" for value in column])
            header["paths"][name] = len(block)
            blocks.append(block)
        elif count and column.count(column[0]) == count:
            header["columns"][name] = {"all": column[0]}
        else:
            header["columns"][name] = {"each": column}
    head = json.dumps(header, separators=(",", ":")).encode("ascii")
    return zlib.compress(b"\n".join([head, b"".join(blocks)]), 1)


def unpack_steps(data: bytes, first_seq: int) -> List[Step]:
    """The steps of one pack, numbered from `first_seq`."""
    try:
        head, _, body = zlib.decompress(data).partition(b"\n")
        header = json.loads(head)
        if header.get("format") != FORMAT:
            raise ValueError(f"format {header.get('format')!r}, expected {FORMAT}")
        count = header["count"]
        columns = [_column(name, header, body, count) for name in _FIELDS]
    except (zlib.error, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise PackError(f"a journal step pack does not decode ({exc})") from None
    return list(map(Step, *columns, range(first_seq, first_seq + count)))


def _column(name: str, header: dict, body: bytes, count: int):
    if name in _PATH_FIELDS:
        lengths = header["paths"]
        if lengths[name] is None:
            return itertools.repeat(None, count)
        offset = sum(lengths[n] or 0 for n in _PATH_FIELDS[:_PATH_FIELDS.index(name)])
        values = [value or None for value in body[offset:offset + lengths[name]].split(b"\0")]
    else:
        spec = header["columns"][name]
        if "all" in spec:
            return itertools.repeat(spec["all"], count)
        values = spec["each"]
    if len(values) != count:
        raise ValueError(f"column {name} has {len(values)} values, expected {count}")
    return values
