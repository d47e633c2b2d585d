"""`omero export`, extended: the built-in OME-TIFF/XML export plus --originals.

Without --originals the built-in `ExportControl.export` runs exactly as before (same
arguments, same checks); --originals hands over to `omero_cli_ext.cli.export_originals`.
"""
from __future__ import annotations

import importlib

_builtin = importlib.import_module("omero.plugins.export")
BuiltinExportControl = _builtin.ExportControl

EXTRA_HELP = """
omero-cli-ext adds --originals DEST (original files by hard link, reflink, symlink, copy or
download, under OMERO permissions). See docs/export.md.
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
        from omero_cli_ext.cli.export_originals import add_originals_arguments
        group = parser.add_argument_group(
            "Original files (omero-cli-ext)", "See docs/export.md.")
        add_originals_arguments(group)
        parser.set_defaults(func=self.dispatch)

    def dispatch(self, args):
        if getattr(args, "originals", None):
            from omero_cli_ext.cli.export_originals import run_export
            return run_export(self, args)
        if args.file is None:
            self.ctx.die(2, "the following arguments are required: -f/--file")
        if len(args.obj) != 1:
            self.ctx.die(2, "the built-in export takes one object (Image:<id>); "
                            "use --originals DEST for several")
        args.obj = args.obj[0]
        return self.export(args)


def register_plugin(register):
    register("export", ExportControl, _builtin.HELP + EXTRA_HELP)
