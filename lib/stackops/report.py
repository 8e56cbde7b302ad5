"""Progress reporting handed from tasks.py to capabilities (which never print themselves)."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, TextIO


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


class _Done:
    """What one progress label moved: bytes, seconds, the total it was measured against."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.done = 0
        self.total: int | None = None
        self.seconds = 0.0


class Reporter:
    """Steps as one line each; byte progress as a live line on a terminal (``rich``: bytes against the
    total, rate, elapsed, ETA, the current item), a plain line per finished item otherwise; ``summary``
    closes a long task with its timing and sizes in one line.

    Capabilities call ``step`` / ``info`` / ``warn`` / ``progress`` only; ``progress`` may be called from
    another thread. ``live=False`` forces plain lines (``--json``, a pipe); rich is imported only when a
    live line is drawn, so ``invoke --list`` never loads it.
    """

    def __init__(self, stream: TextIO | None = None, quiet: bool = False, live: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self.tty = self.stream.isatty()
        self.live = self.tty if live is None else (live and self.tty)
        self.lines: list[str] = []
        self.started = time.monotonic()
        self.moved: dict[str, _Done] = {}
        self._lock = threading.RLock()
        self._bars: Any = None            # a rich Progress while one is drawn
        self._tasks: dict[str, Any] = {}  # label -> rich task id
        self._last: dict[str, float] = {}

    def _emit(self, line: str) -> None:
        with self._lock:
            self.lines.append(line)
            if self.quiet:
                return
            if self._bars is not None:
                self._bars.console.print(line, markup=False, highlight=False, soft_wrap=True)
                return
            self.stream.write(line + "\n")
            self.stream.flush()

    def step(self, message: str) -> None:
        self._emit(f"==> {message}")

    def info(self, message: str) -> None:
        self._emit(f"    {message}")

    def warn(self, message: str) -> None:
        self._emit(f"!!  {message}")

    def progress(self, label: str, done: int, started: float, final: bool = False, total: int | None = None,
                 detail: str = "") -> None:
        """``done`` bytes of ``label`` since ``started`` (time.monotonic), against ``total`` when known
        (then the live line has a bar and an ETA); ``final`` closes the item."""
        now = time.monotonic()
        with self._lock:
            moved = self.moved.setdefault(label, _Done(started))
            moved.done, moved.seconds = done, now - started
            if total is not None:
                moved.total = total
            if self.quiet:
                return
            if not self.live:
                if final:
                    self._emit(f"    {label}: {self.figures(label)}")
                return
            if not final and now - self._last.get(label, 0.0) < 0.1:
                return
            self._last[label] = now
            self._draw(label, done, moved.total, final, detail)

    def _draw(self, label: str, done: int, total: int | None, final: bool, detail: str) -> None:
        from rich.console import Console  # lazy: about 60 ms, only for a live terminal
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        if self._bars is None:
            console = Console(file=self.stream, force_terminal=True, highlight=False)
            self._bars = Progress(TextColumn("    {task.description}"), BarColumn(bar_width=24), DownloadColumn(),
                                  TransferSpeedColumn(), TextColumn("elapsed"), TimeElapsedColumn(),
                                  TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[detail]}"),
                                  console=console, refresh_per_second=8, transient=False,
                                  redirect_stdout=False, redirect_stderr=False)
            self._bars.start()
            self._tasks = {}
        bars = self._bars
        shown = None if total is None else max(total, done)
        if label not in self._tasks:
            self._tasks[label] = bars.add_task(label, total=shown, detail=detail)
        task = self._tasks[label]
        if final:
            bars.update(task, completed=done, total=done, detail=detail)
        else:
            bars.update(task, completed=done, total=shown, detail=detail)
        bars.refresh()
        if final and all(t.finished for t in bars.tasks):
            bars.stop()
            self._bars = None
            self._tasks = {}

    def figures(self, label: str) -> str:
        """``12.0 MiB of ~40.0 MiB in 3.1s (3.9 MiB/s)`` for a label that progressed."""
        m = self.moved[label]
        of = f" of ~{human_bytes(m.total)}" if m.total is not None and m.total != m.done else ""
        rate = human_bytes(m.done / m.seconds) + "/s" if m.seconds > 0 else "-"
        return f"{human_bytes(m.done)}{of} in {m.seconds:.1f}s ({rate})"

    def summary(self, what: str) -> str:
        """One closing line: the task's wall time and what each progress item moved."""
        self.close()
        parts = [f"{label} {self.figures(label)}" for label in self.moved]
        line = f"{what} took {time.monotonic() - self.started:.1f}s" + (f": {'; '.join(parts)}" if parts else "")
        self._emit(f"==> {line}")
        return line

    def close(self) -> None:
        """Stop a live line left open (a failure in the middle of an item)."""
        with self._lock:
            if self._bars is not None:
                self._bars.stop()
                self._bars = None
                self._tasks = {}


class NullReporter(Reporter):
    """Collects lines without printing (tests, --json)."""

    def __init__(self) -> None:
        super().__init__(stream=sys.stderr, quiet=True)
