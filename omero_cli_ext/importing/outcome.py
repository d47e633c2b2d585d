"""How a run of `omero import --resume` ends: its exit code, its summary record and messages, and
the command that continues it (docs/import.md, Exit codes)."""
from __future__ import annotations

import shlex
from typing import Optional

EXIT_FAILED_FILESETS = 3    # the job finished; some filesets failed on their own merits
EXIT_INTERRUPTED = 4        # interrupted, transient failures beyond --retries, server still busy
EXIT_GHOSTS = 5             # dead filesets of this job are on the server: rerun with --clean-ghosts
EXIT_BAD_INPUT = 10         # missing/unreadable paths, bad sizes, options that do not combine
EXIT_NOTHING_TO_IMPORT = 11  # the importer found no importable file (-f exits 125)
EXIT_PLAN_MISMATCH = 12     # paths, target or result-changing options differ from the job's
EXIT_UNKNOWN_JOB = 13       # --job names no job in the journal
EXIT_JOURNAL_LOCKED = 14    # another live process runs this job (SQLite journal)
EXIT_JOURNAL_CORRUPT = 15   # the journal file is not a journal
EXIT_JOURNAL = 16           # the journal cannot be used (unreachable, no access, disk full, ...)
EXIT_NO_IMPORTER = 17       # no Java or no importer jars
EXIT_IMPORTER_FAILED = 18   # the importer could not list the files (-f failed otherwise)
EXIT_IDENTITY = 19          # the job belongs to another server, user or group
# 20, 21 (the target is not the user's and its group is not read-write), 22 (the target does not
# exist or is not readable): omero_cli_ext.exitcodes


class Refused(Exception):
    """The command ends before the driver runs, with this exit code; the message says why and
    what to do."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def _count(counts: dict, *states) -> int:
    return sum(counts.get(s, (0, 0))[0] for s in states)


def job_exit_code(counts: dict, interrupted: bool, ghosts_left: int) -> int:
    """`counts`: state -> (filesets, bytes) of the job."""
    if interrupted or _count(counts, "planned", "running"):
        return EXIT_INTERRUPTED
    if _count(counts, "ghost") or ghosts_left:
        return EXIT_GHOSTS
    if _count(counts, "failed"):
        return EXIT_FAILED_FILESETS
    return 0


def totals(job: str, journal: str, record, counts: dict) -> dict:
    return {"job": job, "journal": journal, "filesets_total": record.filesets,
            "done": _count(counts, "done"), "failed": _count(counts, "failed"),
            "ghosts": _count(counts, "ghost"), "remaining": _count(counts, "planned", "running"),
            "bytes_total": record.bytes, "bytes_done": counts.get("done", (0, 0))[1]}


def totals_line(job: str, record, counts: dict) -> str:
    return (f"job {job}: {_count(counts, 'done')}/{record.filesets} filesets done, "
            f"{_count(counts, 'failed')} failed, {_count(counts, 'ghost')} waiting for "
            f"--clean-ghosts, {_count(counts, 'planned', 'running')} remaining")


def summary(job: str, journal: str, record, counts: dict, run, rc: int, rerun: str) -> dict:
    """The `summary` record of a run (`run`: driver.RunSummary)."""
    return {**totals(job, journal, record, counts),
            "imported_this_run": run.imported, "retried": run.retried,
            "importers_timed_out": run.timed_out, "deleted_ghosts": run.deleted_ghosts,
            "ghosts_left": run.ghosts_left,
            "duplicates": [{"path_index": i, "filesets": list(ids)} for i, ids in run.duplicates],
            "foreign": [{"path_index": idx, "fileset": fid, "complete": complete,
                         "containers": list(containers)}
                        for idx, fid, complete, containers in run.foreign],
            "server_processing": [{"path_index": i, "reason": r} for i, r in run.waiting],
            "exit_code": rc, "rerun": rerun if rc in (EXIT_INTERRUPTED, EXIT_GHOSTS) else None}


def messages(job: str, record, counts: dict, run, rc: int, rerun: str,
             clean_ghosts: bool) -> list:
    """(level "info" or "warn", text) lines for people."""
    lines = [("info", totals_line(job, record, counts))]
    lines += [("warn", f"fileset #{idx} is on the server more than once (extra Fileset "
                       f"{', '.join(map(str, ids))}): check and delete by hand")
              for idx, ids in run.duplicates]
    if run.deleted_ghosts:
        lines.append(("info", "deleted dead filesets of this job: "
                      + ", ".join(map(str, run.deleted_ghosts))))
    if run.waiting:
        lines.append(("warn", f"{len(run.waiting)} filesets may still be being imported by the "
                              f"server (first: {run.waiting[0][1]}); rerun later"))
    if rc == EXIT_INTERRUPTED:
        lines.append(("warn", f"job {job} is not finished; rerun to resume:\n  {rerun}"))
    elif rc == EXIT_GHOSTS:
        lines.append(("warn", f"job {job} left dead filesets of its own on the server; delete "
                              "them and re-import with:\n  "
                              f"{rerun if clean_ghosts else rerun + ' --clean-ghosts'}"))
    elif rc == EXIT_FAILED_FILESETS:
        lines.append(("warn", f"job {job}: {_count(counts, 'failed')} filesets failed "
                              "(`--results --json` lists them; `--retry-failed` imports them "
                              "again)"))
    return lines


def rerun_command(job: str, journal: Optional[str], workers, retries, lease, importer_timeout,
                  server_step_timeout, clean_ghosts: bool) -> str:
    parts = ["omero", "import", "--resume", "--job", job]
    if journal:
        parts += ["--journal", journal]
    for flag, value in (("--workers", workers), ("--retries", retries), ("--lease", lease),
                        ("--importer-timeout", importer_timeout),
                        ("--server-step-timeout", server_step_timeout)):
        if value is not None:
            parts += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    if clean_ghosts:
        parts.append("--clean-ghosts")
    return shlex.join(parts)


def human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
