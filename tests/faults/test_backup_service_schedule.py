"""Issue 9, item 15: the backup service's health check counts a manual verified backup as fresh and
stops showing an error once a newer success exists; its loop reads the shared schedule. (The schedule
itself: tests/unit/test_schedule.py; the service on Docker: tests/compose/test_backup_service.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from stackops.backupset import MANIFEST, VERIFICATION, newest_verified, seal
from tests.conftest import ROOT

OPS = ROOT / "compose" / "images" / "ops"


def _backup(folder: Path, backup_id: str, started: datetime, verified: bool | None) -> None:
    (folder / backup_id).mkdir(parents=True)
    manifest = {"format": "stackops-backup/1", "id": backup_id, "kind": "full", "started_at": started.isoformat(),
                "files": {}, "compression": "zstd", "duration_s": 1.0}
    (folder / backup_id / MANIFEST).write_text(json.dumps(seal(manifest)))
    if verified is not None:
        (folder / backup_id / VERIFICATION).write_text(json.dumps({"ok": verified}))


def _health(tmp_path: Path, state: dict[str, object] | None, max_age: int = 3600) -> subprocess.CompletedProcess[str]:
    (tmp_path / "state").mkdir(exist_ok=True)
    if state is not None:
        (tmp_path / "state" / "backup-loop.json").write_text(json.dumps(state))
    env = {**os.environ, "STACKOPS_LIB": str(ROOT / "lib"), "STACKOPS_STATE": str(tmp_path / "state"),
           "STACKOPS_BACKUPS": str(tmp_path / "backups"), "BACKUP_MAX_AGE": str(max_age)}
    return subprocess.run([sys.executable, str(OPS / "stackops-backup-health")], env=env, capture_output=True,
                          text=True, timeout=30)


def test_a_manual_verified_backup_counts_as_fresh_and_clears_the_stale_error(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    backups = tmp_path / "backups"
    # the loop's last try collided with a restore's lock two hours ago; its last success is two days old
    state = {"loop_started": time.time() - 3 * 86400, "last_success": time.time() - 2 * 86400,
             "last_failure": time.time() - 7200, "last_error": "invoke backup exit 5: stackops: cannot start backup"}
    stale = _health(tmp_path, state)
    assert stale.returncode == 1 and stale.stdout.startswith("unhealthy: last successful backup")
    assert "last error: invoke backup exit 5" in stale.stdout

    _backup(backups, "full_manual_unverified", now - timedelta(minutes=5), None)
    _backup(backups, "full_manual_failed", now - timedelta(minutes=4), False)
    _backup(backups, "full_future", now + timedelta(days=1), True)  # a wrong clock must not make it fresh
    assert _health(tmp_path, state).returncode == 1

    _backup(backups, "full_manual", now - timedelta(minutes=30), True)  # an operator's verified backup
    fresh = _health(tmp_path, state)
    assert fresh.returncode == 0, fresh.stdout
    assert fresh.stdout.startswith("healthy: last successful backup") and "full_manual, verified" in fresh.stdout
    assert "last error" not in fresh.stdout and len(fresh.stdout.strip().splitlines()) == 1
    found = newest_verified(backups, now)
    assert found is not None and found.id == "full_manual"


def test_health_without_loop_state_reads_the_backups_folder(tmp_path: Path) -> None:
    assert _health(tmp_path, None).returncode == 1
    _backup(tmp_path / "backups", "full_1", datetime.now(UTC) - timedelta(minutes=1), True)
    assert _health(tmp_path, None).returncode == 0


def test_loop_refuses_a_bad_schedule_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "STACKOPS_LIB": str(ROOT / "lib"), "STACKOPS_STATE": str(tmp_path), "BACKUP_AT": "25:00"}
    proc = subprocess.run([sys.executable, str(OPS / "stackops-backup-loop")], env=env, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 2 and "accepted values are HH:MM" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_a_scheduled_run_in_prod_prunes_unattended_and_records_each_step(tmp_path: Path) -> None:
    """prune confirms in a protected environment and the service has no terminal: its default prune
    command must still delete what retention rejects, and every step after the backup is recorded."""
    backups = tmp_path / "backups"
    now = datetime.now(UTC)
    _backup(backups, "db_older", now - timedelta(hours=2), None)  # the same day: loses its daily slot
    _backup(backups, "db_newer", now - timedelta(hours=1), None)
    (tmp_path / "state").mkdir()
    env = {**os.environ, "STACKOPS_LIB": str(ROOT / "lib"), "STACKOPS_STATE": str(tmp_path / "state"),
           "STACKOPS_ENV": "prod", "BACKUP_COMMAND": "true", "BACKUP_VERIFY_COMMAND": "true",
           "BACKUP_REPORT_COMMAND": f"touch {tmp_path / 'report-refreshed'}",
           "INVOKE_STACKOPS_ENVS_PROD_BACKUPS_DIR": str(backups), "INVOKE_STACKOPS_ENVS_PROD_RUNTIME": "local",
           "INVOKE_STACKOPS_ENVS_PROD_STATE_DIR": str(tmp_path / "stack")}
    env.pop("INVOKE_STACKOPS_OFFSITE_REMOTE", None)
    proc = subprocess.run([sys.executable, str(OPS / "stackops-backup-loop"), "--once"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in backups.iterdir() if not p.name.startswith(".")) == ["db_newer"], proc.stdout
    state = json.loads((tmp_path / "state" / "backup-loop.json").read_text())
    assert state["last_prune_error"] is None and state["last_report_error"] is None
    assert "last_push_error" not in state  # no offsite remote configured: no push step
    assert (tmp_path / "report-refreshed").exists()
