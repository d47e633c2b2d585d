"""One `omero mv` job from request to verified result: refuse or resume an unfinished job,
plan and journal a new one, execute, verify, close it. Output is left to the caller through
callbacks, so this module knows nothing of the CLI."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, List, Optional

from omero_cli_ext.fsops import remove_stale_temps
from omero_cli_ext.mv.errors import (EXIT_MISMATCH, EXIT_NO_SPACE, EXIT_OTHER_JOB,
                                     EXIT_SRC_MISSING, MvError)
from omero_cli_ext.mv.execute import Executor, recheck_unsynced, roll_back_copies, verify
from omero_cli_ext.mv.jobstatus import started_by
from omero_cli_ext.mv.plan import FactsLookup, Plan, Request, Step, no_facts, plan_for
from omero_cli_ext.mv.store import Job, JobStore


@dataclass
class Prepared:
    """A job ready to run: new (with its plan) or resumed from the journal."""
    job: Optional[Job]
    steps: List[Step]
    resumed: bool
    notes: List[str] = field(default_factory=list)
    unresolved: List[dict] = field(default_factory=list)
    plan: Optional[Plan] = None
    links_changed: bool = False   # a resumed job had recorded link steps (they may have run)
    rechecked: int = 0            # recorded steps of a resumed job's last phase, run again


VERIFY_PHASE = 6   # after the executor's phases (plan.PHASES): the final verification


def refuse_other_job(job: Job, request: Request) -> None:
    if job.key != request.key():
        raise MvError(EXIT_OTHER_JOB,
                      f"job {job.id} on this repository is unfinished (started {job.created}): "
                      f"{job.command}\n  to finish it, rerun exactly that command;\n"
                      f"  to forget it (files stay as they are now, every link resolves), run: "
                      f"omero mv --abandon --repo {os.fsdecode(request.repo)}\n"
                      "Nothing was changed.")


def prepare(store: JobStore, request: Request, command: str,
            facts_for: FactsLookup = no_facts, unfinished=None) -> Prepared:
    """Resume the repository's unfinished job when it is this request's (the steps of its last
    recorded phase run again: see execute.recheck_unsynced), refuse when it is another's, else
    plan and journal a new job (plan written before any change)."""
    repo = os.fsdecode(request.repo)
    job = store.unfinished(repo)
    if job is not None:
        refuse_other_job(job, request)
        info = store.plan_info(job.id)
        steps = store.steps(job.id)
        links_changed = any(s.phase >= 3 and s.state != "pending" for s in steps)
        rechecked = recheck_unsynced(steps)
        return Prepared(job, steps, True, info.get("notes", []),
                        _bytes_paths(info.get("unresolved", [])), links_changed=links_changed,
                        rechecked=rechecked)
    try:
        plan = plan_for(request, facts_for, unfinished)
    except MvError as err:
        done = store.finished_same(repo, request.key()) if err.code == EXIT_SRC_MISSING else None
        if done is None:
            raise
        return Prepared(None, [], False, [f"job {done.id} finished this already ({done.created}); "
                                          "nothing left to do"])
    return _journal_new(store, repo, command, plan)


def _journal_new(store: JobStore, repo: str, command: str, plan: Plan) -> Prepared:
    """Journal a new job with its whole plan (before any change)."""
    prepared = Prepared(None, plan.steps, False, plan.notes, plan.unresolved, plan)
    if plan.steps:
        prepared.job = store.create(repo, command, plan)
        store.set_plan_info(prepared.job.id, {"notes": plan.notes, "unresolved": plan.unresolved,
                                              "plan": plan.summary(),
                                              "started_by": started_by()})
    return prepared


def prepare_plan(store: JobStore, plan: Plan, command: str) -> Prepared:
    """A job for a plan read from a file (--execute-plan): resumed when it is the repository's
    unfinished job, refused when another job is unfinished, else journaled as it is, after the
    pre-flight checks that depend on the disk now (room, write access) ran again."""
    from omero_cli_ext.mv.preflight import check_space, check_writable
    repo = os.fsdecode(plan.request.repo)
    job = store.unfinished(repo)
    if job is not None:
        refuse_other_job(job, plan.request)
        return prepare(store, plan.request, command)
    check_space(plan)
    check_writable(plan)
    return _journal_new(store, repo, command, plan)


def _bytes_paths(entries: List[dict]) -> List[dict]:
    return [{k: (os.fsencode(v) if k in ("link", "target") and isinstance(v, str) else v)
             for k, v in entry.items()} for entry in entries]


def remove_debris(steps: List[Step]) -> None:
    """Temporaries a killed run left beside the files and links it was writing."""
    directories = {os.path.dirname(s.path) for s in steps
                   if s.kind in ("place", "place_link", "retarget", "swap", "materialize")}
    for directory in directories:
        if os.path.isdir(directory):
            remove_stale_temps(directory)


def execute(store: JobStore, prepared: Prepared, *, checksums: bool,
            on_steps: Optional[Callable[[List[Step]], None]] = None,
            copied: Optional[Callable[[int], None]] = None,
            verified: Optional[Callable[[int], None]] = None,
            workers: int = 1, skip_mismatched: bool = False,
            warn: Optional[Callable[[str], None]] = None,
            on_phase: Optional[Callable[[int, List[Step]], None]] = None) -> List[dict]:
    """Run the pending steps, verify, and close the job; returns the verification failures.

    When the destination fills up, or an original turns out not to match its recorded checksum,
    before any link changed, the copies made so far are removed and the job closed as failed,
    so the disk is as before and nothing blocks the repository (MvError EXIT_NO_SPACE,
    EXIT_MISMATCH)."""
    job = prepared.job
    if job is None:
        return []
    if prepared.resumed:
        remove_debris(prepared.steps)
    executor = Executor(prepared.steps, same_fs=job.same_fs,
                        record=lambda batch: store.record(job.id, batch),
                        on_steps=on_steps, copied=copied, workers=workers,
                        skip_mismatched=skip_mismatched, warn=warn, on_phase=on_phase)
    try:
        executor.run()
    except MvError as err:
        if err.code in (EXIT_NO_SPACE, EXIT_MISMATCH) and not prepared.links_changed \
                and not any(s.phase >= 3 and s.state == "done" for s in prepared.steps):
            roll_back_copies(prepared.steps)
            store.finish(job.id, "failed", {"error": str(err), "rolled_back": True})
            closed = MvError(err.code, f"{err}\nThe copies made so far were removed; the "
                             "sources and links are as they were, and the job is closed")
            closed.job_closed = True
            raise closed from err
        raise
    # the job is recorded complete only once its changes are on disk: the final sync runs
    # while the verification workers read
    if on_phase is not None:
        on_phase(VERIFY_PHASE, [s for s in prepared.steps if s.state == "done"
                                and s.kind in ("retarget", "swap", "materialize")])
    failures = verify(prepared.steps, checksums, verified, workers, meanwhile=executor.sync)
    summary = {"steps": len(prepared.steps),
               "done": sum(1 for s in prepared.steps if s.state == "done"),
               "skipped": sum(1 for s in prepared.steps if s.state == "skipped"),
               "verify_failures": len(failures)}
    store.finish(job.id, "verify-failed" if failures else "done", summary)
    return failures


def abandon(store: JobStore, repo: bytes) -> Optional[dict]:
    """Forget the repository's unfinished job: its temporaries are removed (nothing else), and
    what it leaves behind is counted for the user: None when there was no job."""
    job = store.unfinished(os.fsdecode(repo))
    if job is None:
        return None
    steps = store.steps(job.id)
    before = _temporaries(steps)
    remove_debris(steps)   # the lock is held: the writers of any left are dead
    removed = before - _temporaries(steps)
    store.abandon(os.fsdecode(repo))
    placed = [s for s in steps if s.kind in ("place", "place_link") and os.path.lexists(s.path)]
    links = [s for s in steps if s.kind in ("retarget", "swap", "materialize")]
    changed = sum(1 for s in links if _link_changed(s))
    kept = [s for s in steps if s.kind == "unlink" and os.path.lexists(s.path)]
    made = sorted({s.path for s in steps if s.kind == "mkdir" and os.path.isdir(s.path)})
    return {"job": job.id, "command": job.command, "temporaries_removed": removed,
            "placed_left": len(placed), "sources_left": len(kept),
            "links_changed": changed, "links_unchanged": len(links) - changed,
            "destination": made[0] if made else None}


def _temporaries(steps: List[Step]) -> int:
    from omero_cli_ext.fsops import is_temp_name
    directories = {os.path.dirname(s.path) for s in steps
                   if s.kind in ("place", "place_link", "retarget", "swap", "materialize")}
    count = 0
    for directory in directories:
        try:
            count += sum(1 for name in os.listdir(directory) if is_temp_name(name))
        except OSError:
            continue
    return count


def _link_changed(step: Step) -> bool:
    try:
        if step.kind == "materialize":
            return not os.path.islink(step.path)
        return os.readlink(step.path) == step.new
    except OSError:
        return False
