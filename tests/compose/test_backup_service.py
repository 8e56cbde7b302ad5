"""The prod `backup` service (the guide's daily automated backups): with its schedule shortened it
produces a verified backup, and its health check turns unhealthy when the last success is too old."""

from __future__ import annotations

import json
from typing import Any

import pytest

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
