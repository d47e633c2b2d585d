#!/usr/bin/env python3
"""Build (once) and install zeroc-ice 3.6.5, which omero-py needs and PyPI only ships as an sdist.

The sdist does not compile on Python >= 3.11 unmodified; this applies the small, known source
fixes, builds a wheel into a cache directory and installs it. A second run finds the cached wheel
and does not rebuild. Nothing is done when a zeroc-ice 3.6.x is already importable.

Usage: python tools/build_ice.py [--python PY] [--cache DIR]
Exit codes: 0 installed (or already present); 3 unsupported Python; 4 missing build tools or
headers; 5 the sdist could not be downloaded; 6 the build failed.
"""
import argparse
import glob
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

ICE_VERSION = "3.6.5"
SUPPORTED = ((3, 9), (3, 10), (3, 11), (3, 12))
DEBIAN_PACKAGES = {"openssl/ssl.h": "libssl-dev", "bzlib.h": "libbz2-dev"}

# (file, old text, new text, first Python version that needs the fix)
SOURCE_FIXES = [
    ("src/Slice.cpp", "#include <compile.h>\n", "", (3, 11)),
    ("src/Slice.cpp", "#include <eval.h>\n", "", (3, 11)),
    ("src/Util.cpp", "#include <compile.h>\n", "", (3, 11)),
    ("src/Util.cpp", "PyThreadState_GET()->frame", "PyEval_GetFrame()", (3, 11)),
    ("setup.py", "platform is not 'freebsd'", "platform != 'freebsd'", (3, 8)),
    ("lib/Ice.py", "import sys, string, imp, os,", "import sys, string, types, os,", (3, 12)),
    ("lib/Ice.py", "imp.new_module(curr)", "types.ModuleType(curr)", (3, 12)),
]


class BuildError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def default_cache():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.environ.get("OMERO_CLI_EXT_WHEELHOUSE") or os.path.join(base, "omero-cli-ext", "wheels")


def run(cmd, **kw):
    return subprocess.run(cmd, check=False, text=True, capture_output=True, **kw)


def target_version(python):
    out = run([python, "-c", "import sys; print('%d %d' % sys.version_info[:2])"])
    if out.returncode != 0:
        raise BuildError(3, f"cannot run {python}: {out.stderr.strip()}")
    return tuple(int(x) for x in out.stdout.split())


def ice_importable(python):
    probe = "import Ice, sys; sys.exit(0 if Ice.stringVersion().startswith('3.6') else 1)"
    return run([python, "-c", probe]).returncode == 0


def cached_wheel(cache, version):
    tag = "cp%d%d" % version
    found = sorted(glob.glob(os.path.join(cache, f"zeroc_ice-{ICE_VERSION}-{tag}-{tag}-*.whl")))
    return found[-1] if found else None


def missing_build_requirements(python):
    """Return the Debian packages (or tools) still needed to compile the extension."""
    missing = []
    if not (shutil.which("g++") or shutil.which("c++")):
        missing.append("g++")
    include = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['include'])"]).stdout.strip()
    if not os.path.exists(os.path.join(include, "Python.h")):
        missing.append("python3-dev (Python.h)")
    for header, package in DEBIAN_PACKAGES.items():
        if not any(os.path.exists(os.path.join(d, header)) for d in ("/usr/include", "/usr/local/include")):
            missing.append(package)
    return missing


def ensure_build_requirements(python):
    missing = missing_build_requirements(python)
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        packages = [m.split()[0] for m in missing if not m.startswith("python3-dev")]
        print(f"build_ice: installing Debian packages {' '.join(packages)}", flush=True)
        run(["apt-get", "update"])
        run(["apt-get", "install", "-y", "--no-install-recommends", *packages])
        missing = missing_build_requirements(python)
    if missing:
        raise BuildError(4, "cannot compile zeroc-ice: missing " + ", ".join(missing)
                         + ". On Debian/Ubuntu: sudo apt-get install g++ libssl-dev libbz2-dev, then rerun.")


def download_sdist(python, workdir):
    out = run([python, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               f"zeroc-ice=={ICE_VERSION}", "-d", workdir])
    archives = glob.glob(os.path.join(workdir, f"zeroc-ice-{ICE_VERSION}.tar.gz"))
    if out.returncode != 0 or not archives:
        raise BuildError(5, f"could not download the zeroc-ice {ICE_VERSION} sdist from PyPI "
                         f"(is the package index reachable?):\n{out.stderr.strip()[-800:]}")
    return archives[0]


def patch_sources(tree, version):
    for name, old, new, since in SOURCE_FIXES:
        if version < since:
            continue
        path = os.path.join(tree, name)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if old not in text:
            raise BuildError(6, f"unexpected zeroc-ice source: {name} lacks {old.strip()!r}")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text.replace(old, new))


def build_wheel(python, version, cache):
    ensure_build_requirements(python)
    with tempfile.TemporaryDirectory(prefix="build-ice-") as workdir:
        archive = download_sdist(python, workdir)
        with tarfile.open(archive) as tar:
            tar.extractall(workdir, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(workdir)
        tree = os.path.join(workdir, f"zeroc-ice-{ICE_VERSION}")
        patch_sources(tree, version)
        print(f"build_ice: compiling zeroc-ice {ICE_VERSION} for Python {version[0]}.{version[1]}"
              " (about 8 minutes on 2 cores, done once)", flush=True)
        out_dir = os.path.join(workdir, "dist")
        # --use-pep517: older pips would call setup.py bdist_wheel, which needs the wheel package
        out = run([python, "-m", "pip", "wheel", "--no-deps", "--use-pep517", "-w", out_dir, tree])
        wheels = glob.glob(os.path.join(out_dir, "*.whl"))
        if out.returncode != 0 or not wheels:
            raise BuildError(6, "zeroc-ice build failed:\n" + (out.stdout + out.stderr)[-3000:])
        os.makedirs(cache, exist_ok=True)
        final = os.path.join(cache, os.path.basename(wheels[0]))
        staging = final + ".part"
        shutil.copyfile(wheels[0], staging)
        with open(staging, "rb") as f:
            os.fsync(f.fileno())
        os.replace(staging, final)
        return final


def ensure_ice(python, cache):
    version = target_version(python)
    if version not in SUPPORTED:
        raise BuildError(3, "omero-cli-ext supports Python 3.9, 3.10, 3.11 and 3.12; "
                         f"{python} is {version[0]}.{version[1]}. Create the virtualenv with one of those.")
    if ice_importable(python):
        print("build_ice: zeroc-ice 3.6 already installed", flush=True)
        return None
    wheel = cached_wheel(cache, version) or build_wheel(python, version, cache)
    out = run([python, "-m", "pip", "install", "--no-deps", wheel])
    if out.returncode != 0 or not ice_importable(python):
        raise BuildError(6, f"installing {wheel} failed:\n{out.stderr.strip()[-1500:]}")
    print(f"build_ice: installed {os.path.basename(wheel)} (cached in {cache})", flush=True)
    return wheel


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="interpreter to install into")
    parser.add_argument("--cache", default=default_cache(), help="wheel cache directory")
    args = parser.parse_args(argv)
    try:
        ensure_ice(args.python, args.cache)
    except BuildError as err:
        print(f"build_ice: error: {err}", file=sys.stderr)
        return err.code
    return 0


if __name__ == "__main__":
    sys.exit(main())
