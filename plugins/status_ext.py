# omero-cli-ext: `omero status imports`. Executed by the omero CLI loader; code in omero_cli_ext.cli.status.
from omero_cli_ext.cli.status import register_plugin
register_plugin(register)  # noqa: F821 (the loader provides `register`)
