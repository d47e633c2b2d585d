"""`omero status imports`: take a snapshot, then show it (rich / plain / JSON lines), check it
(`--check`), export it (`--prometheus`), or keep doing so (`--watch`).

The cores in omero_cli_ext/status decide every state and every word; this module only lays them out.
Exit codes: docs/status.md.
"""
from __future__ import annotations

import datetime as _dt
import time

from omero.cli import NonZeroReturnCode

from omero_cli_ext import server
from omero_cli_ext.cli.base import output_for, server_errors
from omero_cli_ext.cli.import_view import drop_stdout
from omero_cli_ext.cli.status_args import (EXIT_INTERRUPTED, EXIT_METRICS, CheckContext,
                                             check_arguments, scope_of)
from omero_cli_ext.status import views
from omero_cli_ext.status.classify import DONE
from omero_cli_ext.status.jobs import read_local_jobs
from omero_cli_ext.status.logwatch import SizeMemory, default_memory_path
from omero_cli_ext.status.metrics import write_metrics
from omero_cli_ext.status.snapshot import (
    Snapshot, check, counts_text, read_server, summarize,
)

ONE_SHOT_DONE_ROWS = 50      # a terminal shows every unfinished import, and done ones up to this
STATE_STYLES = {"active": "green", "queued": "cyan", "stalled": "bold yellow", "failed": "bold red",
                "done": "dim", "interrupted": "magenta"}

# How --watch waits between refreshes (tests replace it to move the simulated clock instead)
wait_between_refreshes = time.sleep


def local_clock() -> _dt.datetime:
    """The local clock, for local journals (server imports are aged on the server's clock)."""
    return _dt.datetime.now(_dt.timezone.utc)


def run_status_imports(control, args) -> None:
    out = output_for(args)
    ctx = CheckContext(control.ctx, out) if args.check else control.ctx
    try:
        _status_imports(ctx, out, args)
    except KeyboardInterrupt:
        if args.watch is None:      # --watch: Ctrl-C is how one leaves it (rc 0)
            ctx.die(EXIT_INTERRUPTED, "interrupted")


def _status_imports(ctx, out, args) -> None:
    check_arguments(ctx, args)
    port, scope, viewer_id, open_error = None, None, None, None
    if not args.local_only:
        try:
            port = server.open_port(ctx, args)
            scope, viewer_id = scope_of(ctx, port, args)
        except server.ServerError as err:
            refused = isinstance(err, (server.PermissionDenied, server.NotFound))
            if not (args.check or args.prometheus) or (refused and not args.check):
                with server_errors(ctx):
                    raise
            open_error = err   # reported as UNKNOWN by --check, as server_up 0 in the metrics
    try:
        def take() -> tuple:
            return _take_snapshot(port, scope, viewer_id, args, open_error, memory)
        memory = SizeMemory(None if args.local_only else default_memory_path())
        try:
            if args.watch is not None:
                _watch(ctx, out, take, args)
            else:
                _once(ctx, out, take, args)
        except BrokenPipeError:
            drop_stdout(out)     # `| head`: the reader has what it wanted; rc 0, no traceback
    finally:
        if port is not None:
            port.close()


def _take_snapshot(port, scope, viewer_id, args, open_error, memory) -> tuple:
    """(snapshot, server error or None): a server that fails is a problem of this snapshot."""
    local_now = local_clock()
    server_view, error = None, open_error
    if port is not None:
        try:
            server_view = read_server(port, scope, args.stalled_after, viewer_id, memory)
        except server.ServerError as err:
            error = err
    jobs, problems = read_local_jobs(args.journal, local_now, args.stalled_after)
    try:
        memory.save()
    except OSError as err:
        problems.append("cannot remember import log sizes in %s: %s" % (memory.path, err))
    if error is not None:
        problems = ["server: %s" % error] + problems
    snapshot = Snapshot(local_time=local_now, stalled_after=args.stalled_after, server=server_view,
                        jobs=tuple(jobs), problems=tuple(problems), asked_server=not args.local_only)
    return snapshot, error


# --- one shot, watch --------------------------------------------------------------------------

def _once(ctx, out, take, args) -> None:
    snapshot, error = take()
    if args.prometheus:
        _write_metrics(ctx, args.prometheus, snapshot)
    if args.check:
        code, line = check(snapshot)
        try:
            if out.mode == "json":
                out.emit("check", code=code, line=line, **views.summary_record(snapshot))
            else:
                out.stdout.write(line + "\n")
                out.stdout.flush()
        except BrokenPipeError:
            drop_stdout(out)     # the exit code still tells the check's answer
        if code:
            raise NonZeroReturnCode(code, line)
        return
    if not args.prometheus or args.json:      # a metrics run (cron): the file is the output
        _show(out, snapshot)
    if error is not None:
        with server_errors(ctx):
            raise error


def _watch(ctx, out, take, args) -> None:
    """Refresh until Ctrl-C, which leaves cleanly (rc 0). A server that fails between two
    refreshes is a problem shown in the view, which keeps refreshing. On a terminal, rich's Live
    redraws in place (no flicker); elsewhere each refresh prints a whole snapshot."""
    try:
        if out.mode == "rich":
            _watch_live(ctx, out, take, args)
        else:
            while True:
                snapshot, _ = take()
                if args.prometheus:
                    _write_metrics(ctx, args.prometheus, snapshot)
                _show(out, snapshot)
                wait_between_refreshes(args.watch)
                out.info("")
    except KeyboardInterrupt:
        return


def _watch_live(ctx, out, take, args) -> None:
    from rich.live import Live
    snapshot, _ = take()
    with Live(_rich_view(snapshot, out.console.height), console=out.console, auto_refresh=False,
              redirect_stdout=False, redirect_stderr=False) as live:
        while True:
            if args.prometheus:
                _write_metrics(ctx, args.prometheus, snapshot)
            wait_between_refreshes(args.watch)
            snapshot, _ = take()
            live.update(_rich_view(snapshot, out.console.height), refresh=True)


def _write_metrics(ctx, path: str, snapshot: Snapshot) -> None:
    try:
        write_metrics(path, snapshot)
    except OSError as err:
        ctx.die(EXIT_METRICS, "cannot write metrics to %s: %s" % (path, err.strerror or err))


# --- renderers ----------------------------------------------------------------------------------

def _show(out, snapshot: Snapshot) -> None:
    if out.mode == "json":
        for job in snapshot.jobs:
            out.emit("job", **views.job_record(job))
        for status in snapshot.imports:
            out.emit("import", **views.import_record(status))
        out.emit("summary", **views.summary_record(snapshot))
    elif out.mode == "rich":
        out.console.print(_rich_view(snapshot, None))
    else:
        _plain_view(out, snapshot)


def _plain_view(out, snapshot: Snapshot) -> None:
    out.info(views.header(snapshot))
    out.info(counts_text(summarize(snapshot)))
    if snapshot.jobs:
        out.info("")
        out.info("Local jobs")
        out.table("Local jobs", views.JOB_COLUMNS, [views.job_row(j) for j in snapshot.jobs])
    if snapshot.server:
        out.info("")
        out.info("Server imports")
        out.table("Server imports", views.IMPORT_COLUMNS,
                  [views.import_row(s) for s in snapshot.imports])
    for note in views.notes(snapshot):
        out.warn(note) if note.startswith("problem") else out.info(note)


def _rich_view(snapshot: Snapshot, height):
    """One renderable: header, a progress bar per local job, the server imports (as many rows
    as fit `height`; None: every unfinished import and up to ONE_SHOT_DONE_ROWS done ones)."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    summary = summarize(snapshot)
    counts = Text()
    for label, by_state in (("imports", summary.imports_by_state),
                            ("local jobs", summary.jobs_by_state)):
        counts.append("%s:" % label, style="bold")
        shown = [(s, n) for s, n in by_state.items() if n]
        for state, n in shown:
            counts.append(" %d %s" % (n, state), style=STATE_STYLES.get(state, ""))
        counts.append(" none" if not shown else "")
        counts.append("   ")
    parts = [Text(views.header(snapshot), style="bold"), counts]
    budget = None if height is None else max(3, height - 8 - (len(snapshot.jobs) + 5 if snapshot.jobs else 0))
    if snapshot.jobs:
        jobs = Table(title="Local jobs", expand=False)
        for column in ("Job", "State", "Progress") + views.JOB_COLUMNS[2:]:
            jobs.add_column(column, no_wrap=column != "Journal")
        for job in snapshot.jobs:
            row = views.job_row(job)
            completed, total = views.progress_fraction(job)
            jobs.add_row(row[0], Text(row[1], style=STATE_STYLES.get(job.state, "")),
                         ProgressBar(total=total, completed=completed, width=24), *row[2:])
        parts.append(jobs)
    if snapshot.server:
        imports = snapshot.imports
        if budget is None:
            unfinished = [s for s in imports if s.state != DONE]
            shown = unfinished + [s for s in imports if s.state == DONE][:ONE_SHOT_DONE_ROWS]
        else:
            shown = list(imports[:budget])
        table = Table(title="Server imports (%d)" % len(imports), expand=False)
        for column in views.IMPORT_COLUMNS:
            table.add_column(column, no_wrap=column not in ("Template prefix", "Why"),
                             overflow="fold")
        for status in shown:
            row = views.import_row(status)
            table.add_row(*row[:6], Text(row[6], style=STATE_STYLES[status.state]), *row[7:])
        parts.append(table)
        if len(shown) < len(imports):
            parts.append(Text("… and %d more imports (--json lists them all)"
                              % (len(imports) - len(shown)), style="dim"))
    for note in views.notes(snapshot):
        parts.append(Text(note, style="red" if note.startswith("problem") else "dim"))
    return Group(*parts)
