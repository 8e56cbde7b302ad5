"""The guide's scripts, every command line as the guide writes it, run verbatim from the repository root
(database/backup-restore.sh, database/migration-workflow.sh, scripts/validate-deployment.sh)."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from stackops.backupset import list_backups
from tests.conftest import ROOT, Fresh, cli_env, invoke_cli
from tests.integration.conftest import write_migration

pytestmark = pytest.mark.integration

# In the guide's order: "Before Any Database Update", "Safe Update Process", "Recovery Procedures",
# "Backup Verification". `create` is followed by writing the migration's SQL (what an operator does).
GUIDE = [
    "./database/backup-restore.sh backup",
    "./database/backup-restore.sh backup_db",
    "./database/backup-restore.sh list",
    "./database/migration-workflow.sh create add_new_feature",
    "./database/migration-workflow.sh apply migrations/20240618_add_new_feature.sql",
    "./database/migration-workflow.sh check",
    "./database/migration-workflow.sh rollback",
    "./database/backup-restore.sh restore_db backups/pre_migration_TIMESTAMP.sql.gz",
    "./database/backup-restore.sh restore_db backups/database_backup_TIMESTAMP.sql.gz",
    "./database/backup-restore.sh restore_db backups/database_backup_LATEST.sql.gz",
    "./database/migration-workflow.sh apply migrations/20240618_add_new_feature.sql",
    "./database/backup-restore.sh backup",
    "./database/backup-restore.sh restore_db backups/test_backup.sql.gz",
    "./database/migration-workflow.sh check",
    "./scripts/validate-deployment.sh",
]


def test_every_guide_script_line_runs_verbatim(fresh: Fresh, migrations_dir: Path) -> None:
    write_migration(migrations_dir, "20240101000000_items.sql", "CREATE TABLE items (id bigint PRIMARY KEY);",
                    "DROP TABLE items;")
    env = cli_env(fresh.settings, migrations=migrations_dir) | {"STACKOPS_ENV": "test"}
    assert invoke_cli("migrate.apply", "--env", "test", env=env).returncode == 0
    for line in GUIDE:
        proc = subprocess.run(["bash", "-c", line], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, f"{line}\n{proc.stdout}\n{proc.stderr}"
        if line.endswith("create add_new_feature"):
            (created,) = migrations_dir.glob("*_add_new_feature.sql")
            assert created.name != "20240618_add_new_feature.sql"  # created with today's full timestamp
            write_migration(migrations_dir, created.name, "CREATE TABLE feature (id bigint);", "DROP TABLE feature;")
        if line.endswith("list"):
            assert "full_" in proc.stdout and "db_" in proc.stdout
        if "restore_db backups/pre_migration" in line:
            assert "pre_migration_" in proc.stdout + proc.stderr
    with fresh.connect() as conn:
        assert conn.execute("SELECT to_regclass('public.feature') IS NOT NULL").fetchone() == (True,)
    assert any(b.verification and b.verification.get("ok") for b in list_backups(fresh.settings))


def test_shims_refuse_an_unknown_command_with_usage() -> None:
    for script in ("database/backup-restore.sh", "database/migration-workflow.sh"):
        proc = subprocess.run([str(ROOT / script), "frobnicate"], capture_output=True, text=True)
        assert proc.returncode == 2 and "usage:" in proc.stderr
    assert shlex.split(GUIDE[0])[0] == "./database/backup-restore.sh"
