"""`invoke check` with PITR on: failing WAL archiving (the point-in-time promise broken, pg_wal growing)
is a failed check, and a working archive a passing one. Real PostgreSQL, real pgBackRest."""

from __future__ import annotations

import time

import psycopg
import pytest

from stackops import pitr
from stackops.config import Settings
from stackops.deploycheck import check_deployment
from stackops.report import Check, NullReporter
from stackops.runtime.local import LocalRuntime
from tests.integration.test_pitr import cluster  # noqa: F401  (the fixture: a cluster of this test's own)

pytestmark = [pytest.mark.integration, pytest.mark.local_runtime]
ROW = "WAL archiving works"


def archiving_row(settings: Settings, rt: LocalRuntime) -> Check | None:
    result = check_deployment(settings, rt, report=NullReporter())
    return next((c for c in result.checks if c.name == ROW), None)


def switch_wal(rt: LocalRuntime) -> None:
    with psycopg.connect(**rt.conninfo(), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS wal_filler (x int)")
        conn.execute("INSERT INTO wal_filler SELECT generate_series(1, 1000)")
        conn.execute("SELECT pg_switch_wal()")


def wait_for(settings: Settings, rt: LocalRuntime, ok: bool, seconds: float = 60.0) -> Check:
    deadline = time.monotonic() + seconds
    while True:
        row = archiving_row(settings, rt)
        assert row is not None
        if row.ok is ok or time.monotonic() > deadline:
            return row
        time.sleep(1.0)


def test_failing_wal_archiving_fails_the_check_until_it_works_again(
        cluster: tuple[Settings, LocalRuntime]) -> None:  # noqa: F811
    settings, rt = cluster
    assert archiving_row(settings, rt) is None  # archiving off: no row (nothing to promise)
    pitr.enable(settings, rt, report=NullReporter())
    switch_wal(rt)
    row = wait_for(settings, rt, True)
    assert row.ok, row.detail

    archive = pitr.Repo(settings, rt).repo / "archive"
    away = archive.with_name("archive.away")
    archive.rename(away)  # the repository's archive gone (a lost mount, a deleted folder)
    try:
        switch_wal(rt)
        row = wait_for(settings, rt, False)
        assert not row.ok and "fails since" in row.detail and "pg_wal grows" in row.detail, row.detail
        assert ROW in [c.name for c in check_deployment(settings, rt, report=NullReporter()).failed]
    finally:
        away.rename(archive)
    switch_wal(rt)  # wakes the archiver, which retries the failed segment first
    row = wait_for(settings, rt, True, seconds=120.0)
    assert row.ok, row.detail
