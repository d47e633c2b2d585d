"""What the --originals and --zarr controls share: their common exit codes, a stdout that a
closed reader cannot stop, the checks made before the first change to disk (owner, DEST, state
directory and lock), the making of DEST, and the release of what a run opened."""
from __future__ import annotations

import errno
import os

from omero_cli_ext import fsops
from omero_cli_ext.export import asuser, dest as dest_io, state
from omero_cli_ext.output import printable

# Exit codes of both exports (docs/export.md), on top of those of cli.base
EXIT_DEST = 3
EXIT_OWNER = 4
EXIT_SOME_MISSING = 5
EXIT_FULL = 6
EXIT_NOT_EXPORTED = 7
EXIT_BUSY = 9
EXIT_INTERRUPTED = 10


class QuietPipe:
    """stdout that a closed reader (`| head`) cannot stop: the run goes on to its own end and
    exit code; what it would still print goes to /dev/null."""

    def __init__(self, stream):
        self._stream = stream
        self.closed_by_reader = False

    def write(self, text):
        if not self.closed_by_reader:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._closed()
        return len(text)

    def flush(self):
        if not self.closed_by_reader:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._closed()

    def _closed(self):
        self.closed_by_reader = True
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self._stream.fileno())
            os.close(null)
        except (OSError, ValueError, AttributeError):
            pass

    def __getattr__(self, name):
        return getattr(self._stream, name)


# --------------------------------------------------------------------------- checks before any change

def read_owner_map(ctx, path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as stream:
            return asuser.parse_owner_map(stream.readlines())
    except OSError as err:
        ctx.die(EXIT_OWNER, f"cannot read the owner map {path}: {err.strerror}")
    except ValueError as err:
        ctx.die(EXIT_OWNER, f"{path}:{err}")


def resolve_owner(ctx, args, omero_name: str, owner_map: dict):
    """The DEST owner's passwd entry (asuser.dest_owner: as root, the acting user's own)."""
    try:
        return asuser.dest_owner(args.owner, omero_name, owner_map, bool(args.as_user),
                                 bool(args.owner or args.owner_map))
    except asuser.OwnerError as err:
        ctx.die(EXIT_OWNER, str(err))


def dir_mode_warning(out, args, owner) -> int:
    """Warn (and count) when --dir-mode lets others than the DEST owner in."""
    problem = asuser.dir_mode_problem(args.dir_mode, owner.pw_gid, owner.pw_name)
    if problem:
        out.warn(f"warning: --dir-mode {args.dir_mode:04o} {problem}")
    return int(bool(problem))


def open_existing_dest(ctx, dest: str, strict):
    """DEST's descriptor when it exists (None otherwise), resolved without following symlinks."""
    try:
        return dest_io.open_dest(dest, create=False, strict=strict)[0]
    except dest_io.DestMissing:
        return None
    except dest_io.DestError as err:
        ctx.die(EXIT_DEST, f"DEST unusable: {err}")


def check_dest_owner(ctx, dest_fd: int, dest: str, entry, root_run: bool,
                     root_dest_ok: bool = False) -> None:
    """As root, an existing DEST (there before the run, or made by another run whose mkdir won)
    must be the DEST owner's: her files are written or linked as hers, and never what another
    OMERO user may read into a directory she owns. `root_dest_ok`: a DEST of root's is accepted
    (--originals: a run stopped as it made DEST leaves it root's, given away by the next)."""
    if not root_run:
        return
    uid = os.fstat(dest_fd).st_uid
    if uid == entry.pw_uid or (uid == 0 and root_dest_ok):
        return
    if uid == 0:       # as an earlier version made DEST: root's, so nothing in it is hers
        ctx.die(EXIT_OWNER, "DEST %s belongs to root, not to %r: if it is her export, give it "
                            "to her (chown -R %s) and rerun; else choose another DEST"
                % (printable(dest), entry.pw_name, entry.pw_name))
    name = fsops.account_name(uid) or str(uid)
    ctx.die(EXIT_OWNER, "DEST %s belongs to %r, not to %r (the POSIX account of the acting "
                        "user): the export would give %r what another user may read; rerun "
                        "with --as-user %s, or choose another DEST"
            % (printable(dest), name, entry.pw_name, name, name))


def check_apart(ctx, dest_fd: int, dest: str, repo_roots, inside_only: bool = False) -> None:
    for root in repo_roots:
        try:
            repo_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue     # not mounted on this host: nothing of it can be reached from DEST
        try:
            dest_io.check_apart(dest_fd, printable(dest), repo_fd, printable(root), inside_only)
        except dest_io.DestError as err:
            ctx.die(EXIT_DEST, str(err))
        finally:
            os.close(repo_fd)


def open_control(ctx, control_files, dest_fd, create) -> None:
    try:
        control_files.open(dest_fd, create)
    except state.StateError as err:
        ctx.die(EXIT_DEST, f"the export's state directory: {err}")
    except state.Busy:
        ctx.die(EXIT_BUSY, "another export is running on this DEST; try later or give "
                           "--wait SECONDS")


# --------------------------------------------------------------------------- DEST and the end of a run

def create_dest(ctx, dest: str, args, roots, owner, strict) -> tuple:
    """(fd, created) of DEST made (its parent must exist), resolved without following symlinks
    and kept apart from the ManagedRepository by device and inode (export.dest). Not `created`:
    another run made it first, an existing DEST whose other checks are the caller's."""
    parent_fd = open_existing_dest(ctx, os.path.dirname(dest), strict)
    if parent_fd is None:
        ctx.die(EXIT_DEST, f"the parent of DEST {printable(dest)} does not exist")
    try:
        check_apart(ctx, parent_fd, dest, roots, inside_only=True)
    finally:
        os.close(parent_fd)
    try:
        fd, created = dest_io.open_dest(dest, create=True, mode=args.dir_mode, owner=owner,
                                        strict=strict)
    except dest_io.DestError as err:
        ctx.die(EXIT_DEST, f"DEST unusable: {err}")
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            ctx.die(EXIT_FULL, f"no space left to create DEST ({err.strerror})")
        ctx.die(EXIT_DEST, f"cannot create DEST: {err.strerror}")
    try:
        check_apart(ctx, fd, dest, roots)
        made_by = os.fstat(fd).st_uid
        if not created and os.geteuid() != 0 and made_by != os.geteuid():
            # the run meant to make DEST: one of hers may have won the race, another user's not
            name = fsops.account_name(made_by)
            who = repr(name) if name else f"uid {made_by}"
            ctx.die(EXIT_DEST, f"DEST {printable(dest)} was made by {who} while this run was "
                               "making it; not used (choose another DEST)")
    except BaseException:
        os.close(fd)
        raise
    return fd, created


def close_run(control_files, dest_fd, acting, port) -> None:
    """Release what a run opened, whatever ended it: DEST's lock and state directory, DEST, the
    session of --as-user, the server connection."""
    control_files.close()
    if dest_fd is not None:
        os.close(dest_fd)
    if acting is not port:
        acting.close()
    port.close()
