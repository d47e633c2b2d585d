"""Progress of an `omero mv` job by phase, in steps and bytes, with rate and time left: a plain
model the CLI renders (a rich bar, plain lines, JSON objects)."""
from __future__ import annotations

import time
from typing import Callable, List, Optional

# Executor phases (plan.PHASES values), then the final verification
PHASE_TITLES = {0: "making directories", 1: "placing files", 2: "directory metadata",
                3: "changing links", 4: "removing sources", 5: "removing directories",
                6: "verifying links"}


class PhaseProgress:
    """Counts of the phase running now. `clock` is injectable so that tests move it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self.title = ""
        self.number = -1
        self.steps = self.steps_done = 0
        self.bytes = self.bytes_done = 0
        self.started = clock()

    def phase(self, number: int, steps: int, nbytes: int) -> None:
        self.number, self.title = number, PHASE_TITLES[number]
        self.steps, self.bytes = steps, nbytes
        self.steps_done = self.bytes_done = 0
        self.started = self._clock()

    def advance(self, steps: int = 0, nbytes: int = 0) -> None:
        self.steps_done += steps
        self.bytes_done += nbytes

    def rate(self) -> Optional[float]:
        """Bytes per second in this phase (None before a second has passed or without bytes)."""
        elapsed = self._clock() - self.started
        if not self.bytes or elapsed < 1:
            return None
        return self.bytes_done / elapsed

    def seconds_left(self) -> Optional[float]:
        elapsed = self._clock() - self.started
        if elapsed < 1:
            return None
        if self.bytes and self.bytes_done:
            return (self.bytes - self.bytes_done) * elapsed / self.bytes_done
        if self.steps and self.steps_done:
            return (self.steps - self.steps_done) * elapsed / self.steps_done
        return None

    def record(self) -> dict:
        return {"phase": self.title, "phase_number": self.number, "steps": self.steps,
                "steps_done": self.steps_done, "bytes": self.bytes,
                "bytes_done": self.bytes_done, "rate": self.rate(),
                "seconds_left": self.seconds_left()}

    def line(self) -> str:
        parts = [f"{self.title}: {self.steps_done} of {self.steps} steps"]
        if self.bytes:
            parts.append(f"{size_text(self.bytes_done)} of {size_text(self.bytes)}")
        rate = self.rate()
        if rate is not None:
            parts.append(f"{size_text(rate)}/s")
        left = self.seconds_left()
        if left is not None:
            parts.append(f"about {duration_text(left)} left")
        return ", ".join(parts)


def phase_bytes(steps: List, copies: bool) -> int:
    """Bytes a phase moves: the sizes of its copies (place/materialize across filesystems)."""
    if not copies:
        return 0
    return sum(s.size or 0 for s in steps if s.kind in ("place", "materialize"))


def size_text(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def duration_text(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"
