"""setuptools entry point. Metadata and dependencies live in setup.cfg.

The `omero.plugins` shims are mapped from ./plugins so that the repository root never holds an
`omero/plugins/` directory: omero's loader executes every such directory on sys.path in an
unspecified order, and a second copy of a shim could then load before the built-in it extends.
"""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["omero_cli_ext", "omero_cli_ext.*"]) + ["omero.plugins"],
    package_dir={"omero.plugins": "plugins"},
)
