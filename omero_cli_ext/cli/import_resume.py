"""The --resume option group of `omero import` and the control glue of the resumable driver."""
from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import threading

from omero_cli_ext.cli.base import EXIT_NOT_FOUND, EXIT_PERMISSION, open_port, output_for, server_errors
from omero_cli_ext.cli.import_ext import RESUME_ONLY
from omero_cli_ext.cli.import_view import View, drop_stdout
from omero_cli_ext.importing import arguments, identity, outcome, progress, store
from omero_cli_ext.importing.outcome import (EXIT_BAD_INPUT, EXIT_IDENTITY,
                                             EXIT_IMPORTER_FAILED, EXIT_JOURNAL,
                                             EXIT_JOURNAL_CORRUPT, EXIT_JOURNAL_LOCKED,
                                             EXIT_NO_IMPORTER, EXIT_NOTHING_TO_IMPORT,
                                             EXIT_PLAN_MISMATCH, EXIT_UNKNOWN_JOB)
from omero_cli_ext.importing.driver import Driver, Settings
from omero_cli_ext.importing.plan import (NOTHING_IMPORTABLE_RC, PlanError, check_server_names,
                                          chunk_filesets, file_sizes, new_groups, parse_groups,
                                          parse_size)
from omero_cli_ext.pathrules import client_path
from omero_cli_ext.journal import (JournalCorrupt, JournalError, JournalIntegrityError,
                                   JournalLocked, open_journal)
from omero_cli_ext.output import printable


DEFAULT_CHUNK_SIZE = 50
DEFAULT_RETRIES = 3
DEFAULT_LEASE = 600
DEFAULT_IMPORTER_TIMEOUT = 3600        # seconds without an importer line or upload byte
DEFAULT_SERVER_STEP_TIMEOUT = 12 * 3600


class _Session:
    """The client-like object CommandArguments reads -s/-p/-k from."""

    def __init__(self, host, port, key):
        self._props = {"omero.host": host, "omero.port": port}
        self._key = key

    def getProperty(self, name):
        return self._props.get(name, "")

    def getSessionId(self):
        return self._key


class _SessionContext:
    """The CLI context as CommandArguments sees it, logged in through our port's session."""

    def __init__(self, ctx, login):
        self._ctx = ctx
        self._login = login

    def conn(self, args):
        return _Session(*self._login)

    def die(self, rc, text):
        self._ctx.die(rc, text)


def _importer_options(control, args, login) -> list:
    """The CommandLineImporter options the built-in `omero import` would pass for `args`
    (CommandArguments), without our own options, the login (-s/-p/-k), --output and the paths."""
    _builtin = _import_plugin()
    stripped = argparse_copy(args, {name: None for name in ("resume",) + RESUME_ONLY},
                             path=[], output=None, f=False, c=False, bulk=None)
    command = _builtin.CommandArguments(_SessionContext(control.ctx, login), stripped)
    command.set_path([])
    options, skip = [], False
    for item in command.java_args():
        if skip:
            skip = False
        elif item in ("-s", "-p", "-k"):
            skip = True
        else:
            options.append(item)
    return options


def argparse_copy(args, cleared: dict, **values):
    import argparse
    copy = argparse.Namespace(**vars(args))
    for name, value in {**cleared, **values}.items():
        setattr(copy, name, value)
    return copy


def _import_plugin():
    import importlib
    return importlib.import_module("omero.plugins.import")


def java_launch(control, args):
    """The `java ...` prefix the built-in would run (its classpath, logback, JVM options), or
    why there is none. Never downloads jars."""
    import shutil

    import omero.java
    from omero.cli import NonZeroReturnCode
    from omero.util.temp_files import gettempdir

    from omero_cli_ext.importing.importer import JAVA_UTF8, JavaLaunch

    fetch = "run `omero import --fetch-jars latest` (or pass --clientdir DIR)"
    try:
        classpath, logback = control._get_classpath_logback(args)
    except NonZeroReturnCode as err:
        return JavaLaunch(problem=f"no importer jars ({err.rv}): {fetch}")
    if not classpath:
        return JavaLaunch(problem=f"no OMERO.java importer jars found: {fetch}")
    if shutil.which("java") is None:
        return JavaLaunch(problem="no `java` on PATH: install a Java runtime (11 or later)")
    xargs = [logback, "-Djava.io.tmpdir=%s" % gettempdir(), "-Xmx1024M", *JAVA_UTF8,
             "-cp", os.pathsep.join(str(p) for p in classpath),
             "-Domero.import.depth=%s" % args.depth]
    return JavaLaunch(prefix=tuple(omero.java.cmd(list(control.COMMAND), xargs=xargs)))


# --- the command -------------------------------------------------------------------------------

def run_resume(control, args) -> None:
    """`omero import --resume`: plan (or load) the job, run its chunks, report, set the exit code.
    A new job is checked and planned before its journal is created: bad input leaves no trace.
    A closed stdout outside the run (`--dry-run | head`) ends quietly with the code so far."""
    out = output_for(args)
    try:
        _run_resume(control, args, out)
    except BrokenPipeError:
        drop_stdout(out)


def _run_resume(control, args, out) -> None:
    ctx = control.ctx
    paths, target, chunk_bytes = _check_arguments(ctx, args)
    job = args.job or (arguments.derived_job_name(paths, target) if paths else None)
    if job is None:
        ctx.die(EXIT_BAD_INPUT, "give the paths to import, or --job NAME to resume a job")
    location = args.journal or progress.default_journal_path(job)
    exists = _journal_exists(location)
    if not paths and not exists:
        ctx.die(EXIT_UNKNOWN_JOB, _unknown_job(job, location))
    if args.results:
        if not exists:
            ctx.die(EXIT_UNKNOWN_JOB, _unknown_job(job, location))
        with _journal_errors(ctx):
            journal = _open(ctx, location)
            try:
                ctx.rv = _report(ctx, out, journal, job, args)
            finally:
                journal.close()
        return
    java = java_launch(control, args)
    if args.dry_run and target and not exists:
        port = open_port(ctx, args)
        try:
            with server_errors(ctx):
                _check_target(ctx, port, target)
        finally:
            port.close()
    if args.dry_run:
        if exists:
            with _journal_errors(ctx):
                journal = _open(ctx, location)
                try:
                    record = _existing_job(journal, job)
                    if record is not None:
                        # the same refusals as the run itself (identity, paths, target, options)
                        port = open_port(ctx, args)
                        try:
                            with server_errors(ctx):
                                _JobRun(control, args, out, port, job, paths, target,
                                        chunk_bytes, java).check_identity(journal, record,
                                                                          bind=False)
                        finally:
                            port.close()
                        _show_plan(out, job, _remaining_plan(journal, job))
                        return
                finally:
                    journal.close()
        if not paths:
            ctx.die(EXIT_UNKNOWN_JOB, _unknown_job(job, location))
        _show_plan(out, job, _plan(ctx, paths, java, args.chunk_size or DEFAULT_CHUNK_SIZE,
                                   chunk_bytes, None))
        return
    port = open_port(ctx, args)
    try:
        with server_errors(ctx):
            job_run = _JobRun(control, args, out, port, job, paths, target, chunk_bytes, java)
            if not exists:
                job_run.prepare()
            with _journal_errors(ctx):
                journal = _open(ctx, location)
                try:
                    lock = journal.writer_lock(f"omero import --resume job {job}") \
                        if journal.backend == "sqlite" else contextlib.nullcontext()
                    with lock:
                        ctx.rv = job_run.run(journal)
                finally:
                    journal.close()
    finally:
        port.close()


@contextlib.contextmanager
def _journal_errors(ctx):
    try:
        yield
    except JournalLocked as err:
        ctx.die(EXIT_JOURNAL_LOCKED, str(err))
    except JournalCorrupt as err:
        ctx.die(EXIT_JOURNAL_CORRUPT, str(err))
    except JournalError as err:
        ctx.die(EXIT_JOURNAL, str(err))


class _JobRun:
    """One invocation on one job: checks and plan (before any journal write), then the driver."""

    def __init__(self, control, args, out, port, job, paths, target, chunk_bytes, java):
        self.control, self.args, self.out, self.port = control, args, out, port
        self.ctx = control.ctx
        self.job, self.paths, self.target, self.chunk_bytes, self.java = \
            job, paths, target, chunk_bytes, java
        self.user = port.current_user()
        self.login = port.session_login()
        self.options = _importer_options(control, args, self.login)
        self.identity = identity.make_identity(
            self.login[0], self.login[1], port.repository().uuid, self.user.id, self.user.name,
            self.user.group_id, self.user.group_name, paths, target, self.options)
        self.plan = None

    def prepare(self) -> None:
        """Target check and plan of a new job (no journal write yet)."""
        _check_target(self.ctx, self.port, self.target)
        self.plan = _plan(self.ctx, self.paths, self.java,
                          self.args.chunk_size or DEFAULT_CHUNK_SIZE, self.chunk_bytes,
                          self.options)

    def run(self, journal) -> int:
        ctx, job, paths, target = self.ctx, self.job, self.paths, self.target
        record = _existing_job(journal, job)
        if record is None and not paths:
            ctx.die(EXIT_UNKNOWN_JOB, _unknown_job(job, journal.location, store.job_names(journal)
                                                   if _has_import_schema(journal) else []))
        if record is not None:
            self.check_identity(journal, record)
            # the target may have been deleted, or its group made read-only, since the plan
            _check_target(ctx, self.port, record.identity["target"] if record.identity
                          else record.target)
        if record is None:
            if self.plan is None:
                self.prepare()
            try:
                record = _create_job(journal, job, self.user, paths, target, self.options,
                                     self.plan, self.args, self.identity)
            except JournalIntegrityError:     # another host planned the shared job first
                return self.run(journal)
            self.out.info(f"job {job}: {record.filesets} filesets, {outcome.human(record.bytes)} "
                          f"in {record.chunks} chunks (journal {journal.location})")
            _report_existing(self.out, self.port, self.user, job, self.plan)
        self.out.emit("job", job=job, journal=journal.location, filesets=record.filesets,
                      bytes=record.bytes, chunks=record.chunks)
        jobs = store.JobStore(journal, job)
        if self.args.rescan:
            added = _plan(ctx, list(record.paths), self.java, record.chunk_size or
                          DEFAULT_CHUNK_SIZE, record.chunk_bytes, list(record.options),
                          after=jobs.planned_files())
            if added:
                jobs.extend(added)
                record = jobs.load()
            self.out.info(f"job {job}: {len(added)} new filesets found by --rescan")
        if self.args.retry_failed:
            again = jobs.retry_failed()
            self.out.info(f"job {job}: {again} failed filesets planned again (--retry-failed)")
        login = ["-s", str(self.login[0]), "-p", str(self.login[1]), "-k", str(self.login[2])]
        return _drive(self.ctx, self.args, self.out, jobs, self.port, self.user, self.java,
                      login + list(record.options), record)

    def check_identity(self, journal, record, bind: bool = True) -> None:
        """Refuse to continue a job for another server, user, group, paths, target or importer
        options (nothing may be reported done that was not imported for this identity).
        `bind`: record the identity of a job planned before identities were (not in --dry-run)."""
        ctx, job = self.ctx, self.job
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
            ctx.die(EXIT_IDENTITY, f"job {job} cannot be continued here: {why}. Start a separate "
                                   f"job with --job NEW_NAME (and the paths), or continue it as "
                                   f"{identity.describe(bound)}")
        given_options = self.options if (self.paths or identity.result_options(self.options)) \
            else None
        why = identity.plan_mismatch(bound, self.paths, self.target if (self.paths or self.target)
                                     else None, given_options)
        if why:
            ctx.die(EXIT_PLAN_MISMATCH,
                    f"job {job} differs from this command: {why}. Rerun with the job's paths, "
                    f"target and importer options, resume it with --job {job} alone, or start "
                    "a separate job with --job NEW_NAME")


def _drive(ctx, args, out, jobs, port, user, java, options, record) -> int:
    from omero_cli_ext.importing import importer
    from omero_cli_ext.workers import die_with_parent

    target = record.identity["target"] if record.identity else record.target
    kind, target_id, _ = identity.parse_target(target) if target else (None, None, None)
    settings = Settings(workers=args.workers or 1,
                        retries=DEFAULT_RETRIES if args.retries is None else max(0, args.retries),
                        lease_seconds=float(args.lease or DEFAULT_LEASE),
                        clean_ghosts=bool(args.clean_ghosts),
                        importer_timeout=float(args.importer_timeout or DEFAULT_IMPORTER_TIMEOUT),
                        server_step_timeout=float(args.server_step_timeout
                                                  or DEFAULT_SERVER_STEP_TIMEOUT),
                        group_id=user.group_id,
                        target=(kind, target_id) if target_id is not None else None)
    run_options = [o for o in options if not o.startswith("--output")]
    if "-c" not in run_options:
        run_options.append("-c")
    run_options.append("--output=yaml")

    def launch(filesets):
        return importer.spawn([*run_options, *(fs.main for fs in filesets)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, java=java,
                              env=importer.utf8_environment(), preexec_fn=die_with_parent())

    counts = jobs.counts()
    done_before = counts.get("done", (0, 0))
    view = View(out, jobs.job, record, done_before)
    driver = Driver(jobs, port, user.id, launch, settings, view.report,
                    session_id=port.session_id())
    view.on_closed = driver.stop
    previous = signal.signal(signal.SIGTERM, lambda *_: driver.stop()) \
        if threading.current_thread() is threading.main_thread() else None
    try:
        with view.progress():
            summary = driver.run(exclusive=jobs.journal.backend == "sqlite")
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    try:
        return _conclude(out, jobs, summary, args, record)
    except BrokenPipeError:
        drop_stdout(out)
        return _conclude(out, jobs, summary, args, record)


def _conclude(out, jobs, summary, args, record) -> int:
    counts = jobs.counts()
    ghosts_left = len(jobs.ghosts("left")) if not args.clean_ghosts else 0
    rc = outcome.job_exit_code(counts, summary.interrupted, ghosts_left)
    rerun = outcome.rerun_command(jobs.job, args.journal, args.workers, args.retries, args.lease,
                                  args.importer_timeout, args.server_step_timeout,
                                  args.clean_ghosts)
    out.emit("summary", **outcome.summary(jobs.job, jobs.journal.location, record, counts,
                                          summary, rc, rerun))
    for level, text in outcome.messages(jobs.job, record, counts, summary, rc, rerun,
                                        args.clean_ghosts):
        (out.info if level == "info" else out.warn)(text)
    return rc


def _report(ctx, out, journal, job, args) -> int:
    """--results: one line per settled fileset of the job (ids included) and the summary, from
    the journal alone (no server, no importer)."""
    record = _existing_job(journal, job)
    if record is None:
        ctx.die(EXIT_UNKNOWN_JOB, _unknown_job(job, journal.location, store.job_names(journal)
                                               if _has_import_schema(journal) else []))
    jobs = store.JobStore(journal, job)
    view = View(out, job, record, (0, 0))
    for row in jobs.settled():
        view.report("fileset", **row)
    counts = jobs.counts()
    rc = outcome.job_exit_code(counts, False, len(jobs.ghosts("left")))
    # no server is asked: say whose job this is, so that another user's pipeline reading a
    # shared journal does not take these results for its own
    out.emit("summary", **outcome.totals(job, journal.location, record, counts), exit_code=rc,
             report=True, identity=record.identity)
    if record.identity:
        out.info(f"job {job} imports as {identity.describe(record.identity)}")
    out.info(outcome.totals_line(job, record, counts))
    return rc


# --- checks and planning -----------------------------------------------------------------------

def _check_arguments(ctx, args):
    """Paths, target and --chunk-bytes, refusing what cannot work (nothing touched yet)."""
    try:
        return arguments.check(args)
    except arguments.BadInput as err:
        ctx.die(EXIT_BAD_INPUT, str(err))


def _check_target(ctx, port, target: str) -> None:
    """An id target must exist and be linkable by the user (a name target is created on demand)."""
    if not target:
        return
    kind, ident, _ = identity.parse_target(target)
    if ident is not None:
        ref = (kind, ident)
        linkable = port.can_link([ref])
        if ref not in linkable:
            ctx.die(EXIT_NOT_FOUND, f"target {kind}:{ident} not found (or not readable by you)")
        if not linkable[ref]:
            ctx.die(EXIT_PERMISSION, f"you cannot import into {kind}:{ident} (not yours, and its "
                                     "group is not read-write)")


def _plan(ctx, paths, java, chunk_size, chunk_bytes, options, after=None):
    """Ask the importer for the fileset grouping (-f --output=yaml, no login) and chunk it.
    `after` (files already planned, next index, next chunk): only the new filesets (--rescan)."""
    from omero_cli_ext.importing import importer

    listing = [o for o in (options or []) if not o.startswith("--output") and o != "-c"]
    try:
        process = importer.spawn(["-f", "--output=yaml", *listing, *paths],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, java=java,
                                 env=importer.utf8_environment())
    except importer.ImporterUnavailable as err:
        ctx.die(EXIT_NO_IMPORTER, f"cannot run the importer: {err}")
    stdout, stderr = process.communicate()
    if process.returncode == NOTHING_IMPORTABLE_RC:
        ctx.die(EXIT_NOTHING_TO_IMPORT,
                f"no importable files in {' '.join(map(printable, paths))}")
    if process.returncode != 0:
        tail = stderr.decode("utf-8", "replace").strip().splitlines()[-5:]
        ctx.die(EXIT_IMPORTER_FAILED, f"the importer could not list the files (exit "
                                      f"{process.returncode}): {' / '.join(tail)}")
    groups = parse_groups(stdout.decode("utf-8", "surrogateescape").splitlines())
    if not groups:
        ctx.die(EXIT_NOTHING_TO_IMPORT, f"no importable files in {' '.join(map(printable, paths))}")
    first_idx = first_chunk = 0
    known = ()
    if after is not None:
        known, first_idx, first_chunk = after
        groups = new_groups(groups, known)
    try:
        check_server_names(groups, known)
        sizes = file_sizes(groups)
    except PlanError as err:
        ctx.die(EXIT_BAD_INPUT, str(err))
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


def _report_existing(out, port, user, job, plan) -> None:
    """Filesets of the user that already use the plan's main files: never the job's (foreign),
    reported once with their containers."""
    by_main = {client_path(fs.main): fs for fs in plan}
    existing = port.filesets_by_client_paths(sorted(by_main), user.id)
    ids = sorted({fid for fids in existing.values() for fid in fids})
    if not ids:
        return
    found, containers = port.filesets(ids), port.containers_of(ids)
    for path, fids in sorted(existing.items()):
        for fid in fids:
            complete = bool(found[fid].image_count) if fid in found else False
            where = list(containers.get(fid, ()))
            out.emit("foreign", job=job, index=by_main[path].idx, path=by_main[path].main,
                     fileset=fid, complete=complete, containers=where)
            out.warn(f"foreign: Fileset {fid} ({' / '.join(map(str, where)) or 'no container'}"
                     f") already uses {printable(by_main[path].main)}: not this job's, left "
                     "alone")


def _existing_job(journal, job):
    if not _has_import_schema(journal):
        return None
    store.ensure_schema(journal)
    return store.JobStore(journal, job).load()


def _has_import_schema(journal) -> bool:
    from omero_cli_ext.importing.progress import _has_schema_table
    return _has_schema_table(journal) and bool(journal.query_one(
        "SELECT version FROM journal_schema WHERE component = ?", (store.COMPONENT,)))


def _remaining_plan(journal, job) -> list:
    jobs = store.JobStore(journal, job)
    idxs = [row[0] for row in journal.query(
        "SELECT idx FROM import_fileset WHERE job = ? AND state IN ('planned', 'running')",
        (job,))]
    return jobs.filesets(idxs)


def _show_plan(out, job, plan) -> None:
    chunks: dict = {}
    for fs in plan:
        chunks.setdefault(fs.chunk, []).append(fs)
        out.emit("plan", job=job, index=fs.idx, chunk=fs.chunk, path=fs.main,
                 files=list(fs.files), bytes=fs.size, reader=fs.reader, spw=fs.spw)
    title = f"job {job}: {len(plan)} filesets in {len(chunks)} chunks (dry run)"
    if out.mode == "plain":
        out.info(title)
    out.table(title, ["chunk", "filesets", "bytes", "first fileset"],
              [(c, len(f), outcome.human(sum(x.size for x in f)), printable(f[0].main))
               for c, f in sorted(chunks.items())])
    out.emit("summary", job=job, filesets_total=len(plan), chunks=len(chunks),
             bytes_total=sum(fs.size for fs in plan), dry_run=True)


def _journal_exists(location: str) -> bool:
    return location.startswith(("postgresql://", "postgres://")) or os.path.exists(location)


def _unknown_job(job, location, known=None) -> str:
    if known is None:
        known = [os.path.basename(p)[:-len(progress.JOURNAL_SUFFIX)]
                 for p in progress.find_journals(os.path.dirname(location))]
    listing = f" (known jobs: {', '.join(known)})" if known else " (no jobs there)"
    return f"unknown job {job!r} in {location}{listing}: give the paths to start it"


def _open(ctx, location):
    try:
        journal = open_journal(location)
    except JournalCorrupt as err:
        ctx.die(EXIT_JOURNAL_CORRUPT, str(err))
    except JournalError as err:
        ctx.die(EXIT_JOURNAL, str(err))
    return journal
