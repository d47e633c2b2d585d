"""How `omero import --resume` shows a run: driver reports as rich progress, plain lines or JSON."""
from __future__ import annotations

import contextlib
import os

from omero_cli_ext.importing.outcome import human
from omero_cli_ext.output import printable


class View:
    """Driver reports rendered: a rich bar (filesets, bytes, rate, ETA) on a TTY, plain lines
    otherwise, one JSON object per fileset with --json. A closed stdout (`| head`) stops the
    job like Ctrl-C (`on_closed`); the rest of the output is dropped."""

    def __init__(self, out, job, record, done_before):
        self.out = out
        self.job = job
        self.record = record
        self.done = done_before[0]
        self.failed = 0
        self._bar = None
        self._done_bytes = done_before[1]
        self.on_closed = lambda: None

    @contextlib.contextmanager
    def progress(self):
        with self.out.progress(self._describe(), total=self.record.bytes, bytes_unit=True) as bar:
            bar.advance(self._done_bytes)
            self._bar = bar
            yield

    def _describe(self) -> str:
        return (f"{self.job}: {self.done}/{self.record.filesets} filesets"
                + (f", {self.failed} failed" if self.failed else ""))

    def report(self, kind, **fields) -> None:
        try:
            self._report(kind, **fields)
        except BrokenPipeError:
            drop_stdout(self.out)
            self.on_closed()

    def _report(self, kind, **fields) -> None:
        out = self.out
        if kind == "fileset":
            state = fields["state"]
            if state == "done":
                self.done += 1
            else:
                self.failed += 1
            out.emit("fileset", job=self.job, index=fields["idx"], path=fields["main"],
                     state=state, fileset=fields["fileset_id"], images=fields["images"],
                     plates=fields["plates"], message=fields["message"], bytes=fields["size"])
            if out.mode == "plain":
                ids = "".join(f" {k}:{','.join(map(str, v))}" for k, v in
                              (("Image", fields["images"]), ("Plate", fields["plates"])) if v)
                fileset = f" Fileset:{fields['fileset_id']}" if fields["fileset_id"] else ""
                note = f" ({fields['message']})" if fields["message"] else ""
                out.info(f"{state}{fileset}{ids} {printable(fields['main'])}{note}")
            elif state != "done":
                out.warn(f"{state}: {printable(fields['main'])}: {fields['message']}")
            if self._bar is not None:
                self._bar.advance(fields["size"])
                self._bar.update(description=self._describe())
        elif kind == "foreign":
            where = " / ".join(map(str, fields["containers"])) or "no container"
            out.emit("foreign", job=self.job, index=fields["idx"], path=fields["main"],
                     fileset=fields["fileset_id"], complete=fields["complete"],
                     containers=fields["containers"])
            out.warn(f"foreign: Fileset {fields['fileset_id']} ({where}, "
                     f"{'complete' if fields['complete'] else 'incomplete'}) uses "
                     f"{printable(fields['main'])} but was not created by this job: left alone")
        elif kind in ("retry", "wait"):
            out.warn(f"chunk {fields['chunk']}: {fields['reason']}; "
                     f"{'retry' if kind == 'retry' else 'look again'} {fields['attempt']} in "
                     f"{fields['delay']:.0f} s")
        elif kind == "warning":
            out.warn(fields["message"])
        elif kind == "gave_up":
            out.warn(f"chunk {fields['chunk']}: {fields['reason']}; giving up for this run")
        elif kind == "chunk" and out.mode == "plain":
            out.info(f"chunk {fields['chunk']}: importing {fields['filesets']} filesets "
                     f"(attempt {fields['attempt']})")


def opening_report(out):
    """How job.JobRun's reports (a job planned or continued, before the driver) are shown."""
    def report(kind, **fields) -> None:
        job = fields["job"]
        if kind == "planned":
            out.info(f"job {job}: {fields['filesets']} filesets, {human(fields['bytes'])} "
                     f"in {fields['chunks']} chunks (journal {fields['journal']})")
        elif kind == "existing":
            where = fields["containers"]
            out.emit("foreign", job=job, index=fields["idx"], path=fields["main"],
                     fileset=fields["fileset_id"], complete=fields["complete"], containers=where)
            out.warn(f"foreign: Fileset {fields['fileset_id']} ("
                     f"{' / '.join(map(str, where)) or 'no container'}) already uses "
                     f"{printable(fields['main'])}: not this job's, left alone")
        elif kind == "job":
            out.emit("job", **fields)
        elif kind == "rescanned":
            out.info(f"job {job}: {fields['filesets']} new filesets found by --rescan")
        elif kind == "retried":
            out.info(f"job {job}: {fields['filesets']} failed filesets planned again "
                     "(--retry-failed)")
    return report


def show_plan(out, job, plan) -> None:
    """The --dry-run: every planned fileset (JSON), a table of the chunks, the totals."""
    chunks: dict = {}
    for fs in plan:
        chunks.setdefault(fs.chunk, []).append(fs)
        out.emit("plan", job=job, index=fs.idx, chunk=fs.chunk, path=fs.main,
                 files=list(fs.files), bytes=fs.size, reader=fs.reader, spw=fs.spw)
    title = f"job {job}: {len(plan)} filesets in {len(chunks)} chunks (dry run)"
    if out.mode == "plain":
        out.info(title)
    out.table(title, ["chunk", "filesets", "bytes", "first fileset"],
              [(c, len(f), human(sum(x.size for x in f)), printable(f[0].main))
               for c, f in sorted(chunks.items())])
    out.emit("summary", job=job, filesets_total=len(plan), chunks=len(chunks),
             bytes_total=sum(fs.size for fs in plan), dry_run=True)


def drop_stdout(out) -> None:
    """stdout's reader is gone: send the rest to /dev/null (no second BrokenPipeError, none at
    interpreter exit either)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, out.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
    finally:
        os.close(devnull)
    out._stdout = open(os.devnull, "w")


