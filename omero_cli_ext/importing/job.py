"""One job of `omero import --resume` opened for its driver: planned from the importer's listing,
created in the journal or found there and checked against this command (identity, paths,
target, options), its target checked, the user's earlier imports of its files reported; then the
driver's settings and importer launch, and how the run concludes.

No omero-py, Ice or rich: the port, the journal, plain values and the importer's command line
(started as a child process). A refusal raises outcome.Refused with its exit code; what people
are shown goes through `report(kind, **fields)` (cli/import_view.py).
"""
from __future__ import annotations

import os
import shlex
import subprocess

from omero_cli_ext.importing import identity, importer, outcome, progress, store
from omero_cli_ext.importing.driver import Settings
from omero_cli_ext.exitcodes import EXIT_NOT_FOUND, EXIT_PERMISSION
from omero_cli_ext.importing.outcome import (EXIT_BAD_INPUT, EXIT_IDENTITY, EXIT_IMPORTER_FAILED,
                                             EXIT_NO_IMPORTER, EXIT_NOTHING_TO_IMPORT,
                                             EXIT_PLAN_MISMATCH, EXIT_UNKNOWN_JOB, Refused)
from omero_cli_ext.importing.plan import (NOTHING_IMPORTABLE_RC, PlanError, check_server_names,
                                          chunk_filesets, file_sizes, new_groups, parse_groups,
                                          parse_size)
from omero_cli_ext.journal import JournalIntegrityError
from omero_cli_ext.output import printable
from omero_cli_ext.pathrules import client_path

DEFAULT_CHUNK_SIZE = 50
DEFAULT_RETRIES = 3
DEFAULT_LEASE = 600
DEFAULT_IMPORTER_TIMEOUT = 3600        # seconds without an importer line or upload byte
DEFAULT_SERVER_STEP_TIMEOUT = 12 * 3600


class JobRun:
    """One invocation on one job: checks and plan (before any journal write), then the job
    opened for the driver. `user` and `login` (host, port, session key) are the port's,
    `options` the importer options the built-in `omero import` would pass for this command.
    `report(kind, **fields)` kinds: "planned", "existing", "job", "rescanned", "retried"."""

    def __init__(self, port, args, job, paths, target, chunk_bytes, java, user, login, options,
                 report):
        self.args, self.port, self.report = args, port, report
        self.job, self.paths, self.target, self.chunk_bytes, self.java = \
            job, paths, target, chunk_bytes, java
        self.user, self.login, self.options = user, login, options
        self.identity = identity.make_identity(
            login[0], login[1], port.repository().uuid, user.id, user.name,
            user.group_id, user.group_name, paths, target, options)
        self.plan = None

    def prepare(self) -> None:
        """Target check and plan of a new job (no journal write yet)."""
        check_target(self.port, self.target)
        self.plan = plan_filesets(self.paths, self.java,
                                  self.args.chunk_size or DEFAULT_CHUNK_SIZE, self.chunk_bytes,
                                  self.options)

    def open(self, journal) -> tuple:
        """(JobStore, JobRecord) of the job, created from the plan or continued once checked,
        with --rescan's new filesets and --retry-failed's failed ones planned."""
        job, paths, target = self.job, self.paths, self.target
        record = existing_job(journal, job)
        if record is None and not paths:
            raise unknown_job_in(journal, job)
        if record is not None:
            self.check_identity(journal, record)
            # the target may have been deleted, or its group made read-only, since the plan
            check_target(self.port, job_target(record))
        if record is None:
            if self.plan is None:
                self.prepare()
            try:
                record = _create_job(journal, job, self.user, paths, target, self.options,
                                     self.plan, self.args, self.identity)
            except JournalIntegrityError:     # another host planned the shared job first
                return self.open(journal)
            self.report("planned", job=job, filesets=record.filesets, bytes=record.bytes,
                        chunks=record.chunks, journal=journal.location)
            self._report_existing()
        self.report("job", job=job, journal=journal.location, filesets=record.filesets,
                    bytes=record.bytes, chunks=record.chunks)
        jobs = store.JobStore(journal, job)
        if self.args.rescan:
            added = plan_filesets(list(record.paths), self.java, record.chunk_size or
                                  DEFAULT_CHUNK_SIZE, record.chunk_bytes, list(record.options),
                                  after=jobs.planned_files())
            if added:
                jobs.extend(added)
                record = jobs.load()
            self.report("rescanned", job=job, filesets=len(added))
        if self.args.retry_failed:
            again = jobs.retry_failed()
            self.report("retried", job=job, filesets=again)
        return jobs, record

    def importer_options(self, record) -> list:
        """The job's importer options, logged in with this command's session."""
        login = ["-s", str(self.login[0]), "-p", str(self.login[1]), "-k", str(self.login[2])]
        return login + list(record.options)

    def check_identity(self, journal, record, bind: bool = True) -> None:
        """Refuse to continue a job for another server, user, group, paths, target or importer
        options (nothing may be reported done that was not imported for this identity).
        `bind`: record the identity of a job planned before identities were (not in --dry-run)."""
        job = self.job
        bound = record.identity
        if bound is None:       # planned before identities were recorded: bind it now
            bound = dict(self.identity, paths=sorted(record.paths), target=record.target,
                         options=identity.result_options(record.options))
            if record.owner_id != self.user.id:
                bound["user"] = {"id": record.owner_id, "name": record.user_name}
            if bind:
                store.JobStore(journal, job).bind_identity(bound)
        why = identity.server_mismatch(bound, self.identity)
        if why:
            raise Refused(EXIT_IDENTITY, f"job {job} cannot be continued here: {why}. Start a "
                                         f"separate job with --job NEW_NAME (and the paths), or "
                                         f"continue it as {identity.describe(bound)}")
        given_options = self.options if (self.paths or identity.result_options(self.options)) \
            else None
        why = identity.plan_mismatch(bound, self.paths, self.target if (self.paths or self.target)
                                     else None, given_options)
        if why:
            raise Refused(EXIT_PLAN_MISMATCH,
                          f"job {job} differs from this command: {why}. Rerun with the job's "
                          f"paths, target and importer options, resume it with --job {job} "
                          "alone, or start a separate job with --job NEW_NAME")

    def _report_existing(self) -> None:
        """Filesets of the user that already use the plan's main files: never the job's
        (foreign), reported once with their containers."""
        port = self.port
        by_main = {client_path(fs.main): fs for fs in self.plan}
        existing = port.filesets_by_client_paths(sorted(by_main), self.user.id)
        ids = sorted({fid for fids in existing.values() for fid in fids})
        if not ids:
            return
        found, containers = port.filesets(ids), port.containers_of(ids)
        for path, fids in sorted(existing.items()):
            for fid in fids:
                self.report("existing", job=self.job, idx=by_main[path].idx,
                            main=by_main[path].main, fileset_id=fid,
                            complete=bool(found[fid].image_count) if fid in found else False,
                            containers=list(containers.get(fid, ())))


def job_target(record) -> str:
    """The target the job imports into (the one bound to its identity, if any)."""
    return record.identity["target"] if record.identity else record.target


def check_target(port, target: str) -> None:
    """An id target must exist and be linkable by the user (a name target is created on demand)."""
    if not target:
        return
    kind, ident, _ = identity.parse_target(target)
    if ident is not None:
        ref = (kind, ident)
        linkable = port.can_link([ref])
        if ref not in linkable:
            raise Refused(EXIT_NOT_FOUND, f"target {kind}:{ident} not found (or not readable by "
                                          "you)")
        if not linkable[ref]:
            raise Refused(EXIT_PERMISSION, f"you cannot import into {kind}:{ident} (not yours, "
                                           "and its group is not read-write)")


def plan_filesets(paths, java, chunk_size, chunk_bytes, options, after=None) -> list:
    """Ask the importer for the fileset grouping (-f --output=yaml, no login) and chunk it.
    `after` (files already planned, next index, next chunk): only the new filesets (--rescan)."""
    listing = [o for o in (options or []) if not o.startswith("--output") and o != "-c"]
    try:
        process = importer.spawn(["-f", "--output=yaml", *listing, *paths],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, java=java,
                                 env=importer.utf8_environment())
    except importer.ImporterUnavailable as err:
        raise Refused(EXIT_NO_IMPORTER, f"cannot run the importer: {err}") from None
    try:
        stdout, stderr = process.communicate()
    except KeyboardInterrupt:
        process.kill()       # Ctrl-C reached only this process: the listing must not outlive it
        process.wait()
        raise
    if process.returncode == NOTHING_IMPORTABLE_RC:
        raise Refused(EXIT_NOTHING_TO_IMPORT,
                      f"no importable files in {' '.join(map(printable, paths))}")
    if process.returncode != 0:
        tail = stderr.decode("utf-8", "replace").strip().splitlines()[-5:]
        raise Refused(EXIT_IMPORTER_FAILED, f"the importer could not list the files (exit "
                                            f"{process.returncode}): {' / '.join(tail)}")
    groups = parse_groups(stdout.decode("utf-8", "surrogateescape").splitlines())
    if not groups:
        raise Refused(EXIT_NOTHING_TO_IMPORT,
                      f"no importable files in {' '.join(map(printable, paths))}")
    first_idx = first_chunk = 0
    known = ()
    if after is not None:
        known, first_idx, first_chunk = after
        groups = new_groups(groups, known)
    try:
        check_server_names(groups, known)
        sizes = file_sizes(groups)
    except PlanError as err:
        raise Refused(EXIT_BAD_INPUT, str(err)) from None
    return chunk_filesets(groups, sizes, chunk_size, chunk_bytes, first_idx, first_chunk)


def _create_job(journal, job, user, paths, target, options, plan, args, ident):
    """Record the plan in one transaction."""
    record = store.JobRecord(
        job=job, created=store.iso(store.utc_now()), user_name=user.name, owner_id=user.id,
        paths=tuple(paths), target=target or "", options=tuple(options),
        command=shlex.join(["omero", "import", "--resume", "--job", job, *paths]),
        chunk_size=args.chunk_size or DEFAULT_CHUNK_SIZE,
        chunk_bytes=parse_size(args.chunk_bytes) if args.chunk_bytes else None,
        filesets=len(plan), bytes=sum(fs.size for fs in plan),
        chunks=len({fs.chunk for fs in plan}), identity=ident)
    store.ensure_schema(journal)
    store.JobStore(journal, job).create(record, plan)
    return record


def existing_job(journal, job):
    """The job's record, or None when the journal holds no such job."""
    if not progress.has_import_schema(journal):
        return None
    store.ensure_schema(journal)
    return store.JobStore(journal, job).load()


def remaining_plan(journal, job) -> list:
    """The job's filesets still to import (a --dry-run of an existing job)."""
    jobs = store.JobStore(journal, job)
    idxs = [row[0] for row in journal.query(
        "SELECT idx FROM import_fileset WHERE job = ? AND state IN ('planned', 'running')",
        (job,))]
    return jobs.filesets(idxs)


def unknown_job(job, location, known=None) -> Refused:
    """The refusal of a job name the journal at `location` does not hold (`known`: its jobs;
    by default the journals beside it)."""
    if known is None:
        known = [os.path.basename(p)[:-len(progress.JOURNAL_SUFFIX)]
                 for p in progress.find_journals(os.path.dirname(location))]
    listing = f" (known jobs: {', '.join(known)})" if known else " (no jobs there)"
    return Refused(EXIT_UNKNOWN_JOB,
                   f"unknown job {job!r} in {location}{listing}: give the paths to start it")


def unknown_job_in(journal, job) -> Refused:
    """unknown_job, listing the jobs `journal` holds."""
    return unknown_job(job, journal.location, store.job_names(journal)
                       if progress.has_import_schema(journal) else [])


def driver_settings(args, user, record) -> Settings:
    """The driver's settings from the command line (defaults above) and the job's target."""
    target = job_target(record)
    kind, target_id, _ = identity.parse_target(target) if target else (None, None, None)
    return Settings(workers=args.workers or 1,
                    retries=DEFAULT_RETRIES if args.retries is None else max(0, args.retries),
                    lease_seconds=float(args.lease or DEFAULT_LEASE),
                    clean_ghosts=bool(args.clean_ghosts),
                    importer_timeout=float(args.importer_timeout or DEFAULT_IMPORTER_TIMEOUT),
                    server_step_timeout=float(args.server_step_timeout
                                              or DEFAULT_SERVER_STEP_TIMEOUT),
                    group_id=user.group_id,
                    target=(kind, target_id) if target_id is not None else None)


def importer_launcher(options, java):
    """The driver's `launch(filesets)`: one importer run (YAML output, -c: go on after a failed
    fileset) on the filesets' main files, dying with this process."""
    from omero_cli_ext.workers import die_with_parent

    run_options = [o for o in options if not o.startswith("--output")]
    if "-c" not in run_options:
        run_options.append("-c")
    run_options.append("--output=yaml")

    def launch(filesets):
        return importer.spawn([*run_options, *(fs.main for fs in filesets)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, java=java,
                              env=importer.utf8_environment(), preexec_fn=die_with_parent())
    return launch


def conclusion(jobs, run, args, record) -> tuple:
    """(exit code, `summary` record, (level, text) messages) of a run (`run`:
    driver.RunSummary)."""
    counts = jobs.counts()
    ghosts_left = len(jobs.ghosts("left")) if not args.clean_ghosts else 0
    rc = outcome.job_exit_code(counts, run.interrupted, ghosts_left)
    rerun = outcome.rerun_command(jobs.job, args.journal, args.workers, args.retries, args.lease,
                                  args.importer_timeout, args.server_step_timeout,
                                  args.clean_ghosts)
    return (rc, outcome.summary(jobs.job, jobs.journal.location, record, counts, run, rc, rerun),
            outcome.messages(jobs.job, record, counts, run, rc, rerun, args.clean_ghosts))
