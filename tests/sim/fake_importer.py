"""A stand-in for the Java `ome.formats.importer.cli.CommandLineImporter`, talking to a SimServer.

Started as `python tests/sim/fake_importer.py <CommandLineImporter args>` where the real one is
started as `java ... ome.formats.importer.cli.CommandLineImporter <args>` (omero-py plugins/import.py).
The server is the SimServer at env OMERO_CLI_EXT_SIM_ROOT, the user env OMERO_CLI_EXT_SIM_USER (and
group OMERO_CLI_EXT_SIM_GROUP); `-k KEY` joins that simulated session (as the real importer joins
the session omero-py passes it), else the importer logs in with a session of its own; `-s/-p/-u/-w`
are accepted and ignored. As ImportLibrary does, it closes each ImportProcess right after
verifyUpload.

Output follows omero-blitz: LoggingImportMonitor (progress lines, YAML documents, the Summary),
ImportCandidates (`-f` listings), CommandLineImporter (options, exit codes 0/1/2/125) and
ImportLibrary (stop on the first failed fileset unless `-c`). Candidate grouping (fake "readers"):
- a directory holding a `*.screen` file is one SPW fileset of all files under it (main file: the
  .screen file; one image per other file, at least one);
- a `X.fake` file is one fileset, together with its companion `X.fake.ini` when present (as
  Bio-Formats' FakeReader); `series=N` in the name (`img&series=3.fake`) makes N images, the SPW
  keys (`plates`, `plateRows`, `plateCols`, `fields`, `plateAcqs`) a plate of FakeReader's layout;
- any other file is a single-file fileset, except `*.txt` files, which are not importable.

Fault injection (env): OMERO_CLI_EXT_SIM_CRASH_AFTER=N (SIGKILL itself after N filesets, leaving the
next one half uploaded), OMERO_CLI_EXT_SIM_HANG=1 (sleep forever after the first fileset),
OMERO_CLI_EXT_SIM_FAIL_PATTERN=glob (filesets whose main file path or name matches fail server-side),
OMERO_CLI_EXT_SIM_UPLOAD_FAIL_PATTERN=glob (the upload of a used file whose name matches fails
client-side: `FILE_EXCEPTION: <that file>`, as ImportLibrary.uploadFile reports it, upload unverified),
OMERO_CLI_EXT_SIM_SECONDS_PER_FILESET=float (busy time per fileset),
OMERO_CLI_EXT_SIM_UPLOAD_SECONDS=float (each file's bytes arrive in tenths over this time, with
nothing printed between FILE_UPLOAD_STARTED and FILE_UPLOAD_COMPLETE, as a big file's upload).
"""
from __future__ import annotations

import datetime as _dt
import fnmatch
import getopt
import os
import re
import signal
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(HERE))

READER = "loci.formats.in.FakeReader"
SHORT_OPTS = "cfl:s:u:w:d:r:T:k:x:n:p:h"
LONG_OPTS = [
    "debug=", "report", "upload", "logs", "email=", "name=", "description=", "no-thumbnails",
    "agent=", "annotation-ns=", "annotation-text=", "annotation-link=", "advanced-help",
    "transfer=", "checksum-algorithm=", "minutes-wait=", "close-completed", "wait-completed",
    "auto-close", "exclude=", "target=", "qa-baseurl=", "no-stats-info", "no-upgrade-check",
    "output=", "encrypted=", "parallel-upload=", "parallel-fileset=", "readers=", "keep-alive=",
    "minutes_wait=", "close_completed", "wait_completed", "auto_close", "plate_name=",
    "plate_description=", "no_thumbnails", "checksum_algorithm=", "annotation_ns=",
    "annotation_text=", "annotation_link=", "plate-description=", "plate-name=",
    "skip=",   # not a Java option: omero-py turns --skip into the options below; accepted for drivers
]
TRANSFER_NAMES = ("upload", "upload_rm", "cp", "cp_rm", "ln", "ln_rm", "ln_s")
ENV = "OMERO_CLI_EXT_SIM_"
_START = time.monotonic()


def log(level: str, logger: str, message: str) -> None:
    """A line in logback-cli.xml's pattern `%d %-10.10r [%10.10t] %-6.6p %40.40c %x - %m`."""
    now = _dt.datetime.now()
    stamp = now.strftime("%Y-%m-%d %H:%M:%S,") + "%03d" % (now.microsecond // 1000)
    elapsed = str(int((time.monotonic() - _START) * 1000))
    sys.stderr.write("%s %-10.10s [%10.10s] %-6.6s %40.40s  - %s\n"
                     % (stamp, elapsed, "main", level, logger[-40:], message))
    sys.stderr.flush()


MONITOR = "ome.formats.importer.cli.LoggingImportMonitor"
LIBRARY = "ome.formats.importer.ImportLibrary"
HANDLER = "ome.formats.importer.cli.ErrorHandler"
CLI_LOGGER = "ome.formats.importer.cli.CommandLineImporter"


def usage() -> int:
    sys.stderr.write("Usage:  importer-cli [OPTION]... path [path ...]\n"
                     "  (fake importer of tests/sim: see its module docstring)\n")
    return 1


class Candidate:
    def __init__(self, main: str, files: list, spw: bool, images: int):
        self.main, self.files, self.spw, self.images = main, files, spw, images


def _series(name: str) -> int:
    match = re.search(r"(?:^|&)series=(\d+)", name)
    return max(1, int(match.group(1))) if match else 1


def find_candidates(paths: list) -> list:
    """Group the given files and directories into filesets (see the module docstring)."""
    candidates, seen = [], set()

    def add_file(path: str, siblings: set) -> None:
        name = os.path.basename(path)
        if path in seen or name.endswith(".txt"):
            return
        if name.endswith(".fake.ini") and path[:-4] in siblings:
            return   # a companion: taken with its .fake file
        files = [path]
        if name.endswith(".fake") and os.path.isfile(path + ".ini"):
            files.append(path + ".ini")
        seen.update(files)
        spw, images = False, _series(name)
        if name.endswith(".fake"):      # FakeReader's own counts, SPW keys included
            from sim import pixels
            try:
                spec = pixels.parse_fake(name)
                spw, images = spec.spw is not None, spec.image_count
            except ValueError:
                pass
        candidates.append(Candidate(path, files, spw, images))

    def walk(directory: str) -> None:
        names = sorted(os.listdir(directory))
        screens = [n for n in names if n.endswith(".screen")]
        if screens:
            files = sorted(os.path.join(d, f) for d, _, fs in os.walk(directory) for f in fs)
            files = [f for f in files if f not in seen]
            main = os.path.join(directory, screens[0])
            files.remove(main)
            seen.update(files + [main])
            candidates.append(Candidate(main, [main] + files, True,
                                        max(1, len(files))))
            return
        paths_here = [os.path.join(directory, n) for n in names]
        siblings = set(p for p in paths_here if os.path.isfile(p))
        for path in paths_here:
            if os.path.isdir(path):
                walk(path)
            elif path in siblings:
                add_file(path, siblings)

    for given in paths:
        path = os.path.abspath(given)
        if os.path.isdir(path):
            walk(path)
        elif os.path.isfile(path) and path.endswith(".screen"):
            walk(os.path.dirname(path))   # a plate's main file names its whole directory
        elif os.path.isfile(path):
            add_file(path, {p for p in (path, path[:-4]) if os.path.isfile(p)})
        else:
            log("WARN", "ome.formats.importer.ImportCandidates", "Cannot find file: %s" % path)
    return candidates


def print_candidates(candidates: list, output: str) -> None:
    """ImportCandidates.printYaml / print."""
    if output == "yaml":
        print("---")
        for c in candidates:
            print("- group: %s" % c.main)
            print("  spw: %s" % ("true" if c.spw else "false"))
            print("  reader: %s" % READER)
            print("  files:")
            for f in c.files:
                print("   - %s" % f)
        return
    for c in candidates:
        print("#======================================")
        print("# Group: %s SPW: %s Reader: %s" % (c.main, "true" if c.spw else "false", READER))
        for f in c.files:
            print(f)


def parse_target(sim, user: str, group, value: str):
    """`Dataset:N`, `Dataset:id:N`, `Dataset:name:X` (found, else created), and Screen alike."""
    parts = value.split(":", 2)
    kind = parts[0]
    if kind not in ("Dataset", "Screen") or len(parts) < 2:
        raise ValueError("Could not load target: %s" % value)
    if len(parts) == 2:
        return kind, int(parts[1])
    if parts[1] == "id":
        return kind, int(parts[2])
    if parts[1] != "name":
        raise ValueError("Could not load target: %s" % value)
    uid = sim.query("SELECT id FROM Experimenter WHERE omeName = ?", (user,))[0][0]
    rows = sim.query("SELECT id FROM %s WHERE name = ? AND owner_id = ? ORDER BY id" % kind,
                     (parts[2], uid))
    if rows:
        return kind, rows[0][0]
    make = sim.add_dataset if kind == "Dataset" else sim.add_screen
    return kind, make(parts[2], user, group)


def format_duration(seconds: float) -> str:
    """DurationFormatUtils.formatDurationHMS: H:mm:ss.SSS."""
    millis = int(round(seconds * 1000))
    h, rest = divmod(millis, 3600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return "%d:%02d:%02d.%03d" % (h, m, s, ms)


def plural(name: str, count: int) -> str:
    return "%d %s%s" % (count, name, "" if count == 1 else "s")


def main(argv: list) -> int:
    try:
        opts, rest = getopt.gnu_getopt(argv, SHORT_OPTS, LONG_OPTS)
    except getopt.GetoptError as err:
        sys.stderr.write("%s\n" % err)
        return usage()
    settings = {"transfer": "upload", "hasher": "SHA1-160", "output": "ids", "continue": False,
                "used_files": False, "target": None, "exclude": [], "thumbnails": True,
                "session": None}
    for opt, value in opts:
        if opt == "-h":
            return usage()
        if opt == "-f":
            settings["used_files"] = True
        elif opt == "-k":
            settings["session"] = value
        elif opt == "-c":
            settings["continue"] = True
        elif opt in ("-d", "-r"):
            kind = "Dataset" if opt == "-d" else "Screen"
            settings["target"] = value if value.startswith(kind + ":") else "%s:%d" % (kind, int(value))
        elif opt in ("-T", "--target"):
            settings["target"] = value
        elif opt == "--transfer":
            if value not in TRANSFER_NAMES:
                log("ERROR", CLI_LOGGER, "Unknown transfer: %s" % value)
                return usage()
            log("INFO", CLI_LOGGER, "Setting transfer to %s" % value)
            settings["transfer"] = value
        elif opt in ("--checksum-algorithm", "--checksum_algorithm"):
            log("INFO", CLI_LOGGER, "Setting checksum algorithm to %s" % value)
            settings["hasher"] = value
        elif opt in ("--no-thumbnails", "--no_thumbnails"):
            log("INFO", CLI_LOGGER, "Skipping thumbnails creation")
            settings["thumbnails"] = False
        elif opt == "--skip":
            if value in ("all", "checksum"):
                settings["hasher"] = "File-Size-64"
            if value in ("all", "thumbnails"):
                settings["thumbnails"] = False
        elif opt == "--output":
            if value not in ("ids", "yaml", "legacy"):
                sys.stderr.write("No enum constant ImportOutput.%s\n" % value)
                return 2
            log("INFO", CLI_LOGGER, "Setting output format: %s" % value)
            settings["output"] = value
        elif opt == "--exclude":
            log("INFO", CLI_LOGGER, "Adding exclusion: %s" % value)
            settings["exclude"].append(value)
        elif opt in ("--parallel-upload", "--parallel-fileset"):
            log("INFO", CLI_LOGGER, "Setting %s: %s" % (opt[2:].replace("-", " "), value))
    if rest == ["-"]:
        rest = [line.rstrip("\n") for line in sys.stdin if line.strip()]

    candidates = find_candidates(rest)
    if settings["used_files"]:
        print_candidates(candidates, settings["output"])
        return 125 if not candidates else 0
    if not candidates:
        sys.stderr.write("No imports found\n")
        return usage()
    return run_imports(candidates, settings)


def run_imports(candidates: list, settings: dict) -> int:
    from sim.server import SimServer

    root, user = os.environ.get(ENV + "ROOT"), os.environ.get(ENV + "USER")
    if not root or not user:
        log("ERROR", CLI_LOGGER, "Error during import process. (%sROOT and %sUSER must be set)"
            % (ENV, ENV))
        return 2
    group = os.environ.get(ENV + "GROUP") or None
    crash_after = os.environ.get(ENV + "CRASH_AFTER")
    hang = os.environ.get(ENV + "HANG") == "1"
    fail_pattern = os.environ.get(ENV + "FAIL_PATTERN")
    busy = float(os.environ.get(ENV + "SECONDS_PER_FILESET") or 0)
    sim = SimServer(root)
    start = time.monotonic()
    target = None
    if settings["target"]:
        try:
            target = parse_target(sim, user, group, settings["target"])
        except ValueError as err:
            log("ERROR", LIBRARY, str(err))
            return 2
    counts = {"files": 0, "filesets": 0, "plates": 0, "images": 0, "errors": 0}
    successful = True
    session = settings["session"]
    if not session or not sim.query("SELECT 1 FROM sim_session WHERE uuid = ?", (session,)):
        session = sim.open_session(user, group)
    settings["session"] = session
    port = sim.port(user, session=session)
    for index, cand in enumerate(candidates):
        if "clientpath" in settings["exclude"] and client_path_used(sim, port, cand.main):
            continue
        if crash_after is not None and index == int(crash_after):
            crash_mid_upload(sim, user, group, cand, target, settings)
        ok = import_one(sim, user, group, cand, target, settings, counts, fail_pattern)
        if busy:
            time.sleep(busy)
        if not ok:
            counts["errors"] += 1
            log("ERROR", LIBRARY, "Error on import\njava.lang.Exception: Import failure")
            if not settings["continue"]:
                log("INFO", LIBRARY, "Exiting on error")
                successful = False
                break
            log("INFO", LIBRARY, "Continuing after error")
        if hang:
            while True:
                time.sleep(3600)
    summary = "\n==> Summary\n%s uploaded, %s%s created, %s imported, %s in %s\n" % (
        plural("file", counts["files"]), plural("fileset", counts["filesets"]),
        ", " + plural("plate", counts["plates"]) if counts["plates"] else "",
        plural("image", counts["images"]), plural("error", counts["errors"]),
        format_duration(time.monotonic() - start))
    sys.stderr.write(summary)
    sys.stderr.flush()
    return 0 if successful else 2


def client_path_used(sim, port, main: str) -> bool:
    """ClientPathExclusion: any FilesetEntry with this clientPath readable in the session's group
    (the query runs without omero.group=-1)."""
    from sim.server import client_path_of
    me = port.current_user()
    client_path = client_path_of(main)
    used = sim.query(
        "SELECT 1 FROM FilesetEntry fe JOIN Fileset f ON f.id = fe.fileset JOIN ExperimenterGroup g "
        "ON g.id = f.group_id WHERE fe.clientPath = ? AND f.group_id = ? "
        "AND (f.owner_id = ? OR g.permissions != 'rw----' OR ?)",
        (client_path, me.group_id, me.id, int(me.is_admin)))
    if used:
        log("INFO", "ome.formats.importer.exclusions.ClientPathExclusion",
            "ClientPath match for filename: %s" % client_path)
    return bool(used)


def create(sim, user, group, cand, target, settings) -> int:
    spw_target = target if target and (target[0] == "Screen") == cand.spw else None
    log("INFO", MONITOR, "FILESET_UPLOAD_PREPARATION")
    return sim.create_import(user, cand.files, transfer=settings["transfer"], group=group,
                             target=spw_target, spw=cand.spw, images=cand.images,
                             hasher=settings["hasher"], thumbnails=settings["thumbnails"],
                             session=settings["session"])


def crash_mid_upload(sim, user, group, cand, target, settings) -> None:
    """Die like a killed JVM: the first half of the files stored, the next one partially."""
    fid = create(sim, user, group, cand, target, settings)
    log("INFO", MONITOR, "FILESET_UPLOAD_START")
    half = len(cand.files) // 2
    for i in range(half):
        log("INFO", MONITOR, "FILE_UPLOAD_STARTED: %s" % cand.files[i])
        sim.store_file(fid, i)
        log("INFO", MONITOR, "FILE_UPLOAD_COMPLETE: %s" % cand.files[i])
    log("INFO", MONITOR, "FILE_UPLOAD_STARTED: %s" % cand.files[half])
    sim.store_file(fid, half, partial=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def import_one(sim, user, group, cand, target, settings, counts, fail_pattern) -> bool:
    fid = create(sim, user, group, cand, target, settings)
    log("INFO", MONITOR, "FILESET_UPLOAD_START")
    upload_fail = os.environ.get(ENV + "UPLOAD_FAIL_PATTERN")
    for i, path in enumerate(cand.files):
        log("INFO", MONITOR, "FILE_UPLOAD_STARTED: %s" % path)
        if upload_fail and fnmatch.fnmatch(os.path.basename(path), upload_fail):
            sim.store_file(fid, i, partial=True)
            log("ERROR", HANDLER, "FILE_EXCEPTION: %s\njava.io.IOException: upload failed "
                "(OMERO_CLI_EXT_SIM_UPLOAD_FAIL_PATTERN)" % path)
            return False
        upload_seconds = float(os.environ.get(ENV + "UPLOAD_SECONDS") or 0)
        for step in range(1, 10 if upload_seconds else 1):   # bytes arrive, nothing printed
            sim.store_file(fid, i, partial=True, fraction=step / 10)
            time.sleep(upload_seconds / 9)
        sim.store_file(fid, i)
        log("INFO", MONITOR, "FILE_UPLOAD_COMPLETE: %s" % path)
        counts["files"] += 1
    sim.verify_upload(fid)
    sim.close_import_process(fid)   # ImportLibrary: `finally { proc.close(); }`, then UPLOAD_END
    log("INFO", MONITOR, "FILESET_UPLOAD_END")
    log_id = sim.import_log_id(fid)
    log("INFO", MONITOR, "IMPORT_STARTED Logfile: %d" % log_id)
    failing = fail_pattern and (fnmatch.fnmatch(cand.main, fail_pattern)
                                or fnmatch.fnmatch(os.path.basename(cand.main), fail_pattern))
    if failing:
        sim.fail_import(fid, "Failure response on import! (OMERO_CLI_EXT_SIM_FAIL_PATTERN)")
        log("ERROR", HANDLER, "INTERNAL_EXCEPTION: %s\njava.lang.RuntimeException: Failure "
            "response on import!\nCategory: ::omero::grid::ImportRequest\nName: import-request-failure"
            "\nParameters: {fileset=%d}\n" % (cand.main, fid))
        return False
    from sim.server import IMPORT_STEPS
    for step, name in enumerate(IMPORT_STEPS, start=1):
        sim.advance_import(fid)
        log("INFO", MONITOR, "%s Step: %d of %d  Logfile: %d" % (name, step, len(IMPORT_STEPS), log_id))
    log("INFO", MONITOR, "IMPORT_DONE Imported file: %s" % cand.main)
    objects = sim.import_result(fid)
    counts["filesets"] += 1
    counts["images"] += len(objects["Image"])
    counts["plates"] += len(objects.get("Plate", ()))
    write_result(fid, objects, settings["output"])
    return True


def write_result(fid: int, objects: dict, output: str) -> None:
    """LoggingImportMonitor.ImportSummary: outputYamlResults / outputGreppableResults /
    outputImageOrPlateIds."""
    if output == "yaml":
        sys.stderr.write("Imported objects:\n")
        lines = ["---", "- Fileset: %d" % fid]
        lines += ["  %s: [%s]" % (kind, ",".join(map(str, ids))) for kind, ids in objects.items()]
        print("\n".join(lines))
    elif output == "legacy":
        sys.stderr.write("Imported pixels:\n")
        print("\n".join(map(str, objects["Image"])))
        sys.stderr.write("Other imported objects:\nFileset:%d\n" % fid
                         + "".join("%s:%d\n" % (k, i) for k, ids in objects.items() for i in ids))
    else:
        kind = "Plate" if "Plate" in objects else "Image"
        print("%s:%s" % (kind, ",".join(map(str, objects[kind]))))
        sys.stderr.write("Other imported objects:\nFileset:%d\n" % fid
                         + "".join("%s:%d\n" % (k, i) for k, ids in objects.items() if k != kind
                                   for i in ids))
    sys.stdout.flush()
    sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
