"""The repository seen through other mounts: a directory of the ManagedRepository bind-mounted
elsewhere (`mount --bind /OMERO/ManagedRepository/alice_2 /srv/alice`) shows managed files under
another path, with no ancestor that is the repository root. Read from /proc/self/mountinfo
(Linux): each mount names its device and the directory of that filesystem it shows (`root`)."""
from __future__ import annotations

import os
import re
from typing import List, NamedTuple, Optional, Set, Tuple


class Mount(NamedTuple):
    dev: int          # st_dev of what it shows (major:minor)
    root: bytes       # the directory of its filesystem it shows
    point: bytes      # where it is mounted


def unescape(field: bytes) -> bytes:
    """mountinfo writes space, tab, newline and backslash as \\ooo octal escapes."""
    if b"\\" not in field:
        return field
    return re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), field)


def mount_table() -> Optional[List[Mount]]:
    """The mounts of this process's namespace in mount order; None when unknown."""
    try:
        with open("/proc/self/mountinfo", "rb") as table:
            lines = table.read().splitlines()
    except OSError:
        return None
    mounts = []
    for line in lines:
        fields = line.split(b" ")
        if len(fields) < 5:
            continue
        major, _, minor = fields[2].partition(b":")
        try:
            dev = os.makedev(int(major), int(minor))
        except ValueError:
            continue
        mounts.append(Mount(dev, unescape(fields[3]), unescape(fields[4])))
    return mounts


def _within(path: bytes, top: bytes) -> bool:
    return top == b"/" or path == top or path.startswith(top.rstrip(b"/") + b"/")


def filesystem_path(path: bytes, mounts: List[Mount]) -> Optional[Tuple[int, bytes]]:
    """(device, path inside its filesystem) of the directory `path`; None when unknown (the
    mount showing it does not report its device, as on btrfs subvolumes)."""
    real = os.path.realpath(path)
    shown = [m for m in mounts if _within(real, m.point)]
    if not shown:
        return None
    # the deepest mount point wins; of several on one point, the last mounted
    mount = max(enumerate(shown), key=lambda item: (len(item[1].point), item[0]))[1]
    if os.stat(real).st_dev != mount.dev:
        return None
    rest = real[len(mount.point.rstrip(b"/")):].lstrip(b"/")
    return mount.dev, os.path.join(mount.root, rest) if rest else mount.root


def repository_views(repo: bytes) -> Set[Tuple[int, int]]:
    """(device, inode) of every mount point that shows a directory inside the repository (the
    repository's own root included when it is mounted elsewhere whole)."""
    mounts = mount_table()
    if not mounts:
        return set()
    where = filesystem_path(repo, mounts)
    if where is None:
        return set()
    dev, inside = where
    views = set()
    for mount in mounts:
        if mount.dev == dev and _within(mount.root, inside):
            try:
                st = os.stat(mount.point)
            except OSError:
                continue
            views.add((st.st_dev, st.st_ino))
    return views


def canonical_directory(real: bytes) -> bytes:
    """One path for a (resolved) directory whatever mount it is reached through: through the
    mount showing the most of its filesystem (the shortest root; of equals, the first mounted),
    so that a bind mount of the repository, or of a directory above it, finds the same control
    directory, journal and lock as its usual path. `real` itself when the mounts cannot tell."""
    mounts = mount_table()
    where = filesystem_path(real, mounts) if mounts else None
    if where is None:
        return real
    dev, inside = where
    want = os.stat(real)
    showing = [(len(m.root), order, m) for order, m in enumerate(mounts)
               if m.dev == dev and _within(inside, m.root)]
    for _, _, mount in sorted(showing, key=lambda item: item[:2]):
        rest = inside[len(mount.root.rstrip(b"/")):].lstrip(b"/")
        path = os.path.join(mount.point, rest) if rest else mount.point
        try:
            st = os.stat(path)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino):   # not hidden by another mount
            return path
    return real
