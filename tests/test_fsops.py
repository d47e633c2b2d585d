"""fsops: OMERO checksums, atomic links and writes, verified copies and moves, link fallbacks."""
import errno
import os
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading

import pytest

from omero_cli_ext import fsops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IS_ROOT = os.geteuid() == 0


def _fake_text(count):
    """The test files of omero-common's AbstractChecksumProviderAlgorithmTest."""
    return "".join(f"fake{index}" for index in range(count)).encode()


# Vectors of ome/omero-common src/test/java/ome/util/checksum/*ChecksumProviderImplTest.java:
# (hasher, "abc", empty, small file, medium file, big file)
OMERO_VECTORS = [
    ("SHA1-160", "a9993e364706816aba3e25717850c26c9cd0d89d",
     "da39a3ee5e6b4b0d3255bfef95601890afd80709", "af35647108cada855e1ca08472c2a831cce91a29",
     "a61d742dba0a4cd423de603e6c3890e0f856bb9c", "b3987d3ffac6ad41fee258e8cc99fc89e29ae98f"),
    ("MD5-128", "900150983cd24fb0d6963f7d28e17f72", "d41d8cd98f00b204e9800998ecf8427e",
     "afedcd324960f93c20b726c81b8d216a", "5e44e9bc9e91274731b8541e3e1fd687",
     "e96cd8050b7e09202c395530435f208d"),
    ("CRC-32", "c2412435", "00000000", "ef618578", "b063fbf0", "1d3e3cb6"),
    ("Adler-32", "27014d02", "01000000", "f4110fcc", "21c664bf", "ed88e87d"),
    ("File-Size-64", "0300000000000000", "0000000000000000", "3200000000000000",
     "4e02000000000000", "ea1a000000000000"),
    ("Murmur3-32", "fa93ddb3", "00000000", "f87d658b", "1c9036cf", "f9c16f3b"),
    ("Murmur3-128", "6778ad3f3f3f96b4522dca264174a23b", "00000000000000000000000000000000",
     "2a9db2bec362cb22bf016c06722b24d7", "2858bd6075ed06228c0ba4ba75ae8ef9",
     "7535f4b378b3aec8dc3f4cffdc44ba6e"),
]


def _files_in(directory):
    return sorted(os.listdir(directory))


def _write(path, data, mode=0o644):
    with open(path, "wb") as stream:
        stream.write(data)
    os.chmod(path, mode)
    return path


# --------------------------------------------------------------------------- checksums

@pytest.mark.parametrize("hasher, abc, empty, small, medium, big", OMERO_VECTORS)
def test_checksums_match_omero_vectors(tmp_path, hasher, abc, empty, small, medium, big):
    assert fsops.checksum_bytes(b"abc", hasher) == abc
    assert fsops.checksum_bytes(b"", hasher) == empty
    for count, expected in ((10, small), (100, medium), (1000, big)):
        path = _write(tmp_path / f"{count}.fake", _fake_text(count))
        assert fsops.checksum(path, hasher) == expected
        assert fsops.checksum(path, hasher, chunk=7) == expected  # chunk borders change nothing
        assert fsops.checksum_bytes(_fake_text(count), hasher) == expected


def test_hashers_are_omeros_checksum_algorithms():
    from omero_cli_ext import server
    assert sorted(fsops.HASHERS) == sorted(server.HASHERS)


def test_unknown_hasher_is_refused_with_the_known_names(tmp_path):
    with pytest.raises(ValueError, match="unknown checksum algorithm 'SHA-256'.*SHA1-160"):
        fsops.checksum_bytes(b"", "SHA-256")
    src = _write(tmp_path / "src", b"data")
    with pytest.raises(ValueError):
        fsops.copy_verified(src, tmp_path / "dst", hasher="sha1")
    assert _files_in(tmp_path) == ["src"]


# --------------------------------------------------------------------------- temporaries

def test_temp_path_is_beside_the_final_name_and_recognised(tmp_path):
    final = os.path.join(tmp_path, "name with space\nand newline")
    temp = fsops.temp_path(final)
    assert os.path.dirname(temp) == str(tmp_path)
    name = os.path.basename(temp)
    assert name.startswith(f"{fsops.TEMP_PREFIX}{os.getpid()}.")
    assert name.endswith("name with space\nand newline")
    assert fsops.is_temp_name(temp) and not fsops.is_temp_name(final)
    assert fsops.temp_path(final) != temp
    assert not fsops.is_temp_name(".omero-cli-ext.notapid.x")


def test_temp_path_keeps_bytes_and_stays_within_name_max(tmp_path):
    final = os.path.join(os.fsencode(tmp_path), b"caf\xe9-latin1")
    temp = fsops.temp_path(final)
    assert isinstance(temp, bytes) and temp.endswith(b"caf\xe9-latin1")
    assert fsops.is_temp_name(temp)
    long_name = os.path.join(tmp_path, "\u00e9" * 127)  # 254 bytes in UTF-8
    temp = fsops.temp_path(long_name)
    assert len(os.fsencode(os.path.basename(temp))) <= 255
    open(temp, "w").close()  # the shortened name is a valid file name


def _run_child(code, *args):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_a_copy_killed_midway_leaves_only_a_temporary_that_cleanup_removes(tmp_path):
    src = _write(tmp_path / "src.bin", os.urandom(3 << 20))
    dst_dir = tmp_path / "out"
    dst_dir.mkdir()
    _write(dst_dir / "keep.txt", b"not ours")
    child = _run_child("""
        import os, signal, sys
        from omero_cli_ext import fsops
        def die(count):
            os.kill(os.getpid(), signal.SIGKILL)
        fsops.copy_verified(sys.argv[1], sys.argv[2], hasher="SHA1-160", progress=die)
        """, src, dst_dir / "dst.bin")
    assert child.returncode == -signal.SIGKILL, child.stderr
    left = _files_in(dst_dir)
    assert "dst.bin" not in left and len(left) == 2
    removed = fsops.remove_stale_temps(dst_dir)
    assert [os.path.basename(path) for path in removed] == [name for name in left
                                                            if fsops.is_temp_name(name)]
    assert _files_in(dst_dir) == ["keep.txt"]
    assert os.path.getsize(src) == 3 << 20


def test_cleanup_keeps_temporaries_of_live_processes(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f"{fsops.TEMP_PREFIX}{sleeper.pid}.abcd1234.file"
        mine = fsops.temp_path(tmp_path / "file")
        for path in (live, mine):
            open(path, "w").close()
        assert fsops.remove_stale_temps(tmp_path) == []
        assert len(_files_in(tmp_path)) == 2
    finally:
        sleeper.kill()
        sleeper.wait()
    assert fsops.remove_stale_temps(tmp_path) == [str(live)]


# --------------------------------------------------------------------------- atomic symlink / write

def test_atomic_symlink_replaces_without_a_gap_for_a_concurrent_reader(tmp_path):
    targets = [str(tmp_path / "a"), "relative/b"]
    link = str(tmp_path / "link")
    fsops.atomic_symlink(targets[0], link)
    seen, missing, stop = set(), [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                seen.add(os.readlink(link))
            except FileNotFoundError:
                missing.append(1)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for index in range(1000):
            fsops.atomic_symlink(targets[index % 2], link)
    finally:
        stop.set()
        thread.join()
    assert missing == []
    assert seen == set(targets)
    assert os.readlink(link) == targets[1]  # relative targets are stored verbatim
    assert _files_in(tmp_path) == ["link"]


def test_atomic_symlink_with_bytes_names_and_over_a_directory(tmp_path):
    link = os.path.join(os.fsencode(tmp_path), b"l\xffnk\nname")
    fsops.atomic_symlink(b"/data/\xfe", link)
    assert os.readlink(link) == b"/data/\xfe"
    (tmp_path / "dir").mkdir()
    with pytest.raises(OSError) as raised:
        fsops.atomic_symlink("/x", tmp_path / "dir")
    assert raised.value.errno in (errno.EISDIR, errno.ENOTDIR, errno.ENOTEMPTY, errno.EEXIST)
    assert sorted(_files_in(os.fsencode(tmp_path))) == [b"dir", b"l\xffnk\nname"]


def test_atomic_write_replaces_content_and_sets_mode(tmp_path):
    path = tmp_path / "file"
    fsops.atomic_write(path, b"one")
    fsops.atomic_write(path, b"two", mode=0o600)
    assert path.read_bytes() == b"two"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert _files_in(tmp_path) == ["file"]


def test_same_filesystem_looks_at_the_nearest_existing_parent(tmp_path, tmpfs):
    src = _write(tmp_path / "src", b"x")
    assert fsops.same_filesystem(src, tmp_path / "not" / "yet" / "there")
    assert not fsops.same_filesystem(src, os.path.join(tmpfs, "new", "deeper"))


# --------------------------------------------------------------------------- verified copy

def test_copy_verified_preserves_mode_mtime_and_returns_the_hash(tmp_path):
    data = os.urandom(2_500_000)
    src = _write(tmp_path / "src", data, mode=0o640)
    os.utime(src, ns=(1_000_000_000_123_456_789, 1_500_000_000_987_654_321))
    chunks = []
    digest = fsops.copy_verified(src, tmp_path / "dst", hasher="MD5-128",
                                 expected_hash=fsops.checksum_bytes(data, "MD5-128").upper(),
                                 expected_size=len(data), progress=chunks.append)
    assert digest == fsops.checksum_bytes(data, "MD5-128")
    assert sum(chunks) == len(data)
    copied = os.stat(tmp_path / "dst")
    assert stat.S_IMODE(copied.st_mode) == 0o640
    assert copied.st_mtime_ns == 1_500_000_000_987_654_321
    assert (tmp_path / "dst").read_bytes() == data
    assert _files_in(tmp_path) == ["dst", "src"]


def test_copy_verified_without_hash_uses_the_default_mode_when_not_preserving(tmp_path):
    src = _write(tmp_path / "src", b"payload", mode=0o600)
    assert fsops.copy_verified(src, tmp_path / "dst", preserve=False) is None
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "dst").st_mode) == 0o666 & ~umask
    assert (tmp_path / "dst").read_bytes() == b"payload"


@pytest.mark.skipif(not IS_ROOT, reason="chown to another user needs root")
def test_copy_verified_preserves_the_owner_as_root(tmp_path):
    src = _write(tmp_path / "src", b"owned")
    os.chown(src, 65534, 65534)
    fsops.copy_verified(src, tmp_path / "dst")
    copied = os.stat(tmp_path / "dst")
    assert (copied.st_uid, copied.st_gid) == (65534, 65534)


def test_copy_verified_refuses_a_wrong_hash_or_size_and_leaves_nothing(tmp_path):
    src = _write(tmp_path / "src", b"the original")
    with pytest.raises(fsops.VerifyError, match="SHA1-160 of the copy of .*src is .*expected 00"):
        fsops.copy_verified(src, tmp_path / "dst", hasher="SHA1-160", expected_hash="00" * 20)
    with pytest.raises(fsops.VerifyError, match="has 12 bytes, expected 13"):
        fsops.copy_verified(src, tmp_path / "dst", expected_size=13)
    assert _files_in(tmp_path) == ["src"]
    assert (tmp_path / "src").read_bytes() == b"the original"


def test_copy_verified_notices_a_source_that_changes_during_the_copy(tmp_path):
    src = _write(tmp_path / "src", os.urandom(3 << 20))

    def grow(count):
        with open(src, "ab") as stream:
            stream.write(b"late")

    with pytest.raises(fsops.VerifyError, match="changed while it was being copied"):
        fsops.copy_verified(src, tmp_path / "dst", progress=grow)
    assert _files_in(tmp_path) == ["src"]


def test_copy_verified_replaces_a_symlink_at_dst_without_following_it(tmp_path):
    src = _write(tmp_path / "src", b"new content")
    victim = _write(tmp_path / "victim", b"must stay")
    os.symlink(victim, tmp_path / "dst")
    fsops.copy_verified(src, tmp_path / "dst")
    assert not os.path.islink(tmp_path / "dst")
    assert (tmp_path / "dst").read_bytes() == b"new content"
    assert victim.read_bytes() == b"must stay"


def test_copy_verified_refuses_a_directory(tmp_path):
    (tmp_path / "dir").mkdir()
    with pytest.raises(OSError, match="not a regular file"):
        fsops.copy_verified(tmp_path / "dir", tmp_path / "dst")
    assert _files_in(tmp_path) == ["dir"]


def test_copy_and_move_with_non_utf8_and_newline_names(tmp_path):
    base = os.fsencode(tmp_path)
    src = os.path.join(base, b"src \xff\nname")
    _write(src, b"bytes")
    assert fsops.copy_verified(src, os.path.join(base, b"copy \xfe"), hasher="CRC-32") \
        == fsops.checksum_bytes(b"bytes", "CRC-32")
    assert fsops.move_file(src, os.path.join(base, b"moved\n\xfd")) == "rename"
    assert sorted(os.listdir(base)) == [b"copy \xfe", b"moved\n\xfd"]


# --------------------------------------------------------------------------- cross-filesystem

@pytest.fixture
def tmpfs():
    """A 1 MiB tmpfs: another filesystem, small enough to fill."""
    if not IS_ROOT:
        pytest.skip("mounting a tmpfs needs root")
    mountpoint = tempfile.mkdtemp(prefix="omero-cli-ext-tmpfs-")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mountpoint],
                             capture_output=True, text=True)
    if mounted.returncode:
        os.rmdir(mountpoint)
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", mountpoint], check=True)
        os.rmdir(mountpoint)


def test_move_across_filesystems_copies_verifies_then_unlinks(tmp_path, tmpfs):
    data = os.urandom(300_000)
    src = _write(tmp_path / "src", data, mode=0o604)
    os.utime(src, ns=(5, 1_400_000_000_000_000_000))
    dst = os.path.join(tmpfs, "dst")
    assert fsops.move_file(src, dst, hasher="SHA1-160",
                           expected_hash=fsops.checksum_bytes(data, "SHA1-160")) == "copy"
    assert not os.path.exists(src)
    assert open(dst, "rb").read() == data
    assert stat.S_IMODE(os.stat(dst).st_mode) == 0o604
    assert os.stat(dst).st_mtime_ns == 1_400_000_000_000_000_000
    assert _files_in(tmpfs) == ["dst"]


def test_move_across_filesystems_keeps_the_source_when_the_hash_differs(tmp_path, tmpfs):
    src = _write(tmp_path / "src", b"content")
    with pytest.raises(fsops.VerifyError):
        fsops.move_file(src, os.path.join(tmpfs, "dst"), hasher="Adler-32",
                        expected_hash="ffffffff")
    assert (tmp_path / "src").read_bytes() == b"content"
    assert _files_in(tmpfs) == []


def test_move_of_a_symlink_across_filesystems_keeps_its_target(tmp_path, tmpfs):
    os.symlink("../relative/target", tmp_path / "link")
    assert fsops.move_file(tmp_path / "link", os.path.join(tmpfs, "link")) == "copy"
    assert os.readlink(os.path.join(tmpfs, "link")) == "../relative/target"
    assert not os.path.lexists(tmp_path / "link")


@pytest.mark.parametrize("how", ["copy_verified", "move_file"])
def test_full_destination_raises_no_space_and_leaves_no_partial_file(tmp_path, tmpfs, how):
    data = os.urandom(2 << 20)
    src = _write(tmp_path / "big source", data)
    dst = os.path.join(tmpfs, "big copy")
    with pytest.raises(fsops.NoSpace) as raised:
        getattr(fsops, how)(src, dst, hasher="SHA1-160")
    assert raised.value.errno == errno.ENOSPC
    assert "no space left" in str(raised.value) and tmpfs in str(raised.value)
    assert "source is intact" in str(raised.value)
    assert _files_in(tmpfs) == []
    assert (tmp_path / "big source").read_bytes() == data


def test_hard_link_across_filesystems_is_refused_or_falls_back_to_copy(tmp_path, tmpfs):
    src = _write(tmp_path / "src", b"linked?")
    with pytest.raises(fsops.LinkRefused) as raised:
        fsops.link_or_copy(src, os.path.join(tmpfs, "hard"), "hard")
    assert raised.value.errno == errno.EXDEV and raised.value.method == "hard"
    assert "different filesystems" in str(raised.value)
    assert fsops.link_or_copy(src, os.path.join(tmpfs, "auto")) == "copy"
    assert open(os.path.join(tmpfs, "auto"), "rb").read() == b"linked?"
    assert _files_in(tmpfs) == ["auto"]


def test_reflink_is_refused_where_the_filesystem_cannot_clone(tmp_path, tmpfs):
    src = _write(os.path.join(tmpfs, "src"), b"clone me")
    with pytest.raises(fsops.LinkRefused) as raised:
        fsops.reflink(src, os.path.join(tmpfs, "clone"))
    assert raised.value.method == "reflink"
    with pytest.raises(fsops.LinkRefused):
        fsops.link_or_copy(_write(tmp_path / "other", b"x"), os.path.join(tmpfs, "c"), "reflink")
    assert _files_in(tmpfs) == ["src"]


@pytest.fixture
def readonly_dir(tmp_path):
    """A directory nobody can write into: a read-only tmpfs as root, mode 0555 otherwise."""
    path = tempfile.mkdtemp(prefix="omero-cli-ext-ro-")
    if IS_ROOT:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,ro", "tmpfs", path],
                                 capture_output=True, text=True)
        if mounted.returncode:
            os.rmdir(path)
            pytest.skip(f"cannot mount a read-only tmpfs: {mounted.stderr.strip()}")
        yield path
        subprocess.run(["umount", path], check=True)
    else:
        os.chmod(path, 0o555)
        yield path
        os.chmod(path, 0o755)
    os.rmdir(path)


@pytest.mark.parametrize("how", ["copy_verified", "move_file", "link_or_copy", "atomic_symlink"])
def test_read_only_destination_fails_cleanly(tmp_path, readonly_dir, how):
    src = _write(tmp_path / "src", b"stay here")
    dst = os.path.join(readonly_dir, "dst")
    with pytest.raises(OSError) as raised:
        if how == "atomic_symlink":
            fsops.atomic_symlink(str(src), dst)
        else:
            getattr(fsops, how)(src, dst)
    assert raised.value.errno in (errno.EROFS, errno.EACCES)
    assert (tmp_path / "src").read_bytes() == b"stay here"
    assert _files_in(readonly_dir) == []


# --------------------------------------------------------------------------- links, one filesystem

def test_hard_link_is_atomic_and_idempotent(tmp_path):
    src = _write(tmp_path / "src", b"shared inode")
    _write(tmp_path / "dst", b"old")
    assert fsops.link_or_copy(src, tmp_path / "dst") == "hard"
    assert fsops.link_or_copy(src, tmp_path / "dst", "hard") == "hard"  # same inode: redo is fine
    assert os.path.samefile(src, tmp_path / "dst")
    assert _files_in(tmp_path) == ["dst", "src"]


def test_hard_link_refused_with_eperm_falls_back_under_auto(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(fsops.os, "link", refuse)
    src = _write(tmp_path / "src", b"fallback")
    with pytest.raises(fsops.LinkRefused, match="protected_hardlinks"):
        fsops.link_or_copy(src, tmp_path / "hard", "hard")
    method = fsops.link_or_copy(src, tmp_path / "auto")
    assert method in ("reflink", "copy")
    assert (tmp_path / "auto").read_bytes() == b"fallback"
    assert not os.path.samefile(src, tmp_path / "auto")
    assert _files_in(tmp_path) == ["auto", "src"]


@pytest.mark.skipif(not IS_ROOT, reason="needs root to act as another user")
def test_protected_hardlinks_refusal_from_the_kernel(tmp_path):
    if open("/proc/sys/fs/protected_hardlinks").read().strip() != "1":
        pytest.skip("fs.protected_hardlinks is off on this machine")
    shared = tempfile.mkdtemp(prefix="omero-cli-ext-pl-")
    try:
        os.chmod(shared, 0o777)
        src = _write(os.path.join(shared, "root-owned"), b"readable, not writable", mode=0o644)
        results = {}
        for method in ("hard", "auto"):
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:  # child: become nobody, try, report through the pipe
                try:
                    os.setgid(65534)
                    os.setuid(65534)
                    try:
                        outcome = fsops.link_or_copy(src, os.path.join(shared, method), method)
                    except fsops.LinkRefused as exc:
                        outcome = f"refused {exc.errno}"
                    os.write(write_end, outcome.encode())
                finally:
                    os._exit(0)
            os.close(write_end)
            os.waitpid(pid, 0)
            results[method] = os.read(read_end, 100).decode()
            os.close(read_end)
        assert results["hard"] == f"refused {errno.EPERM}"
        assert results["auto"] == "copy"
        assert sorted(os.listdir(shared)) == ["auto", "root-owned"]
    finally:
        subprocess.run(["rm", "-rf", shared], check=True)


def test_symbolic_method_makes_an_absolute_link_and_needs_a_source(tmp_path, monkeypatch):
    _write(tmp_path / "src", b"x")
    monkeypatch.chdir(tmp_path)
    assert fsops.link_or_copy("src", tmp_path / "dst", "sym") == "sym"
    assert os.readlink(tmp_path / "dst") == str(tmp_path / "src")
    with pytest.raises(FileNotFoundError):
        fsops.link_or_copy("missing", tmp_path / "dst2", "sym")
    with pytest.raises(ValueError, match="unknown link method 'soft'"):
        fsops.link_or_copy("src", tmp_path / "dst3", "soft")
    assert _files_in(tmp_path) == ["dst", "src"]


def test_move_on_one_filesystem_renames_and_redo_after_a_hard_link_finishes(tmp_path):
    src = _write(tmp_path / "src", b"moving")
    (tmp_path / "sub").mkdir()
    assert fsops.move_file(src, tmp_path / "sub" / "dst") == "rename"
    assert not src.exists()
    again = _write(tmp_path / "again", b"half done")
    os.link(again, tmp_path / "sub" / "again")  # a crash after linking, before unlinking
    assert fsops.move_file(again, tmp_path / "sub" / "again") == "rename"
    assert not again.exists() and (tmp_path / "sub" / "again").read_bytes() == b"half done"
