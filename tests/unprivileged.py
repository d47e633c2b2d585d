"""Running a test command as an unprivileged user (`nobody`) when the suite runs as root."""
import os
import shutil
import subprocess
import sys

import pytest

NOBODY = 65534


def nobody_command(argv) -> list:
    """`argv` run as `nobody` (its uid and gid, no supplementary group) through setpriv."""
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]


def require_unprivileged_python():
    """Skip (visibly) unless this interpreter can run as `nobody` via setpriv (root, util-linux, and an
    interpreter whose files `nobody` may read — a shared libpython under /root is not)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run a command as an unprivileged user")
    probe = subprocess.run(nobody_command([sys.executable, "-c", "pass"]), capture_output=True,
                           text=True)
    if probe.returncode != 0:
        pytest.skip(f"{sys.executable} cannot run as nobody: {probe.stderr.strip()[:200]}")
