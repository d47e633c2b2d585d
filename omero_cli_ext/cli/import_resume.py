"""The --resume option group of `omero import` and the control glue of the resumable driver."""
from __future__ import annotations

import contextlib
import os
import signal
import threading

from omero_cli_ext.cli.base import open_port, output_for, server_errors
from omero_cli_ext.cli.import_ext import RESUME_ONLY
from omero_cli_ext.cli.import_view import View, drop_stdout, opening_report, show_plan
from omero_cli_ext.importing import arguments, identity, progress, store
from omero_cli_ext.importing.driver import Driver
from omero_cli_ext.importing.job import (DEFAULT_CHUNK_SIZE, JobRun, check_target, conclusion,
                                         driver_settings, existing_job, importer_launcher,
                                         plan_filesets, remaining_plan, unknown_job,
                                         unknown_job_in)
from omero_cli_ext.importing.outcome import (EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_JOURNAL,
                                             EXIT_JOURNAL_CORRUPT, EXIT_JOURNAL_LOCKED, Refused, job_exit_code,
                                             totals, totals_line)
from omero_cli_ext.journal import JournalCorrupt, JournalError, JournalLocked, open_journal
from omero_cli_ext.status.logwatch import IMPORT_MEMORY_FILE, SizeMemory, default_memory_path


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
    A closed stdout outside the run (`--dry-run | head`) ends quietly with the code so far; Ctrl-C
    outside the run (the driver handles its own) ends with exit 4, as it does inside."""
    out = output_for(args)
    try:
        _run_resume(control, args, out)
    except Refused as err:
        control.ctx.die(err.code, str(err))
    except BrokenPipeError:
        drop_stdout(out)
    except KeyboardInterrupt:
        control.ctx.die(EXIT_INTERRUPTED, "interrupted; rerun the same command to continue")


def _run_resume(control, args, out) -> None:
    ctx = control.ctx
    paths, target, chunk_bytes = _check_arguments(ctx, args)
    job = args.job or (arguments.derived_job_name(paths, target) if paths else None)
    if job is None:
        ctx.die(EXIT_BAD_INPUT, "give the paths to import, or --job NAME to resume a job")
    location = args.journal or progress.default_journal_path(job)
    exists = progress.journal_exists(location)
    if not paths and not exists:
        raise unknown_job(job, location)
    if args.results:
        if not exists:
            raise unknown_job(job, location)
        with _journal_errors(ctx):
            journal = _open(ctx, location)
            try:
                ctx.rv = _report(out, journal, job)
            finally:
                journal.close()
        return
    java = java_launch(control, args)
    if args.dry_run and target and not exists:
        port = open_port(ctx, args)
        try:
            with server_errors(ctx):
                check_target(port, target)
        finally:
            port.close()
    if args.dry_run:
        if exists:
            with _journal_errors(ctx):
                journal = _open(ctx, location)
                try:
                    record = existing_job(journal, job)
                    if record is not None:
                        # the same refusals as the run itself (identity, paths, target, options)
                        port = open_port(ctx, args)
                        try:
                            with server_errors(ctx):
                                _job_run(control, args, out, port, job, paths, target,
                                         chunk_bytes, java).check_identity(journal, record,
                                                                           bind=False)
                        finally:
                            port.close()
                        show_plan(out, job, remaining_plan(journal, job))
                        return
                finally:
                    journal.close()
        if not paths:
            raise unknown_job(job, location)
        show_plan(out, job, plan_filesets(paths, java, args.chunk_size or DEFAULT_CHUNK_SIZE,
                                          chunk_bytes, None))
        return
    port = open_port(ctx, args)
    try:
        with server_errors(ctx):
            job_run = _job_run(control, args, out, port, job, paths, target, chunk_bytes, java)
            if not exists:
                job_run.prepare()
            with _journal_errors(ctx):
                journal = _open(ctx, location)
                try:
                    lock = journal.writer_lock(f"omero import --resume job {job}") \
                        if journal.backend == "sqlite" else contextlib.nullcontext()
                    with lock:
                        jobs, record = job_run.open(journal)
                        ctx.rv = _drive(args, out, jobs, port, job_run.user, java,
                                        job_run.importer_options(record), record)
                finally:
                    journal.close()
    finally:
        port.close()


def _job_run(control, args, out, port, job, paths, target, chunk_bytes, java) -> JobRun:
    user = port.current_user()
    login = port.session_login()
    return JobRun(port, args, job, paths, target, chunk_bytes, java, user, login,
                  _importer_options(control, args, login), opening_report(out))


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


def _drive(args, out, jobs, port, user, java, options, record) -> int:
    counts = jobs.counts()
    done_before = counts.get("done", (0, 0))
    view = View(out, jobs.job, record, done_before)
    driver = Driver(jobs, port, user.id, importer_launcher(options, java),
                    driver_settings(args, user, record), view.report,
                    session_id=port.session_id(),
                    log_sizes=SizeMemory(default_memory_path(IMPORT_MEMORY_FILE)))
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
    rc, fields, lines = conclusion(jobs, summary, args, record)
    out.emit("summary", **fields)
    for level, text in lines:
        (out.info if level == "info" else out.warn)(text)
    return rc


def _report(out, journal, job) -> int:
    """--results: one line per settled fileset of the job (ids included) and the summary, from
    the journal alone (no server, no importer)."""
    record = existing_job(journal, job)
    if record is None:
        raise unknown_job_in(journal, job)
    jobs = store.JobStore(journal, job)
    view = View(out, job, record, (0, 0))
    for row in jobs.settled():
        view.report("fileset", **row)
    counts = jobs.counts()
    rc = job_exit_code(counts, False, len(jobs.ghosts("left")))
    # no server is asked: say whose job this is, so that another user's pipeline reading a
    # shared journal does not take these results for its own
    out.emit("summary", **totals(job, journal.location, record, counts), exit_code=rc,
             report=True, identity=record.identity)
    if record.identity:
        out.info(f"job {job} imports as {identity.describe(record.identity)}")
    out.info(totals_line(job, record, counts))
    return rc


def _check_arguments(ctx, args):
    """Paths, target and --chunk-bytes, refusing what cannot work (nothing touched yet)."""
    try:
        return arguments.check(args)
    except arguments.BadInput as err:
        ctx.die(EXIT_BAD_INPUT, str(err))


def _open(ctx, location):
    try:
        journal = open_journal(location)
    except JournalCorrupt as err:
        ctx.die(EXIT_JOURNAL_CORRUPT, str(err))
    except JournalError as err:
        ctx.die(EXIT_JOURNAL, str(err))
    return journal
