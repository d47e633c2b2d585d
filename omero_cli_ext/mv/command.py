"""One `omero mv` command in its repository, once the CLI has chosen the mode and found the root:
the journal opened and its writer lock held while the job is prepared (from the arguments or a
plan file), run through the engine, verified and, with --render-check, read back by the server;
what it did gathered into an Outcome. Also the passes that change nothing (--dry-run, --plan,
--status) and --abandon.

What is shown, and which exit code an outcome ends with, are the caller's `view`
(omero_cli_ext/cli/mv_run.py), called at the points the job reaches: so nothing here knows
omero-py or rich."""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from typing import ContextManager, List, Optional, Protocol

from omero_cli_ext.journal import open_journal
from omero_cli_ext.mv import engine
from omero_cli_ext.mv.arguments import command_line, render_checking, request_for
from omero_cli_ext.mv.errors import MvError
from omero_cli_ext.mv.locations import (RepoPlace, journal_location, open_repo_journal,
                                        writer_lock)
from omero_cli_ext.mv.plan import Plan, Request, Step, plan_for
from omero_cli_ext.mv.planfile import check_plan_target, read_plan, write_plan
from omero_cli_ext.mv.preflight import imports_check
from omero_cli_ext.mv.report import job_summary
from omero_cli_ext.mv.serverfacts import facts_lookup
from omero_cli_ext.mv.store import Job, JobStore
from omero_cli_ext.workers import default_workers


class JobView(Protocol):
    """The caller's side of a job: the server's answers that end the command when it says no,
    and what is shown as the job goes."""

    def readable_fileset(self, fileset_id: int): ...
    def need_offload_rights(self) -> None: ...
    def warn(self, text: str) -> None: ...
    def planning(self) -> None: ...
    def starting(self, prepared: engine.Prepared) -> None: ...
    def progress(self, same_fs: bool) -> ContextManager: ...   # .steps/.copied/.phase
    def actions(self, steps: List[Step]) -> None: ...
    def ran(self, outcome: Outcome) -> None: ...
    def render_checked(self, results: List[dict], found: dict) -> None: ...
    def finished(self, outcome: Outcome) -> None: ...   # ends with the outcome's exit code


@dataclass
class Outcome:
    """What a job that ran did: its "summary" record (with the render check's counts when one
    ran), the steps it skipped, the links that failed verification, those left unresolved."""
    summary: dict
    skipped: List[Step]
    failures: List[dict]
    unresolved: List[dict]
    render: Optional[dict] = None


@dataclass
class Preview:
    """What a pass that changes nothing found: the plan (written to --plan FILE when given), or
    the repository's unfinished job, which a run finishes first."""
    plan: Optional[Plan] = None
    unfinished: Optional[Job] = None


class MvCommand:
    def __init__(self, args, place: RepoPlace, port, view: JobView):
        self.args, self.place, self.port, self.view = args, place, port, view
        self.job: Optional[Job] = None   # the journaled job, once there is one

    def command_line(self) -> str:
        return command_line(self.args)

    def journal_location(self) -> str:
        return journal_location(self.place, self.args.journal)

    def has_journal(self) -> bool:
        location = self.journal_location()
        return "://" in location or os.path.exists(location)

    def request(self, mode: str) -> Request:
        return request_for(mode, self.args, self.place.root, self.view.readable_fileset,
                           self.view.need_offload_rights)

    def facts(self):
        """Server facts (fileset, owner, size, hash) for repository paths, when there is a server."""
        return facts_lookup(self.port, self.place.root, self.view.warn)

    def imports_check(self):
        return imports_check(self.port) if self.port is not None else None

    def read_plan(self) -> Plan:
        return read_plan(self.args.execute_plan, (self.place.dev, self.place.ino))[0]

    # --- passes that change nothing
    def dry_run(self, mode: str) -> Preview:
        if mode == "execute-plan":
            return Preview(plan=self.read_plan())
        if self.args.plan:
            check_plan_target(self.args.plan)   # before minutes of planning, and never an original
        request = self.request(mode)
        if self.has_journal():
            journal = open_journal(self.journal_location())
            try:
                job = JobStore(journal).unfinished(os.fsdecode(self.place.root))
            finally:
                journal.close()
            if job is not None:
                engine.refuse_other_job(job, request)
                return Preview(unfinished=job)
        plan = plan_for(request, self.facts(), self.imports_check())
        if self.args.plan:
            write_plan(self.args.plan, plan, (self.place.dev, self.place.ino), self.command_line())
        return Preview(plan=plan)

    def status(self) -> Optional[dict]:
        """The unfinished job's status (omero_cli_ext.mv.jobstatus), or None."""
        from omero_cli_ext.mv.jobstatus import job_status
        if not self.has_journal():
            return None
        journal = open_journal(self.journal_location())
        try:
            return job_status(JobStore(journal), self.place.root, self.place.control_dir,
                              self.place.lock_name)
        finally:
            journal.close()

    def abandon(self) -> Optional[dict]:
        """What the abandoned job left behind (engine.abandon); None when there was no job.
        Only when has_journal()."""
        journal = open_journal(self.journal_location())
        try:
            with writer_lock(self.place, journal):
                return engine.abandon(JobStore(journal), self.place.root)
        finally:
            journal.close()

    # --- the job
    def run(self, mode: str) -> None:
        journal = open_repo_journal(self.place, self.args.journal)
        try:
            with writer_lock(self.place, journal):
                store = JobStore(journal)
                if mode == "execute-plan":
                    plan = self.read_plan()
                    request = dataclasses.replace(
                        plan.request, workers=self.args.workers or default_workers(),
                        skip_mismatched=plan.request.skip_mismatched)
                    prepared = engine.prepare_plan(store, plan, self.command_line())
                else:
                    request = self.request(mode)
                    self.view.planning()
                    prepared = engine.prepare(store, request, self.command_line(), self.facts(),
                                              self.imports_check())
                self.job = prepared.job
                self.execute(store, prepared, request)
        finally:
            journal.close()

    def execute(self, store: JobStore, prepared: engine.Prepared, request: Request) -> None:
        started = time.monotonic()
        self.view.starting(prepared)
        failures = []
        with self.view.progress(prepared.job.same_fs if prepared.job else True) as progress:
            def on_steps(steps):
                progress.steps(len(steps))
                self.view.actions(steps)
            try:
                failures = engine.execute(store, prepared, checksums=request.checksums,
                                          on_steps=on_steps, workers=request.workers,
                                          skip_mismatched=request.skip_mismatched,
                                          warn=lambda text: self.view.warn("warning: " + text),
                                          copied=progress.copied, verified=progress.steps,
                                          on_phase=progress.phase)
            except MvError as err:
                if not err.job_closed:
                    raise MvError(err.code, f"{err}\njob {prepared.job.id} is unfinished; "
                                  f"after fixing the cause, rerun: {self.command_line()}") from err
                raise
        steps = prepared.steps
        outcome = Outcome(job_summary(prepared.job.id if prepared.job else None, request.mode,
                                      prepared.resumed, steps, failures,
                                      len(prepared.unresolved), time.monotonic() - started),
                          [s for s in steps if s.state == "skipped"], failures,
                          prepared.unresolved)
        self.view.ran(outcome)
        if render_checking(self.args):
            outcome.render = self.render_check(steps)
            outcome.summary["render_check"] = outcome.render
        self.view.finished(outcome)

    def render_check(self, steps: List[Step]) -> dict:
        """The server opens the pixel data of one image per affected fileset (a sample, or all
        with `--render-check-all`), through the port (omero_cli_ext.mv.render)."""
        from omero_cli_ext.mv.render import render_check
        filesets = {s.fileset for s in steps if s.fileset is not None}
        found = render_check(self.port, filesets, every=self.args.render_check_all,
                             concurrency=self.args.workers or default_workers())
        self.view.render_checked(found.pop("results"), found)
        return found
