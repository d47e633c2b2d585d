"""Starting the importer: the real Java `CommandLineImporter`, exactly as `omero import` runs it.

`spawn` is the one place a process is started; tests/sim/launcher.py replaces it with one that
starts the simulated server's fake importer with the same CommandLineImporter arguments.
"""
from __future__ import annotations

import codecs
import os
import subprocess
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

START_CLASS = "ome.formats.importer.cli.CommandLineImporter"


class ImporterUnavailable(Exception):
    """No Java or no importer jars: the message says how to get them."""


@dataclass(frozen=True)
class JavaLaunch:
    """The `java ...` prefix the built-in `omero import` runs before its own arguments
    (omero.java.cmd with its JVM options and START_CLASS), or the `problem` that prevents it."""
    prefix: tuple = ()
    problem: str = ""


# JVM options that make it read and print file names as UTF-8 (with a UTF-8 locale, below)
JAVA_UTF8 = ("-Dfile.encoding=UTF-8", "-Dsun.jnu.encoding=UTF-8")


def utf8_environment(environ=None) -> dict:
    """The environment for the importer: the caller's, with a UTF-8 locale when the caller's
    is not (under C/POSIX the JVM decodes non-ASCII file names as `?` and cannot open them)."""
    env = dict(os.environ if environ is None else environ)
    current = env.get("LC_ALL") or env.get("LC_CTYPE") or env.get("LANG") or ""
    encoding = current.rsplit(".", 1)[1].split("@")[0] if "." in current else ""
    try:
        utf8 = codecs.lookup(encoding).name == "utf-8" if encoding else False
    except LookupError:
        utf8 = False
    if not utf8:
        env["LC_ALL"] = "C.UTF-8"
    return env


def spawn(argv: Sequence[str], stdout, stderr, env=None, java: Optional[JavaLaunch] = None,
          preexec_fn: Optional[Callable] = None) -> subprocess.Popen:
    """Start the importer with the CommandLineImporter arguments `argv`."""
    if java is None or java.problem or not java.prefix:
        raise ImporterUnavailable(java.problem if java and java.problem
                                  else "the Java importer command is unknown")
    try:
        return subprocess.Popen([*java.prefix, *argv], stdout=stdout, stderr=stderr, env=env,
                                preexec_fn=preexec_fn)
    except FileNotFoundError:
        raise ImporterUnavailable(f"cannot run {java.prefix[0]}: install Java (11 or later) "
                                  "and put `java` on PATH") from None
