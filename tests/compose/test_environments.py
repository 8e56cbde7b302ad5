"""The guide's three environments on a real Docker engine: isolation, the three data-safe update
commands, and `down` with volume removal (refused in prod, explicit in dev). A test that stops or
recreates an environment leaves it up and healthy again, so any order works."""

from __future__ import annotations

import os
import subprocess
import uuid
from typing import Any

import pytest
import redis

from stackops.report import NullReporter
from stackops.runtime.compose import ComposeRuntime
from tests.compose.conftest import (
    backend_sha256,
    cli,
    compose,
    get_marker,
    put_marker,
    tree,
    wait_for,
)
from tests.compose.harness import ENVS, project

pytestmark = pytest.mark.compose


def test_dev_test_and_prod_run_at_once_each_with_the_guides_volumes(all_envs: dict[str, ComposeRuntime]) -> None:
    seen: dict[str, str] = {}
    for env in ENVS:
        rt = all_envs[env]
        status = {s.name: s for s in rt.status()}
        for service in ("database", "redis", "backend"):
            assert status[service].state == "running" and status[service].healthy is True, (env, status[service])
        volumes = rt.volumes()
        for logical in (f"postgres_{env}_data", f"redis_{env}_data"):
            assert volumes[logical] == f"{project(env)}_{logical}"
            assert volumes[logical] not in seen, f"{env} shares {volumes[logical]} with {seen.get(volumes[logical])}"
            seen[volumes[logical]] = env
        db = rt.container("database")
        mounts = {m["Destination"]: m for m in db.attrs["Mounts"]}
        assert mounts["/var/lib/postgresql/data"]["Name"] == volumes[f"postgres_{env}_data"]
        backend = rt.container("backend")
        uploads = {m["Destination"]: m["Source"] for m in backend.attrs["Mounts"]}["/app/uploads"]
        assert uploads == str(rt.settings.env.uploads_dir)
    assert len({all_envs[e].settings.env.uploads_dir for e in ENVS}) == 3


def test_prod_publishes_no_database_port_and_is_reached_anyway(all_envs: dict[str, ComposeRuntime]) -> None:
    rt = all_envs["prod"]
    db = rt.container("database")
    assert not (db.attrs["NetworkSettings"]["Ports"] or {}).get("5432/tcp")
    assert not (rt.container("redis").attrs["NetworkSettings"]["Ports"] or {}).get("6379/tcp")
    info = rt.conninfo()
    assert info["host"] != "127.0.0.1"  # the container's address on the project's bridge network
    policy = db.attrs["HostConfig"]["RestartPolicy"]["Name"]
    log = db.attrs["HostConfig"]["LogConfig"]
    assert policy == "unless-stopped" and log["Config"].get("max-size") == "10m"
    assert "appendonly" in " ".join(rt.container("redis").attrs["Config"]["Cmd"])
    assert redis.Redis.from_url(rt.redis_url()).ping()
    assert rt.server_major() == 15


def test_a_row_written_in_one_environment_is_absent_in_the_others(
        it_env: str, all_envs: dict[str, ComposeRuntime]) -> None:
    token = uuid.uuid4().hex
    put_marker(all_envs[it_env], "isolation", token)
    for env in ENVS:
        value = get_marker(all_envs[env], "isolation")
        if env == it_env:
            assert value == token
        else:
            assert value != token, f"a row written in {it_env} is visible in {env}"


def test_the_guides_monitoring_commands_work_on_dev(all_envs: dict[str, ComposeRuntime]) -> None:
    """`docker exec impactbot-v2-database psql -U postgres -d impactbot_v2 -c ...` as the guide prints
    it (the harness names its dev container after its own project)."""
    cli("migrate.apply", "--env", "dev")  # the users table (idempotent)
    rt = all_envs["dev"]
    name = os.environ["DATABASE_CONTAINER_NAME"]
    assert rt.container("database").name == name
    sizes = subprocess.run(["docker", "exec", name, "psql", "-U", "postgres", "-d", "impactbot_v2", "-c", """
  SELECT schemaname, tablename, pg_size_pretty(pg_total_relation_size(schemaname||'.'||tablename)) as size
  FROM pg_tables WHERE schemaname = 'public'
  ORDER BY pg_total_relation_size(schemaname||'.'||tablename) DESC;"""], capture_output=True, text=True, check=False)
    assert sizes.returncode == 0 and "tablename" in sizes.stdout, sizes.stderr
    users = subprocess.run(["docker", "exec", name, "psql", "-U", "postgres", "-d", "impactbot_v2", "-c", """
  SELECT COUNT(*) as total_users,
         COUNT(*) FILTER (WHERE last_login_at > NOW() - INTERVAL '7 days') as active_users
  FROM users;"""], capture_output=True, text=True, check=False)
    assert users.returncode == 0 and "active_users" in users.stdout, users.stderr


def _write_state(rt: Any) -> tuple[str, dict[str, str]]:
    token = uuid.uuid4().hex
    put_marker(rt, "survives", token)
    up = rt.settings.env.uploads_dir
    (up / "org 7" / "reports").mkdir(parents=True, exist_ok=True)
    (up / "org 7" / "reports" / f"report {token[:6]} é.pdf").write_bytes(os.urandom(200_000))
    (up / f"avatar-{token[:6]}.png").write_bytes(os.urandom(5_000))
    return token, tree(up)


def _assert_state(rt: Any, token: str, files: dict[str, str]) -> None:
    assert get_marker(rt, "survives") == token
    assert tree(rt.settings.env.uploads_dir) == files
    for rel, digest in files.items():  # and the backend container sees the same files through its mount
        assert backend_sha256(rt, rel) == digest, rel


@pytest.mark.parametrize("update", ["down && up -d", "pull && up -d --force-recreate", "up -d --build"])
def test_data_survives_the_guides_safe_update_commands(it_env: str, update: str, healthy_after: Any) -> None:
    rt = healthy_after
    token, files = _write_state(rt)
    session_key = f"session:{token}"
    redis.Redis.from_url(rt.redis_url()).set(session_key, "alive")
    before = {s: c.id for s, c in rt.containers().items()}
    if update == "down && up -d":
        compose(rt, "down")
        assert rt.containers() == {}
        compose(rt, "up", "-d")
    elif update == "pull && up -d --force-recreate":
        # Offline-safe `pull`: only images missing locally are pulled (none are), buildable ones skipped.
        compose(rt, "pull", "--policy", "missing", "--ignore-buildable")
        compose(rt, "up", "-d", "--force-recreate")
        after = {s: c.id for s, c in rt.containers().items()}
        assert all(after[s] != before[s] for s in before), "every container was recreated"
    else:
        compose(rt, "up", "-d", "--build")
    rt.wait_healthy(NullReporter(), timeout=180)
    _assert_state(rt, token, files)
    if it_env == "prod":  # append-only Redis on its volume: sessions survive the update
        assert redis.Redis.from_url(rt.redis_url()).get(session_key) == b"alive"


def test_prod_refuses_down_with_volume_removal_with_the_guides_reason(all_envs: dict[str, ComposeRuntime]) -> None:
    rt = all_envs["prod"]
    token = uuid.uuid4().hex
    put_marker(rt, "refusal", token)
    before = rt.volumes()
    proc = cli("env.down", "--env", "prod", "--remove-data", check=False)
    assert proc.returncode == 6, proc.stderr
    assert "DON'T USE THIS" in proc.stderr and "removes volumes and all data" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert rt.volumes() == before
    assert get_marker(rt, "refusal") == token  # nothing was even stopped


def test_down_keeps_data_and_removal_needs_the_explicit_flag(it_env: str, rt: ComposeRuntime) -> None:
    token = uuid.uuid4().hex
    put_marker(rt, "flag", token)
    volumes = rt.volumes()
    cli("env.down", "--env", it_env)
    assert rt.containers() == {} and rt.volumes() == volumes
    cli("env.up", "--env", it_env)
    if it_env == "test":  # the guide's "clean database for each test run"
        assert get_marker(rt, "flag") is None
    else:
        assert get_marker(rt, "flag") == token
    if it_env == "prod":
        return
    cli("env.down", "--env", it_env, "--remove-data")
    assert rt.volumes() == {}
    cli("env.up", "--env", it_env)
    assert get_marker(rt, "flag") is None


def test_waiting_after_a_database_outage_outlasts_the_backends_stale_unhealthy_verdict(
        it_env: str, rt: ComposeRuntime, healthy_after: Any) -> None:
    """The backend's health check fails while the database is down (5 failures: "unhealthy"). A wait that
    starts as the database comes back (a crashed cluster restarted, PITR's swap, `env.up`) waits for the
    backend's next check instead of failing at once on the verdict reached before it; a service that fails
    its checks during the wait still fails it (the update rollback tests)."""
    if it_env != "test":
        pytest.skip("one environment shows it; the test slot has the time to spare")
    database = rt.container("database")
    database.stop(timeout=30)
    try:
        wait_for(lambda: (rt.container("backend").attrs["State"].get("Health") or {}).get("Status") == "unhealthy",
                 90, "the backend to turn unhealthy while the database is down")
    finally:
        database.start()
    rt.wait_healthy(NullReporter(), timeout=120)  # at once: the database is still starting, the backend unhealthy
    up = cli("env.up", "--env", it_env, check=False)
    assert up.returncode == 0, up.stdout + up.stderr
    status = {s.name: s for s in rt.status()}
    assert status["backend"].healthy is True and status["database"].healthy is True, status
