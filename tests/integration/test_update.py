"""`invoke update` (the guide's safe update) on the data half: backup, migrations, check, automatic
rollback and kill -9 recovery, through the real CLI. On the local runtime images do not apply; the
compose half (images, downtime) is in tests/compose/test_update.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stackops.backupset import list_backups
from stackops.errors import CheckFailed, PredeployFailed, UpdateFailed, UpdateRefused
from tests.conftest import ROOT, Fresh, cli_env, invoke_cli
from tests.integration.conftest import snapshot, write_migration
from tests.integration.test_deploy_check import mounted

pytestmark = pytest.mark.integration

TABLE = ("CREATE TABLE items (id bigint PRIMARY KEY, label text);", "DROP TABLE items;")
NOTES = ("ALTER TABLE items ADD COLUMN note text;", "ALTER TABLE items DROP COLUMN note;")


@pytest.fixture
def stack(fresh: Fresh, migrations_dir: Path) -> tuple[Fresh, dict[str, str]]:
    """An environment at migration 1 with rows and upload files, and the CLI environment pointing at it."""
    write_migration(migrations_dir, "20240101000000_items.sql", *TABLE)
    env = cli_env(fresh.settings, migrations=migrations_dir)
    done = invoke_cli("migrate.apply", "--env", "test", env=env)
    assert done.returncode == 0, done.stderr
    with fresh.connect() as conn:
        conn.execute("INSERT INTO items SELECT g, 'row ' || g FROM generate_series(1, 500) g")
    uploads = fresh.settings.env.uploads_dir
    (uploads / "2024").mkdir(parents=True, exist_ok=True)
    for i in range(5):
        (uploads / "2024" / f"f{i}.bin").write_bytes(os.urandom(2048))
    return fresh, env


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def update(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return invoke_cli("update", "--env", "test", "--json", *args, env=env)


@pytest.mark.local_runtime  # the data half without images; on compose: tests/compose/test_update.py (v1 -> v2)
def test_update_applies_the_pending_migration_with_one_backup_and_keeps_every_row(
        stack: tuple[Fresh, dict[str, str]], migrations_dir: Path) -> None:
    fresh, env = stack
    before = files(fresh.settings.env.uploads_dir)
    write_migration(migrations_dir, "20240102000000_notes.sql", *NOTES)
    dry = update(env, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["migrations_pending"] == ["20240102000000_notes"] and plan["digests_target"] == {}
    assert len(list_backups(fresh.settings)) == 1  # the first apply's pre-migration backup only

    proc = update(env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert out["outcome"] == "updated" and out["ok"] and out["images_apply"] is False
    assert out["migrations_applied"] == ["20240102000000_notes"]
    steps = [s["step"] for s in out["steps"]]
    assert steps[:4] == ["preflight", "backup", "verify backup checksums", "record digests"]
    assert "migrations" in steps and "check" in steps and all(s["seconds"] >= 0 for s in out["steps"])
    assert out["downtime_s"] == 0.0  # nothing stopped on the local runtime
    kinds = sorted(b.kind for b in list_backups(fresh.settings))
    assert kinds == ["full", "pre_migration"], "the update's backup stands in for the engine's own"
    assert "pre-migration backup skipped" in proc.stderr
    with fresh.connect() as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (500,)
        assert conn.execute("SELECT count(*) FROM items WHERE note IS NULL").fetchone() == (500,)
    assert files(fresh.settings.env.uploads_dir) == before

    again = invoke_cli("update", "--env", "test", env=env)
    assert again.returncode == 0, again.stderr
    assert "update of test: nothing-changed" in again.stdout
    assert "images do not apply" in again.stdout


def test_failing_migration_rolls_the_database_back_and_says_nothing_was_lost(
        stack: tuple[Fresh, dict[str, str]], migrations_dir: Path) -> None:
    fresh, env = stack
    before, uploads = snapshot(fresh), files(fresh.settings.env.uploads_dir)
    write_migration(migrations_dir, "20240102000000_notes.sql", *NOTES)
    write_migration(migrations_dir, "20240103000000_bad.sql", "ALTER TABLE items ADD COLUMN x int;\nSELECT 1/0;",
                    "ALTER TABLE items DROP COLUMN x;")
    proc = update(env)
    assert proc.returncode == UpdateFailed.exit_code, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert out["outcome"] == "rolled-back" and "20240103000000_bad.sql failed" in out["failure"]
    assert all(c["ok"] for c in out["data_checks"]), out["data_checks"]
    assert snapshot(fresh) == before and files(fresh.settings.env.uploads_dir) == uploads
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("stackops: update of test failed") and "nothing lost" in last


def test_failed_check_after_a_migration_restores_the_backup(
        stack: tuple[Fresh, dict[str, str]], migrations_dir: Path) -> None:
    fresh, env = stack
    before = snapshot(fresh)
    write_migration(migrations_dir, "20240102000000_notes.sql", *NOTES)
    with mounted(fresh.settings.env.uploads_dir, "size=4m") as folder:  # an empty, then read-only, uploads mount
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        proc = update(env)
    assert proc.returncode == UpdateFailed.exit_code, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert "uploads folder writable" in out["failure"] and out["migrations_applied"] == ["20240102000000_notes"]
    assert any("database restored from" in r for r in out["rolled_back"])
    assert snapshot(fresh) == before  # the migration is undone: the backup was restored


def test_preflight_refuses_with_nothing_changed(stack: tuple[Fresh, dict[str, str]], migrations_dir: Path) -> None:
    fresh, env = stack
    (migrations_dir / "20240101000000_items.sql").write_text("-- migrate:up\nCREATE TABLE other (id int);\n")
    count = len(list_backups(fresh.settings))
    proc = update(env)
    assert proc.returncode == UpdateRefused.exit_code, proc.stderr
    assert "no failed or drifted migration" in proc.stderr.strip().splitlines()[-1]
    assert len(list_backups(fresh.settings)) == count


def _killed_at(phase: str, env: dict[str, str]) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "update", "--env", "test"], cwd=ROOT,
                            env=env | {"STACKOPS_FAULT_PAUSE_AT": phase}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    journal = Path(env["INVOKE_STACKOPS_ENVS_TEST_BACKUPS_DIR"]) / ".update-journal.json"
    deadline = time.monotonic() + 120
    while not (journal.exists() and json.loads(journal.read_text()).get("phase") == phase):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


# env.up on the compose runtime would recreate the shared harness project with this test's database and
# uploads folder: that variant runs on the local runtime (tests/compose/test_update.py covers compose recovery)
@pytest.mark.parametrize("finisher", ["update", pytest.param("env.up", marks=pytest.mark.local_runtime)])
def test_kill_9_after_the_migration_is_rolled_back_by_the_next_run(
        stack: tuple[Fresh, dict[str, str]], migrations_dir: Path, finisher: str) -> None:
    fresh, env = stack
    before = snapshot(fresh)
    write_migration(migrations_dir, "20240102000000_notes.sql", *NOTES)
    _killed_at("checking", env)  # the migration is applied, the check has not run
    status = invoke_cli("env.status", "--env", "test", env=env)
    assert status.returncode == 1 and "update: INTERRUPTED in phase checking" in status.stdout
    check = invoke_cli("check", "--env", "test", "--json", env=env)
    assert check.returncode == CheckFailed.exit_code
    rows = {c["name"]: c for c in json.loads(check.stdout)["checks"]}
    assert rows["no update interrupted"]["ok"] is False and "phase checking" in rows["no update interrupted"]["detail"]

    proc = invoke_cli(finisher, "--env", "test", env=env)
    assert "an interrupted update (phase checking) was rolled back" in proc.stderr, proc.stderr
    if finisher == "env.up":
        assert snapshot(fresh) == before  # back to what the update recorded
        assert invoke_cli("update", "--env", "test", env=env).returncode == 0
    else:
        assert proc.returncode == 0, proc.stdout + proc.stderr  # recovered, then updated
    with fresh.connect() as conn:
        assert conn.execute("SELECT count(*) FROM items WHERE note IS NULL").fetchone() == (500,)
    rows = {c["name"]: c["ok"] for c in json.loads(
        invoke_cli("check", "--env", "test", "--json", env=env).stdout)["checks"]}
    assert rows["no update interrupted"] is True


def test_kill_9_before_anything_stopped_is_just_cleared(stack: tuple[Fresh, dict[str, str]],
                                                       migrations_dir: Path) -> None:
    fresh, env = stack
    before = snapshot(fresh)
    write_migration(migrations_dir, "20240102000000_notes.sql", *NOTES)
    _killed_at("pulled", env)
    proc = invoke_cli("update", "--env", "test", "--no-migrate", env=env)
    assert proc.returncode == 0 and "had changed nothing" in proc.stderr, proc.stderr
    assert "nothing-changed" in proc.stdout and snapshot(fresh) == before


def test_predeploy_fails_on_squawk_and_on_a_stale_backup_and_passes_otherwise(
        stack: tuple[Fresh, dict[str, str]], migrations_dir: Path) -> None:
    _, env = stack
    stale = invoke_cli("predeploy", "--env", "test", "--json", env=env)  # no verified backup at all
    assert stale.returncode == PredeployFailed.exit_code, stale.stderr
    rows = {c["name"]: c["ok"] for c in json.loads(stale.stdout)["checks"]}
    assert rows["newest verified backup"] is False
    assert invoke_cli("backup", "--env", "test", env=env).returncode == 0
    assert invoke_cli("backup.verify", "--env", "test", "--latest", env=env).returncode == 0
    ok = invoke_cli("predeploy", "--env", "test", env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr

    write_migration(migrations_dir, "20240102000000_owner.sql", "ALTER TABLE items ADD COLUMN owner text NOT NULL;",
                    "ALTER TABLE items DROP COLUMN owner;")
    bad = invoke_cli("predeploy", "--env", "test", "--json", env=env)
    assert bad.returncode == PredeployFailed.exit_code
    rows = {c["name"]: c for c in json.loads(bad.stdout)["checks"]}
    assert rows["squawk: pending migrations"]["ok"] is False
    assert "adding-required-field" in rows["squawk: pending migrations"]["detail"]
    assert rows["pending migrations tested elsewhere"]["required"] is False  # flagged, not failing
    assert rows["migrations applied and clean"]["ok"] is True  # pending is what a deploy applies
