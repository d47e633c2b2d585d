"""The --originals / --zarr option group of `omero export` and the control glue for them."""
from __future__ import annotations

from omero_cli_ext.cli.base import add_dry_run_argument, add_json_argument

LINK_METHODS = ("auto", "hard", "reflink", "sym", "copy", "download")
LAYOUTS = ("clientpath", "tree", "fileset")


def octal_mode(text):
    import argparse
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an octal mode: {text!r}")
    if not 0 <= mode <= 0o7777:
        raise argparse.ArgumentTypeError(f"mode out of range: {text!r}")
    return mode


def add_originals_arguments(group) -> None:
    group.add_argument("--originals", metavar="DEST",
                       help="write the original files of OBJ... the acting user may read into DEST")
    group.add_argument("--zarr", metavar="DEST", help="write the images of OBJ... as OME-Zarr into DEST")
    group.add_argument("--link", choices=LINK_METHODS, default="auto",
                       help="how files reach DEST (default auto: hard link, then reflink, then copy, then download)")
    group.add_argument("--layout", choices=LAYOUTS, default="clientpath",
                       help="clientpath: the user's own directories (default); tree: Project/Dataset or "
                            "Screen/Plate names; fileset: Fileset_<id>/")
    group.add_argument("--as-user", metavar="NAME",
                       help="admins with Sudo: export what NAME may read, in a session of NAME")
    group.add_argument("--dir-mode", type=octal_mode, default=0o750, metavar="MODE",
                       help="mode of the directories created in DEST (default 0750)")
    group.add_argument("--owner", metavar="USER",
                       help="as root: POSIX owner of created directories (default: the OMERO user's name)")
    group.add_argument("--owner-map", metavar="FILE",
                       help="as root: file of 'omero_name posix_name' lines for sites where names differ")
    group.add_argument("--sync", action="store_true",
                       help="bring DEST up to date: add new entries, remove those no longer readable or deleted")
    group.add_argument("--verify", action="store_true",
                       help="check every entry against the OriginalFile size and hash")
    add_dry_run_argument(group)
    add_json_argument(group)
