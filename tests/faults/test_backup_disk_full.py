"""Issue 9, item 7 (backup side): a full disk during `backup` and during `migrate.apply`'s
pre-migration backup, and the server going away mid-dump, each end in one line with nothing kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from stackops.errors import MigrationError, StorageFull
from tests.conftest import Fresh
from tests.faults.backup_helpers import add_uploads, fingerprint, listed, one_line, populate, run_cli, tmpfs

pytestmark = pytest.mark.integration


def test_disk_full_during_a_full_backup_keeps_nothing_and_says_so(fresh: Fresh) -> None:
    populate(fresh)
    add_uploads(fresh.settings.env.uploads_dir, files=3, size=1_000_000)  # 3 MB, incompressible
    before = fingerprint(fresh)
    with tmpfs(fresh.settings.env.backups_dir, "2m"):
        proc = run_cli(fresh.settings, "backup")
        line = one_line(proc, StorageFull.exit_code)
        assert "the backups folder's filesystem is full" in line and "free of 2.0 MiB" in line
        assert line.endswith("nothing was kept")
        assert listed(fresh.settings) == []
        assert run_cli(fresh.settings, "backup.db").returncode == 0  # the space was given back
        assert len(listed(fresh.settings)) == 1
    assert fingerprint(fresh) == before


def test_disk_full_during_the_pre_migration_backup_applies_nothing(fresh: Fresh, tmp_path: Path) -> None:
    populate(fresh, blob_bytes=3_000_000)  # the dump alone does not fit
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "20990101000000_add_column.sql").write_text(
        "-- migrate:up\nALTER TABLE users ADD COLUMN nickname text;\n-- migrate:down\n"
        "ALTER TABLE users DROP COLUMN nickname;\n")
    before = fingerprint(fresh)
    with tmpfs(fresh.settings.env.backups_dir, "1m"):
        proc = run_cli(fresh.settings, "migrate.apply", migrations=migrations)
        line = one_line(proc, MigrationError.exit_code)
        assert "pre-migration backup failed, so no migration was applied" in line
        assert "the backups folder's filesystem is full" in line and "nothing was kept" in line
        assert listed(fresh.settings) == []
    assert fingerprint(fresh) == before  # no column added, no history table, no row changed
