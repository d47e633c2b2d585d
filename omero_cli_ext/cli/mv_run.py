"""`omero mv` control glue: arguments to a Request, the server (when there is one) to facts,
the journal and its lock, the engine, and the results to rich / plain / JSON output."""
from __future__ import annotations

import dataclasses
import os
import time

from omero_cli_ext import server
from omero_cli_ext.cli.base import (EXIT_NOT_FOUND, EXIT_PERMISSION, EXIT_SERVER, collector_paused,
                                    server_errors)
from omero_cli_ext.cli.mv_session import (LoginRefused, MvOutput, Progress, login_without_exit,
                                          terminate_as_interrupt)
from omero_cli_ext.journal import JournalError, JournalLocked, open_journal
from omero_cli_ext.mv import engine
from omero_cli_ext.mv.arguments import FILESET_REF, choose_mode, command_line, repo_path
from omero_cli_ext.mv.errors import (EXIT_BUSY, EXIT_INTERRUPTED, EXIT_JOURNAL,
                                     EXIT_RENDER_FAILED, EXIT_SRC_MISSING, EXIT_UNRESOLVED,
                                     EXIT_USAGE, EXIT_VERIFY_FAILED, MvError)
from omero_cli_ext.mv.locations import (journal_location, open_repo_journal, repo_place,
                                        writer_lock)
from omero_cli_ext.mv.plan import Request, plan_for
from omero_cli_ext.mv.planfile import check_plan_target, read_plan, write_plan
from omero_cli_ext.mv.preflight import imports_check
from omero_cli_ext.mv.serverfacts import facts_lookup, fileset_files
from omero_cli_ext.mv.report import (abandon_text, done_text, job_summary, json_path, preview,
                                     status_text, step_record, unresolved_record, unresolved_rows)
from omero_cli_ext.workers import WorkerFailed, default_workers
from omero_cli_ext.mv.store import JobStore
from omero_cli_ext.mv.tree import canonical, fs_path, is_under, shell_word, show



class _Run:
    def __init__(self, control, args):
        self.ctx = control.ctx
        self.args = args
        self.out = MvOutput(json_mode=bool(args.json))
        self.port = None
        self.job = None   # the journaled job, once there is one

    def die(self, code: int, message: str):
        """End with `code` (message on stderr; with --json also an "error" object on stdout)."""
        self.out.emit("error", code=code, message=message)
        self.ctx.die(code, message)

    # --- arguments
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

    def request(self, mode: str, repo: bytes) -> Request:
        return dataclasses.replace(self._request(mode, repo),
                                   workers=self.args.workers or default_workers(),
                                   skip_mismatched=self.args.skip_mismatched)

    def _request(self, mode: str, repo: bytes) -> Request:
        a = self.args
        checksums = a.verify == "checksum"
        if mode == "repair":
            return Request("repair", repo, search=tuple(fs_path(s) for s in a.search),
                           checksums=checksums)
        if mode == "offload":
            return self.fileset_request(int(FILESET_REF.match(a.source).group(1)), repo,
                                        fs_path(a.destination), checksums)
        if mode == "inline" and FILESET_REF.match(a.source):
            fileset_id = int(FILESET_REF.match(a.source).group(1))
            prefix = self.readable_fileset(fileset_id).template_prefix
            return Request("inline", repo, src=os.path.join(repo, os.fsencode(prefix.rstrip("/"))),
                           checksums=checksums, force=a.force, fileset=fileset_id)
        src = repo_path(a.source, repo)
        if mode == "inline":
            return Request("inline", repo, src=src, checksums=checksums, force=a.force)
        dst = fs_path(a.destination)
        if mode == "links-only":
            return Request("links-only", repo, src=src, dst=dst, checksums=checksums)
        inside = (is_under(src, repo) or is_under(canonical(src), canonical(repo))) \
            and src != repo and canonical(src) != canonical(repo)
        if inside:
            self.need_offload_rights()
            return Request("offload", repo, src=src, dst=dst, checksums=checksums, force=a.force)
        return Request("move", repo, src=src, dst=dst, force=a.force, checksums=checksums)

    def need_offload_rights(self) -> None:
        if self.port is None:
            return
        user = self.port.current_user()
        if not (user.is_admin and "WriteManagedRepo" in user.privileges):
            self.die(EXIT_PERMISSION, f"offloading managed files needs an administrator with the "
                     f"WriteManagedRepo privilege; {user.name} is not one. Nothing was changed")

    def fileset_request(self, fileset_id: int, repo: bytes, dst: bytes, checksums: bool) -> Request:
        self.need_offload_rights()
        src, files = fileset_files(self.readable_fileset(fileset_id), repo)
        return Request("offload", repo, src=src, dst=dst, fileset=fileset_id, fileset_files=files,
                       checksums=checksums, force=self.args.force)

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

    def facts_for(self, repo: bytes):
        """Server facts (fileset, owner, size, hash) for repository paths, when there is a server."""
        return facts_lookup(self.port, repo, self.out.warn)

    def imports_check(self):
        return imports_check(self.port) if self.port is not None else None

    def command_line(self) -> str:
        return command_line(self.args)

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
        needs_server = mode == "offload" or self.render_checking() \
            or (mode == "inline" and bool(FILESET_REF.match(self.args.source)))
        try:
            self.connect(needs_server)
            repo = self.repository()
            try:
                with server_errors(self.ctx):
                    self.run_in_repo(mode, repo)
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
                            f"fixing the cause, rerun: {self.command_line()}" if self.job
                            else "nothing was changed"))
        except KeyboardInterrupt as interrupt:
            self.interrupted(str(interrupt) or "SIGINT")
        finally:
            if self.port is not None:
                self.port.close()

    def interrupted(self, signal_name: str) -> None:
        """Ctrl-C, SIGTERM or SIGHUP: the workers are stopped and the journal's marks written
        by now (the `finally` blocks ran); say what state things are in and how to go on."""
        self.out.stop_waiting()
        if self.job is None:
            message = (f"interrupted ({signal_name}) before the job started; nothing was "
                       "changed")
        else:
            message = (f"interrupted ({signal_name}); job {self.job.id} is unfinished (every "
                       f"link resolves). To continue, rerun: {self.command_line()}")
        self.die(EXIT_INTERRUPTED, message)

    def journal_location(self) -> str:
        return journal_location(self.place, self.args.journal)

    def writer_lock(self, journal):
        return writer_lock(self.place, journal)

    def open_journal(self):
        return open_repo_journal(self.place, self.args.journal)

    def run_in_repo(self, mode: str, repo: bytes) -> None:
        if mode == "abandon":
            return self.abandon(repo)
        if mode == "status":
            return self.status(repo)
        if self.args.dry_run or self.args.plan:
            return self.dry_run(mode, repo)
        journal = self.open_journal()
        try:
            with self.writer_lock(journal):
                store = JobStore(journal)
                if mode == "execute-plan":
                    plan, _ = read_plan(self.args.execute_plan, (self.place.dev, self.place.ino))
                    request = dataclasses.replace(
                        plan.request, workers=self.args.workers or default_workers(),
                        skip_mismatched=plan.request.skip_mismatched)
                    prepared = engine.prepare_plan(store, plan, self.command_line())
                else:
                    request = self.request(mode, repo)
                    self.planning()
                    prepared = engine.prepare(store, request, self.command_line(),
                                              self.facts_for(repo), self.imports_check())
                self.job = prepared.job
                self.execute(store, prepared, request)
        finally:
            journal.close()

    def planning(self) -> None:
        """Say that planning started (it reads every link of the repository, and with
        --verify checksum the files): nothing else is shown until it ends."""
        if self.out.mode == "json":
            self.out.emit("phase", phase="planning")
        else:
            self.out.warn("planning: reading the tree and scanning the repository's links...")

    def dry_run(self, mode: str, repo: bytes) -> None:
        if mode == "execute-plan":
            return self.show_plan(read_plan(self.args.execute_plan,
                                            (self.place.dev, self.place.ino))[0])
        if self.args.plan:
            check_plan_target(self.args.plan)   # before minutes of planning, and never an original
        request = self.request(mode, repo)
        location = self.journal_location()
        if "://" in location or os.path.exists(location):
            journal = open_journal(location)
            try:
                job = JobStore(journal).unfinished(os.fsdecode(repo))
            finally:
                journal.close()
            if job is not None:
                engine.refuse_other_job(job, request)
                self.out.info(f"job {job.id} is unfinished; rerun without --dry-run to finish it")
                return
        plan = plan_for(request, self.facts_for(repo), self.imports_check())
        if self.args.plan:
            write_plan(self.args.plan, plan, (self.place.dev, self.place.ino), self.command_line())
            self.out.info(f"plan written to {self.args.plan}: {len(plan.steps)} steps; run it "
                          f"with: omero mv --execute-plan {shell_word(self.args.plan)}"
                          + (f" --repo {shell_word(self.args.repo)}" if self.args.repo else ""))
        self.show_plan(plan)

    def status(self, repo: bytes) -> None:
        from omero_cli_ext.mv.jobstatus import job_status
        location = self.journal_location()
        found = None
        if "://" in location or os.path.exists(location):
            journal = open_journal(location)
            try:
                found = job_status(JobStore(journal), repo, self.place.control_dir,
                                   self.place.lock_name)
            finally:
                journal.close()
        self.out.emit("status", journal=location, **(found or {"job": None}))
        if found is None:
            self.out.info(f"no unfinished job for {show(repo)} (journal {location})")
            return
        self.out.info(status_text(found, location))

    def abandon(self, repo: bytes) -> None:
        location = self.journal_location()
        if not ("://" in location or os.path.exists(location)):
            self.out.info("no journal, so no unfinished job")
            self.out.emit("abandoned", job=None)
            return
        journal = open_journal(location)
        try:
            with self.writer_lock(journal):
                left = engine.abandon(JobStore(journal), repo)
        finally:
            journal.close()
        if left is None:
            self.out.emit("abandoned", job=None)
            self.out.info("no unfinished job for this repository")
            return
        self.out.emit("abandoned", **{k: json_path(v) for k, v in left.items()})
        self.out.info(abandon_text(left))

    def execute(self, store, prepared, request) -> None:
        started = time.monotonic()
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
        failures = []
        with Progress(self.out, prepared.job.same_fs if prepared.job else True) as progress:
            def on_steps(steps):
                progress.steps(len(steps))
                if self.out.mode == "json":
                    for step in steps:
                        self.out.emit("action", **step_record(step))
            try:
                failures = engine.execute(store, prepared, checksums=request.checksums,
                                          on_steps=on_steps, workers=request.workers,
                                          skip_mismatched=request.skip_mismatched,
                                          warn=lambda text: self.out.warn("warning: " + text),
                                          copied=progress.copied, verified=progress.steps,
                                          on_phase=progress.phase)
            except MvError as err:
                if not err.job_closed:
                    raise MvError(err.code, f"{err}\njob {prepared.job.id} is unfinished; "
                                  f"after fixing the cause, rerun: {self.command_line()}") from err
                raise
        steps = prepared.steps
        skipped = [s for s in steps if s.state == "skipped"]
        summary = job_summary(prepared.job.id if prepared.job else None, request.mode,
                              prepared.resumed, steps, failures, len(prepared.unresolved),
                              time.monotonic() - started)
        for step in skipped:
            self.out.warn(f"skipped {step.kind} {show(step.path)}: {step.note}")
        self.show_unresolved(prepared.unresolved)
        for failure in failures:
            self.out.emit("verify_failure", link=json_path(failure["link"]),
                          problem=failure["problem"])
            self.out.warn(f"verification failed: {show(failure['link'])}: {failure['problem']}")
        render = self.render_check(steps) if self.render_checking() else None
        if render is not None:
            summary["render_check"] = render
        self.out.emit("summary", **summary)
        if self.out.mode != "json":
            self.out.info(done_text(summary))
        if failures:
            self.die(EXIT_VERIFY_FAILED, f"{len(failures)} link(s) failed verification (listed "
                     "above); the journal keeps the job's record")
        if render and render["failed"]:
            self.die(EXIT_RENDER_FAILED, f"the server could not read {len(render['failed'])} "
                     f"image(s): {', '.join('Image:%d' % i for i in render['failed'])}")
        if prepared.unresolved:
            self.die(EXIT_UNRESOLVED, f"{len(prepared.unresolved)} link(s) were left as they "
                     "are (listed above)")

    def render_checking(self) -> bool:
        return self.args.render_check or self.args.render_check_all

    def render_check(self, steps) -> dict:
        """The server opens the pixel data of one image per affected fileset (a sample, or all
        with `--render-check-all`), through the port (omero_cli_ext.mv.render)."""
        from omero_cli_ext.mv.render import render_check
        filesets = {s.fileset for s in steps if s.fileset is not None}
        found = render_check(self.port, filesets, every=self.args.render_check_all,
                             concurrency=self.args.workers or default_workers())
        for result in found.pop("results"):
            self.out.emit("render_check", **result)
            if not result["ok"]:
                self.out.warn(f"render check failed: Fileset:{result['fileset']} "
                              f"Image:{result['image']}: {result['problem']}")
        if self.out.mode != "json":
            self.out.info(f"render check: {len(found['checked'])} image(s) read, "
                          f"{len(found['failed'])} failed, of {found['sampled']} of "
                          f"{found['filesets']} affected fileset(s)")
        return found


def run_mv(control, args) -> None:
    with collector_paused(), terminate_as_interrupt():
        _Run(control, args).run()
