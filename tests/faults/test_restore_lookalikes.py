"""Databases stackops did not make are never listed as copies nor dropped, however alike their names:
``restore.previous``, ``restore.clean`` and ``restore.drop-previous`` take only the exact names a restore
or verify makes, and leave alone the copies of another database whose name starts the same way."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from stackops.errors import BackupNotFound
from stackops.report import NullReporter
from stackops.restore import NAME_ROOM, clean, clean_plan, drop_previous_plan, previous_copies, side_name
from tests.conftest import Fresh, Harness
from tests.faults.backup_helpers import run_cli

pytestmark = pytest.mark.integration


def _admin(fresh: Fresh) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(**fresh.runtime.conninfo("postgres"), autocommit=True)


def _create_with_rows(fresh: Fresh, name: str) -> None:
    with _admin(fresh) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with psycopg.connect(**fresh.runtime.conninfo(name)) as conn:
        conn.execute("CREATE TABLE results (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO results SELECT i, 'keep me ' || i FROM generate_series(1, 25) i")


def _rows(fresh: Fresh, name: str) -> int:
    with psycopg.connect(**fresh.runtime.conninfo(name)) as conn:
        row = conn.execute("SELECT count(*) FROM results").fetchone()
    return int(row[0]) if row else -1


def _exists(fresh: Fresh, name: str) -> bool:
    with _admin(fresh) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def test_lookalike_databases_are_never_listed_nor_cleaned(fresh: Fresh) -> None:
    db = fresh.settings.env.db_name
    lookalikes = [f"{db}_verify_results", f"{db}_restore_requests", f"{db}_pre_restore_notes",
                  f"{db}_restore_20260101000000_beef_old", f"{db}_verify_20260101000000_BEEF",
                  f"{db}_pre_restore_2026010100000_beef"]
    for name in lookalikes:
        _create_with_rows(fresh, name)
    scratch = [side_name(db, "verify"), side_name(db, "restore")]  # what a killed verify / restore leaves
    kept = side_name(db, "pre_restore")
    with _admin(fresh) as conn:
        for name in (*scratch, kept):
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    copies = {c["name"]: c["kind"] for c in previous_copies(fresh.settings, fresh.runtime)}
    assert copies == {scratch[0]: "interrupted", scratch[1]: "interrupted", kept: "database"}
    for name in lookalikes:
        with pytest.raises(BackupNotFound):
            drop_previous_plan(fresh.settings, fresh.runtime, name)

    listed = run_cli(fresh.settings, "restore.previous", "--json")
    assert listed.returncode == 0, listed.stderr
    assert not any(name in listed.stdout for name in lookalikes)
    cleaned = run_cli(fresh.settings, "restore.clean", "--yes")
    assert cleaned.returncode == 0, cleaned.stderr
    assert not any(name in cleaned.stdout + cleaned.stderr for name in lookalikes)
    assert not any(_exists(fresh, name) for name in scratch)  # the real scratch copies are gone
    assert _exists(fresh, kept)  # a kept copy is only ever dropped by name
    assert all(_rows(fresh, name) == 25 for name in lookalikes)  # every look-alike, with its rows


@pytest.fixture
def long_named(harness: Harness) -> Iterator[tuple[Fresh, str]]:
    """An environment whose database name is longer than NAME_ROOM, and another database on the same
    server with the same first NAME_ROOM characters."""
    name = f"t_{uuid.uuid4().hex[:10]}_{'x' * 25}"
    settings = harness.env(name)
    made = Fresh(settings, harness.runtime(settings))
    other = f"{name[:NAME_ROOM]}_other"
    with _admin(made) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield made, other
    with _admin(made) as conn:
        for (db,) in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                  (name[:NAME_ROOM] + "%",)).fetchall():
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))


def test_copies_another_database_may_own_are_listed_as_unclear_and_never_cleaned(
        long_named: tuple[Fresh, str]) -> None:
    fresh, other = long_named
    _create_with_rows(fresh, other)
    theirs = side_name(other, "verify")  # the other database's verify, running or killed
    assert theirs == side_name(fresh.settings.env.db_name, "verify")[:-4] + theirs[-4:]  # named alike
    _create_with_rows(fresh, theirs)
    copies = previous_copies(fresh.settings, fresh.runtime)
    assert [(c["name"], c["kind"], c.get("shared_with")) for c in copies] == [(theirs, "unclear", [other])]
    plan, names = clean_plan(fresh.settings, fresh.runtime)
    assert names == [] and plan.nothing_to_do and other in plan.nothing_to_do
    clean(fresh.settings, fresh.runtime, names, NullReporter())
    cleaned = run_cli(fresh.settings, "restore.clean", "--yes")
    assert cleaned.returncode == 0, cleaned.stderr
    assert _rows(fresh, theirs) == 25 and _rows(fresh, other) == 25
    drop_plan = drop_previous_plan(fresh.settings, fresh.runtime, theirs)  # by name, with a warning
    assert any(other in line for line in drop_plan.destroys)
