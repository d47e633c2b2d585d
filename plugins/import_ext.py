# omero-cli-ext: `omero import` with --resume. Sorts after the built-in import.py, so this registration wins.
from omero_cli_ext.cli.import_ext import register_plugin
register_plugin(register)  # noqa: F821 (the loader provides `register`)
