"""Fixtures of the migration, check and seed tests: database snapshots, synthetic migration folders,
a second fresh database, and the environment that points the real `invoke` CLI at the harness."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from stackops.config import Settings
from stackops.proc import text
from tests.conftest import ROOT, Fresh, Harness, cli_env, table_hashes  # noqa: F401  (re-exported for the tests here)


@dataclass(frozen=True)
class Snapshot:
    """What "the database is exactly as before" means: schema dump plus every table's rows."""

    schema: str
    rows: dict[str, str]


def schema_dump(fresh: Fresh) -> str:
    out = text(fresh.runtime.pg_cmd("pg_dump").with_args(
        "--schema-only", "--no-owner", "--no-privileges", "-d", fresh.settings.env.db_name))
    # pg_dump >= 15.14 writes a random \restrict key per run
    return "\n".join(line for line in out.splitlines() if not line.startswith(("\\restrict", "\\unrestrict")))


def row_hashes(fresh: Fresh) -> dict[str, str]:
    """Row count and a hash of all rows of every user table."""
    with fresh.connect() as conn:
        return table_hashes(conn)


def snapshot(fresh: Fresh) -> Snapshot:
    return Snapshot(schema_dump(fresh), row_hashes(fresh))


def with_migrations(settings: Settings, folder: Path, **changes: Any) -> Settings:
    """``settings`` reading migrations from ``folder`` (and other migration settings changed)."""
    return replace(settings, migrations=replace(settings.migrations, directory=folder, **changes))


def write_migration(folder: Path, filename: str, up: str, down: str | None = None, *,
                    transactional: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    body = ("" if transactional else "-- migrate:no-transaction\n") + f"-- migrate:up\n{up.strip()}\n"
    if down is not None:
        body += f"\n-- migrate:down\n{down.strip()}\n"
    path = folder / filename
    path.write_text(body)
    return path


@pytest.fixture
def migrations_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "migrations"
    folder.mkdir()
    return folder


@pytest.fixture
def new_fresh(harness: Harness) -> Iterator[Callable[[], Fresh]]:
    """Make further empty databases (with their folders) on the harness cluster; all dropped after."""
    made: list[Fresh] = []

    def make() -> Fresh:
        made.append(harness.fresh())
        return made[-1]

    yield make
    for f in made:
        f.drop()


INVOKE = [sys.executable, "-m", "invoke", "-r", str(ROOT)]
