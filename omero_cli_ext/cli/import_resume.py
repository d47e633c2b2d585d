"""The --resume option group of `omero import` and the control glue of the resumable driver."""
from __future__ import annotations

from omero_cli_ext.cli.base import add_dry_run_argument, add_json_argument


def positive_int(text):
    import argparse
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def add_resume_arguments(group) -> None:
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
