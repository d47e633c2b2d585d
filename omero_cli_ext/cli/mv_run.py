"""`omero mv` control glue: arguments to a Request, the server (when there is one) to facts,
the journal and its lock, the engine, and the results to rich / plain / JSON output."""
from __future__ import annotations

import collections
import dataclasses
import contextlib
import os
import re
import shlex
import signal
import time

from omero_cli_ext import server
from omero_cli_ext.cli.base import (EXIT_NOT_FOUND, EXIT_PERMISSION, EXIT_SERVER, collector_paused,
                                    server_errors)
from omero_cli_ext.journal import JournalError, JournalLocked, open_journal
from omero_cli_ext.mv import engine
from omero_cli_ext.mv.errors import (EXIT_BUSY, EXIT_INTERRUPTED, EXIT_JOURNAL,
                                     EXIT_RENDER_FAILED, EXIT_SRC_MISSING, EXIT_UNRESOLVED,
                                     EXIT_USAGE, EXIT_VERIFY_FAILED, MvError)
from omero_cli_ext.mv.locations import ensure_control_dir, hand_over, repo_place
from omero_cli_ext.mv.plan import FileFacts, Request, plan_for
from omero_cli_ext.mv.planfile import read_plan, write_plan
from omero_cli_ext.mv.preflight import imports_check
from omero_cli_ext.mv.progress import PhaseProgress, phase_bytes
from omero_cli_ext.output import Output
from omero_cli_ext.workers import WorkerFailed, default_workers
from omero_cli_ext.mv.store import JobStore
from omero_cli_ext.mv.tree import canonical, fs_path, is_under, show

FILESET_REF = re.compile(r"^Fileset:(\d+)$")
PREVIEW_ROWS = 10


class _MvOutput(Output):
    """Output that survives a closed stdout (`| head`, a pager quit early): the first EPIPE
    points stdout at /dev/null, says so on stderr, and the job goes on to its end (its exit
    code still tells how it ended); nothing is lost but the rest of the listing."""

    closed = False

    def emit(self, record_type: str, **fields) -> None:
        self._guarded(super().emit, record_type, **fields)

    def info(self, text: str) -> None:
        self._guarded(super().info, text)

    def table(self, title, columns, rows) -> None:
        self._guarded(super().table, title, columns, rows)

    def warn(self, text: str) -> None:
        try:
            super().warn(text)
        except (BrokenPipeError, ValueError):   # stderr closed too: nowhere left to say it
            pass

    def _guarded(self, write, *args, **kwargs) -> None:
        if self.closed:
            return
        try:
            write(*args, **kwargs)
        except BrokenPipeError:
            self.closed = True
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stdout.fileno())   # the interpreter's last flush succeeds
            os.close(devnull)
            self.warn("note: standard output was closed; the listing stops here and the "
                      "command goes on to its end (its exit code tells how it ended)")


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM (and SIGHUP: a closed terminal) stop the command like Ctrl-C: workers stopped,
    journal marks written, the rerun advice printed, exit 30."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)
    if threading_main():
        previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    else:
        previous = {}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def threading_main() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


class _Progress:
    """The job's progress by phase (omero_cli_ext.mv.progress): a rich bar per phase on a
    terminal (bytes with rate and time left while copying), otherwise a line on stderr at each
    phase and every PROGRESS_SECONDS; with --json a "phase" object as each phase starts."""

    PROGRESS_SECONDS = 10.0

    def __init__(self, out, same_fs: bool):
        self.out, self.same_fs = out, same_fs
        self.model = PhaseProgress()
        self._stack = contextlib.ExitStack()
        self._bar = None
        self._shown = 0.0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._stack.close()
        return False

    def phase(self, number: int, steps) -> None:
        nbytes = phase_bytes(steps, copies=not self.same_fs)
        self.model.phase(number, len(steps), nbytes)
        if self.out.mode == "json":
            self.out.emit("phase", **self.model.record())
        elif self.out.mode == "rich":
            self._stack.close()
            self._bar = self._stack.enter_context(self.out.progress(
                self.model.title, total=nbytes or len(steps), bytes_unit=bool(nbytes)))
        else:
            self._say()

    def steps(self, count: int) -> None:
        self.model.advance(steps=count)
        if self._bar is not None and not self.model.bytes:
            self._bar.advance(count)
        self._tick()

    def copied(self, count: int) -> None:
        self.model.advance(nbytes=count)
        if self._bar is not None and self.model.bytes:
            self._bar.advance(count)
        self._tick()

    def _tick(self) -> None:
        if self.out.mode == "plain" and time.monotonic() - self._shown >= self.PROGRESS_SECONDS:
            self._say()

    def _say(self) -> None:
        self._shown = time.monotonic()
        self.out.warn(self.model.line())


class _LoginRefused(Exception):
    def __init__(self, code, text):
        super().__init__(text)
        self.code = code


@contextlib.contextmanager
def _login_without_exit(ctx, prompt: bool):
    """omero's login ends the command with its own codes (52 "stdin is not a terminal", 42
    connection refused, 43 bad host, 12 bad password: they clash with ours) and may prompt.
    Within this block its `die` raises _LoginRefused instead, and without `prompt` so does any
    prompt."""
    def refuse(rc, text, *_, **__):
        raise _LoginRefused(rc, str(text).strip())

    def no_prompt(prompt_text, *_, **__):
        raise _LoginRefused(None, f"no stored session, and omero mv does not prompt here "
                            f"({str(prompt_text).strip()})")
    saved = {name: ctx.__dict__[name] for name in ("die", "input") if name in ctx.__dict__}
    ctx.die = refuse
    if not prompt:
        ctx.input = no_prompt
    try:
        yield
    finally:
        for name in ("die", "input"):
            ctx.__dict__.pop(name, None)
        ctx.__dict__.update(saved)


def _json_path(path):
    if path is None:
        return None
    return path.decode("utf-8", "backslashreplace") if isinstance(path, bytes) else path


class _Run:
    def __init__(self, control, args):
        self.ctx = control.ctx
        self.args = args
        self.out = _MvOutput(json_mode=bool(args.json))
        self.port = None
        self.job = None   # the journaled job, once there is one

    def die(self, code: int, message: str):
        """End with `code` (message on stderr; with --json also an "error" object on stdout)."""
        self.out.emit("error", code=code, message=message)
        self.ctx.die(code, message)

    # --- arguments
    def mode(self) -> str:
        a = self.args
        chosen = [flag for flag, on in (("--links-only", a.links_only), ("--inline", a.inline),
                                        ("--repair", a.repair), ("--abandon", a.abandon),
                                        ("--status", a.status),
                                        ("--execute-plan", a.execute_plan),
                                        ("--plan", a.plan)) if on]
        if len(chosen) > 1:
            self.die(EXIT_USAGE, f"choose one of {', '.join(chosen)}")
        if a.abandon:
            return "abandon"
        if a.status:
            return "status"
        if a.execute_plan:
            if a.source or a.destination or a.search:
                self.die(EXIT_USAGE, "--execute-plan takes no SRC/DST: they are in the plan")
            return "execute-plan"
        if a.repair:
            if a.source or a.destination:
                self.die(EXIT_USAGE, "--repair takes no SRC/DST; name where to look with --search")
            if not a.search:
                self.die(EXIT_USAGE, "--repair needs at least one --search DIR")
            return "repair"
        if a.search:
            self.die(EXIT_USAGE, "--search goes with --repair")
        if a.inline:
            if not a.source or a.destination:
                self.die(EXIT_USAGE, "--inline takes one repository path: omero mv --inline PATH")
            return "inline"
        if not a.source or not a.destination:
            self.die(EXIT_USAGE, "usage: omero mv SRC DST (see omero mv -h)")
        if a.links_only:
            return "links-only"
        if FILESET_REF.match(a.source):
            return "offload"
        return "path"

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
            with _login_without_exit(self.ctx, prompt=not optional):
                self.port = server.open_port(self.ctx, a)
        except (server.ServerError, _LoginRefused) as err:
            if not optional:
                self.die(EXIT_SERVER, f"cannot reach the server: {err}; nothing was changed"
                         + ("" if a.repo or needs_server else
                            " (without a server, name the repository with --repo DIR)"))
            self.out.warn(f"note: no usable server session ({err}); continuing without server "
                          "information (no fileset/owner details, checksums taken locally)")

    def repository(self) -> bytes:
        """The repository root, resolved: every spelling of it (a symlinked path) finds the
        same journal, job and lock."""
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
        src = self.repo_path(a.source, repo)
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

    def repo_path(self, given: str, repo: bytes) -> bytes:
        """A path as given; a relative one that exists only below the repository means that."""
        path = fs_path(given)
        raw = os.fsencode(given)
        if not os.path.isabs(raw) and not os.path.lexists(path) \
                and os.path.lexists(os.path.join(repo, raw)):
            return os.path.normpath(os.path.join(repo, raw))
        return path

    def need_offload_rights(self) -> None:
        if self.port is None:
            return
        user = self.port.current_user()
        if not (user.is_admin and "WriteManagedRepo" in user.privileges):
            self.die(EXIT_PERMISSION, f"offloading managed files needs an administrator with the "
                     f"WriteManagedRepo privilege; {user.name} is not one. Nothing was changed")

    def fileset_request(self, fileset_id: int, repo: bytes, dst: bytes, checksums: bool) -> Request:
        self.need_offload_rights()
        fileset = self.readable_fileset(fileset_id)
        prefix = fileset.template_prefix
        files = []
        for entry in fileset.entries:
            repo_path = entry.original_file.repo_path
            rel = repo_path[len(prefix):] if repo_path.startswith(prefix) else repo_path
            files.append((os.path.join(repo, os.fsencode(repo_path.lstrip("/"))),
                          os.fsencode(rel.lstrip("/"))))
        return Request("offload", repo, src=os.path.join(repo, os.fsencode(prefix.rstrip("/"))),
                       dst=dst, fileset=fileset_id, fileset_files=tuple(files),
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
        port = self.port
        if port is None:
            return lambda paths: {}

        def lookup(paths):
            wanted = {}
            for path in paths:
                if is_under(path, repo):
                    wanted[os.fsdecode(path[len(repo.rstrip(b"/")) + 1:])] = path
            if not wanted:
                return {}
            try:
                found = port.files_by_repo_paths(list(wanted))
                owners = {f.id: f.owner_name for f in port.filesets(
                    {fid for fid, _ in found.values() if fid is not None}).values()}
            except server.ServerError as err:
                self.out.warn(f"note: the server did not answer ({err}); continuing without "
                              "server information")
                return {}
            return {wanted[p]: FileFacts(fid, owners.get(fid), f.size, f.hasher, f.hash, f.id)
                    for p, (fid, f) in found.items() if p in wanted}
        return lookup

    def imports_check(self):
        return imports_check(self.port) if self.port is not None else None

    def command_line(self) -> str:
        a = self.args
        words = ["omero", "mv"]
        for flag, on in (("--links-only", a.links_only), ("--inline", a.inline),
                         ("--repair", a.repair), ("--force", a.force), ("--no-server", a.no_server),
                         ("--skip-mismatched", a.skip_mismatched)):
            if on:
                words.append(flag)
        for root in a.search:
            words += ["--search", root]
        if a.repo:
            words += ["--repo", a.repo]
        if a.journal:
            words += ["--journal", a.journal]
        if a.execute_plan:
            words += ["--execute-plan", a.execute_plan]
        words += [w for w in (a.source, a.destination) if w]
        return " ".join(shlex.quote(w) for w in words)

    # --- output
    def show_plan(self, plan) -> None:
        summary = plan.summary()
        if self.out.mode == "json":
            for step in plan.steps:
                self.emit_step(step, planned=True)
            self.out.emit("plan", **summary, notes=plan.notes,
                          unresolved_links=[self.unresolved_json(u) for u in plan.unresolved])
            return
        kinds = ", ".join(f"{n} {k}" for k, n in summary["by_kind"].items()) or "nothing to do"
        self.out.info(f"plan ({summary['mode']}): {kinds}; "
                      f"{'same filesystem' if plan.same_fs else 'across filesystems'}; "
                      f"{summary['bytes_to_copy']} bytes to copy")
        links = [s for s in plan.steps if s.kind in ("retarget", "swap", "materialize")]
        if links:
            self.out.info(f"link changes: first {min(PREVIEW_ROWS, len(links))} of {len(links)}")
            self.out.table("", ("action", "link", "now", "after"),
                           [(s.kind, show(s.path), show(s.old or s.path),
                             show(s.new or s.other or b"")) for s in links[:PREVIEW_ROWS]])
        files = [s for s in plan.steps if s.kind == "place"]
        if files:
            self.out.info(f"file placements: first {min(PREVIEW_ROWS, len(files))} of "
                          f"{len(files)}")
            self.out.table("", ("path", "from"),
                           [(show(s.path), show(s.other)) for s in files[:PREVIEW_ROWS]])
        for note in plan.notes:
            self.out.info("note: " + note)
        self.show_unresolved(plan.unresolved)

    def unresolved_json(self, entry: dict) -> dict:
        return {k: ([_json_path(c) for c in v] if k == "candidates" else _json_path(v))
                for k, v in entry.items()}

    def show_unresolved(self, unresolved) -> None:
        if not unresolved:
            return
        if self.out.mode == "json":
            for entry in unresolved:
                self.out.emit("unresolved", **self.unresolved_json(entry))
            return
        self.out.table(f"{len(unresolved)} link(s) left as they are", ("link", "target", "why"),
                       [(show(u["link"]), show(u.get("target") or b""), u["reason"])
                        for u in unresolved])

    def emit_step(self, step, planned: bool = False) -> None:
        if self.out.mode != "json":
            return
        fields = {"action": step.kind, "seq": step.seq, "path": _json_path(step.path),
                  "state": "planned" if planned else step.state}
        for name in ("other", "old", "new"):
            value = getattr(step, name)
            if value is not None:
                fields[name] = _json_path(value)
        if step.size is not None:
            fields["size"] = step.size
        if step.fileset is not None:
            fields["fileset"] = step.fileset
        if step.note:
            fields["note"] = step.note
        self.out.emit("action", **fields)

    # --- the run
    def run(self) -> None:
        mode = self.mode()
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
        except KeyboardInterrupt as interrupt:
            self.interrupted(str(interrupt) or "SIGINT")
        finally:
            if self.port is not None:
                self.port.close()

    def interrupted(self, signal_name: str) -> None:
        """Ctrl-C, SIGTERM or SIGHUP: the workers are stopped and the journal's marks written
        by now (the `finally` blocks ran); say what state things are in and how to go on."""
        if self.job is None:
            message = (f"interrupted ({signal_name}) before the job started; nothing was "
                       "changed")
        else:
            message = (f"interrupted ({signal_name}); job {self.job.id} is unfinished (every "
                       f"link resolves). To continue, rerun: {self.command_line()}")
        self.die(EXIT_INTERRUPTED, message)

    def journal_location(self) -> str:
        return self.args.journal or os.fsdecode(self.place.default_journal)

    def writer_lock(self, journal):
        """The one-mv-per-repository lock: in the control directory (SQLite journals, whatever
        --journal says), or the PostgreSQL journal's advisory lock."""
        if journal.backend == "sqlite":
            directory = os.fsdecode(ensure_control_dir(self.place))
            return journal.writer_lock(self.place.lock_name, directory=directory)
        return journal.writer_lock(f"omero mv {os.fsdecode(self.place.root)}")

    def open_journal(self):
        location = self.journal_location()
        if not self.args.journal:
            ensure_control_dir(self.place)
        journal = open_journal(location)
        hand_over(self.place)
        return journal

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
                hand_over(self.place)
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
                          f"with: omero mv --execute-plan {shlex.quote(self.args.plan)}"
                          + (f" --repo {shlex.quote(self.args.repo)}" if self.args.repo else ""))
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
        who = found["started_by"] or {}
        running = found["running"]
        self.out.info(
            f"job {found['job']}: {found['command']}\n"
            f"  started {found['created']} by {who.get('user', '?')} on {who.get('host', '?')}\n"
            f"  phase {found['phase_number']} of 5, {found['phase']}: "
            f"{found['phase_steps_done']} of {found['phase_steps']} steps; "
            f"{found['steps_done']} of {found['steps']} in all\n"
            f"  journal {location}\n"
            + (f"  running now: process {running['pid']} on {running['host']} since "
               f"{running['since']}" if running else
               "  no command runs it now: rerun its command to finish it, or --abandon"))

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
        self.out.emit("abandoned", **{k: _json_path(v) for k, v in left.items()})
        self.out.info(
            f"abandoned job {left['job']}: {left['command']}\n"
            f"left as they are (every link resolves, to the old or the new copy):\n"
            f"  {left['links_changed']} link(s) already point at the new place, "
            f"{left['links_unchanged']} still at the old one\n"
            f"  {left['placed_left']} file(s) and link(s) placed at the destination"
            + (f" (under {show(left['destination'])})" if left['destination'] else "")
            + f"\n  {left['sources_left']} source(s) not removed\n"
            f"  {left['temporaries_removed']} temporary file(s) of the job removed\n"
            "Remove what you no longer need by hand: a file is no longer needed once no "
            "repository link points at it.")

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
        with _Progress(self.out, prepared.job.same_fs if prepared.job else True) as progress:
            def on_steps(steps):
                progress.steps(len(steps))
                if self.out.mode == "json":
                    for step in steps:
                        self.emit_step(step)
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
        done = collections.Counter(s.kind for s in steps if s.state == "done")
        skipped = [s for s in steps if s.state == "skipped"]
        links_changed = done["retarget"] + done["swap"] + done["materialize"]
        summary = {"job": prepared.job.id if prepared.job else None, "mode": request.mode,
                   "resumed": prepared.resumed, "links_changed": links_changed,
                   "files_placed": done["place"], "sources_removed": done["unlink"],
                   "skipped": len(skipped), "verified": links_changed - len(failures),
                   "verify_failures": len(failures), "unresolved": len(prepared.unresolved),
                   "seconds": round(time.monotonic() - started, 3)}
        for step in skipped:
            self.out.warn(f"skipped {step.kind} {show(step.path)}: {step.note}")
        self.show_unresolved(prepared.unresolved)
        for failure in failures:
            self.out.emit("verify_failure", link=_json_path(failure["link"]),
                          problem=failure["problem"])
            self.out.warn(f"verification failed: {show(failure['link'])}: {failure['problem']}")
        render = self.render_check(steps) if self.render_checking() else None
        if render is not None:
            summary["render_check"] = render
        self.out.emit("summary", **summary)
        if self.out.mode != "json":
            self.out.info(f"done: {summary['links_changed']} link(s) changed, "
                          f"{summary['files_placed']} file(s) placed, "
                          f"{summary['sources_removed']} source(s) removed, "
                          f"{summary['verified']} verified"
                          + (f", {summary['unresolved']} unresolved" if prepared.unresolved
                             else ""))
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
    with collector_paused(), _terminate_as_interrupt():
        _Run(control, args).run()
