# omero-cli-ext: `omero mv`. Executed by the omero CLI loader; the code lives in omero_cli_ext.cli.mv.
from omero_cli_ext.cli.mv import register_plugin
register_plugin(register)  # noqa: F821 (the loader provides `register`)
