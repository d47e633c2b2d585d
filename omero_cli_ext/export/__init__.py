"""`omero export --originals`: the pure core.

resolve (objects -> readable filesets) -> layout (safe, clash-free DEST paths) -> manifest diff
(what to add, keep, remove) -> execute (directory-descriptor based link/copy/download) -> verify.
Nothing here imports omero-py or rich: the CLI control in `omero_cli_ext.cli.export_originals`
drives it with a `ServerPort` and renders its events.
"""

# the values of --link (each a chain of methods tried in turn) and --layout; here, in the package
# itself, so that the CLI defines its options without importing the core
CHAINS = {"auto": ("hard", "reflink", "copy", "download"), "hard": ("hard",),
          "reflink": ("reflink",), "sym": ("sym",), "copy": ("copy",), "download": ("download",)}
LAYOUTS = ("clientpath", "tree", "fileset")
