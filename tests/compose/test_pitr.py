"""Point-in-time recovery on the compose runtime (pgBackRest in the database container, its repository in
the prod-only volume pgbackrest_prod_repo): enable, a restore to a noted moment through the real CLI, a
restore killed before its swap, and the RPO after a crash. Prod only (the repository volume is in
docker-compose.prod.yml alone); in dev and test `pitr.enable` is refused in one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from stackops import pitr_compose
from stackops.proc import run
from stackops.report import NullReporter
from stackops.runtime.compose import ComposeRuntime
from tests.compose.conftest import cli, connect, wait_for
from tests.compose.harness import ROOT

pytestmark = pytest.mark.compose

ARCHIVE_TIMEOUT = 30  # seconds; the default is 60 (a shorter bound keeps the RPO test short)
PITR_ENV = {"INVOKE_STACKOPS_PITR_ARCHIVE_TIMEOUT": str(ARCHIVE_TIMEOUT)}


def rows(rt: ComposeRuntime, table: str = "it_pitr_notes") -> list[tuple[int, str]] | None:
    with connect(rt) as conn:
        if not conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]:  # type: ignore[index]
            return None
        return [(r[0], r[1]) for r in conn.execute(f"SELECT id, body FROM {table} ORDER BY id")]  # noqa: S608


def exists(rt: ComposeRuntime, table: str) -> bool:
    with connect(rt) as conn:
        return bool(conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0])  # type: ignore[index]


def side_containers(rt: ComposeRuntime) -> list[Any]:
    return list(rt.client.containers.list(all=True, filters={"label": f"{pitr_compose.SIDE_LABEL}={rt.project}"}))


def in_volume(rt: ComposeRuntime, pattern: str) -> list[str]:
    """Names under PGDATA/.pitr matching ``pattern`` (a glob), read inside the database container."""
    live = pitr_compose.Live(rt.settings, rt)
    script = 'shopt -s nullglob; for d in "$1"/$2; do [ -e "$d" ] && echo "${d#$1/}"; done; true'
    out = run(live.exec_cmd(["bash", "-c", script, "ls", live.work, pattern]), check=False)
    return sorted(out.stdout.decode().split())


@pytest.fixture
def pitr_prod(it_env: str, rt: ComposeRuntime) -> Iterator[ComposeRuntime]:
    """Prod with archiving on (pitr.enable through the CLI); afterwards no side container or side folder is
    left (one would keep the project's network busy, the other would fail the next test's "nothing changed")
    and the test's tables are gone, whatever the test did."""
    if it_env != "prod":
        pytest.skip("point-in-time recovery on compose is prod only by default (pgbackrest_prod_repo)")
    # it restarts the prod database: never unasked (no terminal here, so refused in one line, nothing touched)
    unasked = cli("pitr.enable", "--env", "prod", check=False, extra_env=PITR_ENV)
    assert unasked.returncode == 6 and "needs confirmation" in unasked.stderr, unasked.stderr
    assert len(unasked.stderr.strip().splitlines()) == 1, unasked.stderr
    enabled = cli("pitr.enable", "--env", "prod", "--yes", check=False, extra_env=PITR_ENV)
    assert enabled.returncode == 0, enabled.stdout + enabled.stderr
    assert "full" in enabled.stdout and "recoverable: from" in enabled.stdout, enabled.stdout
    try:
        yield rt
    finally:
        for c in side_containers(rt):
            c.remove(force=True)
        rt.wait_healthy(NullReporter(), timeout=180)
        pitr_compose.clean_leftovers(rt.settings, rt, NullReporter())
        with connect(rt) as conn:
            for table in ("it_pitr_notes", "it_pitr_later", "it_pitr_ticks"):
                conn.execute(f"DROP TABLE IF EXISTS {table}")


def test_pitr_is_refused_in_one_line_where_no_repository_volume_is_mounted(it_env: str, rt: ComposeRuntime) -> None:
    if it_env == "prod":
        pytest.skip("prod mounts pgbackrest_prod_repo")
    refused = cli("pitr.enable", "--env", it_env, check=False)
    assert refused.returncode == 4, refused.stderr
    assert "pgbackrest_prod_repo" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1, refused.stderr


def test_pitr_restore_to_a_noted_time_on_compose_and_a_killed_restore_leaves_live_serving(
        pitr_prod: ComposeRuntime) -> None:
    rt = pitr_prod
    yes = ["--yes"]  # prod confirms (no terminal here)
    with connect(rt) as conn:
        conn.execute("DROP TABLE IF EXISTS it_pitr_notes, it_pitr_later")
        conn.execute("CREATE TABLE it_pitr_notes (id int PRIMARY KEY, body text NOT NULL)")
        conn.execute("INSERT INTO it_pitr_notes SELECT i, 'before ' || i FROM generate_series(1, 100) i")
        time.sleep(1.0)
        noted = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
        time.sleep(1.0)
        conn.execute("INSERT INTO it_pitr_notes SELECT i, 'after ' || i FROM generate_series(101, 150) i")
        conn.execute("UPDATE it_pitr_notes SET body = 'changed' WHERE id <= 10")
        conn.execute("CREATE TABLE it_pitr_later (x int)")
        conn.execute("DROP TABLE it_pitr_notes")
    expected = [(i, f"before {i}") for i in range(1, 101)]
    info = cli("pitr.info", "--env", "prod", extra_env=PITR_ENV)
    assert "full" in info.stdout and "pgbackrest_prod_repo" in info.stdout, info.stdout
    cli("pitr.backup", "--env", "prod", "--type", "incr", extra_env=PITR_ENV)

    target = noted.isoformat()
    dry = cli("pitr.restore", "--to", target, "--env", "prod", "--dry-run", extra_env=PITR_ENV)
    assert "would stop the live cluster" in dry.stdout, dry.stdout
    assert rows(rt) is None and not side_containers(rt) and not in_volume(rt, "side-*")  # nothing changed

    # kill -9 while the side cluster is restored and replays: the live cluster keeps serving, untouched
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "pitr.restore", "--to", target, "--env", "prod", *yes],
                            cwd=ROOT, env={**os.environ, **PITR_ENV}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    wait_for(lambda: in_volume(rt, "side-*/PG_VERSION") or proc.poll() is not None, 300, "the side restore")
    assert proc.poll() is None, proc.communicate()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert rows(rt) is None and exists(rt, "it_pitr_later")
    with connect(rt) as conn:
        conn.execute("INSERT INTO it_pitr_later VALUES (1)")  # still serving, still writable
    assert side_containers(rt), "the killed restore's side container is what the next restore must clean up"

    started = time.monotonic()
    done = cli("pitr.restore", "--to", target, "--env", "prod", *yes, check=False, extra_env=PITR_ENV)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    assert "left by an interrupted point-in-time restore" in done.stderr
    assert rows(rt) == expected  # exactly the rows of the noted moment, none later, none changed
    assert not exists(rt, "it_pitr_later")
    assert not side_containers(rt) and not in_volume(rt, "side-*") and not in_volume(rt, "swap")
    assert len(in_volume(rt, "kept-*/PG_VERSION")) >= 1  # the previous cluster, kept aside
    with connect(rt) as conn:  # the new timeline is writable and archives again
        conn.execute("INSERT INTO it_pitr_notes VALUES (1000, 'new timeline')")
    again = cli("pitr.info", "--env", "prod", extra_env=PITR_ENV)
    assert again.stdout.count(" full ") >= 2, again.stdout
    check = cli("check", "--env", "prod", "--json", check=False)
    assert '"database reachable"' in check.stdout or check.returncode in (0, 18), check.stderr
    print(f"\ncompose pitr.restore to a noted time (restore beside, replay, checks, swap, new full backup): "
          f"{seconds:.1f}s")


def test_measured_rpo_after_a_crash_on_compose_is_within_archive_timeout(pitr_prod: ComposeRuntime) -> None:
    rt = pitr_prod
    settings = rt.settings
    last_written = 0.0
    with connect(rt) as conn:
        conn.execute("DROP TABLE IF EXISTS it_pitr_ticks")
        conn.execute("CREATE TABLE it_pitr_ticks (id serial PRIMARY KEY, at double precision NOT NULL)")
        end = time.time() + ARCHIVE_TIMEOUT + 8
        while time.time() < end:
            now = time.time()
            conn.execute("INSERT INTO it_pitr_ticks (at) VALUES (%s)", (now,))  # committed (autocommit)
            last_written = now
            time.sleep(0.2)
    live = rt.container("database")
    live.update(restart_policy={"Name": "no"})  # stays dead: nothing archives the WAL after the crash
    live.kill(signal="SIGKILL")  # the host dies: only the repository volume survives
    wait_for(lambda: rt.containers()["database"].status != "running", 60, "the database container to die")
    started = time.monotonic()
    try:
        _name, side, _, _ = pitr_compose.restore_beside(settings, rt, None, report=NullReporter())
        seconds = time.monotonic() - started
        try:
            with psycopg.connect(**side.conninfo(), autocommit=True) as conn:
                recovered = conn.execute("SELECT max(at), count(*) FROM it_pitr_ticks").fetchone()
        finally:
            pitr_compose.stop_side(side)
    finally:
        live.update(restart_policy={"Name": "unless-stopped"})
        live.start()
        rt.wait_healthy(NullReporter(), timeout=180)
    pitr_compose.clean_leftovers(settings, rt, NullReporter())
    assert not in_volume(rt, "side-*")
    assert recovered is not None and recovered[0] is not None
    rpo = last_written - float(recovered[0])
    print(f"\nmeasured RPO after a crash (compose): {rpo:.1f}s of writes lost (archive_timeout {ARCHIVE_TIMEOUT}s, "
          f"{recovered[1]} rows recovered); restore from the repository volume to the end of the archive: "
          f"{seconds:.1f}s")
    assert 0 <= rpo <= ARCHIVE_TIMEOUT + 5 <= 60


def test_pitr_image_adds_pgbackrest_to_the_configured_postgres_image(rt: ComposeRuntime) -> None:
    tag = f"{rt.project}/postgres-pitr:test"  # the harness project's own name, removed afterwards
    base = rt.config()["services"]["database"]["image"]  # the stand-in here; postgres:15 where a registry answers
    try:
        built = cli("pitr.image", "--env", rt.env.name, "--tag", tag, check=False)
        assert built.returncode == 0, built.stdout + built.stderr
        assert f"POSTGRES_IMAGE={tag}" in built.stdout
        version = rt.client.containers.run(tag, ["pgbackrest", "version"], remove=True, network_mode="none")
        assert version.decode().startswith("pgBackRest 2.")
        image = rt.client.images.get(tag)
        assert image.attrs["Config"]["Entrypoint"] == rt.client.images.get(base).attrs["Config"]["Entrypoint"]
        again = cli("pitr.image", "--env", rt.env.name, "--base", tag, "--tag", tag, check=False)
        assert again.returncode == 22 and len(again.stderr.strip().splitlines()) == 1, again.stderr
    finally:
        try:
            rt.client.images.remove(tag, force=True)
        except Exception:  # never built
            pass
