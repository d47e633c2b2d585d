"""`omero export --originals`: the pure core.

resolve (objects -> readable filesets) -> layout (safe, clash-free DEST paths) -> manifest diff
(what to add, keep, remove) -> execute (directory-descriptor based link/copy/download) -> verify.
Nothing here imports omero-py or rich: the CLI control in `omero_cli_ext.cli.export_originals`
drives it with a `ServerPort` and renders its events.
"""
