"""Path safety: turn server-supplied names (clientPath, container names) into DEST-relative paths
that can only name an entry inside DEST.

A clientPath is whatever the importing client sent; it may hold `..`, absolute prefixes, empty
components, NUL or control characters. Every component is made safe on its own (`safe_component`),
so a path built from them never climbs out of DEST whatever the input; the executor additionally
never follows a symlink inside DEST (see execute.py).
"""
from __future__ import annotations

import functools
import hashlib
import re
from typing import Sequence

# Names this export keeps for itself in DEST: fsops temporaries (".omero-cli-ext.<pid>.<hex>."),
# download parts (".omero-cli-ext.part.<id>") and the manifest. No exported entry may take them.
RESERVED_PREFIX = ".omero-cli-ext"
NAME_MAX = 255
_UNSAFE_CHARS = {c: "_" for c in list(range(0x20)) + [0x7f]}
_UNSAFE_CHARS[ord("/")] = "_"
# short names with nothing to change (fast path): at most 63 characters, so at most 252 bytes
# even of four-byte UTF-8 characters (NAME_MAX counts bytes)
_PLAIN = re.compile(r"[^\x00-\x1f\x7f/]{1,63}")


@functools.lru_cache(maxsize=1 << 16)
def safe_component(name: str) -> str:
    """One path component that names an entry inside its directory and nothing else.

    `.`/`..`/empty become underscores, NUL, control characters and `/` become `_`, our reserved
    prefix gets a leading `_`, and a name longer than NAME_MAX bytes is shortened with a hash
    of the original (so distinct long names stay distinct).
    """
    if name in ("", ".", ".."):
        return "_" * max(1, len(name))
    if _PLAIN.fullmatch(name) and not name.startswith(RESERVED_PREFIX):
        return name
    safe = name.translate(_UNSAFE_CHARS)
    if safe.startswith(RESERVED_PREFIX):
        safe = "_" + safe
    encoded = safe.encode("utf-8", "surrogateescape")
    if len(encoded) > NAME_MAX:
        tag = "~" + hashlib.sha1(encoded).hexdigest()[:12]
        head = encoded[:NAME_MAX - len(tag)].decode("utf-8", "ignore")
        safe = head + tag
    return safe


def client_path_components(client_path: str) -> list:
    """The components of a stored clientPath as the client's filesystem would walk them:
    empty and `.` components dropped (`a//./b` is `a/b`); `..` is kept, to be neutralised by
    `safe_component`, never interpreted."""
    parts = client_path.split("/")
    if "" in parts or "." in parts:
        return [c for c in parts if c not in ("", ".")]
    return parts


def split_common_root(paths: Sequence[Sequence[str]]) -> tuple:
    """(common, rels): the deepest directory all paths share, and each path below it, keeping
    at least the last component (OMERO's ManagedRepositoryI.commonRoot/trimPaths does the same)."""
    if not paths:
        return [], []
    # the lowest and highest paths share exactly the prefix that all paths share
    first, last = min(paths), max(paths)
    limit = min(len(p) for p in paths) - 1
    depth = 0
    while depth < limit and first[depth] == last[depth]:
        depth += 1
    return list(paths[0][:depth]), [list(p[depth:]) for p in paths]


def is_safe_relpath(path: str) -> bool:
    """True when `path` (from a manifest, which the DEST owner could edit) is a "/"-joined
    sequence of components each already safe: nothing that could climb out or hit our names."""
    if not isinstance(path, str) or not path:
        return False
    parts = path.split("/")
    return all(part and safe_component(part) == part for part in parts)
