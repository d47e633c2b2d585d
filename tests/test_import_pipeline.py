"""The pipeline example of docs/import.md, run as written by bash against the simulated server.

Stand-ins on PATH: `omero` (the real CLI through tests/sim/launcher.py; `omero render test X`
records X), `sleep` (time passes on the server's clock instead of the test's). The first import
run is interrupted (its importer dies mid-upload on every attempt), so the loop must resume."""
from __future__ import annotations

import os
import re
import stat
import subprocess
import sys

from import_helpers import driver_env, fake_images
from sim.builder import lab_server
from sim.launcher import SCRIPT

HERE = os.path.dirname(os.path.abspath(__file__))
DOC = os.path.join(os.path.dirname(HERE), "docs", "import.md")


def pipeline_script() -> str:
    text = open(DOC, encoding="utf-8").read()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    [script] = [b for b in blocks if "retry until done" in b]
    return script


def stand_in(path, body):
    with open(path, "w") as f:
        f.write("#!/bin/bash\n" + body)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)


def test_the_documented_pipeline_gets_every_image_id_across_interrupted_runs(tmp_path):
    sim = lab_server(str(tmp_path / "sim"))
    while sim.add_dataset("run3", "alice") < 51:
        pass
    src = tmp_path / "run3"
    src.mkdir()
    fake_images(src, 6, name="img{}.fake", size=10)
    (src / "bad.fake").write_bytes(b"bad")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    stand_in(bin_dir / "omero", f"""
if [ "$1" = render ]; then echo "$3" >> {tmp_path}/rendered; exit 0; fi
n=$(( $(cat {calls} 2>/dev/null || echo 0) + 1 )); echo $n > {calls}
if [ $n -eq 1 ]; then export OMERO_CLI_EXT_SIM_CRASH_AFTER=2; fi
exec {sys.executable} {SCRIPT} --sim-root {sim.root} --sim-user alice "$@"
""")
    stand_in(bin_dir / "sleep", f"""
exec {sys.executable} -c 'import sys; sys.path.insert(0, "{HERE}"); from sim.server import SimServer; SimServer("{sim.root}").advance(700)'
""")
    script = pipeline_script().replace("/data/run3", str(src))
    env = dict(driver_env(tmp_path, FAIL_PATTERN="bad.fake"),
               PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for name in ("CRASH_AFTER", "HANG", "SECONDS_PER_FILESET"):
        env.pop("OMERO_CLI_EXT_SIM_" + name, None)
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 3, done.stderr[-3000:]      # bad.fake failed on its own merits
    assert int((tmp_path / "calls").read_text()) >= 3     # interrupted, resumed, --results
    rendered = sorted(int(x.split(":")[1]) for x in (tmp_path / "rendered").read_text().split())
    images = sorted(r[0] for r in sim.query("SELECT id FROM Image"))
    assert rendered == images and len(images) == 6        # every image, once, whichever run
    failed = (tmp_path / "failed.tsv").read_text().splitlines()
    assert len(failed) == 1 and failed[0].startswith(str(src / "bad.fake") + "\t")
