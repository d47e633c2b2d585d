"""The control glue of `omero export --zarr` (its options are defined in export_ext).

Checks what can be checked before the first change to disk (options, objects, DEST, its index,
a second run on the same DEST), then hands the plan to `omero_cli_ext.zarr.writer.Writer`.
Exit codes (docs/export.md, shared with --originals where the meaning is the same): 0 done;
2 bad arguments; 3 DEST or state directory unusable; 4 DEST owner unknown or not the acting
user (as root: use --as-user); 5 some objects unknown or unreadable; 6 DEST full; 7 some
images failed; 9 another run is writing DEST; 10 interrupted (Ctrl-C): rerun to continue;
20/21/22 shared. A closed stdout (`--json | head`) does not stop the run: it ends with its own
exit code.
"""
from __future__ import annotations

import ctypes
import errno
import os
import sys

from omero_cli_ext import fsops
from omero_cli_ext.cli.base import open_port, server_errors
from omero_cli_ext.exitcodes import EXIT_NOT_FOUND, EXIT_USAGE
from omero_cli_ext.cli.export_common import (EXIT_DEST, EXIT_FULL, EXIT_INTERRUPTED,
                                             EXIT_NOT_EXPORTED, EXIT_SOME_MISSING,
                                             QuietPipe, check_apart, check_dest_owner,
                                             close_run, create_dest,
                                             dir_mode_warning, open_control, open_existing_dest,
                                             read_owner_map, resolve_owner)
from omero_cli_ext.export import control as control_io
from omero_cli_ext.export.plan import BadObject, format_ref, parse_objects
from omero_cli_ext.output import Output, printable
from omero_cli_ext.zarr import LAYOUTS
from omero_cli_ext.zarr import index as index_io
from omero_cli_ext.zarr import plan as zplan
from omero_cli_ext.zarr.owner import Effective
from omero_cli_ext.zarr.writer import Options, Writer

ORIGINALS_ONLY = (("link", "auto"), ("repo", None), ("verify", False))


def _check_args(ctx, args) -> list:
    if args.originals:
        ctx.die(EXIT_USAGE, "--zarr and --originals are separate exports: give one of them")
    for name, default in ORIGINALS_ONLY:
        if getattr(args, name, default) != default:
            ctx.die(EXIT_USAGE, "--%s applies to --originals only" % name.replace("_", "-"))
    if args.ngff != "0.4":
        import zarr
        ctx.die(EXIT_USAGE, "--ngff %s (zarr format 3) is not written by this version: it "
                            "writes NGFF 0.4 (zarr format 2; installed zarr %s)"
                % (args.ngff, zarr.__version__))
    if args.layout not in LAYOUTS:
        ctx.die(EXIT_USAGE, "--layout %s: with --zarr the layouts are %s"
                % (args.layout, " and ".join(LAYOUTS)))
    try:
        refs = parse_objects(args.obj)
    except BadObject as err:
        ctx.die(EXIT_USAGE, str(err))
    filesets = [format_ref(r) for r in refs if r[0] == "Fileset"]
    if filesets:
        ctx.die(EXIT_USAGE, "--zarr exports Project, Dataset, Image, Screen and Plate, not %s"
                % ", ".join(filesets))
    return refs


def _load_index(ctx, out, state_fd, args, dest: str, repository: str, user: str):
    try:
        found = index_io.load(state_fd) if state_fd is not None else None
    except (index_io.IndexError_, OSError) as err:
        ctx.die(EXIT_DEST, "the export's index (state directory): %s" % err)
    if found is not None and (found.repository, found.user) != (repository, user) \
            and found.dest and found.dest != dest and not args.dry_run:
        # the state of a directory that had DEST's device and inode before (deleted since)
        index_io.discard(state_fd)
        note = ("dropped the state of %r's export at %s, a directory that had DEST's device "
                "and inode before" % (found.user, found.dest))
        out.warn("note: " + note)
        out.emit("note", message=note)
        found = None
    if found is None:
        return index_io.Index(repository=repository, user=user, ngff=args.ngff,
                              layout=args.layout, chunk=args.chunk, dest=dest)
    found.dest = dest
    if (found.repository, found.user) != (repository, user):
        ctx.die(EXIT_DEST, "DEST holds the export of %r from repository %s, not of %r from %s; "
                           "choose another DEST" % (found.user, found.repository, user, repository))
    for name, value in (("ngff", args.ngff), ("layout", args.layout), ("chunk", args.chunk)):
        if getattr(found, name) != value:
            ctx.die(EXIT_DEST, "DEST was written with --%s %s; rerun with the same or choose "
                               "another DEST" % (name, getattr(found, name)))
    return found


def _bounded_malloc() -> None:
    """At most 2 glibc malloc arenas: each worker thread would otherwise get its own heap, which
    keeps the chunk buffers (MiBs each) it freed, and the process grows past the documented
    bound. (A fixed mmap threshold bounds memory too but makes Blosc 3x slower: its buffers are
    then mapped and faulted in again for every chunk.)"""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-8, 2)              # M_ARENA_MAX
    except (OSError, AttributeError):
        pass                             # not glibc: its own allocator's behaviour applies


def run_export(control, args):
    ctx = control.ctx
    _bounded_malloc()
    args.layout = args.layout or "tree"
    refs = _check_args(ctx, args)
    owner_map = read_owner_map(ctx, args.owner_map) if args.owner_map else {}
    out = Output(json_mode=bool(args.json), stdout=QuietPipe(sys.stdout))
    dest = os.path.abspath(args.zarr)
    port = open_port(ctx, args)
    acting = port
    dest_fd = None
    result = plan = None
    control_files = control_io.DestControl(args.state_dir, args.wait, args.dry_run)
    owner = Effective()
    try:
        with server_errors(ctx):
            if args.as_user:
                acting = port.sudo(args.as_user)
            user = acting.current_user()
            repository = acting.repository()
            roots = [repository.root]
            entry = resolve_owner(ctx, args, user.name, owner_map)
            root_run = os.geteuid() == 0
            strict = {entry.pw_uid} if root_run else None
            dir_mode_warning(out, args, entry)
            dest_fd = open_existing_dest(ctx, dest, strict)
            if dest_fd is not None:
                check_apart(ctx, dest_fd, dest, roots)
                check_dest_owner(ctx, dest_fd, dest, entry, root_run)
                open_control(ctx, control_files, dest_fd, create=not args.dry_run)
            image_ids, plate_ids, missing = zplan.resolve(acting, refs)
            for ref in missing:
                out.emit("object_missing", object=format_ref(ref))
            if len(missing) == len(refs):
                ctx.die(EXIT_NOT_FOUND, "not found or not readable by %s: %s" % (
                    user.name, ", ".join(map(format_ref, missing))))
            plates = acting.plates(plate_ids) if plate_ids else {}
            field_ids = {i for p in plates.values() for w in p.wells for i, _a in w.fields}
            pixels = acting.pixels_info(sorted(set(image_ids) | field_ids))
            if dest_fd is None and not args.dry_run:
                dest_fd, created = create_dest(ctx, dest, args, roots,
                                               (entry.pw_uid, entry.pw_gid) if root_run else None,
                                               strict)
                if not created:     # another run made it first: an existing DEST's checks
                    check_dest_owner(ctx, dest_fd, dest, entry, root_run)
                open_control(ctx, control_files, dest_fd, create=True)
            index = _load_index(ctx, out, control_files.state_fd, args, dest, repository.uuid,
                                user.name)
            plan = zplan.build(pixels, plates, image_ids, plate_ids, args.layout, args.chunk,
                               index.paths() if not args.dry_run or dest_fd is not None else {})
            renderings = acting.rendering_settings(sorted({j.image_id for j in plan.images}))
            options = Options(chunk=args.chunk, workers=args.workers, sync=args.sync,
                              dry_run=args.dry_run, dir_mode=args.dir_mode)
            total = sum(j.raw_bytes() for j in plan.images)
            if not args.dry_run:
                owner = Effective.of(entry.pw_uid, entry.pw_gid,
                                     os.getgrouplist(entry.pw_name, entry.pw_gid))
            with out.progress("Exporting", total=total, bytes_unit=True) as bar:
                writer = Writer(acting, dest_fd, options, emit=out.emit, progress=bar.advance,
                                state_fd=control_files.state_fd, owner=owner)
                owner.drop()
                try:
                    try:
                        result = writer.run(plan, index, renderings)
                    finally:
                        owner.restore()      # root again before anything else runs
                except fsops.NoSpace as err:
                    ctx.die(EXIT_FULL, "%s; free space and rerun the same command" % err)
                except OSError as err:
                    if err.errno in (errno.ENOSPC, errno.EDQUOT):
                        ctx.die(EXIT_FULL, "no space left (%s); free space and rerun the same "
                                           "command" % err.strerror)
                    ctx.die(EXIT_DEST, "cannot write in DEST: %s" % err)
    except KeyboardInterrupt:
        ctx.die(EXIT_INTERRUPTED, "interrupted; rerun the same command to continue")
    finally:
        owner.restore()
        close_run(control_files, dest_fd, acting, port)
    rc, message = _exit_code(result, missing)
    _report(out, dest, args, plan, result, missing, rc)
    if rc:
        ctx.die(rc, message)


def _exit_code(result, missing) -> tuple:
    if missing:
        return EXIT_SOME_MISSING, "not found or not readable: " + ", ".join(map(format_ref, missing))
    if result.failed:
        return EXIT_NOT_EXPORTED, "%d image(s) failed (listed above); rerun to retry them" % len(
            result.failed)
    return 0, ""


def _report(out, dest, args, plan, result, missing, rc) -> None:
    acts = result.actions
    out.emit("summary", dest=dest, dry_run=args.dry_run, ngff=args.ngff, layout=args.layout,
             chunk=args.chunk, workers=args.workers, images=len(plan.images),
             plates=len(plan.plates), written=acts["written"], resumed=acts["resumed"],
             kept=acts["kept"] + acts["would-keep"], metadata_only=acts["metadata"],
             would_write=acts["would-write"], removed=len(result.removed),
             skipped=len(result.skipped), failed=len(result.failed),
             chunks_written=result.chunks_written, bytes_written=result.bytes_written,
             estimated_bytes=result.estimated_bytes,
             missing_objects=[format_ref(r) for r in missing], exit_code=rc)
    if result.skipped:
        out.table("Skipped images", ["image", "reason"], result.skipped)
    if result.failed:
        out.table("Failed images", ["image", "reason"], result.failed)
    if args.dry_run:
        out.info("Would write %d image(s), %d plate(s): %d bytes before compression, in %s"
                 % (acts["would-write"], len(plan.plates), result.estimated_bytes,
                    printable(dest)))
        return
    out.info("Wrote %d image(s) (%d resumed), kept %d, metadata only %d, removed %d, "
             "skipped %d, failed %d: %d chunks, %d bytes in %s"
             % (acts["written"] + acts["resumed"], acts["resumed"], acts["kept"],
                acts["metadata"], len(result.removed), len(result.skipped), len(result.failed),
                result.chunks_written, result.bytes_written, printable(dest)))
