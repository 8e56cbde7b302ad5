"""The prod `backup` service (the guide's daily automated backups): with its schedule shortened it
produces a verified backup, and its health check turns unhealthy when the last success is too old."""

from __future__ import annotations

import json
import shutil
from typing import Any

import pytest

from stackops.proc import Cmd, run
from stackops.report import NullReporter
from tests.compose.conftest import cli, compose, wait_for
from tests.compose.harness import IT_ENV

pytestmark = [pytest.mark.compose,
              pytest.mark.skipif(IT_ENV != "prod", reason="runs in the prod session (the service exists only in prod)")]


def _backups() -> list[dict[str, Any]]:
    return list(json.loads(cli("backup.list", "--env", "prod", "--json").stdout))


def _health(rt: Any) -> tuple[str, str]:
    c = rt.containers()["backup"]
    health = c.attrs["State"].get("Health") or {}
    log = health.get("Log") or [{}]
    return str(health.get("Status")), str(log[-1].get("Output", "")).strip()


def _recreate_backup_service(rt: Any, **variables: str) -> None:
    compose(rt, "up", "-d", "--no-deps", "--force-recreate", "backup", extra_env=variables)


def test_backup_service_takes_verified_backups_on_schedule_and_reports_their_age(rt: Any) -> None:
    known = {b["id"] for b in _backups()}
    try:
        _recreate_backup_service(rt, BACKUP_FIRST_DELAY="0", BACKUP_INTERVAL="600", BACKUP_MAX_AGE="3600",
                                 BACKUP_HEALTH_INTERVAL="2s")
        new = wait_for(lambda: [b for b in _backups() if b["id"] not in known and b["verification"]],
                       240, "a verified backup from the backup service", every=3)
        assert new[0]["kind"] == "full" and new[0]["verification"]["ok"] is True
        _, output = wait_for(lambda: _health(rt) if "last successful backup" in _health(rt)[1] else None, 60,
                             "the backup service's health to report the new backup")
        assert _health(rt)[0] == "healthy"
        assert "last successful backup" in output and "max 3600s" in output

        # No backup due for a day, the last success older than 5 s allows: unhealthy, saying why.
        _recreate_backup_service(rt, BACKUP_FIRST_DELAY="86400", BACKUP_INTERVAL="86400", BACKUP_MAX_AGE="5",
                                 BACKUP_HEALTH_INTERVAL="2s")
        _, output = wait_for(lambda: _health(rt) if _health(rt)[0] == "unhealthy" else None, 60,
                                  "the backup service to turn unhealthy")
        assert output.startswith("unhealthy: last successful backup") and "(max 5s)" in output
        assert {s.name: s for s in rt.status()}["backup"].healthy is False
    finally:
        _recreate_backup_service(rt)  # the harness schedule (idle) again
        rt.wait_healthy(NullReporter(), timeout=120)


def test_backup_service_pushes_its_verified_backup_offsite_before_pruning(rt: Any) -> None:
    """One run of the service's loop in its own container, with a local-path remote inside the backups
    volume: backup, verify, push (rclone and age from the ops image), then prune (dry run here: the
    harness's other backups stay), each recorded in a state of its own."""
    remote = rt.settings.env.backups_dir / ".offsite-it"  # /backups/.offsite-it in the container
    shutil.rmtree(remote, ignore_errors=True)
    known = {b["id"] for b in _backups()}
    offsite = {"INVOKE_STACKOPS_OFFSITE_REMOTE": ":local:", "INVOKE_STACKOPS_OFFSITE_PATH": "/backups/.offsite-it"}
    variables = {**offsite, "STACKOPS_STATE": "/tmp/offsite-it-state", "BACKUP_REPORT_COMMAND": "",
                 "BACKUP_PRUNE_COMMAND": "invoke backup.prune --env prod --dry-run"}
    cmd = rt.compose_cmd("exec", "-T", *[f"--env={k}={v}" for k, v in variables.items()], "backup",
                         "stackops-ops-entrypoint", "stackops-backup-loop", "--once")
    try:
        proc = run(Cmd(cmd.argv, cmd.env, cwd=cmd.cwd), timeout=600, check=False)
        out = proc.stdout.decode()
        assert proc.returncode == 0, out + proc.stderr.decode()
        ran = [line.split("running: ", 1)[1].split()[1] for line in out.splitlines() if "running: " in line]
        assert ran == ["backup", "backup.verify", "backup.push", "backup.prune"], out
        new = [b for b in _backups() if b["id"] not in known]
        assert len(new) == 1 and new[0]["verification"]["ok"] is True, out
        index = json.loads((remote / "prod" / new[0]["id"] / "offsite.json").read_text())
        assert index["id"] == new[0]["id"] and index["manifest_sha256"]
        listed = json.loads(cli("backup.list", "--env", "prod", "--json", extra_env={
            **offsite, "INVOKE_STACKOPS_OFFSITE_PATH": str(remote)}).stdout)
        assert {b["id"]: b["where"] for b in listed}[new[0]["id"]] == "both"
    finally:
        shutil.rmtree(remote, ignore_errors=True)
