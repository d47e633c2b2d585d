"""Property: the exported set is exactly what OMERO's rules let the acting user read and download.

The expectation is computed here from the rules as OMERO documents them (DESIGN.md §3), not from
the simulated server's code: admins (full or restricted) read everything; a group leader (PI)
reads everything in the groups they lead, private ones included; a member of a group reads all of
a non-private group and only their own in a private one; non-members read nothing; a BINARYACCESS
restriction withholds the bytes from everyone but the owner, the group's leaders and admins.
"""
from __future__ import annotations

import os
import tempfile

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from omero_cli_ext.server import GROUP_LEVELS
from sim.server import SimServer
from test_export_world import export, manifest, records

LEVELS = sorted(GROUP_LEVELS.values())
MEMBERS = ("u1", "u2")
ACTORS = ("u1", "u2", "pi", "outsider", "admin", "radmin")


@st.composite
def worlds(draw):
    groups = {f"g{i}": level for i, level in enumerate(LEVELS)}
    membership = {u: draw(st.sets(st.sampled_from(sorted(groups)), min_size=1)) for u in MEMBERS}
    filesets = []
    for _ in range(draw(st.integers(1, 6))):
        owner = draw(st.sampled_from(MEMBERS))
        group = draw(st.sampled_from(sorted(membership[owner])))
        filesets.append((owner, group, draw(st.integers(1, 2))))
    restricted_groups = draw(st.sets(st.sampled_from(sorted(groups))))
    server_wide = draw(st.booleans()) and draw(st.booleans())
    actor = draw(st.sampled_from(ACTORS))
    led = draw(st.sets(st.sampled_from(sorted(groups)), min_size=1))
    return groups, membership, filesets, restricted_groups, server_wide, actor, led


def allowed(actor, owner, group, level, membership, restricted_groups, server_wide, led) -> bool:
    admin = actor in ("admin", "radmin")
    leader = actor == "pi" and group in led
    member = group in membership.get(actor, set())
    readable = admin or leader or (member and (level != "rw----" or actor == owner))
    withheld = (server_wide or group in restricted_groups) and not (admin or leader) \
        and actor != owner
    return readable and not withheld


def rules_server(root, groups, membership, led) -> SimServer:
    """A drawn world's server: its groups and members, a PI leading `led`, an outsider, a full and
    a restricted admin (all four in a group of their own, `elsewhere`)."""
    sim = SimServer(root)
    for name, level in groups.items():
        sim.add_group(name, level)
    sim.add_group("elsewhere", "rwrw--")
    for user in MEMBERS:
        sim.add_user(user, sorted(membership[user]))
    sim.add_user("outsider", ["elsewhere"])
    sim.add_user("pi", ["elsewhere"] + sorted(led), leads=sorted(led))
    sim.add_user("admin", ["elsewhere"], admin=True)
    sim.add_user("radmin", ["elsewhere"], admin=True, privileges={"ReadSession"})
    return sim


def withhold_binaries(sim, restricted_groups, server_wide) -> None:
    """BINARYACCESS restrictions of a drawn world, set once its filesets are imported."""
    for group in restricted_groups:
        sim.set_binary_access(True, group=group)
    if server_wide:
        sim.set_binary_access(True)


# the group leader's own cases, always run: a private group's files of another user, and a
# BINARYACCESS-restricted group's, that a PI reads and a plain member does not
PI_WORLD = ({f"g{i}": level for i, level in enumerate(LEVELS)}, {"u1": {"g0"}, "u2": {"g0", "g1"}},
            [("u1", "g0", 1), ("u2", "g1", 1)], {"g1"}, False)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
@example(PI_WORLD + ("pi", {"g0", "g1"}))
@example(PI_WORLD + ("u2", {"g0", "g1"}))
def test_exported_set_is_exactly_what_the_rules_allow(world):
    groups, membership, filesets, restricted_groups, server_wide, actor, led = world
    with tempfile.TemporaryDirectory() as tmp:
        sim = rules_server(os.path.join(tmp, "sim"), groups, membership, led)
        expected, ids = set(), []
        for index, (owner, group, n_files) in enumerate(filesets):
            paths = []
            for j in range(n_files):
                path = os.path.join(tmp, "src", f"set{index}", f"f{j}.fake")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as stream:
                    stream.write(f"{index}/{j}".encode())
                paths.append(path)
            fid = sim.import_fileset(owner, paths, group=group)
            ids.append(fid)
            if allowed(actor, owner, group, groups[group], membership, restricted_groups,
                       server_wide, led):
                expected |= {r[0] for r in sim.query(
                    "SELECT originalFile FROM FilesetEntry WHERE fileset = ?", (fid,))}
        withhold_binaries(sim, restricted_groups, server_wide)
        dest = os.path.join(tmp, "dest")
        rc, out, err = export(sim.root, dest, "Fileset:" + ",".join(map(str, ids)), user=actor,
                              extra=["--json", "--link", "hard"])
        assert rc in (0, 5, 22), err
        exported = set()
        if rc != 22:
            exported = {e["original_file"] for e in manifest(dest)["entries"]}
            assert {r["original_file"] for r in records(out, "entry")} == exported
        assert exported == expected
        sim.close()
