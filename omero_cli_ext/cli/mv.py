"""`omero mv`: relocate managed and in-place files, retarget repository symlinks, repair links."""
from __future__ import annotations

from omero.cli import BaseControl

from omero_cli_ext.cli.base import add_dry_run_argument, add_json_argument, positive_int

HELP = """Move original files and retarget ManagedRepository symlinks, journaled and resumable.

Modes:
  omero mv SRC DST                  move originals of in-place (ln_s) imports, retarget their links
  omero mv --links-only OLD NEW     files already moved: only retarget links from OLD to NEW
  omero mv Fileset:ID DST           offload a fileset's managed files to DST, leave links behind
  omero mv REPO_SUBPATH DST         offload a repository directory to DST, leave links behind
  omero mv --inline REPO_SUBPATH    bring offloaded files back into the repository
  omero mv --repair --search DIR    find dangling links and retarget them to files found under DIR

Exit codes [modes that can end with them]:
{codes}

Run as the user that owns the repository (bin/omero refuses root). Ctrl-C, SIGTERM: exit 30,
rerun the same command to continue. A closed stdout (| head) ends the listing, not the job.
Manual (runbook, journal, JSON keys): {manual}"""


def manual_path() -> str:
    """Where docs/mv.md is: installed with the package (setup.cfg data_files), else beside this
    source tree (a checkout)."""
    import os
    import sys
    installed = os.path.join(sys.prefix, "share", "doc", "omero-cli-ext", "mv.md")
    checkout = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), "docs", "mv.md")
    return checkout if not os.path.exists(installed) and os.path.exists(checkout) else installed


def help_text() -> str:
    from omero_cli_ext.mv.errors import exit_codes_text
    return HELP.format(codes=exit_codes_text(), manual=manual_path())


class MvControl(BaseControl):

    def _configure(self, parser):
        parser.add_login_arguments()
        parser.add_argument("source", nargs="?", help="SRC path, Fileset:ID, or a path inside the repository")
        parser.add_argument("destination", nargs="?", help="DST path")
        parser.add_argument("--repo", metavar="DIR",
                            help="ManagedRepository root (default: asked from the server)")
        parser.add_argument("--links-only", action="store_true",
                            help="only retarget links from SRC to DST; the files were moved already")
        parser.add_argument("--inline", action="store_true",
                            help="replace links under the repository path SOURCE with the real files")
        parser.add_argument("--repair", action="store_true", help="retarget dangling links")
        parser.add_argument("--search", action="append", metavar="DIR", default=[],
                            help="with --repair: where to look for the missing files (repeatable)")
        parser.add_argument("--force", action="store_true",
                            help="move SRC even when no repository link points into it; offload "
                                 "or inline filesets that are still being imported")
        parser.add_argument("--skip-mismatched", action="store_true",
                            help="leave originals that do not match the server's recorded size "
                                 "or checksum where they are (listed) and move the rest")
        parser.add_argument("--verify", choices=("size", "checksum"), default="size",
                            help="final verification of every retargeted link (default size)")
        parser.add_argument("--journal", metavar="PATH", help="journal file (default: beside the repository)")
        parser.add_argument("--plan", metavar="FILE",
                            help="write the plan to FILE (JSON lines) and change nothing, for "
                                 "approval; run it later with --execute-plan FILE")
        parser.add_argument("--execute-plan", metavar="FILE",
                            help="run exactly the plan written by --plan FILE (no SRC/DST)")
        parser.add_argument("--status", action="store_true",
                            help="show the repository's unfinished job (phase, steps done, who "
                                 "started it, journal) and whether a command runs it now")
        parser.add_argument("--abandon", action="store_true",
                            help="forget an unfinished job for this repository (files stay as they are)")
        parser.add_argument("--render-check", action="store_true",
                            help="afterwards, have the server open the pixel data of one image "
                                 "in each of 10 affected filesets (spread over them)")
        parser.add_argument("--render-check-all", action="store_true",
                            help="the same for every affected fileset (rebuilds their memo "
                                 "files: run it off-hours)")
        parser.add_argument("--workers", type=positive_int, metavar="N",
                            help="processes for the per-link and per-file work: scan, retarget, "
                                 "hard-link, remove, verify (default: one per core, at most 4; "
                                 "1 runs everything in this process)")
        parser.add_argument("--no-server", action="store_true",
                            help="never contact the server (needs --repo)")
        add_dry_run_argument(parser)
        add_json_argument(parser)
        parser.set_defaults(func=self.mv)

    def mv(self, args):
        from omero_cli_ext.cli.mv_run import run_mv
        return run_mv(self, args)


def register_plugin(register):
    register("mv", MvControl, help_text())
