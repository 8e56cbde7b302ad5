"""migrate.check ("check database integrity") catches each planted fault, and only that one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from stackops.integrity import check_integrity
from stackops.migrate.engine import apply
from stackops.report import NullReporter
from stackops.seed import seed_sample_data
from tests.conftest import Fresh
from tests.integration.conftest import schema_dump

pytestmark = pytest.mark.integration

ANCHOR = datetime(2024, 6, 18, tzinfo=UTC)


def failed(fresh: Fresh) -> dict[str, str]:
    result = check_integrity(fresh.settings, fresh.runtime, report=NullReporter())
    return {c.name: c.detail for c in result.checks if not c.ok}


@pytest.fixture
def loaded(fresh: Fresh) -> Fresh:
    apply(fresh.settings, fresh.runtime, report=NullReporter())
    seed_sample_data(fresh.settings, fresh.runtime, seed=3, anchor=ANCHOR, report=NullReporter())
    assert failed(fresh) == {}
    return fresh


def first_upload(fresh: Fresh) -> Path:
    with fresh.connect() as conn:
        row = conn.execute("SELECT storage_path FROM file_uploads ORDER BY id LIMIT 1").fetchone()
    assert row is not None
    return fresh.settings.env.uploads_dir / str(row[0])


def sql(*statements: str) -> Callable[[Fresh], None]:
    def plant(fresh: Fresh) -> None:
        with fresh.connect(autocommit=True) as conn:
            for s in statements:
                try:
                    conn.execute(s.encode())
                except psycopg.errors.UniqueViolation:
                    pass  # the failed CREATE UNIQUE INDEX CONCURRENTLY is the fault
    return plant


def missing_file(fresh: Fresh) -> None:
    first_upload(fresh).unlink()


def changed_bytes(fresh: Fresh) -> None:
    path = first_upload(fresh)
    data = path.read_bytes()
    path.write_bytes(bytes([data[0] ^ 1]) + data[1:])  # same size, other content


FAULTS: dict[str, tuple[Callable[[Fresh], None], str, str]] = {
    "invalid index": (sql("CREATE UNIQUE INDEX CONCURRENTLY messages_role_key ON messages (role)"),
                      "invalid indexes", "public.messages_role_key"),
    "NOT VALID constraint": (sql("ALTER TABLE measurements ADD CONSTRAINT huge CHECK (value > 1e9) NOT VALID"),
                             "NOT VALID constraints", "huge on public.measurements"),
    "sequence reset below max": (sql("SELECT setval(pg_get_serial_sequence('users', 'id'), 1)"),
                                 "sequences", "public.users_id_seq next 2 <= public.users.id max 8"),
    "missing upload file": (missing_file, "upload files", "1 missing, 0 changed of"),
    "upload file with changed bytes": (changed_bytes, "upload files", "sha256 differs"),
    "foreign-key orphan": (sql("SET session_replication_role = replica",
                               "DELETE FROM conversations WHERE id = (SELECT min(conversation_id) FROM messages)"),
                           "foreign-key orphans", "public.messages (messages_conversation_id_fkey)"),
    "corrupt btree index": (sql(
        "CREATE FUNCTION twice(x bigint) RETURNS bigint IMMUTABLE LANGUAGE sql AS 'SELECT x * 2'",
        "CREATE INDEX users_twice_idx ON users (twice(id))",
        "CREATE OR REPLACE FUNCTION twice(x bigint) RETURNS bigint IMMUTABLE LANGUAGE sql AS 'SELECT x * 3'"),
        "amcheck (btree indexes)", "public.users_twice_idx"),
    "failed step outside a transaction": (sql(
        "UPDATE schema_migrations SET status = 'failed', error = 'boom' WHERE NOT transactional"),
        "non-transactional steps", "boom"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_check_catches_a_planted_fault(loaded: Fresh, fault: str) -> None:
    plant, check, needle = FAULTS[fault]
    plant(loaded)
    got = failed(loaded)
    assert list(got) == [check], got
    assert needle in got[check]


def test_check_on_a_database_without_schema_reports_pending_and_changes_nothing(fresh: Fresh) -> None:
    before = schema_dump(fresh)
    got = failed(fresh)
    assert list(got) == ["pending migrations"] and "5 not applied" in got["pending migrations"]
    assert schema_dump(fresh) == before  # amcheck was created in a rolled-back transaction


def test_check_of_an_unreachable_database_is_one_failed_row(fresh: Fresh) -> None:
    gone = replace(fresh.settings, env=replace(fresh.settings.env, db_name="no_such_db"))
    result = check_integrity(gone, type(fresh.runtime)(gone), report=NullReporter())
    assert [(c.name, c.ok) for c in result.checks] == [("database reachable", False)]
    assert "no_such_db" in result.checks[0].detail and "env.up" in result.checks[0].hint


def test_upload_paths_leaving_the_folder_are_reported(loaded: Fresh) -> None:
    outside = loaded.settings.env.uploads_dir.parent / "secret.txt"
    outside.write_text("not an upload")
    with loaded.connect() as conn:
        conn.execute("UPDATE file_uploads SET storage_path = 'evil' WHERE id = (SELECT min(id) FROM file_uploads)")
    (loaded.settings.env.uploads_dir / "evil").symlink_to(outside)
    got = failed(loaded)
    assert list(got) == ["upload files"] and "evil: resolves outside the uploads folder" in got["upload files"]
