"""Progress reporting handed from tasks.py to capabilities (which never print themselves)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TextIO


@dataclass(frozen=True)
class Check:
    """One check as data (doctor's prerequisites, migrate.check's integrity): printed by the task layer."""

    name: str
    ok: bool
    detail: str
    hint: str = ""  # what to do when it fails: the exact command where there is one
    required: bool = True  # False: its failure is reported but does not fail the whole run


@dataclass(frozen=True)
class Plan:
    """What a destructive operation is about to do, computed after every check that can run before it
    (nothing has been touched yet). The cli shows it, confirms it on a protected environment, then acts."""

    action: str                        # one line: "restore full_2026... over impactbot_v2 of prod"
    env: str
    protected: bool
    steps: list[str] = field(default_factory=list)
    destroys: list[str] = field(default_factory=list)  # what is deleted or replaced (kept copies say so)
    warnings: list[str] = field(default_factory=list)
    nothing_to_do: str = ""            # non-empty: there is nothing to act on, and this says why
    always_confirm: bool = False       # confirm even where the environment is not protected (e.g. no manifest)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class Reporter:
    """Steps as one line each; byte progress redrawn in place on a terminal, throttled otherwise."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self.tty = self.stream.isatty()
        self.lines: list[str] = []
        self._last_progress = 0.0
        self._progress_open = False

    def _emit(self, line: str) -> None:
        self.lines.append(line)
        if self.quiet:
            return
        if self._progress_open:
            self.stream.write("\n")
            self._progress_open = False
        self.stream.write(line + "\n")
        self.stream.flush()

    def step(self, message: str) -> None:
        self._emit(f"==> {message}")

    def info(self, message: str) -> None:
        self._emit(f"    {message}")

    def warn(self, message: str) -> None:
        self._emit(f"!!  {message}")

    def progress(self, label: str, done: int, started: float, final: bool = False) -> None:
        """Bytes done so far with rate and elapsed time; only redrawn on a terminal."""
        now = time.monotonic()
        if self.quiet or not self.tty or (not final and now - self._last_progress < 0.2):
            return
        self._last_progress = now
        elapsed = max(now - started, 1e-6)
        self.stream.write(
            f"\r    {label}: {human_bytes(done)} at {human_bytes(done / elapsed)}/s, {elapsed:.1f}s elapsed"
        )
        self._progress_open = not final
        if final:
            self.stream.write("\n")
        self.stream.flush()


class NullReporter(Reporter):
    """Collects lines without printing (tests, --json)."""

    def __init__(self) -> None:
        super().__init__(stream=sys.stderr, quiet=True)
