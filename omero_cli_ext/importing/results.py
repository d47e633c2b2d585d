"""What the importer reports while it runs: `--output yaml` documents on stdout, log lines on stderr.

Both are parsed line by line (omero-blitz LoggingImportMonitor, ErrorHandler): stdout carries one
document per imported fileset (`---`, `- Fileset: N`, `  Image: [..]`, `  Plate: [..]`, keys in
any order) after possible non-YAML lines; stderr carries the progress events, the per-fileset
errors (`INTERNAL_EXCEPTION: /path`, `FILE_EXCEPTION: /path`, ...) and the `==> Summary`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

_KEY = re.compile(r"^-?\s*(Fileset|Image|Plate)\s*:\s*(.*)$")
_UPLOADED = re.compile(r"FILE_UPLOAD_COMPLETE: (.+)$")
_UPLOADING = re.compile(r"FILE_UPLOAD_STARTED: (.+)$")
_IMPORTED = re.compile(r"IMPORT_DONE Imported file: (.+)$")
_FAILED = re.compile(r"\b([A-Z][A-Z_]*(?:EXCEPTION|FORMAT|FAILURE|ERROR|FILE|LIBRARY)): (/.*)$")
_STARTED = re.compile(r"\bIMPORT_STARTED\b.*?Logfile: (\d+)")
_NOTHING = "No imports found"
_EXCEPTION_LINE = re.compile(r"^[\w$]+(?:\.[\w$]+)+(?:Exception|Error)\b.*")
_SUMMARY = re.compile(r"(\d+) errors? in (\d+):(\d\d):(\d\d)\.(\d{3})")


@dataclass(frozen=True)
class ImportResult:
    fileset_id: int
    images: tuple = ()
    plates: tuple = ()


@dataclass(frozen=True)
class LogEvent:
    """kind: "uploaded" (path), "imported" (path), "failed" (path, message), "summary" (errors),
    "started" (log_id: the import log OriginalFile, after the upload is verified), "nothing"
    (the importer found no importable file among its paths)."""
    kind: str
    path: str = ""
    message: str = ""
    errors: int = 0
    seconds: float = 0.0
    log_id: int = 0


def _ids(text: str) -> tuple:
    return tuple(int(n) for n in re.findall(r"\d+", text))


def parse_results(lines: Iterable[str]) -> Iterator[ImportResult]:
    """Yield each fileset's result as soon as its document names the Fileset and its images (an
    importer that hangs after printing it must not hide it), and again if a key follows (the
    Plate after the Image: later yields of a fileset complete earlier ones)."""
    doc: Optional[dict] = None
    sent: Optional[ImportResult] = None

    def current():
        if doc and doc.get("Fileset") and "Image" in doc:
            return ImportResult(doc["Fileset"][0], doc.get("Image", ()), doc.get("Plate", ()))
        return None

    for raw in lines:
        line = raw.rstrip("\r\n")
        if line.strip() == "---":
            if doc and doc.get("Fileset") and sent is None:     # a document without images
                yield ImportResult(doc["Fileset"][0], (), doc.get("Plate", ()))
            doc, sent = {}, None
            continue
        if doc is None:
            continue
        match = _KEY.match(line)
        if match:
            doc[match.group(1)] = _ids(match.group(2))
            result = current()
            if result is not None and result != sent:
                sent = result
                yield result
    if doc and doc.get("Fileset") and sent is None:
        yield ImportResult(doc["Fileset"][0], (), doc.get("Plate", ()))


class LogReader:
    """Turns stderr lines into LogEvents; a failure's message gets the exception line after it."""

    def __init__(self):
        self._pending: Optional[LogEvent] = None

    def feed(self, raw: str) -> list:
        line = raw.rstrip("\r\n")
        events = []
        if self._pending is not None:
            pending, self._pending = self._pending, None
            if _EXCEPTION_LINE.match(line.strip()):
                events.append(LogEvent("failed", pending.path,
                                       f"{pending.message}: {line.strip()}"))
                return events
            events.append(pending)
        match = _FAILED.search(line)
        if match:
            self._pending = LogEvent("failed", match.group(2), match.group(1))
            return events
        match = _STARTED.search(line)
        if match:
            events.append(LogEvent("started", log_id=int(match.group(1))))
            return events
        if line.strip() == _NOTHING:
            events.append(LogEvent("nothing"))
            return events
        for kind, pattern in (("uploading", _UPLOADING), ("uploaded", _UPLOADED),
                              ("imported", _IMPORTED)):
            match = pattern.search(line)
            if match:
                events.append(LogEvent(kind, match.group(1)))
                return events
        match = _SUMMARY.search(line)
        if match:
            h, m, s, ms = (int(g) for g in match.groups()[1:])
            events.append(LogEvent("summary", errors=int(match.group(1)),
                                   seconds=h * 3600 + m * 60 + s + ms / 1000))
        return events

    def close(self) -> list:
        pending, self._pending = self._pending, None
        return [pending] if pending else []
