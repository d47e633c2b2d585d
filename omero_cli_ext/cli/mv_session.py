"""`omero mv` CLI plumbing that is not the command's logic: output that survives a closed
stdout, SIGTERM/SIGHUP as interrupts, progress rendering, and omero's login kept from ending
the command with its own exit codes or prompting."""
from __future__ import annotations

import contextlib
import io
import os
import select
import signal
import stat
import time

from omero_cli_ext.mv.progress import PhaseProgress, phase_bytes
from omero_cli_ext.output import Output


class MvOutput(Output):
    """Output that survives a closed stdout (`| head`, a pager quit early): the first EPIPE
    points stdout at /dev/null, says so on stderr, and the job goes on to its end (its exit
    code still tells how it ended); nothing is lost but the rest of the listing."""

    closed = False

    def emit(self, record_type: str, **fields) -> None:
        self._guarded(super().emit, record_type, **fields)

    def info(self, text: str) -> None:
        self._guarded(super().info, text)

    def table(self, title, columns, rows) -> None:
        self._guarded(super().table, title, columns, rows)

    def warn(self, text: str) -> None:
        try:
            super().warn(text)
        except (BrokenPipeError, ValueError):   # stderr closed too: nowhere left to say it
            pass

    _deadline = None   # after an interrupt: when to stop waiting for a reader

    def _guarded(self, write, *args, **kwargs) -> None:
        if self.closed:
            return
        try:
            write(*args, **kwargs)
        except BrokenPipeError:
            self._to_devnull()
            self.warn("note: standard output was closed; the listing stops here and the "
                      "command goes on to its end (its exit code tells how it ended)")
        except BlockingIOError:   # only after stop_waiting(): the reader does not read
            self._drain()

    def stop_waiting(self, seconds: float = 5.0) -> None:
        """After an interrupt: a reader that stopped reading (a pager left open) must not keep
        the command from ending. What is still to be written gets `seconds`, then stdout goes
        to /dev/null."""
        try:
            fd = self.stdout.fileno()
            if not stat.S_ISFIFO(os.fstat(fd).st_mode) and not stat.S_ISSOCK(os.fstat(fd).st_mode):
                return
            os.set_blocking(fd, False)
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            return
        self._deadline = time.monotonic() + seconds
        self._drain()

    def _drain(self) -> None:
        """Flush what is buffered while the reader reads, until the deadline."""
        fd = self.stdout.fileno()
        while True:
            try:
                self.stdout.flush()
                return
            except BrokenPipeError:
                break
            except BlockingIOError:
                left = (self._deadline or 0) - time.monotonic()
                if left <= 0:
                    break
                select.select([], [fd], [], left)
        self._to_devnull()

    def _to_devnull(self) -> None:
        self.closed = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self.stdout.fileno())   # the interpreter's last flush succeeds
        os.close(devnull)
        try:
            os.set_blocking(self.stdout.fileno(), True)
        except OSError:
            pass


@contextlib.contextmanager
def terminate_as_interrupt():
    """SIGTERM (and SIGHUP: a closed terminal) stop the command like Ctrl-C: workers stopped,
    journal marks written, the rerun advice printed, exit 30."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)
    if threading_main():
        previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    else:
        previous = {}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def threading_main() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


class Progress:
    """The job's progress by phase (omero_cli_ext.mv.progress): a rich bar per phase on a
    terminal (bytes with rate and time left while copying), otherwise a line on stderr at each
    phase and every PROGRESS_SECONDS; with --json a "phase" object as each phase starts."""

    PROGRESS_SECONDS = 10.0

    def __init__(self, out, same_fs: bool):
        self.out, self.same_fs = out, same_fs
        self.model = PhaseProgress()
        self._stack = contextlib.ExitStack()
        self._bar = None
        self._shown = 0.0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._stack.close()
        return False

    def phase(self, number: int, steps) -> None:
        nbytes = phase_bytes(steps, copies=not self.same_fs)
        self.model.phase(number, len(steps), nbytes)
        if self.out.mode == "json":
            self.out.emit("phase", **self.model.record())
        elif self.out.mode == "rich":
            self._stack.close()
            self._bar = self._stack.enter_context(self.out.progress(
                self.model.title, total=nbytes or len(steps), bytes_unit=bool(nbytes)))
        else:
            self._say()

    def steps(self, count: int) -> None:
        self.model.advance(steps=count)
        if self._bar is not None and not self.model.bytes:
            self._bar.advance(count)
        self._tick()

    def copied(self, count: int) -> None:
        self.model.advance(nbytes=count)
        if self._bar is not None and self.model.bytes:
            self._bar.advance(count)
        self._tick()

    def _tick(self) -> None:
        if self.out.mode == "plain" and time.monotonic() - self._shown >= self.PROGRESS_SECONDS:
            self._say()

    def _say(self) -> None:
        self._shown = time.monotonic()
        self.out.warn(self.model.line())


class LoginRefused(Exception):
    def __init__(self, code, text):
        super().__init__(text)
        self.code = code


@contextlib.contextmanager
def login_without_exit(ctx, prompt: bool):
    """omero's login ends the command with its own codes (52 "stdin is not a terminal", 42
    connection refused, 43 bad host, 12 bad password: they clash with ours) and may prompt.
    Within this block its `die` raises LoginRefused instead, and without `prompt` so does any
    prompt."""
    def refuse(rc, text, *_, **__):
        raise LoginRefused(rc, str(text).strip())

    def no_prompt(prompt_text, *_, **__):
        raise LoginRefused(None, f"no stored session, and omero mv does not prompt here "
                            f"({str(prompt_text).strip()})")
    saved = {name: ctx.__dict__[name] for name in ("die", "input") if name in ctx.__dict__}
    ctx.die = refuse
    if not prompt:
        ctx.input = no_prompt
    try:
        yield
    finally:
        for name in ("die", "input"):
            ctx.__dict__.pop(name, None)
        ctx.__dict__.update(saved)
