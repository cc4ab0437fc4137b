"""Progress of a build, one phase at a time (bootstrap, each section, squash).

On a terminal the current phase is shown on one line that is rewritten when it ends; anywhere
else (CI logs, a batch job's output file) each phase gives plain, greppable log lines, because
carriage returns turn a log file into one unreadable line.
"""
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Optional


@dataclass
class Progress:
    stream: IO = field(default_factory=lambda: sys.stderr)
    quiet: bool = False
    tty: Optional[bool] = None
    _phase: str = ""
    _start: float = 0.0
    _step: int = 0

    def __post_init__(self) -> None:
        if self.tty is None:
            isatty = getattr(self.stream, "isatty", None)
            self.tty = bool(isatty and isatty())

    def _write(self, text: str) -> None:
        if not self.quiet:
            self.stream.write(text)
            self.stream.flush()

    def begin(self, phase: str) -> None:
        self._phase, self._start = phase, time.monotonic()
        self._step += 1
        if self.tty:
            self._write(f"\r\033[K[{self._step}] {phase} ...")
        else:
            self._write(f"hpccont build: {phase}: start\n")

    def end(self, ok: bool = True) -> None:
        took = time.monotonic() - self._start
        word = "done" if ok else "FAILED"
        if self.tty:
            self._write(f"\r\033[K[{self._step}] {self._phase}: {word} ({took:.1f}s)\n")
        else:
            self._write(f"hpccont build: {self._phase}: {word} in {took:.1f}s\n")
        self._phase = ""

    def note(self, message: str) -> None:
        """A line that stands on its own (a warning, the final result)."""
        if self.tty and self._phase:
            self._write("\r\033[K")
        self._write(f"hpccont build: {message}\n")
        if self.tty and self._phase:
            self._write(f"[{self._step}] {self._phase} ...")

    def before_output(self) -> None:
        """A section is about to print: end the rewritten line so its output starts clean."""
        if self.tty and self._phase:
            self._write("\n")

    def phase(self, name: str) -> "_Phase":
        return _Phase(self, name)


class _Phase:
    def __init__(self, progress: Progress, name: str):
        self.progress, self.name = progress, name

    def __enter__(self) -> Progress:
        self.progress.begin(self.name)
        return self.progress

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.progress.end(ok=exc_type is None)
        return False
