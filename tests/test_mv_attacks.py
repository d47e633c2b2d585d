"""`omero mv` attacked as a hurried sysadmin and a hostile unprivileged user would: files planted
in the control directory, managed files reached through another mount, tampered plan files,
odd names."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess

import pytest

from mv_helpers import World, bind, interrupt_after_retargets, manifest, snapshot
from mv_helpers import world  # noqa: F401 (fixture)
from omero_cli_ext.journal import _lock_slug
from omero_cli_ext.mv import errors
from omero_cli_ext.mv.locations import repo_place
from sim.launcher import run_cli, script_env



@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_root_never_writes_through_a_link_planted_as_the_lock_file(tmp_path, kind):
    """The repository's owner can write the control directory; a symlink or hard link planted
    there under the lock file's name must not make root's run truncate or write another file."""
    world = World(str(tmp_path / "w"), n_filesets=2, files_per_fileset=1, odd_names=False)
    place = repo_place(os.fsencode(world.repo))
    os.makedirs(place.control_dir, mode=0o700)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    lock = os.path.join(place.control_dir, os.fsencode(_lock_slug(place.lock_name) + ".lock"))
    (os.symlink if kind == "symlink" else os.link)(str(victim), lock)
    before = manifest(world.repo)
    rc, out, err = run_cli(world.sim_root, ["mv", "--no-server", "--repo", world.repo,
                                            world.old, os.path.join(world.data, "new")])
    assert victim.read_bytes() == b"precious"
    assert rc == errors.EXIT_JOURNAL and "not a plain file of its own" in err, err
    assert manifest(world.repo) == before


def _redigest(header: dict, steps: list) -> bytes:
    from omero_cli_ext.mv import planfile
    header = dict(header, steps=len(steps))
    header["digest"] = planfile._digest(header, steps)
    return (json.dumps(header, sort_keys=True) + "\n" + "\n".join(steps) + "\n").encode()


def test_a_tampered_or_garbled_plan_file_is_refused_without_a_traceback(world, tmp_path):
    """A plan edited by hand (even with its digest made to match again), cut, or replaced by
    other bytes: exit 2 with a message, never a traceback, nothing changed."""
    plan = str(tmp_path / "p.jsonl")
    rc, out, err = world.mv(world.old, os.path.join(world.data, "new"), "--plan", plan,
                            server=False)
    assert rc == 0, err
    raw = open(plan, "rb").read()
    lines = raw.decode().rstrip("\n").split("\n")
    header = json.loads(lines[0])
    first = json.loads(lines[1])
    variants = {
        "non-ascii": raw.replace(b'"plan"', b'"pl\xe9n"', 1),
        "binary": b"\x00\xff\n",
        "empty": b"",
        "header not an object": b"[]\n",
        "path not a text": _redigest(header, [json.dumps(dict(first, path=5))] + lines[2:]),
        "step not an object": _redigest(header, ["[1]"] + lines[2:]),
        "unknown step field": _redigest(header, [json.dumps(dict(first, x=1))] + lines[2:]),
        "request not an object": _redigest(dict(header, request="x"), lines[1:]),
        "bad mode": _redigest(dict(header, request=dict(header["request"], mode="rm")),
                              lines[1:]),
        "notes not a list": _redigest(dict(header, notes=5), lines[1:]),
    }
    before = snapshot(world.repo, world.data)
    for label, data in variants.items():
        with open(plan, "wb") as stream:
            stream.write(data)
        os.chmod(plan, 0o600)
        rc, out, err = world.mv("--execute-plan", plan, server=False)
        assert rc == errors.EXIT_USAGE and "Traceback" not in err, (label, err)
        assert "plan" in err, (label, err)
        assert snapshot(world.repo, world.data) == before, label


def _unfinished_job(world, monkeypatch):
    interrupt_after_retargets(monkeypatch, 2)
    rc, out, err = world.mv(world.old, os.path.join(world.data, "new"), "--workers", "1",
                            server=False)
    assert rc == errors.EXIT_INTERRUPTED, err
    monkeypatch.undo()


@pytest.mark.parametrize("kind", ["fifo", "symlink to a fifo"])
def test_status_never_hangs_on_a_fifo_planted_as_a_lock_file(tmp_path, monkeypatch, kind):
    """`--status` reads the lock files of the control directory (which the repository's owner
    can write) to name the running process: a FIFO planted there must not block it."""
    world = World(str(tmp_path / "w"), n_filesets=4, files_per_fileset=1, odd_names=False)
    _unfinished_job(world, monkeypatch)
    place = repo_place(os.fsencode(world.repo))
    fifo = os.path.join(place.control_dir, b"planted.lock")
    if kind == "fifo":
        os.mkfifo(fifo)
    else:
        os.mkfifo(str(tmp_path / "fifo"))
        os.symlink(str(tmp_path / "fifo"), fifo)
    done = subprocess.run(world.mv_command("--status"), capture_output=True, text=True,
                          timeout=120, env=script_env())
    assert done.returncode == 0 and "job 1:" in done.stdout, done.stderr


def test_repair_never_picks_a_managed_file_seen_through_a_bind_mount(world, tmp_path):
    """A directory of the repository bind-mounted elsewhere (a sysadmin's view of one user's
    data) under a search root: its files are still managed files, never candidates."""
    up = world.uploaded(1, 1)
    fileset = world.sim.port("root").filesets([up.fileset_ids[0]])[up.fileset_ids[0]]
    managed = os.path.join(world.repo, fileset.entries[0].original_file.repo_path)
    name = os.path.basename(managed)
    link = os.path.join(world.repo, "dangling", name)
    os.makedirs(os.path.dirname(link))
    os.symlink(os.path.join(str(tmp_path), "gone", name), link)
    search = tmp_path / "search"
    with bind(os.path.dirname(managed), str(search / "view")):
        rc, out, err = world.mv("--repair", "--search", str(search), server=False)
    assert rc == errors.EXIT_UNRESOLVED, err
    assert not os.path.exists(link)
    assert "inside the ManagedRepository were not considered" in err


def test_a_repository_bind_mounted_elsewhere_is_one_repository(world, tmp_path, monkeypatch):
    """The repository spelled through a bind mount of it (or of a directory above it) finds
    the same journal, job and lock as its usual path: an unfinished job started through one
    spelling is seen through the other (exit 13, nothing changed)."""
    _unfinished_job(world, monkeypatch)
    view = str(tmp_path / "view")
    with bind(world.sim_root, view):
        repo_view = os.path.join(view, os.path.basename(world.repo))
        before = snapshot(world.repo, world.data)
        other = os.path.join(world.data, "elsewhere")
        rc, out, err = run_cli(world.sim_root, ["mv", "--no-server", "--repo", repo_view,
                                                world.old, other])
        assert rc == errors.EXIT_OTHER_JOB, err
        assert snapshot(world.repo, world.data) == before
        rc, out, err = run_cli(world.sim_root, ["mv", "--no-server", "--repo", repo_view,
                                                "--status"])
        assert rc == 0 and "job 1:" in out, err


def test_names_with_newlines_undecodable_bytes_and_colons_move_and_resume(tmp_path, monkeypatch):
    """SRC and DST whose names hold a newline, bytes that are not UTF-8 and a `:`: the job is
    journaled (no traceback), an interruption names a rerun command the shell reads back to the
    very same bytes, and that rerun finishes the job."""
    from sim.builder import build_inplace_tree
    world = World(str(tmp_path / "w"), n_filesets=1, files_per_fileset=1, odd_names=False)
    old = os.path.join(world.data, os.fsdecode(b"old\xff\nline:x"))
    build_inplace_tree(world.sim, "alice", old, 4, 2, odd_names=True)
    new = os.path.join(world.data, os.fsdecode(b"new\xfe\n:y"))
    before = manifest(world.repo)
    interrupt_after_retargets(monkeypatch, 2)
    argv = ["mv", "--no-server", "--repo", world.repo, "--workers", "1", old, new]
    rc, out, err = run_cli(world.sim_root, argv)
    assert rc == errors.EXIT_INTERRUPTED and "Traceback" not in err, err
    monkeypatch.undo()
    rerun = err.split("To continue, rerun: ", 1)[1].splitlines()[0]
    words = subprocess.run(["bash", "-c", f"printf '%s\\0' {rerun}"], capture_output=True,
                           check=True).stdout.split(b"\0")[:-1]
    assert words[0] == b"omero" and words[-2:] == [os.fsencode(old), os.fsencode(new)]
    rc, out, err = run_cli(world.sim_root, [os.fsdecode(w) for w in words[1:]])
    assert rc == 0 and "resuming job 1" in out, err
    assert manifest(world.repo) == before
    assert not os.path.exists(old)


@pytest.mark.parametrize("when", ["before placing", "before removing sources"])
def test_a_same_size_file_planted_at_the_destination_never_replaces_an_original(
        world, monkeypatch, when):
    """A user who can write DST's directories (a second pass into group-writable directories)
    plants a file of the same size where an original is to go, while the job runs (or before a
    rerun): it is never taken for the copy, so no link points at it and no source goes."""
    from omero_cli_ext.mv import execute
    new = os.path.join(world.data, "new")
    before = manifest(world.repo)
    planted = {}
    hook = "_place" if when == "before placing" else "_unlink"
    real = getattr(execute.Executor, hook)

    def plant_then_run(self, step):
        if not planted:
            target = step.path if hook == "_place" else step.other
            size = os.path.getsize(step.other if hook == "_place" else step.path)
            if os.path.lexists(target):
                os.unlink(target)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as stream:
                stream.write(b"X" * size)
            planted["path"], planted["source"] = target, step.other if hook == "_place" \
                else step.path
        real(self, step)
    monkeypatch.setattr(execute.Executor, hook, plant_then_run)
    rc, out, err = world.mv(world.old, new, "--workers", "1", server=False)
    monkeypatch.undo()
    assert rc == errors.EXIT_INTERRUPTED, err
    assert "Traceback" not in err
    with open(planted["path"], "rb") as stream:
        assert stream.read(1) == b"X"        # the planted file is left for the admin to judge
    if when == "before placing":
        assert manifest(world.repo) == before   # no link points at the planted file
    else:
        # the link was switched to the destination before the file there was replaced (the
        # planter could do that after the job too); what matters: the original was kept
        assert sum(1 for digest in manifest(world.repo).values()
                   if digest not in set(before.values())) == 1
        assert "the source was kept" in err
        with open(planted["source"], "rb") as stream:
            assert hashlib.sha1(stream.read()).hexdigest() in set(before.values())


def test_src_and_dst_spelled_through_a_bind_mount_are_seen_as_one_place(world, tmp_path):
    """DST naming SRC itself, or a directory inside it, through a bind mount (which realpath
    does not resolve): refused before anything changes (exit 5), as the plain spellings are."""
    view = str(tmp_path / "view")
    before = snapshot(world.repo, world.data)
    with bind(world.data, view):
        for src, dst in [(world.old, os.path.join(view, "old")),
                         (world.old, os.path.join(view, "old", "sub")),
                         (os.path.join(view, "old"), os.path.join(world.old, "sub")),
                         (world.data, os.path.join(view, "elsewhere"))]:
            rc, out, err = world.mv(src, dst, server=False)
            assert rc == errors.EXIT_BAD_RELATION, (src, dst, err)
            assert snapshot(world.repo, world.data) == before
    with bind(os.path.dirname(world.repo), view):
        rc, out, err = world.mv(world.old, os.path.join(view, "ManagedRepository", "x"),
                                server=False)
        assert rc == errors.EXIT_REPO_OVERLAP, err
    assert snapshot(world.repo, world.data) == before


def test_a_mistyped_plan_file_never_replaces_a_file_and_is_refused_before_planning(world):
    """`--plan FILE` naming an original (a repository link points at it), a directory, or a
    place whose directory is missing: refused with its own exit code, the file untouched; a
    plan written before is replaced by the new one."""
    original = os.fsdecode(os.path.realpath(next(iter(manifest(world.repo)))))
    with open(original, "rb") as stream:
        content = stream.read()
    new = os.path.join(world.data, "new")
    for target, code in [(original, errors.EXIT_USAGE), (world.data, errors.EXIT_USAGE),
                         (os.path.join(world.base, "missing", "p"), errors.EXIT_SRC_MISSING)]:
        rc, out, err = world.mv(world.old, new, "--plan", target, server=False)
        assert rc == code and "nothing was changed" in err, (target, err)
    with open(original, "rb") as stream:
        assert stream.read() == content
    plan = os.path.join(world.base, "p.jsonl")
    for _ in range(2):
        rc, out, err = world.mv(world.old, new, "--plan", plan, server=False)
        assert rc == 0, err


def test_managed_files_named_through_a_bind_mount_are_never_moved_as_originals(world, tmp_path):
    """A repository directory spelled through a bind mount is not outside the repository: a
    move of it (even --force, which moves a SRC no link points into) is refused (exit 6) —
    it would take managed files out of the repository."""
    up = world.uploaded(1, 1)
    fileset = world.sim.port("root").filesets([up.fileset_ids[0]])[up.fileset_ids[0]]
    managed = os.path.join(world.repo, fileset.entries[0].original_file.repo_path)
    view = str(tmp_path / "view")
    before = snapshot(world.repo, world.data)
    with bind(os.path.dirname(managed), view):
        rc, out, err = world.mv(view, os.path.join(world.data, "out"), "--force", server=False)
    assert rc == errors.EXIT_REPO_OVERLAP, err
    assert snapshot(world.repo, world.data) == before


def test_a_control_directory_left_to_root_by_a_killed_run_is_handed_over(world):
    """A root run killed between making the control directory and giving it to the
    repository's owner left it root's: the next root run hands it over, so the owner's runs
    (the usual ones) can use the journal again."""
    os.chown(world.repo, 65534, 65534)
    place = repo_place(os.fsencode(world.repo))
    os.mkdir(place.control_dir, 0o700)
    rc, out, err = world.mv(world.old, os.path.join(world.data, "new"), server=False)
    assert rc == 0, err
    st = os.stat(place.control_dir)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (65534, 65534, 0o700)
