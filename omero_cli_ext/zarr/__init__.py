"""`omero export --zarr`: the pure core (no omero-py, no rich).

plan (objects -> readable images and plates -> DEST paths) -> writer (tiles read through the
port, one chunk per tile, pyramid from the level above, NGFF metadata last) -> index (what DEST
holds, with OMERO ids, for resume and --sync). The control is `omero_cli_ext.cli.export_zarr`.
"""

# the values of --layout and --ngff, here so that the CLI defines its options without the core
LAYOUTS = ("tree", "flat")
NGFF_VERSIONS = ("0.4", "0.5")
DEFAULT_CHUNK = 1024
MAX_SIDE = 1024        # the pyramid goes down to this many pixels on the long side, or fewer
