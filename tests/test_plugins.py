"""The plugins load through omero's real loader, and the built-in paths stay untouched."""
import importlib
import importlib.metadata
import json
import os
import subprocess
import sys

import pytest

builtin_import = importlib.import_module("omero.plugins.import")
builtin_export = importlib.import_module("omero.plugins.export")


def visible_option_strings(parser):
    from argparse import SUPPRESS
    return {s for action in parser._actions if action.help != SUPPRESS for s in action.option_strings}


def installed_distribution():
    """The installed copy (with a RECORD), not an egg-info a build may leave in the work tree."""
    return next(d for d in importlib.metadata.distributions(name="omero-cli-ext") if d.read_text("RECORD"))


def help_text(cli, capsys, *argv):
    cli.invoke([*argv, "-h"], strict=False)
    return capsys.readouterr().out


def test_our_controls_win_over_the_builtins(omero_cli):
    assert type(omero_cli.controls["import"]).__module__ == "omero_cli_ext.cli.import_ext"
    assert type(omero_cli.controls["export"]).__module__ == "omero_cli_ext.cli.export_ext"
    assert type(omero_cli.controls["mv"]).__module__ == "omero_cli_ext.cli.mv"
    assert type(omero_cli.controls["status"]).__module__ == "omero_cli_ext.cli.status"


def test_loading_the_cli_does_not_import_our_command_cores():
    """Every omero command loads every plugin; ours define their options without importing
    the import driver, the exporter or the mv engine (a fresh interpreter, as `omero` starts)."""
    script = ("import sys, omero.cli; cli = omero.cli.CLI(); cli.loadplugins(); "
              "print(sorted(m for m in sys.modules if m.startswith('omero_cli_ext')))")
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True).stdout
    assert "omero_cli_ext.cli.mv" in loaded   # the plugins did load
    for core in ("omero_cli_ext.importing.driver", "omero_cli_ext.export.execute",
                 "omero_cli_ext.mv.engine", "omero_cli_ext.journal"):
        assert f"'{core}'" not in loaded


def test_shims_are_installed_beside_the_builtins_not_editable():
    dist = installed_distribution()
    shims = {str(f) for f in dist.files if str(f).startswith("omero/plugins/") and str(f).endswith(".py")}
    assert shims == {"omero/plugins/mv_ext.py", "omero/plugins/status_ext.py",
                     "omero/plugins/import_ext.py", "omero/plugins/export_ext.py"}
    direct = dist.read_text("direct_url.json")
    assert direct is None or not json.loads(direct).get("dir_info", {}).get("editable")
    installed_dir = os.path.dirname(str(dist.locate_file("omero/plugins/import_ext.py")))
    assert os.path.dirname(builtin_import.__file__) == installed_dir


def test_import_help_keeps_every_builtin_option(omero_cli, capsys):
    text = help_text(omero_cli, capsys, "import")
    from omero.cli import Parser
    builtin_parser = Parser(prog="import")
    builtin_import.ImportControl(ctx=omero_cli)._configure(builtin_parser)
    for flag in visible_option_strings(builtin_parser) - {"-h", "--help"}:
        assert flag in text, flag
    assert "Resumable import (omero-cli-ext)" in text
    for flag in ("--resume", "--chunk-size", "--chunk-bytes", "--workers", "--journal", "--clean-ghosts"):
        assert flag in text


def test_export_help_keeps_builtin_options_and_adds_originals_and_zarr(omero_cli, capsys):
    text = help_text(omero_cli, capsys, "export")
    for flag in ("--file", "--type", "--iterate", "--originals", "--link", "--layout",
                 "--as-user", "--sync", "--verify", "--zarr", "--ngff", "--chunk", "--workers"):
        assert flag in text


@pytest.mark.parametrize("argv, expected", [
    (["mv"], ["--links-only", "--repair", "--inline", "--repo", "--dry-run", "--json"]),
    (["status", "imports"], ["--watch", "--check", "--prometheus", "--stalled-after", "--json"]),
])
def test_new_commands_have_help(omero_cli, capsys, argv, expected):
    text = help_text(omero_cli, capsys, *argv)
    for flag in expected:
        assert flag in text


def test_plain_import_takes_the_builtin_code_path(omero_cli, monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(builtin_import.ImportControl, "_get_classpath_logback",
                        lambda self, args: (["/nowhere/omero-blitz.jar"], "-Dlogback.configurationFile=x"))
    monkeypatch.setattr(builtin_import.ImportControl, "do_import",
                        lambda self, command_args, xargs, mode="w": calls.append(command_args.java_args()))
    monkeypatch.setattr(omero_cli, "conn", lambda args: _LoggedInClient())
    target = tmp_path / "a.fake"
    target.write_bytes(b"")
    omero_cli.invoke(["import", "-d", "5", str(target)], strict=True)
    assert len(calls) == 1
    java_args = calls[0]
    assert java_args[:6] == ["-s", "omero.example.org", "-p", "4064", "-k", "session-uuid"]
    assert java_args[-1] == str(target), java_args
    assert java_args[java_args.index("-d") + 1] == "5", java_args
    assert not any(a.startswith("--resume") or a.startswith("--chunk") for a in java_args)


class _LoggedInClient:
    """What CommandArguments asks of the CLI's client: host, port and session id."""

    def getProperty(self, key):
        return {"omero.host": "omero.example.org", "omero.port": "4064"}[key]

    def getSessionId(self):
        return "session-uuid"


def test_resume_options_without_resume_are_refused(omero_cli, capsys, tmp_path):
    omero_cli.invoke(["import", "--chunk-size", "5", str(tmp_path)], strict=False)
    assert omero_cli.rv == 2
    assert "--chunk-size only apply to resumable imports: add --resume" in capsys.readouterr().err


def test_plain_export_takes_the_builtin_code_path(omero_cli, monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(builtin_export.ExportControl, "handleImages",
                        lambda self, args, images: calls.append((args.file.name, images)))
    out = tmp_path / "x.ome.tiff"
    omero_cli.invoke(["export", "-f", str(out), "Image:1"], strict=True)
    assert calls == [(str(out), [1])]


@pytest.mark.parametrize("argv, message", [
    (["export", "Image:1"], "the following arguments are required: -f/--file"),
    (["export", "-f", "{out}", "Image:1", "Image:2"], "the built-in export takes one object"),
    (["export", "-f", "{out}", "Image"], "Format: 'Image:<id>'"),
    # options of --originals/--zarr were "unrecognized arguments" before: never silently ignored
    (["export", "-f", "{out}", "Image:1", "--dry-run"], "--dry-run apply to --originals or --zarr"),
    (["export", "-f", "{out}", "Image:1", "--as-user", "bob", "--sync"],
     "--as-user, --sync apply to --originals or --zarr only"),
])
def test_builtin_export_errors_unchanged(omero_cli, capsys, monkeypatch, tmp_path, argv,
                                        message):
    calls = []
    monkeypatch.setattr(builtin_export.ExportControl, "handleImages",
                        lambda self, args, images: calls.append(images))
    argv = [a.format(out=tmp_path / "o.tiff") for a in argv]
    omero_cli.invoke(argv, strict=False)
    assert omero_cli.rv != 0
    assert message in capsys.readouterr().err
    assert calls == []          # (-f is opened by argparse, as the built-in always did)
