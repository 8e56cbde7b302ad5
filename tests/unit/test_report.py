"""Progress: redrawn in place on a terminal (bytes, rate, elapsed); plain step lines otherwise."""

from __future__ import annotations

import io
import time

from stackops.report import Reporter, human_bytes


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_shows_bytes_rate_and_elapsed() -> None:
    out = Terminal()
    r = Reporter(stream=out)
    started = time.monotonic() - 2.0
    r.progress("database", 3 * 2**20, started, final=True)
    text = out.getvalue()
    assert text.startswith("\r    database: 3.0 MiB at ") and "/s, 2." in text and text.endswith("elapsed\n")


def test_without_a_terminal_only_step_lines_are_written() -> None:
    out = io.StringIO()
    r = Reporter(stream=out)
    r.step("backup started")
    r.progress("database", 10, time.monotonic(), final=True)
    r.info("done")
    assert out.getvalue() == "==> backup started\n    done\n"


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (0, 1023, 1024, 5 * 2**30)] == ["0 B", "1023 B", "1.0 KiB", "5.0 GiB"]
