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


class MvError(Exception):
    """A refusal or failure with its documented exit code; the message says what and what to do."""

    job_closed = False   # set when the job that failed was closed (nothing left to resume)

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code

    def __reduce__(self):   # raised in a worker process, re-raised in the command's
        return type(self), (self.code, str(self))
