"""Point-in-time recovery through pgBackRest on the local runtime: a cluster of its own (archiving,
restarts, a second cluster beside it), real WAL, real crashes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import psycopg
import pytest

from stackops import pitr
from stackops.config import Pitr, Settings
from stackops.errors import StackopsError
from stackops.report import NullReporter
from stackops.runtime.local import LocalRuntime
from tests.conftest import ROOT, cli_env, invoke_cli
from tests.integration.test_local_runtime import own_env

pytestmark = [pytest.mark.integration, pytest.mark.local_runtime]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Settings, LocalRuntime]]:
    settings = replace(own_env(tmp_path, "test"), pitr=Pitr(archive_timeout=30))
    rt = LocalRuntime(settings)
    rt.up(NullReporter())
    try:
        yield settings, rt
    finally:
        pitr.clean_leftovers(rt, NullReporter())
        rt.down(NullReporter(), remove_data=True)
        if rt.pg_home.is_relative_to("/var/lib/stackops"):  # the server user could not reach tmp_path
            shutil.rmtree(rt.pg_home.parents[1], ignore_errors=True)  # /var/lib/stackops/<this state dir's digest>


def env_for(settings: Settings) -> dict[str, str]:
    return {**cli_env(settings), "INVOKE_STACKOPS_PITR_ARCHIVE_TIMEOUT": str(settings.pitr.archive_timeout)}


def exists(rt: LocalRuntime, table: str) -> bool:
    with psycopg.connect(**rt.conninfo()) as conn:
        return bool(conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0])  # type: ignore[index]


def rows(rt: LocalRuntime, table: str = "notes") -> list[tuple[int, str]] | None:
    with psycopg.connect(**rt.conninfo()) as conn:
        if not conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]:  # type: ignore[index]
            return None
        return [(r[0], r[1]) for r in conn.execute(f"SELECT id, body FROM {table} ORDER BY id")]  # noqa: S608


def test_restore_to_a_noted_time_brings_back_exactly_those_rows(cluster: tuple[Settings, LocalRuntime]) -> None:
    settings, rt = cluster
    env = env_for(settings)
    enabled = invoke_cli("pitr.enable", "--env", "test", env=env)
    assert enabled.returncode == 0, enabled.stderr
    with psycopg.connect(**rt.conninfo(), autocommit=True) as conn:
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL)")
        conn.execute("INSERT INTO notes SELECT i, 'before ' || i FROM generate_series(1, 100) i")
        time.sleep(1.0)
        noted = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
        time.sleep(1.0)
        conn.execute("INSERT INTO notes SELECT i, 'after ' || i FROM generate_series(101, 150) i")
        conn.execute("UPDATE notes SET body = 'changed' WHERE id <= 10")
        conn.execute("CREATE TABLE later (x int)")
        conn.execute("DROP TABLE notes")
    expected = [(i, f"before {i}") for i in range(1, 101)]
    info = invoke_cli("pitr.info", "--env", "test", env=env)
    assert info.returncode == 0 and "full" in info.stdout and "recoverable: from" in info.stdout, info.stderr
    incr = invoke_cli("pitr.backup", "--env", "test", "--type", "incr", env=env)
    assert incr.returncode == 0, incr.stderr

    target = noted.isoformat()
    dry = invoke_cli("pitr.restore", "--to", target, "--env", "test", "--dry-run", env=env)
    assert dry.returncode == 0 and "would stop the live cluster" in dry.stdout, dry.stderr
    assert rows(rt) is None and not list(rt.pg_home.glob("pitr-side-*"))  # a dry run changes nothing

    # kill -9 in the middle of the restore: the live cluster keeps serving, untouched
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "pitr.restore", "--to", target, "--env", "test"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(rt.pg_home.glob("pitr-side-*/PG_VERSION")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert rows(rt) is None and exists(rt, "later")
    with psycopg.connect(**rt.conninfo(), autocommit=True) as conn:
        conn.execute("INSERT INTO later VALUES (1)")  # still serving, still writable

    started = time.monotonic()
    done = invoke_cli("pitr.restore", "--to", target, "--env", "test", env=env)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert rows(rt) == expected  # exactly the rows of the noted moment, none later, none changed
    assert not exists(rt, "later")
    assert len(list(rt.pg_home.glob(f"{pitr.KEPT_PREFIX}*"))) == 1 and not list(rt.pg_home.glob("pitr-side-*"))
    with psycopg.connect(**rt.conninfo(), autocommit=True) as conn:  # the new timeline archives again
        conn.execute("INSERT INTO notes VALUES (1000, 'new timeline')")
    again = invoke_cli("pitr.info", "--env", "test", env=env)
    assert again.returncode == 0 and again.stdout.count(" full ") >= 2, again.stdout
    print(f"\npitr.restore to a noted time (restore beside, replay, checks, swap, new full backup): {seconds:.1f}s")


def test_measured_rpo_after_a_crash_is_within_archive_timeout(cluster: tuple[Settings, LocalRuntime]) -> None:
    settings, rt = cluster
    pitr.enable(settings, rt, report=NullReporter())
    last_written = 0.0
    with psycopg.connect(**rt.conninfo(), autocommit=True) as conn:
        conn.execute("CREATE TABLE ticks (id serial PRIMARY KEY, at double precision NOT NULL)")
        end = time.time() + settings.pitr.archive_timeout + 8
        while time.time() < end:
            now = time.time()
            conn.execute("INSERT INTO ticks (at) VALUES (%s)", (now,))  # committed (autocommit)
            last_written = now
            time.sleep(0.2)
    pid = rt.postgres_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # the host dies: only the pgBackRest repository survives
    crashed = rt.pg_home / "data-lost"
    while rt.postgres_pid() is not None:
        time.sleep(0.05)
    # the plan says what a restore from the repository loses against a plain restart (crash recovery)
    plan = pitr.restore_plan(settings, rt, None)
    assert any("is not running" in w and "env.up" in w for w in plan.warnings), plan.warnings
    empty = invoke_cli("pitr.restore", "--to", "", "--env", "test", "--dry-run", env=env_for(settings))
    assert empty.returncode == 2 and "--to is empty" in empty.stderr, empty.stderr  # an unset variable: refused
    assert len(empty.stderr.strip().splitlines()) == 1, empty.stderr
    os.rename(rt.pg_data, crashed)
    started = time.monotonic()
    side_dir, side, _, _ = pitr.restore_beside(settings, rt, None, report=NullReporter())
    seconds = time.monotonic() - started
    try:
        with psycopg.connect(**side.conninfo()) as conn:
            recovered = conn.execute("SELECT max(at), count(*) FROM ticks").fetchone()
    finally:
        pitr.stop_side(rt, side_dir)
        os.rename(crashed, rt.pg_data)
    assert recovered is not None and recovered[0] is not None
    rpo = last_written - float(recovered[0])
    print(f"\nmeasured RPO after a crash: {rpo:.1f}s of writes lost (archive_timeout "
          f"{settings.pitr.archive_timeout}s, {recovered[1]} rows recovered); restore from the repository "
          f"to the end of the archive: {seconds:.1f}s")
    assert 0 <= rpo <= settings.pitr.archive_timeout + 5 <= 60


def test_a_failed_enable_turns_archiving_off_again(cluster: tuple[Settings, LocalRuntime]) -> None:
    """The cluster was recreated (env.down --remove-data, env.up) beside the old cluster's repository: the
    stanza no longer matches and pitr.enable fails. Before, archive_mode stayed on with an archive-push that
    always failed, so pg_wal kept every segment until the disk filled."""
    settings, rt = cluster
    pitr.enable(settings, rt, report=NullReporter())
    rt.down(NullReporter(), remove_data=True)
    rt.up(NullReporter())
    with pytest.raises(StackopsError):
        pitr.enable(settings, rt, report=NullReporter())
    with psycopg.connect(**rt.conninfo(), autocommit=True) as conn:
        assert conn.execute("SHOW archive_mode").fetchone() == ("off",)
        failed = conn.execute("SELECT failed_count FROM pg_stat_archiver").fetchone()
        conn.execute("CREATE TABLE after_failure (x int)")
        conn.execute("SELECT pg_switch_wal()")
        time.sleep(2)
        assert conn.execute("SELECT failed_count FROM pg_stat_archiver").fetchone() == failed  # nothing tries


def _write(rt: LocalRuntime, first: int, last: int, body: str) -> None:
    with psycopg.connect(**rt.conninfo(), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS notes (id int PRIMARY KEY, body text NOT NULL)")
        conn.execute("INSERT INTO notes SELECT i, %s FROM generate_series(%s::int, %s::int) i", (body, first, last))


def _noted(rt: LocalRuntime) -> str:
    """A moment with a second of quiet on either side (commit times are never near it)."""
    time.sleep(1.0)
    with psycopg.connect(**rt.conninfo()) as conn:
        moment = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
    time.sleep(1.0)
    return str(moment.isoformat())


def _ids(rt: LocalRuntime) -> list[int]:
    return [i for i, _ in rows(rt) or []]


def test_a_second_restore_to_a_later_time_follows_the_timeline_that_was_live_then(
        cluster: tuple[Settings, LocalRuntime]) -> None:
    """Rows A at t1, rows B at t2; restore to t1 (timeline 2); then restore to t2. Before, recovery followed
    the newest timeline (recovery_target_timeline=latest): timeline 2's commits all carry times after the first
    restore, so replay stopped at its branch point and the t1 state came back, reported as success."""
    settings, rt = cluster
    env = env_for(settings)
    assert invoke_cli("pitr.enable", "--env", "test", env=env).returncode == 0
    _write(rt, 1, 50, "A")
    t1 = _noted(rt)
    _write(rt, 51, 100, "B")
    t2 = _noted(rt)
    _write(rt, 101, 120, "C")

    first = invoke_cli("pitr.restore", "--to", t1, "--env", "test", env=env)
    assert first.returncode == 0, first.stderr
    assert _ids(rt) == list(range(1, 51))
    _write(rt, 201, 210, "D")  # on timeline 2
    t3 = _noted(rt)

    plan = invoke_cli("pitr.restore", "--to", t2, "--env", "test", "--dry-run", env=env)
    second = invoke_cli("pitr.restore", "--to", t2, "--env", "test", env=env)
    assert second.returncode == 0, second.stderr
    assert _ids(rt) == list(range(1, 101))  # the t2 state of timeline 1: A and B, not C, not D
    assert "along timeline 1 (now timeline 3)" in second.stdout, second.stdout
    assert plan.returncode == 0 and "timeline 1" in plan.stdout, plan.stdout + plan.stderr
    recorded = pitr.timeline_records(settings, pitr.info(settings, rt).system_id)
    assert recorded is not None and sorted(recorded) == [2, 3] and recorded[3].parent == 1, recorded
    # the check after recovery, on the real result (timeline 3, from timeline 1 before the first commit after t2):
    # it refuses what the old restore produced, a recovery along another timeline than the one live at the target
    moment = datetime.fromisoformat(t2)
    right = pitr.TimelineChoice(1, True, replace(pitr.info(settings, rt).backups[0], lsn_stop=""), "", None, None)
    with psycopg.connect(**rt.conninfo(), autocommit=True) as conn:
        assert pitr.verify_recovery(conn, right, moment)[0] == 3
        with pytest.raises(StackopsError, match="followed timeline 1, not timeline 2"):
            pitr.verify_recovery(conn, replace(right, timeline=2), moment)
        with pytest.raises(StackopsError, match="after timeline 1 stopped being live"):
            pitr.verify_recovery(conn, replace(right, until=moment), moment)

    plan = invoke_cli("pitr.restore", "--to", t3, "--env", "test", "--dry-run", env=env)
    assert plan.returncode == 0 and "timeline 2" in plan.stdout, plan.stdout + plan.stderr
    third = invoke_cli("pitr.restore", "--to", t3, "--env", "test", env=env)
    assert third.returncode == 0, third.stderr
    assert _ids(rt) == [*range(1, 51), *range(201, 211)]  # timeline 2 at t3: A and D


def test_a_target_on_a_timeline_whose_backups_expired_is_refused_and_nothing_changes(
        cluster: tuple[Settings, LocalRuntime]) -> None:
    settings, rt = cluster
    env = env_for(settings)
    assert settings.pitr.retention_full == 2
    assert invoke_cli("pitr.enable", "--env", "test", env=env).returncode == 0
    _write(rt, 1, 50, "A")
    t1 = _noted(rt)
    _write(rt, 51, 100, "B")
    t2 = _noted(rt)
    first = invoke_cli("pitr.restore", "--to", t1, "--env", "test", env=env)
    assert first.returncode == 0, first.stderr  # timeline 2, and its full backup
    full = invoke_cli("pitr.backup", "--env", "test", "--type", "full", env=env)
    assert full.returncode == 0, full.stderr  # retention_full=2: timeline 1's only backup expires
    _write(rt, 301, 305, "after")

    refused = invoke_cli("pitr.restore", "--to", t2, "--env", "test", env=env)

    assert refused.returncode != 0, refused.stdout
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "timeline 1" in refused.stderr and "expired" in refused.stderr, refused.stderr
    assert _ids(rt) == [*range(1, 51), *range(301, 306)]  # the live data untouched, still serving
    assert not list(rt.pg_home.glob(f"{pitr.SIDE_PREFIX}*"))
