"""`omero export`, extended: the built-in OME-TIFF/XML export plus --originals.

Without --originals or --zarr the built-in `ExportControl.export` runs exactly as before (same
arguments, same checks); --originals hands over to `omero_cli_ext.cli.export_originals`,
--zarr to `omero_cli_ext.cli.export_zarr`.
"""
from __future__ import annotations

import importlib

from omero_cli_ext.cli.base import add_dry_run_argument, add_json_argument, seconds
from omero_cli_ext.export import CHAINS, LAYOUTS

_builtin = importlib.import_module("omero.plugins.export")
BuiltinExportControl = _builtin.ExportControl

EXTRA_HELP = """
omero-cli-ext adds --originals DEST (original files by hard link, reflink, symlink, copy or
download, under OMERO permissions) and --zarr DEST (OME-Zarr of images and plates, resumable).
See docs/export.md.

--originals exit codes: 0 done; 2 bad arguments; 3 DEST or state directory unusable; 4 DEST owner
unknown or not the acting user (use --as-user); 5 some objects unreadable; 6 DEST full; 7 files
not exported; 8 --verify mismatch; 9 another run holds DEST; 10 interrupted; 20/21
server/privilege; 22 nothing readable (with --sync on the same objects: the export emptied).

--zarr exit codes: 0 done; 2 bad arguments; 3 DEST or state directory unusable or another
export's; 4 (as root) DEST owner unknown or not the acting user (use --as-user); 5 some objects
unreadable; 6 DEST full; 7 images failed; 9 another run holds DEST; 10 interrupted (rerun the
same command to continue); 20/21 server/privilege; 22 nothing readable.
"""


def _action(parser, dest):
    return next(a for a in parser._actions if a.dest == dest)


class ExportControl(BuiltinExportControl):
    """The built-in export control with the original-files options."""

    def _configure(self, parser):
        super()._configure(parser)
        # -f is required and OBJ single for the built-in path only; dispatch() enforces both there.
        _action(parser, "file").required = False
        obj = _action(parser, "obj")
        obj.nargs = "+"
        obj.help = "Format: Image:<id> (built-in); with --originals any of Project, Dataset, " \
                   "Image, Screen, Plate, Fileset as Type:id[,id...], several allowed"
        group = parser.add_argument_group(
            "Original files (omero-cli-ext)", "See docs/export.md.")
        add_originals_arguments(group)
        zarr = parser.add_argument_group("OME-Zarr (omero-cli-ext)",
                                         "See docs/export.md, section --zarr.")
        add_zarr_arguments(zarr)
        # (dest, first option string, default) of every option the built-in export has not
        self._ours = [(a.dest, a.option_strings[0], a.default)
                      for a in group._group_actions + zarr._group_actions]
        parser.set_defaults(func=self.dispatch)

    def dispatch(self, args):
        if getattr(args, "zarr", None):
            from omero_cli_ext.cli.export_zarr import run_export as run_zarr
            return run_zarr(self, args)
        if getattr(args, "originals", None):
            if args.layout == "flat":
                self.ctx.die(2, "--layout flat applies to --zarr only")
            if (args.ngff, args.chunk, args.workers) != ("0.4", 1024, 1):
                self.ctx.die(2, "--ngff, --chunk and --workers apply to --zarr only")
            args.layout = args.layout or "clientpath"
            from omero_cli_ext.cli.export_originals import run_export
            return run_export(self, args)
        given = [option for dest, option, default in self._ours
                 if getattr(args, dest, default) != default]
        if given:      # before: "unrecognized arguments"; never ignored (--dry-run, --as-user)
            self.ctx.die(2, f"{', '.join(given)} apply to --originals or --zarr only; the "
                            "built-in export (-f FILE Image:<id>) takes none of them")
        if args.file is None:
            self.ctx.die(2, "the following arguments are required: -f/--file")
        if len(args.obj) != 1:
            self.ctx.die(2, "the built-in export takes one object (Image:<id>); "
                            "use --originals DEST for several")
        args.obj = args.obj[0]
        return self.export(args)


def octal_mode(text):
    from omero_ext.argparse import ArgumentTypeError   # the omero CLI parses with its own argparse copy
    try:
        mode = int(text, 8)
    except ValueError:
        raise ArgumentTypeError(f"not an octal mode: {text!r}") from None
    if not 0 <= mode <= 0o7777:
        raise ArgumentTypeError(f"mode out of range: {text!r}")
    return mode


def add_originals_arguments(group) -> None:
    """The --originals options (defined here, not beside the exporter, so that loading the omero
    CLI for any command does not import the exporter)."""
    group.add_argument("--originals", metavar="DEST",
                       help="write the original files of OBJ... the acting user may read into DEST")
    group.add_argument("--link", choices=tuple(CHAINS), default="auto",
                       help="how files reach DEST (default auto: hard link, then reflink, then copy, then download)")
    group.add_argument("--layout", choices=LAYOUTS + ("flat",), default=None,
                       help="clientpath: the user's own directories (default); tree: Project/Dataset or "
                            "Screen/Plate names; fileset: Fileset_<id>/; with --zarr: tree "
                            "(default) or flat (Image_<id>.ome.zarr, Plate_<id>.ome.zarr)")
    group.add_argument("--as-user", metavar="NAME",
                       help="admins with Sudo: export what NAME may read, in a session of NAME")
    group.add_argument("--repo", metavar="DIR",
                       help="where the ManagedRepository is mounted on this host (default: the server's path)")
    group.add_argument("--dir-mode", type=octal_mode, default=0o700, metavar="MODE",
                       help="mode of the directories created in DEST (default 0700: the owner "
                            "only; a mode that lets a shared group in is warned about)")
    group.add_argument("--owner", metavar="USER",
                       help="as root: POSIX owner of created directories (default: the OMERO user's name)")
    group.add_argument("--owner-map", metavar="FILE",
                       help="as root: file of 'omero_name posix_name' lines for sites where names differ")
    group.add_argument("--sync", action="store_true",
                       help="bring DEST up to date: add new entries, remove those no longer readable or deleted")
    group.add_argument("--state-dir", metavar="DIR",
                       help="where the manifest, journal and lock are kept, out of DEST "
                            "(default /var/lib/omero-cli-ext/exports as root, else "
                            "~/.local/state/omero-cli-ext/exports)")
    group.add_argument("--wait", type=seconds, default=0.0, metavar="SECONDS",
                       help="when another run holds DEST, wait this long for it (default: exit 9 "
                            "at once)")
    group.add_argument("--verify", action="store_true",
                       help="check every entry against the OriginalFile size and hash")
    add_dry_run_argument(group)
    add_json_argument(group)


def add_zarr_arguments(group) -> None:
    """The --zarr options (the shared ones, --layout --as-user --dir-mode --sync --dry-run
    --json, are those of --originals)."""
    from omero_cli_ext.cli.base import positive_int
    group.add_argument("--zarr", metavar="DEST",
                       help="write the images and plates of OBJ... as OME-Zarr (NGFF) into DEST")
    group.add_argument("--ngff", choices=("0.4", "0.5"), default="0.4",
                       help="NGFF version (default 0.4, zarr format 2)")
    group.add_argument("--chunk", type=positive_int, default=1024, metavar="PX",
                       help="chunk (and tile) side in pixels (default 1024)")
    group.add_argument("--workers", type=positive_int, default=1, metavar="N",
                       help="tiles written in parallel, one RawPixelsStore each (default 1)")


def register_plugin(register):
    register("export", ExportControl, _builtin.HELP + EXTRA_HELP)
