# omero-cli-ext: `omero export` with --originals. Sorts after the built-in export.py, so this registration wins.
from omero_cli_ext.cli.export_ext import register_plugin
register_plugin(register)  # noqa: F821 (the loader provides `register`)
