"""Item 10: a no-transaction migration undone by restoring the pre-migration backup says which tables
changed since the backup (rows written meanwhile are only in the kept copy) and names that copy."""

from __future__ import annotations

from pathlib import Path

import pytest

from stackops.errors import MigrationFailed
from stackops.migrate.engine import apply
from stackops.report import NullReporter
from tests.faults.conftest import Fresh, databases, fingerprint
from tests.integration.conftest import with_migrations, write_migration

pytestmark = pytest.mark.integration


def test_undone_no_transaction_batch_names_the_changed_tables_and_the_kept_copy(fresh: Fresh, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    write_migration(folder, "20240101000000_items.sql", "CREATE TABLE items (id bigserial PRIMARY KEY, label text);"
                    " INSERT INTO items (label) VALUES ('one'), ('one');", "DROP TABLE items;")
    settings = with_migrations(fresh.settings, folder)
    apply(settings, fresh.runtime, report=NullReporter())
    before = fingerprint(fresh)
    write_migration(folder, "20240102000000_unique.sql",  # the app's write lands, then the index fails
                    "INSERT INTO items (label) VALUES ('written meanwhile');\n"
                    "CREATE UNIQUE INDEX CONCURRENTLY items_label_key ON items (label);",
                    "DROP INDEX CONCURRENTLY IF EXISTS items_label_key;", transactional=False)
    with pytest.raises(MigrationFailed) as err:
        apply(settings, fresh.runtime, report=NullReporter())
    message = str(err.value)
    kept = next(n for n in databases(fresh) if "_pre_restore_" in n)
    assert "public.items (3 rows now, 2 in the backup)" in message and kept in message
    assert f"invoke restore.drop-previous {kept}" in message
    assert "row counts only: an UPDATE" in message  # an update made meanwhile is not seen: it says so
    assert fingerprint(fresh) == before
