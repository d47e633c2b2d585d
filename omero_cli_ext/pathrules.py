"""OMERO's repository path rules: the names a real server stores, computed here.

The Java importer never sends a raw local path. `ImportLibrary.importImage` builds a
`ClientFilePathTransformer(new MakePathComponentSafe(rules))` with the rules "Windows required"
and "UNIX required" (`FilePathRestrictionInstance`), and `ImportContainer.fillData` stores, as
`FilesetEntry.clientPath`, `new FsFile(new File(usedFile))` transformed component by component.
`ClientPathExclusion` (`--exclude=clientpath`) matches through the same transformer, and the
server names repository files with the same default rules (`omero.fs.repo.path_rules`). Anything
that matches local files against a server's entries, or predicts repository names, must go
through these functions, or a file named `12:30:00.tif` is "not imported" on a real server.

Sources (ome/omero-blitz, `src/main/java/ome/`): `services/blitz/repo/path/
FilePathRestrictionInstance.java` (the tables), `FilePathRestrictions.java` (control characters
of U+0000..U+00FF map to the safe character `_`), `MakePathComponentSafe.java` (order: reserved
name -> suffix `_`; unsafe prefix -> prefix `_`; then the character map), `FsFile.java` (split on
`/`, empty components dropped, `java.io.File.getAbsolutePath`: no `.`/`..` collapsing),
`formats/importer/ImportLibrary.java`, `formats/importer/ImportContainer.java`.
"""
import os
import unicodedata

SAFE_CHARACTER = "_"

# "Windows required" + "UNIX required" character substitutions (both map "/" to "!").
_CHARACTER_MAP = {
    '"': "'", "*": "x", "/": "!", ":": ";", "<": "[", ">": "]", "?": "%", "\\": "!", "|": "!",
}
# Java's Character.CONTROL code points below U+0100: U+0000..U+001F and U+007F..U+009F.
for _code in range(0x100):
    if unicodedata.category(chr(_code)) == "Cc":
        _CHARACTER_MAP[chr(_code)] = SAFE_CHARACTER
_TRANSLATION = str.maketrans(_CHARACTER_MAP)

RESERVED_NAMES = frozenset(
    ["AUX", "CLOCK$", "CON", "NUL", "PRN"]
    + [f"COM{n}" for n in range(1, 10)] + [f"LPT{n}" for n in range(1, 10)])
# A reserved name followed by a dot (`CON.txt`), and NTFS metadata names (`$MFT`).
UNSAFE_PREFIXES = tuple(sorted(name + "." for name in RESERVED_NAMES)) + ("$",)

# What a JVM decoding file names as UTF-8 makes of bytes that are not UTF-8.
_REPLACEMENT = "\ufffd"


def _java_text(name: str) -> str:
    """Python keeps undecodable bytes as lone surrogates (surrogateescape); Java sees U+FFFD."""
    if not any("\ud800" <= ch <= "\udfff" for ch in name):
        return name
    return "".join(_REPLACEMENT if "\ud800" <= ch <= "\udfff" else ch for ch in name)


def safe_component(name: str) -> str:
    """One path component as OMERO stores it (`MakePathComponentSafe.apply`)."""
    name = _java_text(name)
    upper = name.upper()
    if upper in RESERVED_NAMES:
        name += SAFE_CHARACTER
    if upper.startswith(UNSAFE_PREFIXES):
        name = SAFE_CHARACTER + name
    return name.translate(_TRANSLATION)


def components(local_path: str, cwd: str = None) -> list:
    """The components `FsFile(new File(path))` sees: absolute as Java makes it (the working
    directory prefixed, nothing normalised), split on `/`, empty components dropped."""
    if isinstance(local_path, bytes):
        local_path = os.fsdecode(local_path)
    if not local_path.startswith("/"):
        local_path = (cwd if cwd is not None else os.getcwd()) + "/" + local_path
    return [part for part in local_path.split("/") if part]


def client_path(local_path: str, cwd: str = None) -> str:
    """`FilesetEntry.clientPath` the Java importer stores for a local file: every component
    sanitised, `/`-joined, no leading `/`; `.` and `..` kept as they were given."""
    return "/".join(safe_component(part) for part in components(local_path, cwd))


def safe_path(relative: str) -> str:
    """A `/`-separated repository path with every component sanitised (server-side naming)."""
    return "/".join(safe_component(part) for part in relative.split("/") if part)
