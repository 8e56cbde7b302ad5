"""Progress: a live line on a terminal (bytes against the total, rate, elapsed, ETA); plain lines
otherwise, with no control characters; one closing summary line."""

from __future__ import annotations

import io
import re
import time

from stackops.report import Reporter, human_bytes


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_shows_bytes_total_rate_elapsed_and_eta() -> None:
    out = Terminal()
    r = Reporter(stream=out)
    started = time.monotonic() - 2.0
    r.progress("database", 3 * 2**20, started, total=12 * 2**20)
    r.progress("database", 12 * 2**20, started, final=True, total=12 * 2**20)
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", out.getvalue())
    assert "database" in text and "12.6" in text and "MB" in text  # rich counts in SI units
    assert "ETA" in text and "elapsed" in text and "/s" in text
    assert r._bars is None  # every item finished: the live line is closed


def test_without_a_terminal_plain_lines_only() -> None:
    out = io.StringIO()
    r = Reporter(stream=out)
    r.step("backup started")
    r.progress("database", 10, time.monotonic(), total=100)  # not final: nothing
    r.progress("database", 2048, time.monotonic() - 1, final=True, total=4096)
    r.info("done")
    lines = out.getvalue().splitlines()
    assert lines[0] == "==> backup started" and lines[2] == "    done"
    assert lines[1].startswith("    database: 2.0 KiB of ~4.0 KiB in 1.0s (")
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_live_false_forces_plain_lines_on_a_terminal() -> None:
    out = Terminal()
    r = Reporter(stream=out, live=False)
    r.progress("database", 10, time.monotonic(), total=100, final=True)
    assert "\x1b" not in out.getvalue() and "\r" not in out.getvalue()


def test_summary_is_one_line_with_timing_and_sizes() -> None:
    out = io.StringIO()
    r = Reporter(stream=out)
    r.progress("database", 5 * 2**20, time.monotonic() - 2, final=True)
    line = r.summary("backup x")
    assert line.startswith("backup x took ") and "database 5.0 MiB in 2.0s" in line
    assert out.getvalue().splitlines()[-1] == f"==> {line}"


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (0, 1023, 1024, 5 * 2**30)] == ["0 B", "1023 B", "1.0 KiB", "5.0 GiB"]
