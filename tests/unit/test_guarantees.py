"""docs/guarantees.md is checked against the fault suite: every test in tests/faults/ has its row, and
every row names a test that exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def fault_tests() -> set[str]:
    found = set()
    for path in sorted((ROOT / "tests" / "faults").glob("test_*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                found.add(f"{path.name}::{node.name}")
    return found


def documented() -> list[str]:
    text = (ROOT / "docs" / "guarantees.md").read_text()
    return re.findall(r"^\|.*\| `(test_\w+\.py::test_\w+)` \|$", text, flags=re.M)


def test_every_fault_test_has_a_row_and_every_row_a_test() -> None:
    rows = documented()
    assert len(rows) == len(set(rows)), "a test is listed twice"
    assert sorted(fault_tests() - set(rows)) == [], "fault tests without a row in docs/guarantees.md"
    assert sorted(set(rows) - fault_tests()) == [], "rows naming a test that does not exist"


def test_every_row_says_what_is_guaranteed() -> None:
    text = (ROOT / "docs" / "guarantees.md").read_text()
    for line in text.splitlines():
        if line.startswith("| ") and "::test_" in line:
            cells = [c.strip() for c in line.strip("|").split("|")]
            assert len(cells) == 5 and all(cells), line
