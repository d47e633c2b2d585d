"""`omero mv --render-check`: after a job, ask the server to open the pixel data of one image per
affected fileset (which, for pixel data without a pyramid of its own, makes it read the moved
original through its link) — through the port, in this process, never by running another CLI
command in-process (omero-cli-render's `gateway_required` closes the client the port holds).

After a move the server rebuilds each fileset's Bio-Formats memo file on the first read, which
for big screens takes long: checking every affected fileset off-hours is how a sysadmin gets
that done before the users come (`--render-check-all`); `--render-check` checks a sample."""
from __future__ import annotations

from typing import Dict, List, Sequence

from omero_cli_ext.server import PYRAMID_NOT_BUILT

SAMPLE = 10   # filesets checked by default: spread over the job's filesets


def choose(filesets: Sequence[int], every: bool, sample: int = SAMPLE) -> List[int]:
    """The filesets to check: all of them, or `sample` spread evenly (first and last included)."""
    ordered = sorted(set(filesets))
    if every or len(ordered) <= sample:
        return ordered
    step = (len(ordered) - 1) / (sample - 1)
    return sorted({ordered[round(i * step)] for i in range(sample)})


def render_check(port, filesets: Sequence[int], *, every: bool, concurrency: int) -> Dict:
    """{"checked": [image ids read fine], "failed": [image ids], "unchecked": [image ids whose
    pyramid is not built yet: nothing was read, no failure], "results": [per image: fileset,
    image, ok (None when unchecked), problem]}; filesets without a readable image are not
    counted."""
    chosen = choose(filesets, every)
    images = port.images_of(chosen) if chosen else {}
    first = {fileset: ids[0] for fileset, ids in images.items() if ids}
    problems = port.pixels_readable(sorted(first.values()), concurrency=concurrency) \
        if first else {}
    results, checked, failed, unchecked = [], [], [], []
    for fileset in chosen:
        image = first.get(fileset)
        if image is None or image not in problems:
            continue
        problem = problems[image]
        ok = None if problem == PYRAMID_NOT_BUILT else problem is None
        {True: checked, False: failed, None: unchecked}[ok].append(image)
        results.append({"fileset": fileset, "image": image, "ok": ok, "problem": problem})
    return {"checked": checked, "failed": failed, "unchecked": unchecked, "results": results,
            "filesets": len(set(filesets)), "sampled": len(chosen)}
