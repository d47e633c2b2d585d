"""`omero mv` control glue: the server (when there is one) and the repository root, the job
run by the core (omero_cli_ext.mv.command) and shown as it goes in rich / plain / JSON output,
and how it ends mapped to exit codes."""
from __future__ import annotations

import os

from omero_cli_ext import server
from omero_cli_ext.cli.base import collector_paused, server_errors
from omero_cli_ext.cli.mv_session import (LoginRefused, MvOutput, Progress, login_without_exit,
                                          terminate_as_interrupt)
from omero_cli_ext.exitcodes import EXIT_NOT_FOUND, EXIT_PERMISSION, EXIT_SERVER
from omero_cli_ext.journal import JournalError, JournalLocked
from omero_cli_ext.mv.arguments import choose_mode, command_line, needs_server
from omero_cli_ext.mv.command import MvCommand
from omero_cli_ext.mv.errors import (EXIT_BUSY, EXIT_INTERRUPTED, EXIT_JOURNAL,
                                     EXIT_RENDER_FAILED, EXIT_SRC_MISSING, EXIT_UNRESOLVED,
                                     EXIT_USAGE, EXIT_VERIFY_FAILED, MvError)
from omero_cli_ext.mv.locations import repo_place
from omero_cli_ext.mv.report import (abandon_text, done_text, json_path, preview, status_text,
                                     step_record, unresolved_record, unresolved_rows)
from omero_cli_ext.mv.tree import fs_path, shell_word, show
from omero_cli_ext.workers import WorkerFailed


class _Run:
    def __init__(self, control, args):
        self.ctx = control.ctx
        self.args = args
        self.out = MvOutput(json_mode=bool(args.json))
        self.port = None
        self.command = None   # the core's command, once the repository is known

    def die(self, code: int, message: str):
        """End with `code` (message on stderr; with --json also an "error" object on stdout)."""
        self.out.emit("error", code=code, message=message)
        self.ctx.die(code, message)

    # --- the server and the repository
    def connect(self, needs_server: bool):
        """The server port. A mode that needs no server goes on without one (a note says why)
        when `--repo` names the repository: no session, a server down, a bad host; it never
        prompts then. Login failures end with exit 20, never with omero's login codes."""
        a = self.args
        if a.no_server:
            if needs_server:
                self.die(EXIT_USAGE, "this needs the server; drop --no-server")
            if not a.repo:
                self.die(EXIT_USAGE, "--no-server needs --repo DIR (the ManagedRepository root)")
            return
        optional = not needs_server and bool(a.repo)
        try:
            with login_without_exit(self.ctx, prompt=not optional):
                self.port = server.open_port(self.ctx, a)
        except (server.ServerError, LoginRefused) as err:
            if not optional:
                self.die(EXIT_SERVER, f"cannot reach the server: {err}; nothing was changed"
                         + ("" if a.repo or needs_server else
                            " (without a server, name the repository with --repo DIR)"))
            self.out.warn(f"note: no usable server session ({err}); continuing without server "
                          "information (no fileset/owner details, checksums taken locally)")

    def repository(self) -> bytes:
        """The repository root, resolved: every spelling of it (a symlinked path, a bind
        mount) finds the same journal, job and lock."""
        if self.args.repo:
            repo = fs_path(self.args.repo)
        else:
            try:
                repo = fs_path(self.port.repository().root)
            except server.ServerError as err:
                self.die(EXIT_SERVER, f"cannot ask the server for its repository: {err}")
        if not os.path.isdir(repo):
            self.die(EXIT_SRC_MISSING, f"the repository root {show(repo)} is not a directory")
        self.place = repo_place(repo)
        return self.place.root

    def need_offload_rights(self) -> None:
        if self.port is None:
            return
        user = self.port.current_user()
        if not (user.is_admin and "WriteManagedRepo" in user.privileges):
            self.die(EXIT_PERMISSION, f"offloading managed files needs an administrator with the "
                     f"WriteManagedRepo privilege; {user.name} is not one. Nothing was changed")

    def readable_fileset(self, fileset_id: int):
        try:
            found = self.port.filesets([fileset_id], image_counts=False)
        except server.ServerError as err:
            self.die(EXIT_SERVER, f"cannot read Fileset:{fileset_id}: {err}")
        fileset = found.get(fileset_id)
        if fileset is None:
            self.die(EXIT_NOT_FOUND, f"Fileset:{fileset_id} not found or not readable by you; "
                     "nothing was changed")
        return fileset

    # --- output
    def show_plan(self, plan) -> None:
        if self.out.mode == "json":
            for step in plan.steps:
                self.out.emit("action", **step_record(step, planned=True))
            self.out.emit("plan", **plan.summary(), notes=plan.notes,
                          unresolved_links=[unresolved_record(u) for u in plan.unresolved])
            return
        headline, tables = preview(plan)
        self.out.info(headline)
        for title, columns, rows in tables:
            self.out.info(title)
            self.out.table("", columns, rows)
        for note in plan.notes:
            self.out.info("note: " + note)
        self.show_unresolved(plan.unresolved)

    def show_unresolved(self, unresolved) -> None:
        if not unresolved:
            return
        if self.out.mode == "json":
            for entry in unresolved:
                self.out.emit("unresolved", **unresolved_record(entry))
            return
        self.out.table(f"{len(unresolved)} link(s) left as they are", ("link", "target", "why"),
                       unresolved_rows(unresolved))

    # --- the run
    def run(self) -> None:
        try:
            mode = choose_mode(self.args)
        except MvError as err:
            self.die(err.code, str(err))
        try:
            self.connect(needs_server(mode, self.args))
            repo = self.repository()
            self.command = MvCommand(self.args, self.place, self.port, self)
            try:
                with server_errors(self.ctx, self.die):
                    self.run_in_repo(mode)
            except MvError as err:
                self.die(err.code, str(err))
            except JournalLocked as err:
                self.die(EXIT_BUSY, f"another omero mv is running on {show(repo)}: {err}")
            except JournalError as err:
                self.die(EXIT_JOURNAL, str(err))
            except WorkerFailed as err:
                self.die(EXIT_INTERRUPTED, f"{err}\nrerun the same command to continue "
                         "(or with --workers 1)")
            except OSError as err:   # e.g. a tree changed in a way no step foresaw
                self.die(EXIT_INTERRUPTED, f"stopped by an error: {err}\n"
                         + (f"job {self.job.id} is unfinished (every link resolves); after "
                            f"fixing the cause, rerun: {command_line(self.args)}" if self.job
                            else "nothing was changed"))
        except KeyboardInterrupt as interrupt:
            self.interrupted(str(interrupt) or "SIGINT")
        finally:
            if self.port is not None:
                self.port.close()

    @property
    def job(self):
        """The journaled job, once there is one."""
        return self.command.job if self.command is not None else None

    def interrupted(self, signal_name: str) -> None:
        """Ctrl-C, SIGTERM or SIGHUP: the workers are stopped and the journal's marks written
        by now (the `finally` blocks ran); say what state things are in and how to go on."""
        self.out.stop_waiting()
        if self.job is None:
            message = (f"interrupted ({signal_name}) before the job started; nothing was "
                       "changed")
        else:
            message = (f"interrupted ({signal_name}); job {self.job.id} is unfinished (every "
                       f"link resolves). To continue, rerun: {command_line(self.args)}")
        self.die(EXIT_INTERRUPTED, message)

    def run_in_repo(self, mode: str) -> None:
        if mode == "abandon":
            return self.abandon()
        if mode == "status":
            return self.status()
        if self.args.dry_run or self.args.plan:
            return self.dry_run(mode)
        self.command.run(mode)

    def dry_run(self, mode: str) -> None:
        preview = self.command.dry_run(mode)
        if preview.unfinished is not None:
            self.out.info(f"job {preview.unfinished.id} is unfinished; rerun without --dry-run "
                          "to finish it")
            return
        if self.args.plan:
            self.out.info(f"plan written to {self.args.plan}: {len(preview.plan.steps)} steps; "
                          f"run it with: omero mv --execute-plan {shell_word(self.args.plan)}"
                          + (f" --repo {shell_word(self.args.repo)}" if self.args.repo else ""))
        self.show_plan(preview.plan)

    def status(self) -> None:
        location = self.command.journal_location()
        found = self.command.status()
        self.out.emit("status", journal=location, **(found or {"job": None}))
        if found is None:
            self.out.info(f"no unfinished job for {show(self.place.root)} (journal {location})")
            return
        self.out.info(status_text(found, location))

    def abandon(self) -> None:
        if not self.command.has_journal():
            self.out.info("no journal, so no unfinished job")
            self.out.emit("abandoned", job=None)
            return
        left = self.command.abandon()
        if left is None:
            self.out.emit("abandoned", job=None)
            self.out.info("no unfinished job for this repository")
            return
        self.out.emit("abandoned", **{k: json_path(v) for k, v in left.items()})
        self.out.info(abandon_text(left))

    # --- the job as it goes (MvCommand's view)
    def warn(self, text: str) -> None:
        self.out.warn(text)

    def planning(self) -> None:
        """Say that planning started (it reads every link of the repository, and with
        --verify checksum the files): nothing else is shown until it ends."""
        if self.out.mode == "json":
            self.out.emit("phase", phase="planning")
        else:
            self.out.warn("planning: reading the tree and scanning the repository's links...")

    def starting(self, prepared) -> None:
        if prepared.resumed:
            self.out.info(f"resuming job {prepared.job.id}: {prepared.job.command} (first "
                          f"re-checking {prepared.rechecked} step(s) it recorded last)")
        elif prepared.plan is not None and self.out.mode != "json":
            summary = prepared.plan.summary()
            self.out.info(f"job {prepared.job.id if prepared.job else '-'}: "
                          f"{summary['mode']}, {summary['steps']} steps, "
                          f"{summary['bytes_to_copy']} bytes to copy")
        for note in prepared.notes:
            self.out.warn("note: " + note)

    def progress(self, same_fs: bool) -> Progress:
        return Progress(self.out, same_fs)

    def actions(self, steps) -> None:
        if self.out.mode == "json":
            for step in steps:
                self.out.emit("action", **step_record(step))

    def ran(self, outcome) -> None:
        for step in outcome.skipped:
            self.out.warn(f"skipped {step.kind} {show(step.path)}: {step.note}")
        self.show_unresolved(outcome.unresolved)
        for failure in outcome.failures:
            self.out.emit("verify_failure", link=json_path(failure["link"]),
                          problem=failure["problem"])
            self.out.warn(f"verification failed: {show(failure['link'])}: {failure['problem']}")

    def render_checked(self, results, found) -> None:
        for result in results:
            self.out.emit("render_check", **result)
            if result["ok"] is not True:
                self.out.warn(f"render check {'failed' if result['ok'] is False else 'skipped'}: "
                              f"Fileset:{result['fileset']} Image:{result['image']}: "
                              f"{result['problem']}")
        if self.out.mode != "json":
            skipped = f", {len(found['unchecked'])} not read (pyramid not built yet)" \
                if found["unchecked"] else ""
            self.out.info(f"render check: {len(found['checked'])} image(s) read, "
                          f"{len(found['failed'])} failed{skipped}, of {found['sampled']} of "
                          f"{found['filesets']} affected fileset(s)")

    def finished(self, outcome) -> None:
        """The summary, and the exit code the outcome ends with."""
        self.out.emit("summary", **outcome.summary)
        if self.out.mode != "json":
            self.out.info(done_text(outcome.summary))
        if outcome.failures:
            self.die(EXIT_VERIFY_FAILED, f"{len(outcome.failures)} link(s) failed verification "
                     "(listed above); the journal keeps the job's record")
        render = outcome.render
        if render and render["failed"]:
            self.die(EXIT_RENDER_FAILED, f"the server could not read {len(render['failed'])} "
                     f"image(s): {', '.join('Image:%d' % i for i in render['failed'])}")
        if outcome.unresolved:
            self.die(EXIT_UNRESOLVED, f"{len(outcome.unresolved)} link(s) were left as they "
                     "are (listed above)")


def run_mv(control, args) -> None:
    with collector_paused(), terminate_as_interrupt():
        _Run(control, args).run()
