"""`omero status imports`: its arguments checked, the scope of the server view, and the context of
a `--check` run (exit codes: docs/status.md)."""
from __future__ import annotations

import os

from omero.cli import NonZeroReturnCode

from omero_cli_ext.exitcodes import EXIT_NOT_FOUND, EXIT_PERMISSION, EXIT_USAGE
from omero_cli_ext.status.snapshot import EXIT_CHECK_UNKNOWN, ServerScope

EXIT_METRICS = 13            # the --prometheus file cannot be written
EXIT_INTERRUPTED = 130       # Ctrl-C of a one-shot run (what a shell reports for SIGINT)


class CheckContext:
    """A `--check` run's context: whatever stops it is UNKNOWN (exit 3, one line on stdout)."""
    def __init__(self, ctx, out):
        self._ctx, self._out = ctx, out

    def __getattr__(self, name):
        return getattr(self._ctx, name)

    def die(self, rc, text):
        line = "UNKNOWN - %s" % text
        if self._out.mode == "json":
            self._out.emit("check", code=EXIT_CHECK_UNKNOWN, line=line)
        else:
            self._ctx.out(line)
        raise NonZeroReturnCode(EXIT_CHECK_UNKNOWN, line)


def check_arguments(ctx, args) -> None:
    """Bad combinations and unknown journals die before anything is read or written."""
    if args.all_users and args.owner:
        ctx.die(EXIT_USAGE, "--all-users and --owner exclude each other")
    if args.watch is not None and args.check:
        ctx.die(EXIT_USAGE, "--watch and --check exclude each other (a check answers once)")
    for journal in args.journal:
        if "://" not in journal and not os.path.isfile(journal):
            ctx.die(EXIT_NOT_FOUND, "no journal %s" % journal)
    if args.local_only and (args.all_users or args.owner or args.in_group):
        ctx.die(EXIT_USAGE, "--all-users, --owner and --in-group filter server imports: "
                            "they do not go with --local-only")
    for name in ("since", "stalled_after"):
        if getattr(args, name) <= 0:
            ctx.die(EXIT_USAGE, "--%s must be positive" % name.replace("_", "-"))
    if args.watch is not None and args.watch <= 0:
        ctx.die(EXIT_USAGE, "--watch SECONDS must be positive")
    if args.prometheus:
        directory = os.path.dirname(os.path.abspath(args.prometheus))
        if not os.path.isdir(directory):
            ctx.die(EXIT_METRICS, "cannot write metrics to %s: no directory %s"
                    % (args.prometheus, directory))
        if os.path.isdir(args.prometheus):
            ctx.die(EXIT_METRICS, "cannot write metrics to %s: it is a directory" % args.prometheus)


def scope_of(ctx, port, args) -> tuple:
    """(ServerScope, viewer id). Other users' imports are for admins only."""
    user = port.current_user()
    owner_id = user.id
    if args.all_users or args.owner:
        if not user.is_admin:
            ctx.die(EXIT_PERMISSION, "%s is for administrators; %s is not one (without it you see "
                                     "your own imports)" % ("--all-users" if args.all_users
                                                            else "--owner", user.name))
        owner_id = None
    if args.owner:
        found = port.lookup_users([args.owner])
        if args.owner not in found:
            ctx.die(EXIT_NOT_FOUND, "no user named %s" % args.owner)
        owner_id = found[args.owner].id
    if args.in_group and args.in_group not in port.lookup_groups([args.in_group]):
        ctx.die(EXIT_NOT_FOUND, "no group named %s" % args.in_group)
    return ServerScope(owner_id=owner_id, group_name=args.in_group,
                       since_seconds=args.since), user.id
