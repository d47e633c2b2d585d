"""The control glue of `omero export --originals` (its options are defined in export_ext).

Checks everything that can be checked before the first change to disk (objects, acting user,
owner, DEST, state directory and lock, manifest), then hands the plan to
`omero_cli_ext.export.execute.Exporter` and renders its events. Exit codes (docs/export.md):
0 done; 2 bad arguments; 3 DEST unusable; 4 owner unknown, not settable, or not the acting
user; 5 some objects unknown or unreadable (the others exported); 6 DEST full; 7 some files not
exported (failed or left alone); 8 --verify found a mismatch; 9 another run holds DEST;
10 interrupted (Ctrl-C); 20/21/22 shared.
"""
from __future__ import annotations

import errno
import os
import sys

from omero_cli_ext import fsops
from omero_cli_ext.cli.base import collector_paused, open_port, server_errors
from omero_cli_ext.cli.export_common import (EXIT_DEST, EXIT_FULL, EXIT_INTERRUPTED,
                                             EXIT_NOT_EXPORTED, EXIT_OWNER, EXIT_SOME_MISSING,
                                             QuietPipe, check_apart, check_dest_owner,
                                             close_run, create_dest,
                                             dir_mode_warning, open_control, open_existing_dest,
                                             read_owner_map, resolve_owner)
from omero_cli_ext.exitcodes import EXIT_NOT_FOUND, EXIT_USAGE
from omero_cli_ext.export import (asuser, control as control_io, dest as dest_io,
                                  manifest as manifest_io)
from omero_cli_ext.export.execute import Exporter, Options
from omero_cli_ext.export.plan import BadObject, format_ref, parse_objects, plan_layout, resolve
from omero_cli_ext.output import Output, printable

EXIT_VERIFY = 8


# --------------------------------------------------------------------------- checks before any change

def load_manifest(ctx, control_files, repository, user, sync, dest):
    try:
        return control_files.load(repository, user, sync, dest)
    except (manifest_io.ManifestError, OSError) as err:
        ctx.die(EXIT_DEST, f"the export's manifest: {err}")
    except control_io.Refused as err:
        ctx.die(EXIT_DEST, str(err))


def give_unfinished(out, args, dest_fd, manifest, owner, entry) -> None:
    if manifest is None and owner is not None and not args.dry_run \
            and dest_io.give_unfinished(dest_fd, args.dir_mode, owner):
        out.emit("note", message="DEST, left root's by a run stopped as it made it, "
                                 f"given to {entry.pw_name}")


# --------------------------------------------------------------------------- the command

def run_export(control, args):
    ctx = control.ctx
    out = Output(json_mode=bool(args.json), stdout=QuietPipe(sys.stdout))
    try:
        refs = parse_objects(args.obj)
    except BadObject as err:
        ctx.die(EXIT_USAGE, str(err))
    owner_map = read_owner_map(ctx, args.owner_map) if args.owner_map else {}
    dest = os.path.abspath(args.originals)
    port = open_port(ctx, args)
    acting = port
    dest_fd = None
    reader = None
    control_files = control_io.DestControl(args.state_dir, args.wait, args.dry_run)
    try:
        with server_errors(ctx), collector_paused():
            if args.as_user:
                acting = port.sudo(args.as_user)
            user = acting.current_user()
            repository = acting.repository()
            roots = sorted({repository.root} | ({args.repo} if args.repo else set()))
            entry = resolve_owner(ctx, args, user.name, owner_map)
            root_run = os.geteuid() == 0
            owner = (entry.pw_uid, entry.pw_gid) if root_run else None
            strict = {entry.pw_uid} if root_run else None
            warnings = dir_mode_warning(out, args, entry)
            dest_fd = open_existing_dest(ctx, dest, strict)
            if dest_fd is not None:
                check_apart(ctx, dest_fd, dest, roots)
                check_dest_owner(ctx, dest_fd, dest, entry, root_run, root_dest_ok=True)
                open_control(ctx, control_files, dest_fd, create=not args.dry_run)
            manifest = load_manifest(ctx, control_files, repository.uuid, user.name, args.sync,
                                     dest)
            if dest_fd is not None:
                give_unfinished(out, args, dest_fd, manifest, owner, entry)
            resolution = resolve(acting, refs)
            for ref in resolution.missing:
                out.emit("object_missing", object=format_ref(ref))
            objects = [format_ref(r) for r in refs]
            revoking = len(resolution.missing) == len(refs)
            if revoking and not (manifest is not None and manifest.entries
                                 and sorted(manifest.objects) == sorted(objects)):
                ctx.die(EXIT_NOT_FOUND, "not found or not readable by %s: %s" % (
                    user.name, ", ".join(objects)))
            containers = (acting.containers_of(sorted(resolution.filesets))
                          if args.layout == "tree" and resolution.filesets else {})
            if dest_fd is None and not args.dry_run:
                dest_fd, created = create_dest(ctx, dest, args, roots, owner, strict)
                if not created:     # another run made it first: an existing DEST's checks
                    check_dest_owner(ctx, dest_fd, dest, entry, root_run, root_dest_ok=True)
                open_control(ctx, control_files, dest_fd, create=True)
                if not created:     # and its manifest, read once its lock is ours
                    manifest = load_manifest(ctx, control_files, repository.uuid, user.name,
                                             args.sync, dest)
                    give_unfinished(out, args, dest_fd, manifest, owner, entry)
            keep = {}
            if manifest is None:
                manifest = manifest_io.Manifest(repository=repository.uuid, user=user.name,
                                                layout=args.layout)
            elif manifest.layout == args.layout:
                keep = {m.original_file: m.path for m in manifest.entries.values()
                        if m.state == manifest_io.DONE}
            manifest.layout, manifest.objects, manifest.dest = args.layout, objects, dest
            plan = plan_layout(resolution.filesets, args.layout, containers, keep)
            _report_plan(out, plan)
            if control_files.migrated:
                out.warn("note: " + control_files.migrated)
                out.emit("note", message=control_files.migrated)
            if root_run and entry.pw_uid != 0:
                reader = asuser.ReaderProcess(entry.pw_uid, entry.pw_gid, _gids(entry))
            options = Options(link=args.link, dir_mode=args.dir_mode, owner=owner,
                              reader=(entry.pw_uid, _gids(entry)) if root_run else None,
                              sync=args.sync, dry_run=args.dry_run, verify=args.verify,
                              dest_dev=dest_io.device_of(dest))
            with out.progress("Exporting", total=len(plan.entries)) as bar:
                exporter = Exporter(acting, dest_fd, control_files.state_fd,
                                    args.repo or repository.root, options, emit=out.emit,
                                    progress=bar.advance, opener=reader)
                try:
                    result = exporter.run(plan, manifest)
                except fsops.NoSpace as err:
                    ctx.die(EXIT_FULL, f"DEST is full ({err.strerror}); what was exported is "
                                       "recorded: free space and rerun with --sync")
                except asuser.ReaderError as err:
                    ctx.die(EXIT_OWNER, str(err))
                except OSError as err:
                    if err.errno in (errno.ENOSPC, errno.EDQUOT):
                        ctx.die(EXIT_FULL, f"no space left ({err.strerror}); free space and "
                                           "rerun with --sync")
                    ctx.die(EXIT_DEST, f"cannot write in DEST: {err.strerror}")
    except KeyboardInterrupt:
        ctx.die(EXIT_INTERRUPTED, "interrupted; what was made is recorded: rerun with --sync to "
                                  "go on")
    finally:
        if reader is not None:
            reader.close()
        close_run(control_files, dest_fd, acting, port)
    rc, message = _exit_code(result, resolution, revoking)
    _report_result(out, dest, args, plan, resolution, result, rc, warnings)
    if rc:
        ctx.die(rc, message)


def _gids(entry) -> set:
    return set(os.getgrouplist(entry.pw_name, entry.pw_gid))


def _exit_code(result, resolution, revoking: bool) -> tuple:
    if result.full:
        return EXIT_FULL, (f"{result.full}; what was exported is recorded in the manifest: free "
                           "space and rerun with --sync")
    if revoking:
        return EXIT_NOT_FOUND, ("no object is readable any more: the export's entries were "
                                "removed (%d)" % result.removed)
    if resolution.missing:
        return EXIT_SOME_MISSING, "not found or not readable: " + ", ".join(
            map(format_ref, resolution.missing))
    if result.failed or result.left_alone:
        return EXIT_NOT_EXPORTED, "%d file(s) not exported, %d left alone (listed above)" % (
            len(result.failed), len(result.left_alone))
    if result.verify_failures:
        return EXIT_VERIFY, "%d entr(ies) do not match OMERO's size or hash" % len(
            result.verify_failures)
    return 0, ""


def _report_plan(out, plan) -> None:
    for skipped in plan.skipped:
        out.emit("skipped", fileset=skipped.fileset_id, original_file=skipped.original_file_id,
                 client_path=skipped.client_path, reason=skipped.reason)
    for renamed in plan.renamed:
        out.emit("renamed", fileset=renamed.fileset_id, original_file=renamed.original_file_id,
                 wanted=renamed.wanted, path=renamed.path, reasons=list(renamed.reasons))


def _report_result(out, dest, args, plan, resolution, result, rc, warnings) -> None:
    missing = [format_ref(r) for r in resolution.missing]
    out.emit("summary", dest=dest, dry_run=args.dry_run, link=args.link, layout=args.layout,
             filesets=len(resolution.filesets), entries=len(plan.entries), added=result.added,
             adopted=result.adopted, kept=result.kept, removed=result.removed,
             bytes_added=result.bytes_added, methods=dict(result.methods),
             skipped=len(plan.skipped), renamed=len(plan.renamed), failed=len(result.failed),
             left_alone=len(result.left_alone), missing_objects=missing,
             writable_sources=len(result.writable), verified=result.verified,
             verify_failures=len(result.verify_failures), dir_mode_warnings=warnings,
             exit_code=rc)
    if result.writable:
        out.warn("warning: %d managed file(s) are writable by group or others (hard links share "
                 "that mode), e.g. %s" % (len(result.writable), printable(result.writable[0])))
    if out.mode == "json":
        return
    for note in result.notes:
        out.warn("note: " + note)
    if missing:
        out.table("Objects not found or not readable", ["object"], [[m] for m in missing])
    if plan.skipped:
        out.table("Skipped", ["fileset", "file", "reason"],
                  [[s.fileset_id, printable(s.client_path), s.reason] for s in plan.skipped])
    if plan.renamed:
        out.table("Renamed (unsafe names and clashes)", ["fileset", "wanted", "placed at", "why"],
                  [[r.fileset_id, printable(r.wanted), printable(r.path), ", ".join(r.reasons)]
                   for r in plan.renamed])
    if result.failed:
        out.table("Not exported", ["path", "fileset", "reason"],
                  [[printable(p), f, reason] for p, f, _, reason in result.failed])
    if result.left_alone:
        out.table("Left alone (not made by this export)", ["path", "reason"],
                  [[printable(p), reason] for p, reason in result.left_alone])
    if result.verify_failures:
        out.table("Verify failures", ["path", "reason"],
                  [[printable(p), reason] for p, reason in result.verify_failures])
    verb = "Would add" if args.dry_run else "Added"
    methods = ", ".join(f"{m} {n}" for m, n in sorted(result.methods.items()))
    out.info(f"{verb} {result.added} file(s) ({result.bytes_added} bytes{'; ' + methods if methods else ''})"
             f", kept {result.kept}, {'would remove' if args.dry_run else 'removed'} {result.removed}"
             f" in {printable(dest)}" + (f"; verified {result.verified}" if args.verify else ""))
