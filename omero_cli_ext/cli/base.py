"""What every omero-cli-ext control shares: output flags, opening the server port, error mapping."""
from __future__ import annotations

import contextlib
import gc

from omero_cli_ext import server
from omero_cli_ext.exitcodes import EXIT_NOT_FOUND, EXIT_PERMISSION, EXIT_SERVER
from omero_cli_ext.output import Output



def add_json_argument(parser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object per line (stable keys, see docs/) instead of text")


def add_dry_run_argument(parser) -> None:
    parser.add_argument("--dry-run", action="store_true",
                        help="show what would be done and change nothing")


def positive_int(text):
    # the omero CLI parses with its own argparse copy (omero_ext.argparse): raise its error type
    from omero_ext.argparse import ArgumentTypeError
    try:
        value = int(text)
    except ValueError:
        raise ArgumentTypeError(f"not a whole number: {text!r}")
    if value <= 0:
        raise ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def seconds(text):
    """A number of seconds, 0 or more (a finite float)."""
    from omero_ext.argparse import ArgumentTypeError
    try:
        value = float(text)
    except ValueError:
        raise ArgumentTypeError(f"not a number of seconds: {text!r}")
    if not 0 <= value < float("inf"):
        raise ArgumentTypeError(f"must be 0 or more seconds, got {text}")
    return value


def output_for(args) -> Output:
    return Output(json_mode=bool(getattr(args, "json", False)))


@contextlib.contextmanager
def server_errors(ctx, die=None):
    """Turn the port's exceptions into `die` (default `ctx.die`; a command whose own `die` also
    writes its --json "error" line passes it) with the documented exit codes."""
    die = die or ctx.die
    try:
        yield
    except server.PermissionDenied as err:
        die(EXIT_PERMISSION, f"permission denied: {err}")
    except server.NotFound as err:
        die(EXIT_NOT_FOUND, f"not found: {err}")
    except server.ServerError as err:
        die(EXIT_SERVER, f"server error: {err}")


def open_port(ctx, args) -> server.ServerPort:
    """Log in (or reuse the CLI's session) and return the port; dies with EXIT_SERVER on failure."""
    with server_errors(ctx):
        return server.open_port(ctx, args)


@contextlib.contextmanager
def collector_paused():
    """The cyclic garbage collector off for one command that builds objects by the hundred
    thousand (plan steps, paths, server answers, manifest entries): they hold no cycles, yet
    every few thousand allocations the collector walks them all again (~10 % of a 200k-link
    relink, a third of a 100k-file export). The few cycles the command makes (exceptions) are
    collected once it ends."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
