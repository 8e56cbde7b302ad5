"""squawk over the up sections of the migrations about to run.

squawk (the ``squawk-cli`` package) reads SQL from stdin; it is given the file's text with every
line outside the up section blanked, so its line numbers are the file's. Two rules are switched
off because stackops itself sets ``lock_timeout`` and ``statement_timeout`` from config before each
migration. A ``.squawk.toml`` in the project root is honoured (squawk runs from there).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from stackops.errors import PrerequisiteError
from stackops.migrate import MigrationError
from stackops.migrate.files import MigrationFile, up_section_text
from stackops.proc import Cmd, run

EXCLUDED_RULES = ("require-lock-timeout", "require-statement-timeout")


@dataclass(frozen=True)
class Finding:
    filename: str
    line: int
    column: int
    rule: str
    level: str
    message: str
    help: str


def squawk_binary() -> str:
    found = shutil.which("squawk")
    if found:
        return found
    beside = Path(sys.executable).parent / "squawk"
    if beside.exists():
        return str(beside)
    raise PrerequisiteError("squawk (migration linter) not found: install it with `pip install squawk-cli`")


def lint(files: Sequence[MigrationFile], *, cwd: Path, pg_version: str | None = None) -> list[Finding]:
    """All findings for the up sections of ``files`` (empty: clean)."""
    binary = squawk_binary()
    findings: list[Finding] = []
    for mf in files:
        argv = [binary, "--reporter", "json", "--stdin-filepath", mf.filename,
                "--exclude", ",".join(EXCLUDED_RULES),
                "--assume-in-transaction" if mf.transactional else "--no-assume-in-transaction"]
        if pg_version:
            argv += ["--pg-version", pg_version]
        proc = run(Cmd(argv, cwd=cwd), input=up_section_text(mf).encode(), check=False, timeout=120)
        out = proc.stdout.decode(errors="replace").strip()
        try:
            items = json.loads(out or "[]")
        except json.JSONDecodeError:
            tail = (proc.stderr.decode(errors="replace").strip().splitlines() or [out[:200]])[-1]
            raise MigrationError(f"squawk could not lint {mf.filename} (exit {proc.returncode}): {tail}") from None
        for it in items:
            findings.append(Finding(
                filename=mf.filename,
                line=int(it.get("line", 0)) + 1,
                column=int(it.get("column", 0)) + 1,
                rule=str(it.get("rule_name", "")),
                level=str(it.get("level", "")).lower(),
                message=str(it.get("message", "")),
                help=str(it.get("help") or ""),
            ))
    return findings
