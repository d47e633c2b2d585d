"""The command line of `omero import --resume` checked before anything is touched, and the job
name derived from it (pure: no server, no journal)."""
from __future__ import annotations

import hashlib
import json
import os
import re

from omero_cli_ext.importing import identity
from omero_cli_ext.importing.plan import parse_duration, parse_size
from omero_cli_ext.output import printable

MAX_WORKERS = 32


class BadInput(ValueError):
    """The command line cannot work; the message says why (exit 10)."""


def check(args) -> tuple:
    """(absolute paths, target text, --chunk-bytes in bytes or None); durations on `args` become
    seconds. Raises BadInput."""
    if getattr(args, "bulk", None):
        raise BadInput("--resume does not drive --bulk files (each bulk line is its own import); "
                       "pass the paths instead, or run --bulk without --resume")
    for flag in ("file", "errs"):
        if getattr(args, flag, None):
            raise BadInput(f"--{flag} does not combine with --resume: the driver reads the "
                           "importer's output itself (see the journal and --json)")
    if getattr(args, "f", False):
        raise BadInput("-f only lists files: use --resume --dry-run to see the plan")
    chunk_bytes = None
    if args.chunk_bytes:
        try:
            chunk_bytes = parse_size(args.chunk_bytes)
        except ValueError as err:
            raise BadInput(f"--chunk-bytes: {err}") from None
    if args.retries is not None and args.retries < 0:
        raise BadInput(f"--retries must be 0 or more, got {args.retries}")
    if args.workers is not None and args.workers > MAX_WORKERS:
        raise BadInput(f"--workers {args.workers} is more than {MAX_WORKERS}: each worker is a JVM "
                       "and a database connection on the server; 1-4 is usually fastest "
                       "(docs/import.md, Chunking advice)")
    for flag in ("importer_timeout", "server_step_timeout"):
        value = getattr(args, flag)
        if value is not None:
            try:
                setattr(args, flag, parse_duration(value))
            except ValueError as err:
                raise BadInput(f"--{flag.replace('_', '-')}: {err}") from None
    if args.results and (args.retry_failed or args.rescan or args.clean_ghosts or args.dry_run):
        raise BadInput("--results only re-prints a job's results: it combines with --job, "
                       "--journal and --json, not with options that change it")
    paths = []
    for given in args.path or []:
        path = os.path.abspath(given)
        if not os.path.lexists(path):
            raise BadInput(f"no such file or directory: {printable(given)}")
        if not os.access(path, os.R_OK) or (os.path.isdir(path) and not os.access(path, os.X_OK)):
            raise BadInput(f"cannot read {printable(given)} (permission denied)")
        paths.append(path)
    target = target_text(args)
    if target:
        try:
            identity.parse_target(target)
        except ValueError as err:
            raise BadInput(str(err)) from None
    return paths, target, chunk_bytes


def target_text(args) -> str:
    """The import target as text: "Dataset:5", "Screen:7", "Dataset:name:X", or ""."""
    if args.target:
        return args.target
    if args.d:
        return args.d if str(args.d).startswith("Dataset:") else f"Dataset:{args.d}"
    if args.r:
        return args.r if str(args.r).startswith("Screen:") else f"Screen:{args.r}"
    return ""


def derived_job_name(paths, target) -> str:
    """Stable across reruns of the same command: the first path's name plus a digest of all
    paths and the target."""
    digest = hashlib.sha1(json.dumps([sorted(paths), target or ""]).encode(
        "utf-8", "surrogateescape")).hexdigest()[:10]
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(paths[0].rstrip("/")) or "root")
    return f"{base[:40]}-{digest}"
