"""How `omero import --resume` shows a run: driver reports as rich progress, plain lines or JSON."""
from __future__ import annotations

import contextlib
import os

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
        elif kind == "gave_up":
            out.warn(f"chunk {fields['chunk']}: {fields['reason']}; giving up for this run")
        elif kind == "chunk" and out.mode == "plain":
            out.info(f"chunk {fields['chunk']}: importing {fields['filesets']} filesets "
                     f"(attempt {fields['attempt']})")


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


