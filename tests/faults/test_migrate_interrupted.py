"""A migration outside a transaction killed with kill -9 in the middle of its steps: its history row
stays ``running`` and nobody holds the migration lock. Before, the next ``migrate.apply`` read that row
without the lock, found nothing pending and said "nothing to do: every migration is applied" (exit 0), and
`check`'s own hint led straight back to it. Now it refuses in one line with the way back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, cli_env
from tests.faults.backup_helpers import one_line
from tests.faults.conftest import Fresh
from tests.integration.conftest import write_migration

pytestmark = pytest.mark.integration


def _state(fresh: Fresh, version: str) -> str | None:
    with fresh.connect() as conn:
        if not conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()[0]:  # type: ignore[index]
            return None
        row = conn.execute("SELECT status FROM schema_migrations WHERE version = %s", (version,)).fetchone()
        return str(row[0]) if row else None


def test_apply_after_a_killed_no_transaction_migration_refuses_instead_of_nothing_to_do(
        fresh: Fresh, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    write_migration(folder, "20240101000000_items.sql", "CREATE TABLE items (id int PRIMARY KEY);", "DROP TABLE items;")
    write_migration(folder, "20240102000000_slow.sql", "INSERT INTO items VALUES (1);\nSELECT pg_sleep(30);",
                    "DELETE FROM items;", transactional=False)
    env = cli_env(fresh.settings, migrations=folder)
    argv = [sys.executable, "-m", "invoke", "migrate.apply", "--env", "test"]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while _state(fresh, "20240102000000") != "running":
            assert proc.poll() is None and time.monotonic() < deadline, "the slow migration never started"
            time.sleep(0.1)
        time.sleep(0.5)  # inside pg_sleep: the first step ran, the second is running
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    with fresh.connect(autocommit=True) as conn:  # the server ends the killed client's session on its own time
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                     "AND pid <> pg_backend_pid()")
    again = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                           stdin=subprocess.DEVNULL)
    line = one_line(again, 17)
    assert "refusing to apply" in line and "migrate.rollback --restore" in line, line
    assert _state(fresh, "20240102000000") == "running"  # nothing was touched
