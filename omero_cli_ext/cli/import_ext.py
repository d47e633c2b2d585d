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
command. A job is bound to its server, user, group, paths, target and result-changing options;
--clean-ghosts deletes only filesets proven to be the job's and proven dead. See docs/import.md.

Exit codes with --resume: 0 all imported; 2 bad arguments; 3 some filesets failed; 4 interrupted
or the server still importing (rerun); 5 dead filesets of the job on the server (rerun with
--clean-ghosts); 10 bad input; 11 nothing importable; 12 paths/target/options differ from the
job's; 13 unknown job; 14 journal locked; 15 not a journal; 16 journal unusable (unreachable,
disk full); 17 no importer; 18 listing failed; 19 job of another server, user or group;
20-22 server errors.
"""

# argparse dests that only mean something with --resume (never passed to the Java importer)
RESUME_ONLY = ("job", "journal", "chunk_size", "chunk_bytes", "workers", "retries",
               "clean_ghosts", "dry_run", "json", "lease", "importer_timeout",
               "server_step_timeout", "results", "retry_failed", "rescan")


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
            # `is` tests: `--retries 0` is given although 0 == False
            given = [name for name in RESUME_ONLY
                     if getattr(args, name, None) is not None and getattr(args, name) is not False]
            if given:
                flags = ", ".join("--" + name.replace("_", "-") for name in given)
                self.ctx.die(2, f"{flags} only apply to resumable imports: add --resume")
            return self.importer(args)
        if getattr(args, "fetch_jars", None) or getattr(args, "advanced_help", False) \
                or getattr(args, "javahelp", False):
            # the built-in's own actions (download jars, print the Java help) run as without --resume
            import argparse
            plain = argparse.Namespace(**vars(args))
            for name in ("resume",) + RESUME_ONLY:
                setattr(plain, name, None)
            return self.importer(plain)
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
                       help="on resume, delete the filesets proven to be this job's and proven dead "
                            "(see docs/import.md) and re-import them; other filesets are never deleted")
    group.add_argument("--lease", type=positive_int, metavar="SECONDS",
                       help="a chunk claim expires after this long without a heartbeat, and a half-uploaded "
                            "fileset of this job with no upload progress for this long is dead (default 600)")
    group.add_argument("--importer-timeout", metavar="DURATION",
                       help="kill and retry an importer with no output line and no upload byte for this long "
                            "(default 1h; e.g. 900, 30m, 2h)")
    group.add_argument("--server-step-timeout", metavar="DURATION",
                       help="an uploaded fileset of this job with no images is still being imported by the "
                            "server until this long after its last sign of life (default 12h)")
    group.add_argument("--results", action="store_true",
                       help="re-print the results of a job (one line per fileset with its ids) and exit")
    group.add_argument("--retry-failed", action="store_true",
                       help="plan the job's failed filesets again and import them")
    group.add_argument("--rescan", action="store_true",
                       help="list the job's paths again and add files that appeared since the plan")
    add_dry_run_argument(group)
    add_json_argument(group)


def register_plugin(register):
    register("import", ImportControl, _builtin.HELP + RESUME_HELP, epilog=_builtin.EXAMPLES)
