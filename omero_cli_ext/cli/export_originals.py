"""The control glue of `omero export --originals` (its options are defined in export_ext).

Checks everything that can be checked before the first change to disk (objects, owner, DEST,
manifest), then hands the plan to `omero_cli_ext.export.execute.Exporter` and renders its events.
Exit codes (docs/export.md): 0 done; 2 bad arguments; 3 DEST unusable; 4 POSIX owner unknown or
not settable; 5 some objects unknown or unreadable (the others exported); 6 DEST full; 7 some
files not exported (failed or left alone); 8 --verify found a mismatch; 20/21/22 shared.
"""
from __future__ import annotations

import os
import pwd

from omero_cli_ext import fsops
from omero_cli_ext.cli.base import (EXIT_NOT_FOUND, EXIT_USAGE, collector_paused, open_port,
                                    output_for, server_errors)
from omero_cli_ext.export import manifest as manifest_io
from omero_cli_ext.export.execute import Exporter, Options
from omero_cli_ext.export.plan import BadObject, format_ref, parse_objects, plan_layout, resolve
from omero_cli_ext.output import printable

EXIT_DEST = 3
EXIT_OWNER = 4
EXIT_SOME_MISSING = 5
EXIT_FULL = 6
EXIT_NOT_EXPORTED = 7
EXIT_VERIFY = 8


# --------------------------------------------------------------------------- checks before any change

def read_owner_map(ctx, path: str) -> dict:
    """'omero_name posix_name' per line; blank lines and '#' comments ignored."""
    try:
        with open(path, encoding="utf-8") as stream:
            lines = stream.readlines()
    except OSError as err:
        ctx.die(EXIT_OWNER, f"cannot read the owner map {path}: {err.strerror}")
    mapping = {}
    for number, line in enumerate(lines, 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) != 2:
            ctx.die(EXIT_OWNER, f"{path}:{number}: expected 'omero_name posix_name', got {line.strip()!r}")
        mapping[words[0]] = words[1]
    return mapping


def resolve_owner(ctx, args, omero_name: str, owner_map: dict):
    """(owner (uid, gid) for directories, reader (uid, gids)) when root; (None, None) otherwise."""
    name = args.owner or owner_map.get(omero_name, omero_name)
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        how = "--owner" if args.owner else ("the owner map" if omero_name in owner_map
                                            else "the OMERO user's name")
        ctx.die(EXIT_OWNER, f"no POSIX user {name!r} (from {how}); give --owner or --owner-map")
    if os.geteuid() != 0:
        if (args.owner or args.owner_map) and entry.pw_uid != os.geteuid():
            ctx.die(EXIT_OWNER, f"only root can give DEST's directories to {name!r}")
        return None, None
    return (entry.pw_uid, entry.pw_gid), (entry.pw_uid, set(os.getgrouplist(entry.pw_name,
                                                                             entry.pw_gid)))


def _inside(path: str, root: str) -> bool:
    root = os.path.realpath(root)
    path = os.path.realpath(path)
    return path == root or path.startswith(root.rstrip("/") + "/")


def check_dest(ctx, dest: str, repo_roots) -> None:
    if os.path.lexists(dest) and not os.path.isdir(dest):
        ctx.die(EXIT_DEST, f"DEST {printable(dest)} exists and is not a directory")
    for root in repo_roots:
        if _inside(dest, root):
            ctx.die(EXIT_DEST, f"DEST {printable(dest)} is inside the ManagedRepository "
                               f"({printable(root)}); choose a directory outside it")
    if not os.path.isdir(os.path.dirname(dest)):
        ctx.die(EXIT_DEST, f"the parent of DEST {printable(dest)} is not a directory")


def open_dest(ctx, dest: str, dir_mode: int, owner, repo_roots):
    """DEST as a directory descriptor, created (mode, owner) when missing; re-checked through the
    descriptor so that a swap after check_dest cannot point us into the repository."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    try:
        try:
            fd = os.open(dest, flags)
        except FileNotFoundError:
            os.mkdir(dest, 0o700)
            fd = os.open(dest, flags | os.O_NOFOLLOW)
            if owner is not None:
                os.fchown(fd, *owner)
            os.fchmod(fd, dir_mode)
    except OSError as err:
        ctx.die(EXIT_DEST, f"cannot open DEST {printable(dest)}: {err.strerror}")
    real = os.readlink(manifest_io.fd_path(fd))
    if any(_inside(real, root) for root in repo_roots):
        os.close(fd)
        ctx.die(EXIT_DEST, f"DEST {printable(dest)} resolves into the ManagedRepository")
    return fd


def load_manifest(ctx, fd, args, repository: str, user: str):
    try:
        found = manifest_io.load(fd) if fd is not None else None
    except (manifest_io.ManifestError, OSError) as err:
        ctx.die(EXIT_DEST, f"DEST's manifest {manifest_io.MANIFEST_NAME}: {err}")
    if found is None:
        return manifest_io.Manifest(repository=repository, user=user, layout=args.layout), {}
    if not args.sync:
        ctx.die(EXIT_DEST, f"DEST already holds an export ({manifest_io.MANIFEST_NAME}); "
                           "rerun with --sync to update it")
    if (found.repository, found.user) != (repository, user):
        ctx.die(EXIT_DEST, f"DEST holds the export of {found.user!r} from repository "
                           f"{found.repository}, not of {user!r} from {repository}; "
                           "choose another DEST")
    keep = {}
    if found.layout == args.layout:
        keep = {m.original_file: m.path for m in found.entries.values()
                if m.state == manifest_io.DONE}
    found.layout = args.layout
    return found, keep


# --------------------------------------------------------------------------- the command

def run_export(control, args):
    ctx = control.ctx
    out = output_for(args)
    try:
        refs = parse_objects(args.obj)
    except BadObject as err:
        ctx.die(EXIT_USAGE, str(err))
    owner_map = read_owner_map(ctx, args.owner_map) if args.owner_map else {}
    dest = os.path.abspath(args.originals)
    port = open_port(ctx, args)
    acting = port
    dest_fd = None
    try:
        with server_errors(ctx), collector_paused():
            if args.as_user:
                acting = port.sudo(args.as_user)
            user = acting.current_user()
            repository = acting.repository()
            roots = [repository.root] + ([args.repo] if args.repo else [])
            check_dest(ctx, dest, roots)
            owner, reader = resolve_owner(ctx, args, user.name, owner_map)
            resolution = resolve(acting, refs)
            for ref in resolution.missing:
                out.emit("object_missing", object=format_ref(ref))
            if len(resolution.missing) == len(refs):
                ctx.die(EXIT_NOT_FOUND, "not found or not readable by %s: %s" % (
                    user.name, ", ".join(map(format_ref, resolution.missing))))
            containers = (acting.containers_of(sorted(resolution.filesets))
                          if args.layout == "tree" and resolution.filesets else {})
            if not args.dry_run or os.path.isdir(dest):
                dest_fd = open_dest(ctx, dest, args.dir_mode, owner, roots)
            manifest, keep = load_manifest(ctx, dest_fd, args, repository.uuid, user.name)
            plan = plan_layout(resolution.filesets, args.layout, containers, keep)
            _report_plan(out, plan)
            options = Options(link=args.link, dir_mode=args.dir_mode, owner=owner, reader=reader,
                              sync=args.sync, dry_run=args.dry_run, verify=args.verify)
            with out.progress("Exporting", total=len(plan.entries)) as bar:
                exporter = Exporter(acting, dest_fd, args.repo or repository.root, options,
                                    emit=out.emit, progress=bar.advance)
                try:
                    result = exporter.run(plan, manifest)
                except fsops.NoSpace as err:
                    ctx.die(EXIT_FULL, f"{err}; free space and rerun with --sync")
                except OSError as err:
                    ctx.die(EXIT_DEST, f"cannot write in DEST: {err}")
    finally:
        if dest_fd is not None:
            os.close(dest_fd)
        if acting is not port:
            acting.close()
        port.close()
    rc, message = _exit_code(result, resolution)
    _report_result(out, dest, args, plan, resolution, result, rc)
    if rc:
        ctx.die(rc, message)


def _exit_code(result, resolution) -> tuple:
    if result.full:
        return EXIT_FULL, (f"{result.full}; what was exported is recorded in the manifest: free "
                           "space and rerun with --sync")
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


def _report_result(out, dest, args, plan, resolution, result, rc) -> None:
    missing = [format_ref(r) for r in resolution.missing]
    out.emit("summary", dest=dest, dry_run=args.dry_run, link=args.link, layout=args.layout,
             filesets=len(resolution.filesets), entries=len(plan.entries), added=result.added,
             adopted=result.adopted, kept=result.kept, removed=result.removed,
             bytes_added=result.bytes_added, methods=dict(result.methods),
             skipped=len(plan.skipped), renamed=len(plan.renamed), failed=len(result.failed),
             left_alone=len(result.left_alone), missing_objects=missing,
             writable_sources=len(result.writable), verified=result.verified,
             verify_failures=len(result.verify_failures), exit_code=rc)
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
