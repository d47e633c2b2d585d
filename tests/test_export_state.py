"""The export's control files and DEST resolution, without a server: the state directory, the
lock, StrictModes-like ancestor checks, DEST kept apart from the repository, the sim's sessions."""
from __future__ import annotations

import itertools
import os
import stat

import pytest

from omero_cli_ext.export import dest as dest_io, state
from omero_cli_ext.export.dest import ancestor_problem
from omero_cli_ext.server import SUDO_TIME_TO_IDLE_MS, ServerError
from sim.builder import lab_server


def fake_stat(uid=0, mode=0o755):
    return os.stat_result((stat.S_IFDIR | mode, 1, 1, 2, uid, 0, 0, 0, 0, 0))


@pytest.mark.parametrize("uid, mode, next_uid, problem", [
    (0, 0o755, 1000, None),
    (1000, 0o700, 1000, None),                 # the DEST owner's own directory
    (2000, 0o755, 1000, "owned by uid 2000"),
    (0, 0o775, 1000, "writable by its group"),
    (0, 0o777, 1000, "writable by group and others"),
    (0, 0o1777, 1000, None),                   # sticky, and the next one is hers
    (0, 0o1777, 2000, "writable by group and others"),
    (0, 0o1757, None, "writable by others"),
])
def test_ancestor_problem(uid, mode, next_uid, problem):
    found = ancestor_problem(fake_stat(uid, mode), next_uid, {1000})
    assert (found is None) == (problem is None) and (problem is None or problem in found)


def test_state_directory_is_private_and_refuses_a_symlink(tmp_path):
    root = tmp_path / "state"
    fd = state.open_root(str(root))
    try:
        assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
        dest = tmp_path / "dest"
        dest.mkdir()
        assert state.open_for(fd, os.stat(dest), create=False) is None
        sfd = state.open_for(fd, os.stat(dest), create=True)
        lock = state.Lock(sfd)
        with pytest.raises(state.Busy):
            state.Lock(sfd, wait=0.5, clock=itertools.count(0, 0.3).__next__,
                       pause=lambda s: None)
        lock.release()
        state.Lock(sfd).release()
        os.close(sfd)
    finally:
        os.close(fd)
    os.chmod(root, 0o777)
    with pytest.raises(state.StateError, match="writable by group or others"):
        state.open_root(str(root))
    link = tmp_path / "link"
    link.symlink_to(root)
    with pytest.raises(state.StateError, match="symlink"):
        state.open_root(str(link / "sub"))


def test_dest_is_resolved_without_following_symlinks(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(dest_io.DestError, match="symlink"):
        dest_io.open_dest(str(tmp_path / "link"), create=False)
    with pytest.raises(dest_io.DestError, match="symlink"):
        dest_io.open_dest(str(tmp_path / "link" / "x"), create=True)
    assert not (real / "x").exists()
    with pytest.raises(dest_io.DestMissing):
        dest_io.open_dest(str(tmp_path / "new"), create=False)
    fd, created = dest_io.open_dest(str(tmp_path / "new"), create=True, mode=0o750)
    os.close(fd)
    assert created and stat.S_IMODE(os.stat(tmp_path / "new").st_mode) == 0o750
    with pytest.raises(dest_io.DestError, match="'..'"):
        dest_io.split("/a/../b")


def test_dest_made_by_another_run_first_is_opened_as_an_existing_dest(tmp_path, monkeypatch):
    """Two runs that find DEST missing race to make it: the loser opens the winner's DEST (then
    waits for or is refused its lock, exit 9), it is not refused as uncreatable (exit 3)."""
    real_mkdir = os.mkdir

    def winner_first(name, mode=0o777, *, dir_fd=None):
        real_mkdir(name, dir_fd=dir_fd)      # the other run's mkdir lands in between
        os.chmod(name, 0o711, dir_fd=dir_fd)
        real_mkdir(name, mode, dir_fd=dir_fd)

    monkeypatch.setattr(dest_io.os, "mkdir", winner_first)
    fd, created = dest_io.open_dest(str(tmp_path / "new"), create=True, mode=0o750)
    try:
        assert not created
        assert os.path.samestat(os.fstat(fd), os.stat(tmp_path / "new"))
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o711     # the winner's, left as it made it
    finally:
        os.close(fd)
    monkeypatch.setattr(dest_io.os, "mkdir", lambda name, mode=0o777, *, dir_fd=None: (
        os.symlink("/", name, dir_fd=dir_fd), real_mkdir(name, mode, dir_fd=dir_fd)))
    with pytest.raises(dest_io.DestError, match="symlink"):
        dest_io.open_dest(str(tmp_path / "planted"), create=True)


class _Died(Exception):
    pass


class _Ctx:
    def die(self, code, message):
        raise _Died(code, message)


@pytest.mark.parametrize("winner_uid, refused", [(4242, True), (4343, False)])
def test_a_users_run_whose_mkdir_lost_uses_only_a_dest_of_her_own(tmp_path, monkeypatch,
                                                                  winner_uid, refused):
    """Not as root, a run that meant to make DEST and lost the mkdir race accepts the DEST only
    when the winner was one of her own runs (her uid): a DEST another user (who may write the
    parent) made at that moment would receive what she exports (exit 3, DEST left alone)."""
    from omero_cli_ext.cli import export_common
    real_mkdir = os.mkdir

    def winner_first(name, mode=0o777, *, dir_fd=None):
        real_mkdir(name, 0o777, dir_fd=dir_fd)
        os.chown(name, winner_uid, winner_uid, dir_fd=dir_fd)
        real_mkdir(name, mode, dir_fd=dir_fd)

    monkeypatch.setattr(export_common.os, "geteuid", lambda: 4343)     # the user running it
    monkeypatch.setattr(dest_io.os, "mkdir", winner_first)
    args = type("Args", (), {"dir_mode": 0o700})()
    dest = str(tmp_path / "out")
    if refused:
        with pytest.raises(_Died) as died:
            export_common.create_dest(_Ctx(), dest, args, [], None, None)
        assert died.value.args[0] == export_common.EXIT_DEST
        assert "made by uid 4242 while this run was making it" in died.value.args[1]
    else:
        fd, created = export_common.create_dest(_Ctx(), dest, args, [], None, None)
        os.close(fd)
        assert not created
    monkeypatch.undo()
    assert os.listdir(dest) == [] and os.stat(dest).st_uid == winner_uid


def test_dest_inside_equal_or_above_the_repository(tmp_path):
    repo = tmp_path / "top" / "repo"
    (repo / "alice").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()

    def check(path):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        rfd = os.open(repo, os.O_RDONLY | os.O_DIRECTORY)
        try:
            dest_io.check_apart(fd, str(path), rfd, str(repo))
        finally:
            os.close(fd)
            os.close(rfd)

    for bad in (repo, repo / "alice", tmp_path / "top", tmp_path):
        with pytest.raises(dest_io.DestError, match="ManagedRepository"):
            check(bad)
    check(tmp_path / "elsewhere")


def test_sim_sessions_expire_like_a_real_servers(tmp_path):
    sim = lab_server(str(tmp_path / "sim"))
    sim.add_user("admin", ["lab"], admin=True)
    # createSessionWithTimeout(p, 10 min): a hard lifetime, however busy the session is
    hard = sim.port("alice", time_to_live_ms=600_000)
    sim.advance(240)
    hard.current_user()
    sim.advance(240)
    hard.current_user()
    sim.advance(240)                                  # 12 minutes old
    with pytest.raises(ServerError, match="expired"):
        hard.current_user()
    # sudo: no lifetime, an idle timeout restarted by every call
    sudo = sim.port("admin").sudo("alice")
    for _ in range(10):
        sim.advance(SUDO_TIME_TO_IDLE_MS / 1000 - 60)
        assert sudo.current_user().name == "alice"
    sim.advance(SUDO_TIME_TO_IDLE_MS / 1000 + 1)
    with pytest.raises(ServerError, match="expired"):
        sudo.current_user()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_the_reader_opens_as_the_user_and_once_killed_is_not_restarted_in_the_run():
    import pathlib
    import shutil
    import tempfile
    from omero_cli_ext.export.asuser import ReaderError, ReaderProcess
    tmp_path = pathlib.Path(tempfile.mkdtemp(prefix="i12-reader-", dir="/tmp"))
    mine = tmp_path / "mine"
    mine.write_bytes(b"x")
    os.chmod(tmp_path, 0o755)
    os.chmod(mine, 0o600)                                # root's, not readable by nobody
    public = tmp_path / "public"
    public.write_bytes(b"y")
    reader = ReaderProcess(65534, 65534, [65534])
    try:
        with pytest.raises(PermissionError):
            reader.open(str(mine))
        fd = reader.open(str(public))
        assert os.read(fd, 1) == b"y"
        os.close(fd)
        os.kill(reader._pid, 9)                          # the user kills it
        with pytest.raises(ReaderError):
            reader.open(str(public))
        pid = reader._pid
        with pytest.raises(ReaderError, match="earlier in this run"):
            reader.open(str(public))                     # not started again: no stall per file
        assert reader._pid == pid
        again = ReaderProcess(65534, 65534, [65534])     # the next run's
        fd = again.open(str(public))
        os.close(fd)
        again.close()
    finally:
        reader.close()
        shutil.rmtree(tmp_path)
