"""tools/build_ice.py and tools/install.py: cached wheel reuse and clear failures on bad set-ups."""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "tools")
sys.path.insert(0, TOOLS)
import build_ice  # noqa: E402


def run_tool(script, *args, env=None):
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, os.path.join(TOOLS, script), *args],
                          capture_output=True, text=True, env=full_env, timeout=600)


def test_source_fixes_apply_to_the_real_sdist_layout(tmp_path):
    """Every fix names text that the 3.6.5 sources really contain (checked on a copy made here)."""
    files = {
        "src/Slice.cpp": "#include <compile.h>\n#include <eval.h>\nint x;\n",
        "src/Util.cpp": "#include <compile.h>\nPyFrameObject *f = PyThreadState_GET()->frame;\n",
        "setup.py": "        if platform is not 'freebsd':\n",
        "lib/Ice.py": "import sys, string, imp, os, threading\nnmod = imp.new_module(curr)\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    build_ice.patch_sources(str(tmp_path), (3, 12))
    assert "eval.h" not in (tmp_path / "src/Slice.cpp").read_text()
    assert "PyEval_GetFrame()" in (tmp_path / "src/Util.cpp").read_text()
    assert "platform != 'freebsd'" in (tmp_path / "setup.py").read_text()
    ice_py = (tmp_path / "lib/Ice.py").read_text()
    assert "imp" not in ice_py.split() and "types.ModuleType(curr)" in ice_py


def test_unexpected_sources_fail_with_a_message(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src/Slice.cpp").write_text("nothing here\n")
    with pytest.raises(build_ice.BuildError) as err:
        build_ice.patch_sources(str(tmp_path), (3, 11))
    assert err.value.code == 6 and "lacks" in str(err.value)


def test_wrong_python_is_refused_with_advice(tmp_path):
    candidates = [os.path.expanduser(f"~/.pyenv/versions/{v}/bin/python") for v in ("3.8.18", "3.13.0")]
    old = next((c for c in candidates if os.path.exists(c)), None)
    if old is None:
        pytest.skip("no unsupported interpreter on this machine to try")
    out = run_tool("install.py", "--python", old, "--venv", str(tmp_path / "v"))
    assert out.returncode == 3
    assert "use 3.9, 3.10, 3.11 or 3.12" in out.stderr
    assert not (tmp_path / "v").exists()


def test_missing_compiler_is_reported_with_the_packages_to_install(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    missing = build_ice.missing_build_requirements(sys.executable)
    assert "g++" in missing
    monkeypatch.setattr(os, "geteuid", lambda: 1000)   # not root: no apt-get attempt
    with pytest.raises(build_ice.BuildError) as err:
        build_ice.ensure_build_requirements(sys.executable)
    assert err.value.code == 4
    assert "apt-get install g++ libssl-dev libbz2-dev" in str(err.value)


def test_unreachable_index_says_so(tmp_path):
    env = {"PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "0", "PIP_TIMEOUT": "2"}
    with pytest.raises(build_ice.BuildError) as err:
        old = dict(os.environ)
        os.environ.update(env)
        try:
            build_ice.download_sdist(sys.executable, str(tmp_path))
        finally:
            os.environ.clear()
            os.environ.update(old)
    assert err.value.code == 5
    assert "is the package index reachable?" in str(err.value)


def test_present_ice_is_not_rebuilt(capsys):
    """This interpreter already has zeroc-ice 3.6: nothing is downloaded or compiled."""
    assert build_ice.ensure_ice(sys.executable, "/nonexistent-cache") is None
    assert "already installed" in capsys.readouterr().out


@pytest.mark.slow
def test_cached_wheel_is_installed_without_compiling(tmp_path):
    wheel = build_ice.cached_wheel(build_ice.default_cache(), sys.version_info[:2])
    if wheel is None:
        pytest.skip("no cached zeroc-ice wheel for this Python (tools/install.py builds one)")
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(wheel, cache)
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "v")], check=True)
    python = str(tmp_path / "v" / "bin" / "python")
    # An index that cannot answer proves nothing is downloaded; no compile happens either.
    out = run_tool("build_ice.py", "--python", python, "--cache", str(cache),
                   env={"PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PATH": "/nonexistent"})
    assert out.returncode == 0, out.stderr
    assert "installed zeroc_ice-3.6.5" in out.stdout
    assert "compiling" not in out.stdout


def test_docs_index_names_the_supported_pythons():
    """docs/index.md's exit code 3 and tox line name exactly build_ice.SUPPORTED (README: 3.9–3.12)."""
    import re
    with open(os.path.join(ROOT, "docs", "index.md"), encoding="utf-8") as stream:
        index = stream.read()
    supported = {"%d.%d" % v for v in build_ice.SUPPORTED}
    row = re.search(r"^\| 3 \| unsupported Python \((.*)\) \|$", index, re.M).group(1)
    tox = re.search(r"^`tox` runs the suite on Python (.*) with", index, re.M).group(1)
    assert set(re.findall(r"3\.\d+", row)) == supported == set(re.findall(r"3\.\d+", tox))
