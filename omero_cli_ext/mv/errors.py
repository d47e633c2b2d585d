"""Exit codes of `omero mv` (documented in docs/mv.md) and the error that carries one."""
from __future__ import annotations

EXIT_USAGE = 2              # contradictory or missing arguments
EXIT_SRC_MISSING = 3        # SRC (or the --links-only NEW, a --search root) does not exist
EXIT_DST_EXISTS = 4         # DST exists already
EXIT_BAD_RELATION = 5       # SRC == DST, or DST inside SRC
EXIT_REPO_OVERLAP = 6       # SRC is or contains the repository root; DST inside the repository;
                            # a mode-1 SRC inside it / an offload path outside it
EXIT_NO_LINKS = 7           # no repository link points into SRC (use --force to move anyway)
EXIT_DST_UNWRITABLE = 8     # the destination is read-only or not writable by this user
EXIT_SYMLINK_LOOP = 9       # a link the plan would touch loops
EXIT_NO_SPACE = 10          # the destination filesystem cannot hold the files
EXIT_REPO_PERMISSION = 11   # a repository directory (or a source file) cannot be read/changed
EXIT_BUSY = 12              # another `omero mv` runs on this repository
EXIT_OTHER_JOB = 13         # an unfinished job with other arguments (resume or --abandon it)
EXIT_VERIFY_FAILED = 14     # the final verification found a link that does not resolve as recorded
EXIT_JOURNAL = 15           # the journal cannot be opened, written, or belongs to a newer version
EXIT_UNRESOLVED = 16        # --repair left links it could not retarget (listed)
EXIT_RENDER_FAILED = 17     # --render-check: the server could not read an affected image
EXIT_MISMATCH = 18          # originals whose size or checksum is not the server's record
EXIT_IMPORTING = 19         # offload/inline of filesets still being imported (use --force)
EXIT_INTERRUPTED = 30       # stopped part-way (signal, I/O error): rerun the same command


# code -> (meaning, modes it can end) for `omero mv -h` and docs/mv.md. Modes: move (SRC DST),
# links-only, offload (Fileset:ID or a repository path), inline, repair, abandon, status; dry-run ends
# with the refusals of the mode it previews (2-11, 13, 15-22) or 0.
CHANGING = "move links-only offload inline repair"
EXIT_CODES = {
    0: ("done and verified, or nothing left to do", "all"),
    EXIT_USAGE: ("contradictory or missing arguments", "all"),
    EXIT_SRC_MISSING: ("a path given does not exist", "all but abandon"),
    EXIT_DST_EXISTS: ("DST is not a directory, or entries in an existing DST differ", "move offload"),
    EXIT_BAD_RELATION: ("SRC and DST are the same, or DST is inside SRC", "move links-only offload"),
    EXIT_REPO_OVERLAP: ("SRC holds the repository, DST inside it, --inline outside it",
                        "move links-only offload inline"),
    EXIT_NO_LINKS: ("no repository link into SRC (--force), nothing to offload or inline",
                    "move links-only offload inline"),
    EXIT_DST_UNWRITABLE: ("the destination directory is read-only or not writable", "move offload"),
    EXIT_SYMLINK_LOOP: ("a link the plan would change ends in a symlink loop",
                        "move links-only inline"),
    EXIT_NO_SPACE: ("the destination cannot hold the copies (blocks or inodes)",
                    "move offload inline"),
    EXIT_REPO_PERMISSION: ("a directory the job must change is not writable or readable", CHANGING),
    EXIT_BUSY: ("another omero mv runs on this repository", CHANGING + " abandon"),
    EXIT_OTHER_JOB: ("an unfinished job with other arguments (rerun it, or --abandon)", CHANGING),
    EXIT_VERIFY_FAILED: ("the final verification found links not resolving as recorded", CHANGING),
    EXIT_JOURNAL: ("the journal or its directory cannot be used", "all"),
    EXIT_UNRESOLVED: ("links left dangling (listed)", "repair links-only"),
    EXIT_RENDER_FAILED: ("--render-check: the server could not read an image", CHANGING),
    EXIT_MISMATCH: ("originals not matching the server's size or checksum (--skip-mismatched)",
                    "move offload inline"),
    EXIT_IMPORTING: ("filesets still being imported (--force)", "offload inline"),
    20: ("the server is needed and unreachable, no session, or a server call failed", "all"),
    21: ("a privilege is missing (offload needs WriteManagedRepo)", "offload"),
    22: ("Fileset:ID not found or not readable", "offload inline"),
    EXIT_INTERRUPTED: ("stopped part-way (Ctrl-C, SIGTERM, an error, a worker's death): rerun "
                       "the same command", CHANGING),
}


def exit_codes_text() -> str:
    """The exit codes as lines for `omero mv -h`."""
    return "\n".join(f"  {code:>2}  {meaning} [{modes}]"
                     for code, (meaning, modes) in sorted(EXIT_CODES.items()))


class MvError(Exception):
    """A refusal or failure with its documented exit code; the message says what and what to do."""

    job_closed = False   # set when the job that failed was closed (nothing left to resume)

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code

    def __reduce__(self):   # raised in a worker process, re-raised in the command's
        return type(self), (self.code, str(self))
