"""`omero mv` end to end on simulated repositories: every mode, same and across filesystems,
with and without the server."""
from __future__ import annotations

import json
import os

import pytest

from mv_helpers import World, manifest, repo_links, snapshot, tmpfs, world  # noqa: F401
from omero_cli_ext.workers import MIN_ITEMS


def json_lines(text: str) -> list:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _all_point_under(links: dict, root: str) -> bool:
    return all(os.path.realpath(link).startswith(os.fsencode(root) + b"/") for link in links)


def test_move_same_fs_retargets_every_link_without_server(world):
    before = manifest(world.repo)
    new = os.path.join(world.data, "new")
    rc, out, err = world.mv(world.old, new, server=False)
    assert rc == 0, err
    assert not os.path.exists(world.old)
    after = manifest(world.repo)
    assert after == before and None not in after.values()
    links = repo_links(world.repo)
    assert all(t.startswith(os.fsencode(new) + b"/") for t in links.values())
    assert "90 link(s) changed" in out and "90 verified" in out


def test_move_keeps_mode_and_mtime_and_relative_links(world):
    some = world.built.all_files[5]
    os.chmod(some, 0o640)
    os.utime(some, ns=(1_000_000_000, 1_234_567_890_000))
    # one relative link in the repository into SRC
    rel_link = os.path.join(world.repo, "relative.fake")
    os.symlink(os.path.relpath(world.built.all_files[0], world.repo), rel_link)
    new = os.path.join(world.data, "new")
    rc, out, err = world.mv(world.old, new, server=False)
    assert rc == 0, err
    moved = os.path.join(new, os.path.relpath(some, world.old))
    st = os.stat(moved)
    assert (st.st_mode & 0o777, st.st_mtime_ns) == (0o640, 1_234_567_890_000)
    target = os.readlink(rel_link)
    assert not os.path.isabs(target)
    assert os.path.realpath(rel_link) == os.path.realpath(
        os.path.join(new, os.path.relpath(world.built.all_files[0], world.old)))


def test_move_matches_links_through_another_path_to_src(world):
    """SRC given through a symlinked parent: the links (stored with the real path) still match."""
    alias = os.path.join(world.base, "alias")
    os.symlink(world.data, alias)
    rc, out, err = world.mv(os.path.join(alias, "old"), os.path.join(alias, "new"), server=False)
    assert rc == 0, err
    assert None not in manifest(world.repo).values()
    assert _all_point_under(repo_links(world.repo), os.path.realpath(world.data) + "/new")


def test_move_with_server_reports_filesets_and_checks_server_hash(world):
    new = os.path.join(world.data, "new")
    rc, out, err = world.mv(world.old, new, "--json", "--verify", "checksum")
    assert rc == 0, err
    records = json_lines(out)
    retargets = [r for r in records if r["type"] == "action" and r["action"] == "retarget"]
    assert len(retargets) == 90
    assert {r["fileset"] for r in retargets} == set(world.built.fileset_ids)
    summary = records[-1]
    assert summary["type"] == "summary" and summary["verified"] == 90
    assert summary["verify_failures"] == 0


def test_move_across_filesystems(world, tmp_path):
    with tmpfs(str(tmp_path / "other")) as other:
        before = manifest(world.repo)
        dst = os.path.join(other, "new")
        rc, out, err = world.mv(world.old, dst, "--verify", "checksum", server=False)
        assert rc == 0, err
        assert manifest(world.repo) == before
        assert not os.path.exists(world.old)
        assert not [n for _, _, files in os.walk(dst) for n in files if n.startswith(".omero-cli")]


def test_links_only_after_someone_else_moved_the_files(world):
    new = os.path.join(world.data, "moved")
    os.rename(world.old, new)
    assert set(manifest(world.repo).values()) == {None}
    rc, out, err = world.mv("--links-only", world.old, new, server=False)
    assert rc == 0, err
    assert None not in manifest(world.repo).values()


def test_offload_repository_path_and_inline_back(world, tmp_path):
    up = world.uploaded(3, 2)
    fileset = world.sim.port("root").filesets([up.fileset_ids[0]])[up.fileset_ids[0]]
    prefix = os.path.join(world.repo, fileset.template_prefix.rstrip("/"))
    before = manifest(world.repo)
    with tmpfs(str(tmp_path / "tier")) as tier:
        dst = os.path.join(tier, "fs")
        rc, out, err = world.mv(prefix, dst, server=False)
        assert rc == 0, err
        links = [p for p in repo_links(world.repo) if p.startswith(os.fsencode(prefix))]
        assert len(links) == 2 and all(os.path.isabs(os.readlink(p)) for p in links)
        rc, out, err = world.mv("--inline", prefix, server=False)
        assert rc == 0, err
        assert not [p for p in repo_links(world.repo) if p.startswith(os.fsencode(prefix))]
    assert manifest(world.repo) == before


def test_offload_fileset_by_id_as_admin(world, tmp_path):
    up = world.uploaded(2, 3)
    fid = up.fileset_ids[1]
    dst = str(tmp_path / "tier-fs")
    rc, out, err = world.mv(f"Fileset:{fid}", dst, "--json")
    assert rc == 0, err
    records = json_lines(out)
    swaps = [r for r in records if r.get("action") == "swap"]
    assert len(swaps) == 3 and all(r["fileset"] == fid for r in swaps)
    fileset = world.sim.port("root").filesets([fid])[fid]
    for entry in fileset.entries:
        on_disk = os.path.join(world.repo, entry.original_file.repo_path)
        assert os.path.islink(on_disk) and os.readlink(on_disk).startswith(dst)
    rc, out, err = world.mv("--inline", f"Fileset:{fid}")   # and back, by fileset too
    assert rc == 0, err
    for entry in fileset.entries:
        on_disk = os.path.join(world.repo, entry.original_file.repo_path)
        assert os.path.isfile(on_disk) and not os.path.islink(on_disk)


def test_repair_with_server_uses_size_and_hash(world, tmp_path):
    moved = str(tmp_path / "elsewhere" / "deep")
    os.makedirs(os.path.dirname(moved))
    os.rename(world.old, moved)
    # a decoy: same name, different content, in another search root
    decoy_root = tmp_path / "decoys"
    decoy_root.mkdir()
    (decoy_root / "file_1.fake").write_bytes(b"not the original")
    rc, out, err = world.mv("--repair", "--search", str(decoy_root),
                            "--search", str(tmp_path / "elsewhere"), "--dry-run")
    assert rc == 0, err
    assert "candidate file(s) of the right name and size" in out   # not silently
    rc, out, err = world.mv("--repair", "--search", str(decoy_root),
                            "--search", str(tmp_path / "elsewhere"))
    assert rc == 0, err
    assert None not in manifest(world.repo).values()


def test_repair_without_server_lists_ambiguous_links(world, tmp_path):
    os.rename(world.old, str(tmp_path / "moved"))
    copy_root = tmp_path / "copy"
    first = world.built.all_files[0]
    twin = copy_root / os.path.relpath(first, world.old)   # same trailing parts: a true tie
    twin.parent.mkdir(parents=True)
    twin.write_bytes(b"x")
    rc, out, err = world.mv("--repair", "--search", str(tmp_path / "moved"),
                            "--search", str(copy_root), "--json", server=False)
    assert rc == 16, err
    records = json_lines(out)
    unresolved = [r for r in records if r["type"] == "unresolved"]
    assert [r["reason"] for r in unresolved] == ["ambiguous: 2 candidates"]
    assert unresolved[0]["target"] == first
    links = manifest(world.repo)
    assert sum(v is None for v in links.values()) == 1


def test_dry_run_changes_nothing_and_shows_the_plan(world):
    before = snapshot(world.base)
    rc, out, err = world.mv(world.old, os.path.join(world.data, "new"), "--dry-run",
                            server=False)
    assert rc == 0, err
    assert "90 retarget" in out and "bytes to copy" in out
    assert "link changes: first 10 of 90" in out and "file placements: first 10 of 90" in out
    row = next(line for line in out.splitlines() if line.startswith("retarget\t"))
    action, shown_link, now, after = row.split("\t")
    assert now.startswith(world.old + "/") and after.startswith(world.data + "/new/")
    assert snapshot(world.base) == before


def test_names_with_space_newline_and_non_utf8_bytes(world):
    odd = [p for p in repo_links(world.repo).values()
           if b" " in p or b"\n" in p or b"\xe9" in p]
    assert len(odd) == 3
    new = os.path.join(world.data, "n\u00e9w dir")
    rc, out, err = world.mv(world.old, new, "--json", server=False)
    assert rc == 0, err
    assert None not in manifest(world.repo).values()
    assert any("\\xe9" in r.get("path", "") for r in json_lines(out))


def test_many_links_nested(tmp_path):
    big = World(str(tmp_path), n_filesets=700, files_per_fileset=3, odd_names=False,
                file_size=16)
    new = os.path.join(big.data, "new")
    rc, out, err = big.mv(big.old, new, server=False)
    assert rc == 0, err
    assert "2100 link(s) changed" in out
    assert None not in manifest(big.repo).values()


@pytest.mark.parametrize("mode", ["links-only", "move"])
def test_worker_processes_give_what_one_process_gives(tmp_path, mode):
    """Above MIN_ITEMS steps the scan, the retargets, the hard links of a move, the removal of
    its sources and the verification run in forked workers: same links, same targets, same
    outcomes, same JSON actions as with --workers 1."""
    results = []
    for workers in ("1", "2"):
        big = World(str(tmp_path / workers), n_filesets=1500, files_per_fileset=3,
                    odd_names=True, file_size=16)
        assert len(repo_links(big.repo)) > MIN_ITEMS
        expected = manifest(big.repo)
        new = os.path.join(big.data, "new")
        if mode == "links-only":
            os.rename(big.old, new)
            argv = ["--links-only", big.old, new]
        else:
            argv = [big.old, new]
        rc, out, err = big.mv(*argv, "--workers", workers, "--json", server=False)
        assert rc == 0, err
        base = str(tmp_path / workers)
        actions = sorted(tuple(str(a.get(key)).replace(base, "BASE") for key in
                               ("action", "path", "other", "old", "new", "state", "note"))
                         for a in json_lines(out) if a["type"] == "action")
        links = {os.path.relpath(link, os.fsencode(big.repo)): os.path.relpath(
            target, os.fsencode(new)) for link, target in repo_links(big.repo).items()}
        results.append((actions, links))
        assert list(manifest(big.repo).values()) == list(expected.values())
        assert not os.path.exists(big.old)
    assert results[0] == results[1]
    assert sum(1 for a in results[0][0] if a[0] == "retarget") == 4500


def test_render_check_reads_pixels_through_the_port(world):
    """--render-check: the server opens one image's pixel data per affected fileset through the
    port (never `omero render test` in-process); a sample of 10, or all with -all."""
    rc, out, err = world.mv(world.old, os.path.join(world.data, "new"), "--render-check",
                            "--json")
    assert rc == 0, err
    summary = json_lines(out)[-1]
    assert summary["render_check"]["failed"] == []
    assert summary["render_check"]["sampled"] == 10 and summary["render_check"]["filesets"] == 30
    assert len(summary["render_check"]["checked"]) == 10
    rc, out, err = world.mv(os.path.join(world.data, "new"), os.path.join(world.data, "newer"),
                            "--render-check-all", "--json")
    assert rc == 0, err
    records = json_lines(out)
    checks = [r for r in records if r["type"] == "render_check"]
    images = world.sim.port("root").images_of(world.built.fileset_ids)
    assert sorted(r["image"] for r in checks) == sorted(ids[0] for ids in images.values())
    assert all(r["ok"] and r["problem"] is None for r in checks)


def test_render_check_names_an_image_whose_original_cannot_be_read(world):
    from omero_cli_ext.mv.render import render_check
    port = world.sim.port("root")
    fileset = world.built.fileset_ids[3]
    image = port.images_of([fileset])[fileset][0]
    first = port.filesets([fileset])[fileset].entries[0].original_file
    os.unlink(os.path.realpath(os.path.join(world.repo, first.repo_path)))
    found = render_check(port, world.built.fileset_ids[:5], every=True, concurrency=2)
    assert found["failed"] == [image] and len(found["checked"]) == 4
    [failed] = [r for r in found["results"] if not r["ok"]]
    assert failed["fileset"] == fileset and "Error instantiating pixel buffer" in failed["problem"]


def test_render_check_an_image_without_its_pyramid_yet_is_unchecked_not_failed(world, monkeypatch):
    """A big image's pixels come from its pyramid; while it is not built the server answers
    MissingPyramidException and reads nothing (omero render test's "miss:"): no exit 17."""
    from sim import server as sim_server
    from omero_cli_ext.server import PYRAMID_NOT_BUILT
    readable = sim_server.SimPort.pixels_readable
    big = world.sim.port("root").images_of([world.built.fileset_ids[0]])[world.built.fileset_ids[0]][0]

    def pyramid_pending(self, image_ids, concurrency=4):
        found = dict(readable(self, image_ids, concurrency))
        if big in found:
            found[big] = PYRAMID_NOT_BUILT
        return found
    monkeypatch.setattr(sim_server.SimPort, "pixels_readable", pyramid_pending)
    rc, out, err = world.mv(world.old, os.path.join(world.data, "new"), "--render-check-all",
                            "--json")
    assert rc == 0, err
    records = json_lines(out)
    summary = records[-1]["render_check"]
    assert summary["unchecked"] == [big] and summary["failed"] == []
    assert len(summary["checked"]) == summary["sampled"] - 1
    [pending] = [r for r in records if r["type"] == "render_check" and r["image"] == big]
    assert pending["ok"] is None and pending["problem"] == PYRAMID_NOT_BUILT
