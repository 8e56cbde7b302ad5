"""The local runtime against real PostgreSQL and Redis processes (no mocks)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from stackops.config import Settings
from stackops.errors import ProtectedEnvironment, RuntimeRefused
from stackops.report import NullReporter
from stackops.runtime.external import ExternalRuntime
from stackops.runtime.local import LocalRuntime
from tests.conftest import ROOT, Harness, free_port, make_settings

pytestmark = [pytest.mark.integration, pytest.mark.local_runtime]


def own_env(tmp: Path, name: str = "dev", runtime: str = "local", **extra: object) -> Settings:
    tmp.chmod(0o755)
    return make_settings(
        name, runtime=runtime, state_dir=str(tmp / f"state-{name}"), uploads_dir=str(tmp / f"uploads-{name}"),
        backups_dir=str(tmp / f"backups-{name}"),
        ports={"postgres": str(free_port()), "redis": str(free_port()), "backend": str(free_port())}, **extra,
    )


@pytest.fixture
def stopper() -> Iterator[list[LocalRuntime]]:
    started: list[LocalRuntime] = []
    yield started
    for rt in started:
        rt.down(NullReporter())


def write(rt: LocalRuntime, value: str) -> None:
    with psycopg.connect(**rt.conninfo()) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS notes (body text)")
        conn.execute("INSERT INTO notes VALUES (%s)", (value,))
    redis.Redis.from_url(rt.redis_url()).set("session:1", value)


def read(rt: LocalRuntime) -> tuple[list[str], bytes | None]:
    with psycopg.connect(**rt.conninfo()) as conn:
        exists = conn.execute("SELECT to_regclass('notes') IS NOT NULL").fetchone()
        rows = [r[0] for r in conn.execute("SELECT body FROM notes ORDER BY 1")] if exists and exists[0] else []
    return rows, redis.Redis.from_url(rt.redis_url()).get("session:1")


def test_data_survives_down_and_up(tmp_path: Path, stopper: list[LocalRuntime]) -> None:
    rt = LocalRuntime(own_env(tmp_path))
    stopper.append(rt)
    rt.up(NullReporter())
    write(rt, "kept")
    rt.down(NullReporter())
    assert [s.state for s in rt.status()][:2] == ["stopped", "stopped"]
    details = [s.detail for s in rt.status()][:2]
    assert details == [f"stopped — data kept in folder {rt.pg_data}", f"stopped — data kept in folder {rt.redis_dir}"]
    rt.up(NullReporter())
    assert read(rt) == (["kept"], b"kept")


def test_dev_and_test_run_together_without_touching_each_other(tmp_path: Path,
                                                                stopper: list[LocalRuntime]) -> None:
    dev, test = LocalRuntime(own_env(tmp_path, "dev")), LocalRuntime(own_env(tmp_path, "test"))
    stopper += [dev, test]
    dev.up(NullReporter())
    test.up(NullReporter())
    assert dev.env.ports != test.env.ports
    assert dev.pg_data != test.pg_data and dev.redis_dir != test.redis_dir
    write(dev, "only in dev")
    assert read(dev) == (["only in dev"], b"only in dev")
    assert read(test) == ([], None)
    assert all(s.healthy for s in dev.status()[:2]) and all(s.healthy for s in test.status()[:2])


def test_down_twice_and_up_twice_are_harmless(tmp_path: Path, stopper: list[LocalRuntime]) -> None:
    rt = LocalRuntime(own_env(tmp_path))
    stopper.append(rt)
    rt.up(NullReporter())
    pids = [s.pid for s in rt.status()[:2]]
    rt.up(NullReporter())
    assert [s.pid for s in rt.status()[:2]] == pids
    rt.down(NullReporter())
    report = NullReporter()
    rt.down(report)
    assert "PostgreSQL already stopped" in "\n".join(report.lines)


def test_killed_servers_and_stale_pid_files_are_recovered(tmp_path: Path, stopper: list[LocalRuntime]) -> None:
    rt = LocalRuntime(own_env(tmp_path))
    stopper.append(rt)
    rt.up(NullReporter())
    write(rt, "before the crash")
    time.sleep(1.2)  # Redis fsyncs its append-only file every second
    pg_pid, redis_pid = (s.pid for s in rt.status()[:2])
    assert pg_pid and redis_pid
    os.kill(pg_pid, signal.SIGKILL)
    os.kill(redis_pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while rt.status()[0].state == "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    # the pid files still name the dead servers; make one name a live process that is not a server
    decoy = subprocess.Popen(["sleep", "30"])
    try:
        pidfile = rt.pg_data / "postmaster.pid"
        lines = pidfile.read_text().splitlines()
        pidfile.write_text("\n".join([str(decoy.pid), *lines[1:]]) + "\n")
        assert (rt.redis_dir / "redis.pid").exists()
        report = NullReporter()
        rt.up(report)
    finally:
        decoy.kill()
    assert any("stale PostgreSQL pid file" in line for line in report.lines)
    assert any("stale Redis pid file" in line for line in report.lines)
    assert read(rt) == (["before the crash"], b"before the crash")


def test_remove_data_is_refused_when_protected_and_allowed_only_when_asked(tmp_path: Path,
                                                                           stopper: list[LocalRuntime]) -> None:
    prod = LocalRuntime(own_env(tmp_path, "prod"))
    stopper.append(prod)
    prod.up(NullReporter())
    write(prod, "precious")
    with pytest.raises(ProtectedEnvironment, match="docker-compose down -v"):
        prod.down(NullReporter(), remove_data=True)
    prod.down(NullReporter())
    prod.up(NullReporter())
    assert read(prod)[0] == ["precious"]
    dev = LocalRuntime(own_env(tmp_path, "dev"))
    stopper.append(dev)
    dev.up(NullReporter())
    write(dev, "scratch")
    dev.down(NullReporter(), remove_data=True)
    dev.up(NullReporter())
    assert read(dev) == ([], None)


def test_external_runtime_refuses_lifecycle_but_serves_data(harness: Harness, tmp_path: Path) -> None:
    local = harness.runtime()
    secret = tmp_path / "password"
    secret.write_text(local.conninfo()["password"])
    settings = make_settings("test", runtime="external", db_host="127.0.0.1", db_password_file=str(secret),
                             ports={"postgres": str(local.env.ports.postgres), "redis": str(local.env.ports.redis),
                                    "backend": "18000"})
    ext = ExternalRuntime(settings)
    with pytest.raises(RuntimeRefused, match="runtime is 'external'"):
        ext.up(NullReporter())
    with pytest.raises(RuntimeRefused):
        ext.down(NullReporter())
    assert ext.status()[0].healthy is True
    out = subprocess.run([*ext.pg_cmd("psql").argv, "-d", "postgres", "-Atc", "select 40 + 2"],
                         env={**os.environ, **ext.pg_cmd("psql").env}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "42"
    assert secret.read_text() not in " ".join(ext.pg_cmd("psql").argv)


def test_env_tasks_through_the_cli(tmp_path: Path) -> None:
    """invoke env.up / env.status --json / env.down (twice) as an operator runs them."""
    tmp_path.chmod(0o755)
    env = {
        **os.environ,
        "INVOKE_STACKOPS_ENVS_TEST_RUNTIME": "local",
        "INVOKE_STACKOPS_ENVS_TEST_STATE_DIR": str(tmp_path / "state"),
        "INVOKE_STACKOPS_ENVS_TEST_UPLOADS_DIR": str(tmp_path / "uploads"),
        "INVOKE_STACKOPS_ENVS_TEST_PORTS_POSTGRES": str(free_port()),
        "INVOKE_STACKOPS_ENVS_TEST_PORTS_REDIS": str(free_port()),
    }

    def inv(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=120)

    try:
        up = inv("env.up", "--env", "test")
        assert up.returncode == 0, up.stderr
        status = json.loads(inv("env.status", "--env", "test", "--json").stdout)
        assert status["healthy"] is True and status["runtime"] == "local"
        assert {s["name"]: s["state"] for s in status["services"]}["postgres"] == "running"
    finally:
        first, second = inv("env.down", "--env", "test"), inv("env.down", "--env", "test")
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    assert inv("env.status", "--env", "test").returncode == 1


def test_auto_stays_local_once_the_data_lives_there(tmp_path: Path, stopper: list[LocalRuntime]) -> None:
    """Starting a Docker engine later must not send `auto` to an empty compose stack."""
    from stackops.runtime.select import resolve_kind

    settings = own_env(tmp_path, runtime="auto")
    rt = LocalRuntime(settings)
    stopper.append(rt)
    rt.up(NullReporter())
    kind, why = resolve_kind(settings)
    assert kind == "local" and str(settings.env.state_dir) in why
    rt.down(NullReporter(), remove_data=True)
    assert str(settings.env.state_dir) not in resolve_kind(settings)[1]
