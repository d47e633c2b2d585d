"""What `omero mv` reports, as plain values and text: the JSON records of steps and unresolved
links, the dry-run preview, the job summary, and the texts of --status and --abandon. The CLI
only decides where each goes (rich, plain lines, JSON)."""
from __future__ import annotations

import collections
from typing import List, Optional, Sequence, Tuple

from omero_cli_ext.mv.plan import Plan, Step
from omero_cli_ext.mv.tree import show

PREVIEW_ROWS = 10
LINK_KINDS = ("retarget", "swap", "materialize")


def json_path(path):
    """A path for a JSON record: text, bytes that are not UTF-8 as \\xNN escapes."""
    if path is None:
        return None
    return path.decode("utf-8", "backslashreplace") if isinstance(path, bytes) else path


def step_record(step: Step, planned: bool = False) -> dict:
    """The fields of an "action" record."""
    fields = {"action": step.kind, "seq": step.seq, "path": json_path(step.path),
              "state": "planned" if planned else step.state}
    for name in ("other", "old", "new"):
        value = getattr(step, name)
        if value is not None:
            fields[name] = json_path(value)
    if step.size is not None:
        fields["size"] = step.size
    if step.fileset is not None:
        fields["fileset"] = step.fileset
    if step.note:
        fields["note"] = step.note
    return fields


def unresolved_record(entry: dict) -> dict:
    return {k: ([json_path(c) for c in v] if k == "candidates" else json_path(v))
            for k, v in entry.items()}


def unresolved_rows(unresolved: Sequence[dict]) -> List[tuple]:
    return [(show(u["link"]), show(u.get("target") or b""), u["reason"]) for u in unresolved]


def preview(plan: Plan) -> Tuple[str, List[Tuple[str, tuple, List[tuple]]]]:
    """The dry-run's headline and its tables: (title, columns, rows) for the first link changes
    (link, its target now, after) and the first file placements."""
    summary = plan.summary()
    kinds = ", ".join(f"{n} {k}" for k, n in summary["by_kind"].items()) or "nothing to do"
    headline = (f"plan ({summary['mode']}): {kinds}; "
                f"{'same filesystem' if plan.same_fs else 'across filesystems'}; "
                f"{summary['bytes_to_copy']} bytes to copy")
    tables = []
    links = [s for s in plan.steps if s.kind in LINK_KINDS]
    if links:
        tables.append((f"link changes: first {min(PREVIEW_ROWS, len(links))} of {len(links)}",
                       ("action", "link", "now", "after"),
                       [(s.kind, show(s.path), show(s.old or s.path),
                         show(s.new or s.other or b"")) for s in links[:PREVIEW_ROWS]]))
    files = [s for s in plan.steps if s.kind == "place"]
    if files:
        tables.append((f"file placements: first {min(PREVIEW_ROWS, len(files))} of {len(files)}",
                       ("path", "from"),
                       [(show(s.path), show(s.other)) for s in files[:PREVIEW_ROWS]]))
    return headline, tables


def job_summary(job_id: Optional[int], mode: str, resumed: bool, steps: Sequence[Step],
                failures: Sequence[dict], unresolved: int, seconds: float) -> dict:
    """The "summary" record of a job that ran."""
    done = collections.Counter(s.kind for s in steps if s.state == "done")
    links_changed = sum(done[kind] for kind in LINK_KINDS)
    return {"job": job_id, "mode": mode, "resumed": resumed, "links_changed": links_changed,
            "files_placed": done["place"], "sources_removed": done["unlink"],
            "skipped": sum(1 for s in steps if s.state == "skipped"),
            "verified": links_changed - len(failures), "verify_failures": len(failures),
            "unresolved": unresolved, "seconds": round(seconds, 3)}


def done_text(summary: dict) -> str:
    return (f"done: {summary['links_changed']} link(s) changed, {summary['files_placed']} "
            f"file(s) placed, {summary['sources_removed']} source(s) removed, "
            f"{summary['verified']} verified"
            + (f", {summary['unresolved']} unresolved" if summary["unresolved"] else ""))


def status_text(found: dict, location: str) -> str:
    who = found["started_by"] or {}
    running = found["running"]
    return (f"job {found['job']}: {found['command']}\n"
            f"  started {found['created']} by {who.get('user', '?')} on {who.get('host', '?')}\n"
            f"  phase {found['phase_number']} of 5, {found['phase']}: "
            f"{found['phase_steps_done']} of {found['phase_steps']} steps; "
            f"{found['steps_done']} of {found['steps']} in all\n"
            f"  journal {location}\n"
            + (f"  running now: process {running['pid']} on {running['host']} since "
               f"{running['since']}" if running else
               "  no command runs it now: rerun its command to finish it, or --abandon"))


def abandon_text(left: dict) -> str:
    return (f"abandoned job {left['job']}: {left['command']}\n"
            "left as they are (every link resolves, to the old or the new copy):\n"
            f"  {left['links_changed']} link(s) already point at the new place, "
            f"{left['links_unchanged']} still at the old one\n"
            f"  {left['placed_left']} file(s) and link(s) placed at the destination"
            + (f" (under {show(left['destination'])})" if left['destination'] else "")
            + f"\n  {left['sources_left']} source(s) not removed\n"
            f"  {left['temporaries_removed']} temporary file(s) of the job removed\n"
            "Remove what you no longer need by hand: a file is no longer needed once no "
            "repository link points at it.")
