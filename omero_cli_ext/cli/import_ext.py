"""`omero import`, extended with --resume: the built-in control plus one option group.

Without --resume the built-in `ImportControl.importer` runs untouched; with it, the journaled,
chunked driver in `omero_cli_ext.importing` takes over.
"""
from __future__ import annotations

import importlib

_builtin = importlib.import_module("omero.plugins.import")
BuiltinImportControl = _builtin.ImportControl

RESUME_HELP = """
Resumable imports (omero-cli-ext): add --resume to plan filesets, import them in chunks with
throttled workers, journal every fileset and continue after any failure by rerunning the same
command. See docs/import.md.
"""

# Options that only mean something with --resume (name → argparse dest)
RESUME_ONLY = ("job", "journal", "chunk_size", "chunk_bytes", "workers", "retries",
               "clean_ghosts", "dry_run", "json", "lease")


class ImportControl(BuiltinImportControl):
    """The built-in import control with a --resume option group."""

    def _configure(self, parser):
        super()._configure(parser)
        from omero_cli_ext.cli.import_resume import add_resume_arguments
        group = parser.add_argument_group(
            "Resumable import (omero-cli-ext)",
            "Chunked, journaled imports that finish after any failure. See docs/import.md.")
        add_resume_arguments(group)
        parser.set_defaults(func=self.dispatch)

    def dispatch(self, args):
        if not getattr(args, "resume", False):
            given = [name for name in RESUME_ONLY if getattr(args, name, None) not in (None, False)]
            if given:
                flags = ", ".join("--" + name.replace("_", "-") for name in given)
                self.ctx.die(2, f"{flags} only apply to resumable imports: add --resume")
            return self.importer(args)
        from omero_cli_ext.cli.import_resume import run_resume
        return run_resume(self, args)


def register_plugin(register):
    register("import", ImportControl, _builtin.HELP + RESUME_HELP, epilog=_builtin.EXAMPLES)
