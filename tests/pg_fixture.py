"""pytest fixtures: a throwaway PostgreSQL server started from the Debian package.

`postgres_url` (session) runs initdb + pg_ctl from /usr/lib/postgresql/<newest>/bin in a temporary
directory, listening on a free loopback port and a unix socket in that directory, and stops it at
the end of the session. As root the server runs as the `postgres` user (or a system user created
for it), since PostgreSQL refuses to run as root. Missing binaries are installed once with
`apt-get install -y postgresql` when running as root; only when that fails are the tests
skipped, with the reason. `postgres_db_url` gives each test an empty database of its own.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid

import pytest

__all__ = ["postgres_url", "postgres_db_url"]

_SERVER_USER_FALLBACK = "omero-cli-ext-pg"
_install_outcome: dict = {}


def _server_bindir():
    def major(path):
        return int(path.split("/")[4]) if path.split("/")[4].isdigit() else 0
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=major)
    return os.path.dirname(found[-1]) if found else None


def _apt_get(*args):
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    return subprocess.run(["apt-get", *args], env=env, capture_output=True, text=True,
                          timeout=900)


def _install_postgresql():
    """apt-get install postgresql (once per run); returns None or why it could not."""
    if "reason" in _install_outcome:
        return _install_outcome["reason"]
    reason = None
    if os.geteuid() != 0:
        reason = "not root, so apt-get install postgresql was not tried"
    elif shutil.which("apt-get") is None:
        reason = "no apt-get on this machine"
    else:
        result = _apt_get("install", "-y", "-q", "postgresql")
        if result.returncode:
            _apt_get("update", "-q")
            result = _apt_get("install", "-y", "-q", "postgresql")
        if result.returncode:
            tail = (result.stderr or result.stdout).strip().splitlines()[-1:]
            reason = f"apt-get install postgresql failed: {' '.join(tail)}"
    _install_outcome["reason"] = reason
    return reason


def _server_user():
    """The unprivileged user the server runs as when we are root."""
    for name in ("postgres", _SERVER_USER_FALLBACK):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    _SERVER_USER_FALLBACK], check=True, capture_output=True)
    return _SERVER_USER_FALLBACK


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url():
    """URL of a running throwaway PostgreSQL server (superuser `journal`, trust auth)."""
    bindir = _server_bindir()
    if bindir is None:
        reason = _install_postgresql()
        bindir = _server_bindir()
        if bindir is None:
            pytest.skip("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin "
                        f"and could not be installed ({reason or 'installed, still missing'})")
    base = tempfile.mkdtemp(prefix="omero-cli-ext-pg-")
    run_as = []
    if os.geteuid() == 0:
        user = _server_user()
        entry = pwd.getpwnam(user)
        os.chown(base, entry.pw_uid, entry.pw_gid)
        run_as = ["runuser", "-u", user, "--"]
    data, log, port = os.path.join(base, "data"), os.path.join(base, "server.log"), _free_port()

    def run(*argv):
        result = subprocess.run(run_as + list(argv), capture_output=True, text=True, timeout=120)
        if result.returncode:
            server_log = open(log).read()[-2000:] if os.path.exists(log) else ""
            pytest.fail(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stderr}\n"
                        f"{server_log}")

    run(os.path.join(bindir, "initdb"), "-D", data, "-U", "journal", "--auth=trust",
        "-E", "UTF8", "--no-locale", "--no-sync")
    options = (f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={base} "
               "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
               "-c max_connections=60")
    run(os.path.join(bindir, "pg_ctl"), "-D", data, "-l", log, "-w", "-t", "60", "-o", options,
        "start")
    try:
        yield f"postgresql://journal@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(run_as + [os.path.join(bindir, "pg_ctl"), "-D", data, "-m", "immediate",
                                 "-w", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_db_url(postgres_url):
    """URL of a fresh, empty database on the session's server, dropped after the test."""
    psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (extra [postgres])")
    name = f"journal_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
