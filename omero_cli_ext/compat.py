"""What differs between the Pythons the pack supports (3.9 on OMERO.server hosts, up to 3.12)."""
import sys

# `dataclass(slots=True)` came with 3.10; slots keep plans of 100 000s of steps small where they exist.
DATACLASS_SLOTS = {"slots": True} if sys.version_info >= (3, 10) else {}
