"""A job's identity: what must be the same for a rerun to continue it.

The server (its managed repository's UUID; host and port as the user named them), the OMERO user
and group, the paths, the target and the importer options that change the result (transfer,
checksum algorithm, skip options, name/description, annotations, exclude, ...). Options that only
change how fast or how verbosely the importer works are left out (NEUTRAL). A rerun whose identity
differs is refused: a job is never reported done for a server, user or option set it was not
imported with.
"""
from __future__ import annotations

from typing import Optional, Sequence

from omero_cli_ext.server import parse_id

# CommandLineImporter options that do not change what ends on the server (those with a value
# take it as `--opt=value` or as the next argument)
NEUTRAL_WITH_VALUE = ("--parallel-upload", "--parallel-fileset", "--debug", "--qa-baseurl",
                      "--keep-alive", "--minutes-wait", "--minutes_wait", "--email", "--output")
NEUTRAL_FLAGS = ("-c", "--no-upgrade-check", "--no-stats-info", "--close-completed",
                 "--wait-completed", "--auto-close", "--close_completed", "--wait_completed",
                 "--auto_close", "--report", "--upload", "--logs")

# the target options: the target is part of the identity on its own, compared by what it names
# (`-d 5`, `-T Dataset:5` and `-T Dataset:id:5` are one target), so not as options
TARGET_WITH_VALUE = ("-d", "-r", "-T", "--target")

# import targets the importer accepts (CommandLineImporter -T / -d / -r)
TARGET_KINDS = ("Dataset", "Screen")


def result_options(options: Sequence[str]) -> list:
    """The options that change the result, in their order."""
    kept, skip = [], False
    for item in options:
        if skip:
            skip = False
            continue
        name = item.split("=", 1)[0]
        if name in NEUTRAL_WITH_VALUE or name in TARGET_WITH_VALUE:
            skip = "=" not in item
        elif item not in NEUTRAL_FLAGS:
            kept.append(item)
    return kept


def parse_target(text: str) -> tuple:
    """`Dataset:5`, `Dataset:id:5`, `Dataset:name:X` (and Screen) -> (kind, id or None, name or
    None); ValueError with the reason otherwise."""
    parts = text.split(":", 2)
    kind = parts[0]
    if kind not in TARGET_KINDS or len(parts) < 2:
        raise ValueError(f"not an import target: {text} (use Dataset:ID, Dataset:name:NAME, "
                         "Screen:ID or Screen:name:NAME)")
    if len(parts) == 2 and parse_id(parts[1]) is not None:
        return kind, parse_id(parts[1]), None
    if len(parts) == 3 and parts[1] == "id" and parse_id(parts[2]) is not None:
        return kind, parse_id(parts[2]), None
    if len(parts) == 3 and parts[1] == "name" and parts[2]:
        return kind, None, parts[2]
    raise ValueError(f"not an import target: {text} (use {kind}:ID or {kind}:name:NAME)")


def same_target(text: str) -> tuple:
    """What a target names, whichever way it is spelled ("" for none)."""
    return parse_target(text) if text else ()


def make_identity(host: str, port, repository: str, user_id: int, user_name: str,
                  group_id: int, group_name: str, paths: Sequence[str], target: str,
                  options: Sequence[str]) -> dict:
    return {"server": {"host": str(host), "port": str(port), "repository": repository},
            "user": {"id": user_id, "name": user_name},
            "group": {"id": group_id, "name": group_name},
            "paths": sorted(paths), "target": target or "",
            "options": result_options(options)}


def describe(identity: dict) -> str:
    server, user, group = identity["server"], identity["user"], identity["group"]
    return (f"{user['name']} in group {group['name']} on {server['host']}:{server['port']} "
            f"(repository {server['repository']})")


def server_mismatch(job: dict, now: dict) -> Optional[str]:
    """Why the job cannot be continued by this session (other server, user or group), or None.
    The same repository reached under another host name or port is the same server."""
    if job["server"]["repository"] != now["server"]["repository"]:
        return (f"it was planned on another server (repository {job['server']['repository']} "
                f"at {job['server']['host']}:{job['server']['port']}; this session is on "
                f"{now['server']['host']}:{now['server']['port']}, repository "
                f"{now['server']['repository']})")
    if job["user"]["id"] != now["user"]["id"]:
        return (f"it belongs to user {job['user']['name']} (you are {now['user']['name']}); "
                "its filesets and ghosts are theirs")
    if job["group"]["id"] != now["group"]["id"]:
        return (f"it imports into group {job['group']['name']} (this session is in "
                f"{now['group']['name']}: log in with -g {job['group']['name']})")
    return None


def plan_mismatch(job: dict, paths: Sequence[str], target: Optional[str],
                  options: Optional[Sequence[str]]) -> Optional[str]:
    """Why the given paths / target / options are not the job's, or None. None values (not
    given on this command line) match anything."""
    if paths and sorted(paths) != job["paths"]:
        return "its paths are " + " ".join(job["paths"])
    if target is not None and same_target(target) != same_target(job["target"]):
        return f"its target is {job['target'] or '(none)'}, not {target or '(none)'}"
    if options is not None and result_options(options) != result_options(job["options"]):
        return (f"its importer options are {' '.join(result_options(job['options'])) or '(none)'}, "
                f"not {' '.join(result_options(options)) or '(none)'}")
    return None
