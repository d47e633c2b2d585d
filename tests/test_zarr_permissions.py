"""Property: `export --zarr` writes pixels of exactly the images OMERO's rules let the acting user
read and download: the same rules and worlds as the --originals property (test_export_permissions:
admins read all; a group leader all of the groups they lead; a member all of a non-private group
and their own in a private one; BINARYACCESS withholds from all but the owner, leaders, admins).
An image not allowed never has a file in DEST."""
from __future__ import annotations

import json
import os
import tempfile

from hypothesis import HealthCheck, example, given, settings

from sim.launcher import run_cli
from test_zarr_export import control_args
from test_export_permissions import PI_WORLD, allowed, rules_server, withhold_binaries, worlds


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
@example(PI_WORLD + ("pi", {"g0", "g1"}))
@example(PI_WORLD + ("u2", {"g0", "g1"}))
def test_written_images_are_exactly_what_the_rules_allow(world):
    groups, membership, filesets, restricted_groups, server_wide, actor, led = world
    with tempfile.TemporaryDirectory() as tmp:
        sim = rules_server(os.path.join(tmp, "sim"), groups, membership, led)
        expected, images = set(), []
        for index, (owner, group, series) in enumerate(filesets):
            path = os.path.join(tmp, "src", "img%d&sizeX=8&sizeY=8&series=%d.fake" % (index, series))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "w").close()
            fid = sim.import_fileset(owner, [path], group=group, images=series)
            ids = [r[0] for r in sim.query("SELECT id FROM Image WHERE fileset = ?", (fid,))]
            images += ids
            if allowed(actor, owner, group, groups[group], membership, restricted_groups,
                       server_wide, led):
                expected |= set(ids)
        withhold_binaries(sim, restricted_groups, server_wide)
        dest = os.path.join(tmp, "dest")
        rc, out, err = run_cli(sim.root, ["export", "--zarr", dest, "--layout", "flat",
                                          "Image:" + ",".join(map(str, images)), "--json",
                                          *control_args(sim.root)],
                               user=actor)
        assert rc in (0, 5, 22), err
        lines = [json.loads(line) for line in out.splitlines()]
        written = {r["image"] for r in lines if r["type"] == "image"}
        assert written == expected
        on_disk = set()
        if os.path.isdir(dest):
            on_disk = {int(n[len("Image_"):-len(".ome.zarr")]) for n in os.listdir(dest)
                       if n.startswith("Image_")}
        assert on_disk == expected
        sim.close()
