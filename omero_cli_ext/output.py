"""Three renderings of one stream of results: rich on a terminal, plain lines otherwise, JSON lines on --json.

Commands report through an `Output`; they never decide for themselves whether stdout is a TTY.
Errors and warnings always go to stderr so that stdout stays parseable.
"""
from __future__ import annotations

import contextlib
import json
import sys
from typing import Iterable, Optional, Sequence


def _json_default(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def to_json(obj: dict) -> str:
    """One JSON line; bytes paths become text with surrogate escapes, datetimes ISO 8601."""
    return json.dumps(obj, default=_json_default, ensure_ascii=False, sort_keys=False)


def printable(path) -> str:
    """A path as text a terminal can show: undecodable bytes and control characters escaped."""
    if isinstance(path, bytes):
        path = path.decode("utf-8", "backslashreplace")
    text = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class Output:
    """Where a command's results go: `mode` is "json", "rich" (a TTY) or "plain"."""

    def __init__(self, json_mode: bool = False, stdout=None, stderr=None, tty: Optional[bool] = None):
        self._stdout = stdout
        self._stderr = stderr
        out = self.stdout
        is_tty = tty if tty is not None else bool(getattr(out, "isatty", lambda: False)())
        self.mode = "json" if json_mode else ("rich" if is_tty else "plain")
        self._console = None

    @property
    def stdout(self):
        return self._stdout if self._stdout is not None else sys.stdout

    @property
    def stderr(self):
        return self._stderr if self._stderr is not None else sys.stderr

    @property
    def console(self):
        """The rich Console (only meaningful in rich mode)."""
        if self._console is None:
            from rich.console import Console
            self._console = Console(file=self.stdout, highlight=False,
                                    force_terminal=self.mode == "rich" or None)
        return self._console

    def emit(self, record_type: str, **fields) -> None:
        """A machine-readable record: a JSON line in json mode, nothing otherwise."""
        if self.mode == "json":
            self.stdout.write(to_json({"type": record_type, **fields}) + "\n")
            self.stdout.flush()

    def info(self, text: str) -> None:
        """A human line (suppressed in json mode)."""
        if self.mode == "rich":
            self.console.print(text, markup=False)
        elif self.mode == "plain":
            self.stdout.write(text + "\n")
            self.stdout.flush()

    def warn(self, text: str) -> None:
        self.stderr.write(text + "\n")
        self.stderr.flush()

    def table(self, title: str, columns: Sequence[str], rows: Iterable[Sequence]) -> None:
        """A table: rich on a terminal, tab-separated lines with a header otherwise (none in json mode)."""
        rows = [[("" if v is None else str(v)) for v in row] for row in rows]
        if self.mode == "rich":
            from rich.table import Table
            table = Table(title=title)
            for column in columns:
                table.add_column(column)
            for row in rows:
                table.add_row(*row)
            self.console.print(table)
        elif self.mode == "plain":
            self.stdout.write("\t".join(columns) + "\n")
            for row in rows:
                self.stdout.write("\t".join(row) + "\n")
            self.stdout.flush()

    @contextlib.contextmanager
    def progress(self, description: str, total: Optional[float] = None, bytes_unit: bool = False):
        """A progress handle with advance(n); a rich bar on a terminal, silent otherwise."""
        if self.mode != "rich":
            yield _SilentProgress()
            return
        from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress,
                                   TextColumn, TimeElapsedColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)
        columns = [TextColumn("{task.description}"), BarColumn(),
                   DownloadColumn() if bytes_unit else MofNCompleteColumn()]
        if bytes_unit:
            columns.append(TransferSpeedColumn())
        columns += [TimeElapsedColumn(), TimeRemainingColumn()]
        with Progress(*columns, console=self.console, transient=False) as progress:
            task = progress.add_task(description, total=total)
            yield _RichProgress(progress, task)


class _SilentProgress:
    def advance(self, amount: float = 1) -> None:
        pass

    def update(self, **fields) -> None:
        pass


class _RichProgress:
    def __init__(self, progress, task):
        self._progress = progress
        self._task = task

    def advance(self, amount: float = 1) -> None:
        self._progress.advance(self._task, amount)

    def update(self, **fields) -> None:
        self._progress.update(self._task, **fields)
