"""`omero import`, extended with --resume: the built-in control plus one option group.

Without --resume the built-in `ImportControl.importer` runs untouched; with it, the journaled,
chunked driver in `omero_cli_ext.importing` takes over.
"""
from __future__ import annotations

import importlib

from omero_cli_ext.cli.base import add_dry_run_argument, add_json_argument, positive_int

_builtin = importlib.import_module("omero.plugins.import")
BuiltinImportControl = _builtin.ImportControl

RESUME_HELP = """
Resumable imports (omero-cli-ext): add --resume to plan filesets, import them in chunks with
throttled workers, journal every fileset and continue after any failure by rerunning the same
command. See docs/import.md.
"""

# argparse dests that only mean something with --resume (never passed to the Java importer)
RESUME_ONLY = ("job", "journal", "chunk_size", "chunk_bytes", "workers", "retries",
               "clean_ghosts", "dry_run", "json", "lease")


class ImportControl(BuiltinImportControl):
    """The built-in import control with a --resume option group."""

    def _configure(self, parser):
        super()._configure(parser)
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


def add_resume_arguments(group) -> None:
    """The --resume options (defined here, not beside the driver, so that loading the omero CLI
    for any command does not import the driver)."""
    group.add_argument("--resume", action="store_true",
                       help="plan, chunk and journal the import; rerun the same command to continue")
    group.add_argument("--job", metavar="NAME",
                       help="job name (default: derived from the paths and target); required to join a "
                            "shared PostgreSQL job from several hosts")
    group.add_argument("--journal", metavar="PATH|URL",
                       help="journal location: an SQLite file (default under the OMERO user directory) "
                            "or a postgresql:// URL shared by several hosts")
    group.add_argument("--chunk-size", type=positive_int, metavar="N",
                       help="filesets per importer run (default 50)")
    group.add_argument("--chunk-bytes", metavar="SIZE",
                       help="bytes per importer run, e.g. 500G, 2T (with --chunk-size: whichever fills first)")
    group.add_argument("--workers", type=positive_int, metavar="N",
                       help="importer runs at once (default 1; the server's database pool is the bottleneck)")
    group.add_argument("--retries", type=int, metavar="N",
                       help="retries of a chunk after a transient failure, with exponential backoff (default 3)")
    group.add_argument("--clean-ghosts", action="store_true",
                       help="on resume, delete this job's half-uploaded or image-less filesets and re-import them")
    group.add_argument("--lease", type=positive_int, metavar="SECONDS",
                       help="shared journals: a chunk claim expires after this long without a heartbeat (default 600)")
    add_dry_run_argument(group)
    add_json_argument(group)


def register_plugin(register):
    register("import", ImportControl, _builtin.HELP + RESUME_HELP, epilog=_builtin.EXAMPLES)
