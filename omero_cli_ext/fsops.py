"""Crash-safe filesystem primitives shared by `omero mv`, `omero export` and `omero import`.

Every change to a final name is made by writing under a temporary name in the same directory
(`temp_path`), syncing it, and renaming it into place, then syncing the directory: after a crash a
reader finds either the old or the new content under the final name, never a partial one, and the
only debris is a temporary whose name `is_temp_name` recognises (`remove_stale_temps`).

Paths may be `str` or `bytes` (names that are not UTF-8 must survive untouched); functions return
paths of the type they were given.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import os
import re
import secrets
import stat
import zlib
from typing import Callable, Optional

import mmh3

TEMP_PREFIX = ".omero-cli-ext."
_TEMP_NAME = re.compile(rb"^\.omero-cli-ext\.(\d+)\.[0-9a-f]+\.")
_NAME_MAX = 255
_NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# ioctl number of FICLONE (linux/fs.h: _IOW(0x94, 9, int)); the fcntl module names it only on 3.12+
_FICLONE = 0x40049409


class VerifyError(Exception):
    """A copy did not match its source (size) or the expected checksum; the temporary was
    removed and the source left intact."""


class NoSpace(OSError):
    """The destination filesystem is full (ENOSPC) or the quota is exceeded (EDQUOT); the
    temporary was removed and the source left intact."""


class LinkRefused(OSError):
    """The filesystem or the kernel refused a hard link or reflink (cross-device, protected
    hard links, no reflink support). `method` and `reason` say which and why."""

    def __init__(self, err: int, method: str, reason: str, src, dst):
        super().__init__(err, f"{method} link refused: {reason}", _show(src), None, _show(dst))
        self.method = method
        self.reason = reason


def _show(path) -> str:
    """A path as text for messages (undecodable bytes shown as escapes, not dropped)."""
    path = os.fspath(path)
    return os.fsdecode(path).encode("utf-8", "backslashreplace").decode("utf-8")


# --------------------------------------------------------------------------- temporaries

def temp_path(final_path) -> "str | bytes":
    """A fresh temporary name beside `final_path`: TEMP_PREFIX + "<pid>.<random>." + basename.

    Same directory, so the final rename is atomic (never crosses a filesystem). The basename part
    is shortened when needed to stay within NAME_MAX.
    """
    final_path = os.fspath(final_path)
    head, tail = os.path.split(final_path)
    if not tail:
        raise ValueError(f"not a file path (ends with a separator): {_show(final_path)}")
    tag = f"{TEMP_PREFIX}{os.getpid()}.{secrets.token_hex(4)}.".encode("ascii")
    name = tag + os.fsencode(tail)[: _NAME_MAX - len(tag)]
    if isinstance(final_path, bytes):
        return os.path.join(head, name)
    return os.path.join(head, os.fsdecode(name))


def is_temp_name(name) -> bool:
    """True when the basename of `name` is one of our temporaries."""
    return _temp_owner(name) is not None


def _temp_owner(name) -> Optional[int]:
    match = _TEMP_NAME.match(os.fsencode(os.path.basename(os.fspath(name))))
    return int(match.group(1)) if match else None


def process_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def account_name(uid: int) -> Optional[str]:
    """The POSIX account name of `uid`, None when it has none (a uid no passwd entry names)."""
    import pwd
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def remove_stale_temps(directory) -> list:
    """Remove the temporaries a crashed process left in `directory` (not recursive).

    A temporary whose creating process is still alive (per the pid in its name, on this host)
    is in use and kept, as are our own. Returns the removed paths.
    """
    directory = os.fspath(directory)
    removed = []
    with os.scandir(directory) as entries:
        for entry in entries:
            owner = _temp_owner(entry.name)
            if owner is None or owner == os.getpid() or process_alive(owner):
                continue
            if entry.is_dir(follow_symlinks=False):
                continue
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            removed.append(entry.path)
    if removed:
        fsync_dir(directory)
    return removed


def _unlink_quietly(path) -> None:
    """Remove a temporary during error handling; the original error is the one to report."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _parent(path):
    path = os.fspath(path)
    return os.path.dirname(os.path.abspath(path))


# --------------------------------------------------------------------------- reads

class NotRegularFile(OSError):
    """What `read_regular` found is not a plain file to read: a symlink (ELOOP), a FIFO, device
    or directory (EINVAL), or a file larger than the limit (EFBIG). Callers map it to their own
    error and message."""


def read_regular(dir_fd: int, name: str, limit: Optional[int] = None) -> Optional[bytes]:
    """The bytes of the regular file `name` in the directory open as `dir_fd`, None when absent.
    Never through a symlink, never a FIFO or device (O_NOFOLLOW|O_NONBLOCK, then fstat), never
    more than `limit` bytes in memory (a larger file raises): a file someone else controls is
    read safely."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise NotRegularFile(err.errno, "a symlink", name) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(errno.EINVAL, "not a regular file", name)
        if limit is not None and st.st_size > limit:
            raise NotRegularFile(errno.EFBIG, "larger than the limit", name)
        with os.fdopen(fd, "rb", closefd=False) as stream:
            return stream.read() if limit is None else stream.read(limit + 1)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- sync and writes

def fsync_dir(path) -> None:
    """fsync a directory so that the renames and unlinks in it survive a power cut.

    Filesystems that cannot sync a directory (EINVAL, some network filesystems) are accepted.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)


def atomic_symlink(target, link_path) -> None:
    """Point `link_path` at `target`: a new link under a temporary name, `os.replace`d over the
    old one, so a concurrent reader sees the old link or the new one, never no link.

    `target` is stored verbatim (relative stays relative). A directory at `link_path` is never
    replaced (IsADirectoryError).
    """
    tmp = temp_path(link_path)
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link_path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    fsync_dir(_parent(link_path))


def atomic_write(path, data: bytes, mode: int = 0o644) -> None:
    """Replace the file `path` with `data` (write temporary, fsync, rename, fsync directory)."""
    tmp = temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            write_all(fd, data)
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        _unlink_quietly(tmp)
        _raise_no_space(exc, f"writing {_show(path)}", path)
        raise
    fsync_dir(_parent(path))


def _libc_syncfs():
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None


_SYNCFS = _libc_syncfs()
HAS_SYNCFS = _SYNCFS is not None   # else durability needs an fsync per directory touched


def syncfs(fd: int) -> bool:
    """Flush the whole filesystem holding `fd` (Linux syncfs(2)), cheaper than an fsync per
    directory when a run touched thousands; False when there is no syncfs or it failed."""
    return _SYNCFS is not None and _SYNCFS(fd) == 0


def same_filesystem(a, b) -> bool:
    """True when a rename from `a` to `b` stays on one device: st_dev of `a` (not following a
    final symlink) against st_dev of the nearest existing parent directory of `b`.

    Bind mounts of one device compare equal but still refuse rename (EXDEV); `move_file`
    handles that by falling back to a copy.
    """
    dev_a = os.lstat(a).st_dev
    parent = _parent(b)
    while not os.path.exists(parent):
        up = os.path.dirname(parent)
        if up == parent:
            break
        parent = up
    return os.stat(parent).st_dev == dev_a


# --------------------------------------------------------------------------- checksums

class _LittleEndianChecksum:
    """A zlib running checksum shown as Guava shows a 32-bit HashCode (bytes little-endian)."""

    def __init__(self, update: Callable[[bytes, int], int], start: int):
        self._update = update
        self._value = start

    def update(self, data) -> None:
        self._value = self._update(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(4, "little")


class _ByteCount:
    """OMERO's File-Size-64: the number of bytes, as Guava `HashCode.fromLong` (little-endian)."""

    def __init__(self):
        self._size = 0

    def update(self, data) -> None:
        self._size += len(data)

    def digest(self) -> bytes:
        return self._size.to_bytes(8, "little")


_HASHER_FACTORIES = {
    "SHA1-160": hashlib.sha1,
    "MD5-128": hashlib.md5,
    "CRC-32": lambda: _LittleEndianChecksum(zlib.crc32, 0),
    "Adler-32": lambda: _LittleEndianChecksum(zlib.adler32, 1),
    "File-Size-64": _ByteCount,
    "Murmur3-32": lambda: mmh3.mmh3_32(seed=0),
    "Murmur3-128": lambda: mmh3.mmh3_x64_128(seed=0),
}
HASHERS = tuple(_HASHER_FACTORIES)


def new_hasher(hasher: str):
    """A running hash object (`update(bytes)`, `digest()`) for an OMERO ChecksumAlgorithm name.

    OMERO's strings, which `checksum` reproduces (sources: ome/omero-blitz
    `ome/services/blitz/util/ChecksumAlgorithmMapper.java` maps the ChecksumAlgorithm values to
    ome/omero-common `ome.util.checksum.ChecksumType`; `ChecksumProviderFactoryImpl` picks one
    Guava HashFunction per type and `AbstractChecksumProvider.checksumAsString` returns
    `HashCode.toString()`, the hash's bytes in `asBytes()` order as lowercase hex):
      SHA1-160, MD5-128   Hashing.sha1()/md5(): the usual hex digest.
      CRC-32, Adler-32    Hashing.crc32()/adler32(): HashCode.fromInt, so the 32-bit value's
                          bytes little-endian ("abc" → CRC-32 "c2412435", Adler-32 "27014d02").
      File-Size-64        FileSizeChecksumProviderImpl: HashCode.fromLong(size), 8 bytes
                          little-endian ("abc" → "0300000000000000").
      Murmur3-32          Hashing.murmur3_32() seed 0, bytes little-endian ("abc" → "fa93ddb3").
      Murmur3-128         Hashing.murmur3_128() seed 0 (x64 variant), h1 then h2 little-endian
                          ("abc" → "6778ad3f3f3f96b4522dca264174a23b").
    The vectors are those of omero-common's `src/test/java/ome/util/checksum/*Test.java`.
    """
    try:
        return _HASHER_FACTORIES[hasher]()
    except KeyError:
        raise ValueError(f"unknown checksum algorithm {hasher!r}; OMERO's are: "
                         + ", ".join(HASHERS)) from None


def checksum_bytes(data: bytes, hasher: str) -> str:
    """`data`'s checksum as OMERO writes it into OriginalFile.hash for `hasher`."""
    state = new_hasher(hasher)
    state.update(data)
    return state.digest().hex()


def checksum(path, hasher: str, *, chunk: int = 1 << 20) -> str:
    """The file's checksum as OMERO writes it into OriginalFile.hash for `hasher` (see
    `new_hasher`). File-Size-64 needs no read, as in OMERO (`File.length()`)."""
    state = new_hasher(hasher)
    if hasher == "File-Size-64":
        return os.stat(path).st_size.to_bytes(8, "little").hex()
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as stream:
        while True:
            count = stream.readinto(buffer)
            if not count:
                break
            state.update(view[:count])
    return state.digest().hex()


# --------------------------------------------------------------------------- copies and moves

def _raise_no_space(exc: BaseException, doing: str, dst) -> None:
    if isinstance(exc, OSError) and not isinstance(exc, NoSpace) and exc.errno in _NO_SPACE_ERRNOS:
        what = "no space left" if exc.errno == errno.ENOSPC else "disk quota exceeded"
        raise NoSpace(exc.errno, f"{what} on the filesystem of {_show(_parent(dst))} while "
                      f"{doing}; the partial copy was removed and the source is intact",
                      _show(dst)) from exc


def write_all(fd: int, data) -> None:
    """os.write until all of `data` is written (a write may be short)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _copy_data(src_fd: int, dst_fd: int, size: int, state, progress, chunk: int) -> int:
    """Copy up to `size` bytes from src_fd to dst_fd (from their current offsets); returns the
    count, less than `size` when the source turned out shorter. Bounded, so a source that keeps
    growing cannot make it run forever (the caller compares the source's stat before and after).

    Without a hash the kernel copies (copy_file_range) while it makes progress; with a hash
    (or when the kernel cannot) the bytes pass through `state` on their way to the destination.
    """
    copied = 0
    if _is_sparse(os.fstat(src_fd)):
        sparse = _copy_sparse(src_fd, dst_fd, size, state, progress, chunk)
        if sparse is not None:
            return sparse
    if state is None:
        while copied < size:
            try:
                count = os.copy_file_range(src_fd, dst_fd, min(chunk, size - copied))
            except OSError as exc:
                if exc.errno in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP,
                                 errno.EBADF, errno.EPERM) and copied == 0:
                    break
                raise
            if not count:
                break
            copied += count
            if progress:
                progress(count)
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    while copied < size:
        count = os.readv(src_fd, [view[:min(chunk, size - copied)]])
        if not count:
            break
        if state is not None:
            state.update(view[:count])
        write_all(dst_fd, view[:count])
        copied += count
        if progress:
            progress(count)
    return copied


def _is_sparse(st: os.stat_result) -> bool:
    """Fewer blocks allocated than the size needs: the file has holes (SEEK_DATA finds them)."""
    return hasattr(os, "SEEK_DATA") and st.st_blocks * 512 < st.st_size


def _data_extents(src_fd: int, size: int) -> Optional[list]:
    """(start, end) of each data extent of a sparse file (SEEK_DATA / SEEK_HOLE), or None when
    the filesystem cannot tell."""
    extents, offset = [], 0
    try:
        while offset < size:
            try:
                start = os.lseek(src_fd, offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:   # only a hole from here to the end
                    break
                raise
            end = min(os.lseek(src_fd, start, os.SEEK_HOLE), size)
            extents.append((start, end))
            offset = end
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
            return None
        raise
    finally:
        try:
            os.lseek(src_fd, 0, os.SEEK_SET)
        except OSError:
            pass
    return extents


_ZEROS = bytes(1 << 20)


def _copy_sparse(src_fd: int, dst_fd: int, size: int, state, progress, chunk: int
                 ) -> Optional[int]:
    """Copy a sparse file keeping its holes: only the data extents are written (at their
    offsets), the holes pass through `state` as zeros, and the size is set at the end. None when
    the source's extents cannot be read (the caller copies every byte)."""
    extents = _data_extents(src_fd, size)
    if extents is None:
        return None
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    position = 0
    for start, end in extents + [(size, size)]:
        while position < start:   # a hole: zeros for the checksum, nothing written
            step = min(len(_ZEROS), start - position)
            if state is not None:
                state.update(_ZEROS[:step])
            position += step
            if progress:
                progress(step)
        while position < end:
            count = os.preadv(src_fd, [view[:min(chunk, end - position)]], position)
            if not count:
                return position   # the source shrank: the caller sees the short count
            if state is not None:
                state.update(view[:count])
            written = view[:count]
            offset = position
            while written:
                done = os.pwrite(dst_fd, written, offset)
                written, offset = written[done:], offset + done
            position += count
            if progress:
                progress(count)
    os.ftruncate(dst_fd, size)
    return size


def copy_xattrs(src_fd: int, dst_fd: int) -> list:
    """Copy every extended attribute (user.*, security.* labels, POSIX ACLs as
    system.posix_acl_*, trusted.* as root) of one open file to another. Returns the names that
    could not be copied, with why (the destination filesystem does not hold them, or this user
    may not set them): the caller warns; the data is copied either way."""
    if not hasattr(os, "listxattr"):
        return []
    try:
        names = os.listxattr(src_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return []
        raise
    failed = []
    for name in names:
        try:
            os.setxattr(dst_fd, name, os.getxattr(src_fd, name))
        except OSError as exc:
            failed.append(f"{name} ({exc.strerror})")
    return failed


def _copy_metadata(dst_fd: int, st: os.stat_result) -> None:
    """Mode and mtime from `st` (owner too when root; chown first, as it clears set-id bits)."""
    if os.geteuid() == 0:
        os.fchown(dst_fd, st.st_uid, st.st_gid)
    os.fchmod(dst_fd, stat.S_IMODE(st.st_mode))
    os.utime(dst_fd, ns=(st.st_atime_ns, st.st_mtime_ns))


def _copy_to_temp(src_fd: int, tmp, st: os.stat_result, state, preserve: bool,
                  progress, xattrs_lost: Optional[Callable[[list], None]] = None) -> tuple:
    """Create `tmp`, fill it from `src_fd`, set metadata, fsync; returns (copied, size on disk)."""
    dst_fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600 if preserve else 0o666)
    try:
        copied = _copy_data(src_fd, dst_fd, st.st_size, state, progress, 1 << 20)
        if preserve:
            _copy_metadata(dst_fd, st)
            if xattrs_lost is not None:   # after the chmod, which would rewrite an ACL's mask
                lost = copy_xattrs(src_fd, dst_fd)
                if lost:
                    xattrs_lost(lost)
        os.fsync(dst_fd)
        return copied, os.fstat(dst_fd).st_size
    finally:
        os.close(dst_fd)


def copy_verified(src, dst, *, hasher: Optional[str] = None, expected_hash: Optional[str] = None,
                  expected_size: Optional[int] = None, preserve: bool = True,
                  progress: Optional[Callable[[int], None]] = None,
                  xattrs: Optional[Callable[[str], None]] = None) -> Optional[str]:
    """Copy the regular file `src` to `dst` so that `dst` is either absent/old or complete.

    Writes a temporary beside `dst`, syncs it, checks its size against the source (and
    `expected_size`), checks the `hasher` checksum of the copied bytes against `expected_hash`,
    copies mode/mtime (+owner as root) when `preserve`, renames it over `dst` (an existing `dst`,
    even a symlink, is replaced, never followed) and syncs the directory. Returns the checksum
    (None without `hasher`). On any error the temporary is removed and `src` is untouched:
    VerifyError on a mismatch or a source that changed meanwhile, NoSpace when the destination
    is full. `progress(n)` is called with each chunk's byte count. A sparse source is copied
    with its holes. With `xattrs` (and `preserve`), extended attributes (ACLs, SELinux labels,
    user.*) are copied too, and `xattrs(message)` is told which could not be.
    """
    if expected_hash is not None and hasher is None:
        raise ValueError("expected_hash needs the hasher that produced it")
    state = new_hasher(hasher) if hasher else None
    src_fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        before = os.fstat(src_fd)
        if not stat.S_ISREG(before.st_mode):
            raise OSError(errno.EISDIR if stat.S_ISDIR(before.st_mode) else errno.EINVAL,
                          "not a regular file", _show(src))
        if expected_size is not None and before.st_size != expected_size:
            raise VerifyError(f"{_show(src)} has {before.st_size} bytes, expected {expected_size}; "
                              "nothing was copied")
        tmp = temp_path(dst)
        try:
            lost = None if xattrs is None else (lambda names: xattrs(
                f"{_show(dst)}: extended attributes not kept ({', '.join(names)})"))
            copied, written = _copy_to_temp(src_fd, tmp, before, state, preserve, progress, lost)
            after = os.fstat(src_fd)
            if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
                raise VerifyError(f"{_show(src)} changed while it was being copied; copy again")
            if not copied == written == before.st_size:
                raise VerifyError(f"copy of {_show(src)} to {_show(dst)} has {written} bytes, "
                                  f"the source {before.st_size}")
            digest = state.digest().hex() if state is not None else None
            if expected_hash is not None and digest != expected_hash.lower():
                raise VerifyError(f"{hasher} of the copy of {_show(src)} is {digest}, expected "
                                  f"{expected_hash.lower()}; the copy was removed")
            os.replace(tmp, dst)
        except BaseException as exc:
            _unlink_quietly(tmp)
            _raise_no_space(exc, f"copying {_show(src)} to {_show(dst)}", dst)
            raise
    finally:
        os.close(src_fd)
    fsync_dir(_parent(dst))
    return digest


def move_file(src, dst, *, hasher: Optional[str] = None,
              expected_hash: Optional[str] = None) -> str:
    """Move `src` to `dst`; returns "rename" (one filesystem) or "copy" (across filesystems:
    `copy_verified`, then `src` is unlinked last). A symlink moves as a symlink (same target).

    Safe to redo after a crash: when `dst` is already a hard link of `src`, `src` is unlinked.
    """
    src_parent, dst_parent = _parent(src), _parent(dst)
    if same_filesystem(src, dst):
        try:
            os.rename(src, dst)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
        else:
            # rename(2) does nothing when src and dst are links of one inode
            if os.path.lexists(src) and os.path.samestat(os.lstat(src), os.lstat(dst)):
                os.unlink(src)
            fsync_dir(dst_parent)
            if src_parent != dst_parent:
                fsync_dir(src_parent)
            return "rename"
    if os.path.islink(src):
        atomic_symlink(os.readlink(src), dst)
    else:
        copy_verified(src, dst, hasher=hasher, expected_hash=expected_hash)
    os.unlink(src)
    fsync_dir(src_parent)
    return "copy"


LINK_METHODS = ("hard", "reflink", "sym", "copy", "auto")


def _replace_with_link(tmp, dst) -> None:
    """rename `tmp` over `dst`; drop `tmp` when they were already links of one inode."""
    os.replace(tmp, dst)
    if os.path.lexists(tmp):
        os.unlink(tmp)
    fsync_dir(_parent(dst))


def hard_link(src, dst) -> None:
    """Make `dst` a hard link of the file `src` (a symlink is followed), atomically (a temporary
    link renamed over `dst`).

    LinkRefused when the kernel says no for a reason another method avoids: EXDEV (another
    filesystem), EPERM (fs.protected_hardlinks: the caller neither owns `src` nor may read and
    write it; or no hard links on this filesystem), EMLINK (too many links).
    """
    tmp = temp_path(dst)
    try:
        os.link(src, tmp)
    except OSError as exc:
        reason = {
            errno.EXDEV: "source and destination are on different filesystems",
            errno.EPERM: "the kernel refused (fs.protected_hardlinks: not the owner of the "
                         "source and no read/write access to it, or no hard links here)",
            errno.EMLINK: "the source has too many links",
            errno.EOPNOTSUPP: "the filesystem has no hard links",
        }.get(exc.errno)
        if reason is None:
            raise
        raise LinkRefused(exc.errno, "hard", reason, src, dst) from exc
    try:
        _replace_with_link(tmp, dst)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def reflink(src, dst) -> None:
    """Make `dst` a copy-on-write clone of `src` (ioctl FICLONE), atomically, with `src`'s
    mode and mtime. LinkRefused when the filesystem cannot clone (ext4, tmpfs, across devices).
    """
    src_fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(src_fd)
        tmp = temp_path(dst)
        try:
            dst_fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600)
            try:
                try:
                    fcntl.ioctl(dst_fd, _FICLONE, src_fd)
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV,
                                         errno.EINVAL, errno.ENOSYS, errno.EBADF, errno.EPERM):
                        raise
                    raise LinkRefused(exc.errno, "reflink", "the filesystem cannot clone files "
                                      f"(FICLONE: {os.strerror(exc.errno)})", src, dst) from exc
                _copy_metadata(dst_fd, st)
                os.fsync(dst_fd)
            finally:
                os.close(dst_fd)
            os.replace(tmp, dst)
        except BaseException as exc:
            _unlink_quietly(tmp)
            _raise_no_space(exc, f"cloning {_show(src)} to {_show(dst)}", dst)
            raise
    finally:
        os.close(src_fd)
    fsync_dir(_parent(dst))


def link_or_copy(src, dst, method: str = "auto") -> str:
    """Make `dst` a view of the file `src`; returns the method used.

    "hard": hard link; "reflink": copy-on-write clone; "sym": absolute symlink to `src`;
    "copy": `copy_verified`; "auto": hard, else reflink, else copy. An explicit method that
    the kernel refuses raises LinkRefused; "auto" moves on to the next. `dst` is always
    created under a temporary name and renamed into place, so a symlink at `dst` is replaced,
    never followed.
    """
    if method not in LINK_METHODS:
        raise ValueError(f"unknown link method {method!r}; choose one of {', '.join(LINK_METHODS)}")
    if method == "hard":
        hard_link(src, dst)
    elif method == "reflink":
        reflink(src, dst)
    elif method == "sym":
        if not os.path.exists(src):
            raise FileNotFoundError(errno.ENOENT, "no such file", _show(src))
        atomic_symlink(os.path.abspath(src), dst)
    elif method == "copy":
        copy_verified(src, dst)
    else:
        for name, make in (("hard", hard_link), ("reflink", reflink)):
            try:
                make(src, dst)
                return name
            except LinkRefused:
                continue
        copy_verified(src, dst)
        return "copy"
    return method
