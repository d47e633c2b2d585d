"""`omero status imports`: live views of server-side imports and of local --resume jobs."""
from __future__ import annotations

import sys

from omero.cli import BaseControl

from omero_cli_ext.cli.base import add_json_argument

HELP = """Status of imports: on the server and in local `omero import --resume` jobs.

  omero status imports                 your imports of the last 24 h and your local jobs
  omero status imports --watch         a live view (Ctrl-C to leave)
  omero status imports --check         monitoring: one line; exit 0 OK, 1 stalled, 2 failed, 3 unknown
  omero status imports --json          one JSON object per import and per job

Exit codes: 0 success (also when stdout's reader left early); 2 bad arguments; 13 the --prometheus
file cannot be written; 20 server unreachable or session refused; 21 --all-users/--owner by a
non-admin; 22 unknown --owner, --in-group or --journal; 130 interrupted (Ctrl-C; --watch leaves
with 0). With --check: 0 OK, 1 stalled, 2 failed, 3 unknown (every other code, bad arguments and
Ctrl-C included).

See docs/status.md for the states, the JSON keys and the exit codes."""


def duration(text):
    """'90s', '15m', '24h', '7d' or plain seconds → seconds."""
    # the omero CLI parses with its own copy of argparse: only its ArgumentTypeError keeps this
    # message (the standard library's would escape as a traceback)
    from omero_ext.argparse import ArgumentTypeError
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise ArgumentTypeError(f"not a duration (e.g. 90s, 15m, 24h, 7d): {text!r}") from None


def unknown_for_check(parser) -> None:
    """With --check, what argparse refuses (a bad duration, an unknown option) is UNKNOWN too: exit 3
    and one line on stdout, as for every other refusal of a check (argparse alone exits 2, CRITICAL
    for Nagios)."""
    parse_known_args, error = parser.parse_known_args, parser.error
    given = {"args": ()}      # the arguments being parsed, for checked_error

    def parse(args=None, namespace=None):
        given["args"] = tuple(args or ())
        namespace, extras = parse_known_args(args, namespace)
        if extras and "--check" in given["args"]:
            checked_error("unrecognized arguments: %s" % " ".join(extras))
        return namespace, extras

    def checked_error(message):
        if "--check" not in given["args"]:
            error(message)
        from omero_cli_ext.output import to_json
        from omero_cli_ext.status.snapshot import EXIT_CHECK_UNKNOWN
        line = "UNKNOWN - %s" % message
        if "--json" in given["args"]:
            line = to_json({"type": "check", "code": EXIT_CHECK_UNKNOWN, "line": line})
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        sys.exit(EXIT_CHECK_UNKNOWN)

    parser.parse_known_args, parser.error = parse, checked_error


class StatusControl(BaseControl):

    def _configure(self, parser):
        sub = parser.add_subparsers(title="subcommands", dest="status_command")
        sub.required = True
        imports = sub.add_parser("imports", help="imports on the server and local resumable import jobs",
                                 description=HELP)
        imports.add_login_arguments()
        imports.add_argument("--all-users", action="store_true", help="admins: imports of every user")
        # -u/--user and -g/--group are the login arguments, hence --owner and --in-group
        imports.add_argument("--owner", metavar="NAME", help="admins: imports owned by this user")
        imports.add_argument("--in-group", metavar="NAME", help="only imports in this group")
        imports.add_argument("--since", type=duration, default=duration("24h"), metavar="AGE",
                             help="finished or failed imports this recent (default 24h)")
        imports.add_argument("--stalled-after", type=duration, default=duration("15m"), metavar="AGE",
                             help="no activity for this long means stalled (default 15m)")
        imports.add_argument("--journal", action="append", default=[], metavar="PATH|URL",
                             help="read this job journal (default: all in the default journal directory)")
        imports.add_argument("--local-only", action="store_true", help="do not contact the server")
        imports.add_argument("--watch", nargs="?", type=float, const=2.0, metavar="SECONDS",
                             help="refresh a live view every SECONDS (default 2)")
        imports.add_argument("--check", action="store_true",
                             help="monitoring mode (Nagios): one line; exit 0 OK, 1 stalled, 2 failed, "
                                  "3 unknown (also for unknown filters); not with --watch")
        imports.add_argument("--prometheus", metavar="FILE",
                             help="write node-exporter textfile metrics to FILE (atomically)")
        add_json_argument(imports)
        unknown_for_check(imports)
        imports.set_defaults(func=self.imports)

    def imports(self, args):
        from omero_cli_ext.cli.status_run import run_status_imports
        return run_status_imports(self, args)


def register_plugin(register):
    register("status", StatusControl, HELP)
