"""The prod backup service with an offsite remote: it pushes before it prunes, so a set retention drops
has reached the remote first; a failed push is recorded in its state and shown by its health line, and
the prune after it deletes no set that was never pushed. The loop runs for real (`--once`, local
runtime, real rclone to a local-path remote); the backup and verify steps stand in as `true`, over
sealed sets with real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from stackops.errors import OffsiteError
from tests.conftest import ROOT
from tests.offsite_support import fake_set, offsite_env

OPS = ROOT / "compose" / "images" / "ops"


def _service(tmp_path: Path, remote_path: Path, **extra: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    env = {**offsite_env(tmp_path / "backups", tmp_path / "stack", ":local:", remote_path, env="prod"),
           "STACKOPS_LIB": str(ROOT / "lib"), "STACKOPS_STATE": str(tmp_path / "state"), "STACKOPS_ENV": "prod",
           "BACKUP_COMMAND": "true", "BACKUP_VERIFY_COMMAND": "true", "BACKUP_REPORT_COMMAND": "true", **extra}
    proc = subprocess.run([sys.executable, str(OPS / "stackops-backup-loop"), "--once"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    state = json.loads((tmp_path / "state" / "backup-loop.json").read_text())
    return proc, state


def _health(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STACKOPS_LIB": str(ROOT / "lib"), "STACKOPS_STATE": str(tmp_path / "state"),
           "STACKOPS_BACKUPS": str(tmp_path / "backups")}
    return subprocess.run([sys.executable, str(OPS / "stackops-backup-health")], env=env, capture_output=True,
                          text=True, timeout=60)


def _sets(tmp_path: Path) -> tuple[str, str]:
    now = datetime.now(UTC)
    fake_set(tmp_path / "backups", "db_older", now - timedelta(minutes=20))  # loses its daily slot
    fake_set(tmp_path / "backups", "db_newer", now - timedelta(minutes=10))
    return "db_older", "db_newer"


def _local(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "backups").iterdir() if not p.name.startswith("."))


def test_the_backup_service_pushes_before_it_prunes(tmp_path: Path) -> None:
    older, newer = _sets(tmp_path)
    proc, state = _service(tmp_path, tmp_path / "nas")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ran = [line.split("running: ", 1)[1] for line in proc.stdout.splitlines() if "running: " in line]
    assert [" ".join(r.split()[:2]) for r in ran] == ["true", "true", "invoke backup.push", "invoke backup.prune",
                                                       "true"]
    assert state["last_push_error"] is None and state["last_prune_error"] is None
    remote = tmp_path / "nas" / "prod"
    assert sorted(p.name for p in remote.iterdir()) == [newer, older]  # the older one reached the remote ...
    assert (remote / older / "offsite.json").exists()
    assert _local(tmp_path) == [newer]  # ... before retention removed it here


def test_a_failed_push_is_recorded_and_the_prune_after_it_keeps_unpushed_sets(tmp_path: Path) -> None:
    older, newer = _sets(tmp_path)
    (tmp_path / "not-a-folder").write_text("the remote's mount went away\n")
    proc, state = _service(tmp_path, tmp_path / "not-a-folder" / "nas")
    assert proc.returncode == 0, proc.stdout  # the verified backup stays a success
    assert state["last_push_error"].startswith(f"exit {OffsiteError.exit_code}: stackops: ")
    assert state["last_prune_error"] is None  # prune ran ...
    assert _local(tmp_path) == [newer, older]  # ... and kept the set that never reached the remote
    health = _health(tmp_path)
    assert health.returncode == 0 and "offsite push FAILED: exit 20" in health.stdout
    assert len(health.stdout.strip().splitlines()) == 1

    # a prune told to include unpushed sets is not run after a failed push
    proc, state = _service(tmp_path, tmp_path / "not-a-folder" / "nas",
                           BACKUP_PRUNE_COMMAND="invoke backup.prune --env prod --yes --include-unpushed")
    assert state["last_prune_error"].startswith("skipped: the push before it failed")
    assert "invoke backup.prune" not in proc.stdout.split("running: invoke backup.push", 1)[1]
    assert _local(tmp_path) == [newer, older]

    # the remote back: the next run pushes both, then prunes the older one
    proc, state = _service(tmp_path, tmp_path / "nas")
    assert state["last_push_error"] is None and state["last_prune_error"] is None, proc.stdout
    assert _local(tmp_path) == [newer]
    assert "offsite push FAILED" not in _health(tmp_path).stdout
