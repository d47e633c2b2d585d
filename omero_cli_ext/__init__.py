"""omero-cli-ext: omero CLI plugins for data pipelines (mv, import --resume, export --originals, status imports)."""

__version__ = "0.1.0"
