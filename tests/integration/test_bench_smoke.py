"""The benchmark scripts at a tiny scale, so they cannot rot: every row of the table is produced.
Never a timing: the machine running the tests says nothing about speed."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from benchmarks import bench
from benchmarks.generate import Prose

pytestmark = pytest.mark.local_runtime


def test_prose_is_deterministic_and_varied() -> None:
    a, b = Prose(random.Random("s:1")), Prose(random.Random("s:1"))
    texts = [a.text(60) for _ in range(20)]
    assert texts == [b.text(60) for _ in range(20)]
    words = " ".join(texts).split()
    assert len(set(words)) > 150  # a vocabulary, not filler


def test_every_row_is_produced(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = bench.main(["--scale", "0.002", "--rss-scale", "0.001", "--repeat", "1", "--root", str(tmp_path),
                         "--quiet", "--json", str(out), "--update-rounds", "0"])
    rows = {r["row"]: r for r in result["rows"]}
    assert list(rows) == list(bench.ROWS)
    for name, row in rows.items():
        assert row["ours"] or row["baseline"].startswith("n/a"), name
    assert [r["row"] for r in json.loads(out.read_text())["rows"]] == list(bench.ROWS)
    assert rows["update downtime"]["ours"] == "n/a: not measured in this run (--update-rounds 0)"


def test_the_update_downtime_row_is_the_median_of_paired_rounds() -> None:
    """The row built from benchmarks/update_downtime.measure's samples (given here: the measurement itself
    needs Docker and minutes, see benchmarks/update_downtime.py)."""
    row = bench.downtime_row({"bare": [6.0, 5.0, 8.0], "update": [6.6, 5.5, 7.2],
                              "steps": {"backup": [1.0, 1.4, 1.2]}, "wall_s": 60.0})
    assert row["row"] == "update downtime" and list(bench.ROWS)[-1] == row["row"]
    assert row["ours"] == "6.60 s" and row["baseline"].endswith("6.00 s")
    assert row["ratio"] == "1.10x" and row["ok"] is True  # per-round ratios 1.1, 1.1, 0.9
    assert row["steps_s"] == {"backup": 1.2}
