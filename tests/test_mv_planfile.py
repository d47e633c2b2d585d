"""--plan FILE for approval, --execute-plan FILE runs exactly that plan."""
from __future__ import annotations

import json
import os

from mv_helpers import World, interrupt_after_retargets, manifest, repo_links, snapshot
from mv_helpers import world  # noqa: F401 (fixture)
from omero_cli_ext.mv import errors


def test_a_written_plan_is_run_exactly(world, tmp_path):
    plan_file = str(tmp_path / "approved.jsonl")
    new = os.path.join(world.data, "new")
    before = snapshot(world.repo, world.data)
    rc, out, err = world.mv(world.old, new, "--plan", plan_file, server=False)
    assert rc == 0, err
    assert f"omero mv --execute-plan {plan_file}" in out
    assert snapshot(world.repo, world.data) == before   # writing a plan changes nothing
    with open(plan_file) as f:
        lines = f.read().splitlines()
    header = json.loads(lines[0])
    assert header["type"] == "plan" and header["steps"] == len(lines) - 1
    expected = manifest(world.repo)
    rc, out, err = world.mv("--execute-plan", plan_file, "--json", server=False)
    assert rc == 0, err
    done = [json.loads(l) for l in out.splitlines() if '"type": "action"' in l]
    assert [d["seq"] for d in done] == list(range(header["steps"]))
    assert manifest(world.repo) == expected and not os.path.exists(world.old)
    assert all(t.startswith(os.fsencode(new)) for t in repo_links(world.repo).values())


def test_a_changed_plan_or_one_others_can_edit_is_refused(world, tmp_path):
    plan_file = str(tmp_path / "approved.jsonl")
    rc, out, err = world.mv(world.old, os.path.join(world.data, "new"), "--plan", plan_file,
                            server=False)
    assert rc == 0, err
    before = snapshot(world.repo, world.data)
    with open(plan_file) as f:
        text = f.read()
    with open(plan_file, "w") as f:
        f.write(text.replace(world.data + "/new", world.data + "/elsewhere", 1))
    rc, out, err = world.mv("--execute-plan", plan_file, server=False)
    assert rc == errors.EXIT_USAGE and "changed or cut short" in err
    with open(plan_file, "w") as f:
        f.write(text)
    os.chmod(plan_file, 0o666)
    rc, out, err = world.mv("--execute-plan", plan_file, server=False)
    assert rc == errors.EXIT_USAGE and "can be changed by another user" in err
    os.chmod(plan_file, 0o600)
    other = World(str(tmp_path / "other"), n_filesets=1, files_per_fileset=1)
    rc, out, err = other.mv("--execute-plan", plan_file, server=False)
    assert rc == errors.EXIT_USAGE and "made for another repository" in err
    assert snapshot(world.repo, world.data) == before


def test_an_interrupted_plan_resumes_with_the_same_command(world, tmp_path, monkeypatch):
    plan_file = str(tmp_path / "approved.jsonl")
    new = os.path.join(world.data, "new")
    rc, out, err = world.mv(world.old, new, "--plan", plan_file, server=False)
    assert rc == 0, err
    expected = manifest(world.repo)
    interrupt_after_retargets(monkeypatch, 7)
    rc, out, err = world.mv("--execute-plan", plan_file, "--workers", "1", server=False)
    assert rc == errors.EXIT_INTERRUPTED and f"--execute-plan {plan_file}" in err, err
    monkeypatch.undo()
    assert manifest(world.repo) == expected
    rc, out, err = world.mv("--execute-plan", plan_file, server=False)
    assert rc == 0 and "resuming job 1" in out, err
    assert manifest(world.repo) == expected and not os.path.exists(world.old)
