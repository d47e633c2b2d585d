"""Walking directory trees with bytes paths: one `os.scandir` per directory, `os.readlink` only
for entries the directory listing already says are symlinks (no stat per file), and never
following a symlinked directory, so a link loop in the tree cannot make the walk loop."""
from __future__ import annotations

import errno
import os
import shlex
import stat
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Tuple

from omero_cli_ext.fsops import is_temp_name
from omero_cli_ext.mv.errors import EXIT_REPO_PERMISSION, EXIT_SRC_MISSING, MvError
from omero_cli_ext.output import printable


def fs_path(path) -> bytes:
    """A path as absolute, normalised bytes (no symlink resolution: the user's spelling stays)."""
    return os.path.normpath(os.path.abspath(os.fsencode(path)))


def is_under(path: bytes, root: bytes) -> bool:
    """True when `path` is `root` or below it (textually, on normalised paths)."""
    return path == root or path.startswith(root.rstrip(b"/") + b"/")


def below(path: bytes, root: bytes) -> bytes:
    """The part of `path` below `root` (b"" for root itself); `path` must be under `root`."""
    return b"" if path == root else path[len(root.rstrip(b"/")) + 1:]


def canonical(path: bytes) -> bytes:
    """The real location of the name `path`: its directory resolved, its last part kept (a link
    named by `path` is the link itself, not what it points at)."""
    head, tail = os.path.split(path)
    return os.path.join(os.path.realpath(head), tail) if tail else os.path.realpath(path)


def walk_links(root: bytes, on_error: Optional[Callable[[OSError], None]] = None
               ) -> Iterator[Tuple[bytes, bytes]]:
    """(link path, stored target) for every symlink under `root` (our own temporaries skipped).

    An unreadable directory raises MvError(EXIT_REPO_PERMISSION) unless `on_error` takes it.
    """
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            links, subdirectories = _read_dir(directory)
        except OSError as exc:
            if on_error is not None:
                on_error(exc)
                continue
            raise _unreadable(directory, exc) from None
        yield from links
        stack.extend(subdirectories)


def split_tree(root: bytes, parts: int) -> Tuple[List[bytes], List[Tuple[bytes, bytes]]]:
    """Cut the tree under `root` into at least `parts` subtrees (when it has that many
    directories), walking its top breadth-first: (subtree roots, links met on the way). Together
    the subtrees' walk_links and those links are walk_links(root)."""
    pending, links = [root], []
    while pending and len(pending) < parts:
        directory = pending.pop(0)
        try:
            found, subdirectories = _read_dir(directory)
        except OSError as exc:
            raise _unreadable(directory, exc) from None
        links += found
        pending += subdirectories
    return pending, links


def _read_dir(directory: bytes) -> Tuple[List[Tuple[bytes, bytes]], List[bytes]]:
    """One directory's (link path, stored target) pairs (our temporaries skipped) and its
    subdirectories (symlinked ones are links), from one scandir: no stat per entry."""
    links, subdirectories = [], []
    with os.scandir(directory) as entries:
        for entry in entries:
            try:
                if entry.is_symlink():
                    if not (entry.name[:1] == b"." and is_temp_name(entry.name)):
                        links.append((entry.path, os.readlink(entry.path)))
                elif entry.is_dir(follow_symlinks=False):
                    subdirectories.append(entry.path)
            except FileNotFoundError:
                continue   # removed while we looked
    return links, subdirectories


def _unreadable(directory: bytes, exc: OSError) -> MvError:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return MvError(EXIT_REPO_PERMISSION,
                       f"permission denied reading {show(directory)}: run as the user that owns "
                       "the repository (usually the OMERO server's user), nothing was changed")
    if exc.errno == errno.ENOENT:
        return MvError(EXIT_SRC_MISSING, f"{show(directory)} does not exist")
    return MvError(EXIT_REPO_PERMISSION, f"cannot read {show(directory)}: {exc.strerror}")


@dataclass(frozen=True)
class Node:
    """One entry of a tree being moved: `rel` below the tree's root (b"" for the root itself)."""
    rel: bytes
    kind: str            # "dir", "file", "link"
    size: int
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    dev: int
    ino: int
    target: Optional[bytes] = None   # for links


def walk_tree(root: bytes) -> List[Node]:
    """Every directory, regular file and symlink under `root` (or `root` itself when it is a
    file), parents before children. Other kinds (sockets, devices) are refused."""
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        raise MvError(EXIT_SRC_MISSING, f"{show(root)} does not exist") from None
    nodes = [_node(b"", st, root)]
    if nodes[0].kind != "dir":
        return nodes
    stack = [b""]
    while stack:
        rel = stack.pop()
        directory = os.path.join(root, rel) if rel else root
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            continue   # removed while the tree was read: nothing of it to move
        except OSError as exc:
            raise _unreadable(directory, exc) from None
        prefix = rel + b"/" if rel else b""
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name[:1] == b"." and is_temp_name(entry.name):
                continue
            child = prefix + entry.name
            try:
                node = _node(child, entry.stat(follow_symlinks=False), entry.path)
            except FileNotFoundError:
                continue   # removed while the tree was read
            nodes.append(node)
            if node.kind == "dir":
                stack.append(child)
    return nodes


def _node(rel: bytes, st: os.stat_result, path: bytes) -> Node:
    if stat.S_ISDIR(st.st_mode):
        kind, target = "dir", None
    elif stat.S_ISREG(st.st_mode):
        kind, target = "file", None
    elif stat.S_ISLNK(st.st_mode):
        kind, target = "link", os.readlink(path)
    else:
        raise MvError(EXIT_SRC_MISSING, f"{show(path)} is neither a file, a directory nor a "
                      "symlink; move it yourself first")
    return Node(rel, kind, st.st_size, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                st.st_mtime_ns, st.st_dev, st.st_ino, target)


# A path for a message: undecodable bytes and control characters (newlines) escaped.
show = printable


def shell_word(word) -> str:
    """A word (text with surrogate escapes, or bytes) as a POSIX shell reads it back byte for
    byte: shell-quoted when it is printable UTF-8, else in bash's $'...' with \\xNN escapes (a
    newline or an undecodable byte in a name still gives a command one can paste)."""
    raw = word if isinstance(word, bytes) else os.fsencode(word)
    try:
        text = raw.decode("utf-8")
        if text.isprintable():
            return shlex.quote(text)
    except UnicodeDecodeError:
        pass
    return "$'" + "".join(chr(b) if 0x20 <= b < 0x7f and b not in (0x27, 0x5c) else f"\\x{b:02x}"
                          for b in raw) + "'"
