"""`invoke check` (the guide's validate-deployment.sh) on real PostgreSQL and Redis: each check shown
failing by a planted fault and passing once it is repaired."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from stackops.backup import create_backup
from stackops.config import Settings
from stackops.deploycheck import check_deployment
from stackops.errors import CheckFailed
from stackops.migrate.engine import apply
from stackops.report import NullReporter
from stackops.verify import verify_backup
from tests.conftest import Fresh, Harness, cli_env, free_port, invoke_cli
from tests.integration.conftest import with_migrations, write_migration

pytestmark = pytest.mark.integration


def failing(settings: Settings, fresh: Fresh, **kwargs: object) -> list[str]:
    result = check_deployment(settings, fresh.runtime, report=NullReporter(), **kwargs)  # type: ignore[arg-type]
    return [c.name for c in result.failed]


@contextmanager
def mounted(folder: Path, *options: str) -> Iterator[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def ready(fresh: Fresh, tmp_path: Path) -> Settings:
    """An environment that passes every check: no migrations pending, a fresh verified backup."""
    settings = with_migrations(fresh.settings, tmp_path / "migrations")
    (tmp_path / "migrations").mkdir()
    backup = create_backup(settings, fresh.runtime, kind="full", report=NullReporter())
    assert verify_backup(settings, fresh.runtime, backup.id, report=NullReporter()).ok
    assert failing(settings, fresh) == []
    return settings


def test_pending_migration_fails_the_check_until_applied(ready: Settings, fresh: Fresh, tmp_path: Path) -> None:
    write_migration(tmp_path / "migrations", "20240101000000_notes.sql", "CREATE TABLE notes (id bigint);",
                    "DROP TABLE notes;")
    assert failing(ready, fresh) == ["migrations applied and clean"]
    apply(ready, fresh.runtime, report=NullReporter())
    assert failing(ready, fresh) == []


def test_stale_or_missing_backup_fails_the_rpo_check(ready: Settings, fresh: Fresh) -> None:
    later = datetime.now(UTC) + timedelta(hours=27)
    assert failing(ready, fresh, now=later) == ["newest verified backup"]
    backup = create_backup(ready, fresh.runtime, kind="db", report=NullReporter(), now=lambda: later)
    assert failing(ready, fresh, now=later) == ["newest verified backup"]  # taken, but never verified
    verify_backup(ready, fresh.runtime, backup.id, report=NullReporter())
    assert failing(ready, fresh, now=later) == []


def test_unwritable_uploads_folder_fails(ready: Settings, fresh: Fresh) -> None:
    with mounted(ready.env.uploads_dir, "ro", "size=1m"):
        assert failing(ready, fresh) == ["uploads folder writable"]
    assert failing(ready, fresh) == []


def test_low_disk_fails(ready: Settings, fresh: Fresh, tmp_path: Path) -> None:
    small = tmp_path / "small"
    with mounted(small, "size=1m"):
        (small / "filler").write_bytes(b"\0" * (1024 * 1024 - 64 * 1024))
        tight = replace(ready, env=replace(ready.env, uploads_dir=small))
        assert failing(tight, fresh) == ["free disk"]
        (small / "filler").unlink()
        assert failing(tight, fresh) == []


@pytest.mark.local_runtime  # points the environment at a closed Redis port: the compose runtime asks Docker
def test_redis_not_answering_fails_and_the_cli_exits_non_zero(ready: Settings, fresh: Fresh, harness: Harness) -> None:
    gone = replace(ready, env=replace(ready.env, ports=replace(ready.env.ports, redis=free_port())))
    assert "redis answers" in failing(gone, Fresh(gone, harness.runtime(gone)))
    env = cli_env(gone) | {"INVOKE_STACKOPS_MIGRATIONS_DIR": str(ready.migrations.directory)}
    proc = invoke_cli("check", "--env", "test", "--json", env=env)
    assert proc.returncode == CheckFailed.exit_code, proc.stderr
    rows = {c["name"]: c["ok"] for c in json.loads(proc.stdout)["checks"]}
    assert rows["redis answers"] is False and rows["database answers"] is True
    assert proc.stderr.strip().splitlines()[-1].startswith("stackops: ")
    ok = invoke_cli("check", "--env", "test", env=cli_env(ready) | {
        "INVOKE_STACKOPS_MIGRATIONS_DIR": str(ready.migrations.directory)})
    assert ok.returncode == 0, ok.stdout + ok.stderr
