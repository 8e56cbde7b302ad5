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
                         "--quiet", "--json", str(out)])
    rows = {r["row"]: r for r in result["rows"]}
    assert list(rows) == list(bench.ROWS)
    for name, row in rows.items():
        assert row["ours"] or row["baseline"].startswith("n/a"), name
    assert [r["row"] for r in json.loads(out.read_text())["rows"]] == list(bench.ROWS)
    assert rows["update downtime"]["ours"].startswith("n/a")
