#!/usr/bin/env python3
"""Install omero-cli-ext with everything it needs into a virtualenv (default ./.venv).

Steps: check the Python version, create the virtualenv, make zeroc-ice 3.6.5 importable (cached
wheel, or a one-time patched build: tools/build_ice.py), then `pip install .[test]` (a normal,
non-editable install, so the plugins load exactly as they do for users).

Usage: python3 tools/install.py [--venv DIR] [--python PYTHON] [--no-test-extras]
Exit codes: 0 installed; 2 bad arguments; 3 unsupported Python; 4 missing build tools;
5 package index unreachable; 6 build or install failed.
"""
import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import build_ice  # noqa: E402  (a sibling script, not a package)


def fail(code, message):
    print(f"install: error: {message}", file=sys.stderr)
    sys.exit(code)


def venv_python(venv):
    return os.path.join(venv, "bin", "python")


def create_venv(python, venv):
    if os.path.exists(venv_python(venv)):
        return
    try:
        version = build_ice.target_version(python)
    except build_ice.BuildError as err:
        fail(err.code, str(err))
    if version not in build_ice.SUPPORTED:
        fail(3, f"{python} is Python {version[0]}.{version[1]}; use 3.9, 3.10, 3.11 or 3.12 "
                "(e.g. --python python3.11)")
    out = subprocess.run([python, "-m", "venv", venv], capture_output=True, text=True)
    if out.returncode != 0:
        fail(6, f"could not create the virtualenv {venv}: {out.stderr.strip()} "
                "(on Debian: apt-get install python3-venv)")


def pip(py, *args):
    out = subprocess.run([py, "-m", "pip", "--disable-pip-version-check", *args],
                         capture_output=True, text=True)
    if out.returncode != 0:
        text = out.stdout + out.stderr
        code = 5 if "Could not find a version" in text or "NewConnectionError" in text else 6
        fail(code, f"pip {' '.join(args)} failed:\n{text[-2000:]}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", default=os.path.join(ROOT, ".venv"))
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--cache", default=build_ice.default_cache())
    parser.add_argument("--no-test-extras", action="store_true",
                        help="install only what the commands need, not the test tools")
    args = parser.parse_args(argv)

    create_venv(args.python, args.venv)
    py = venv_python(args.venv)
    try:
        build_ice.ensure_ice(py, args.cache)
    except build_ice.BuildError as err:
        fail(err.code, str(err))
    target = ROOT if args.no_test_extras else f"{ROOT}[test]"
    pip(py, "install", "--quiet", target)
    print(f"install: ready. Activate with: . {os.path.relpath(args.venv)}/bin/activate", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
