"""Compose PITR restarts the database alone; it must judge that restart by the database, not by the
backend or the backup service. Before: ``pitr.enable`` with the backend absent (or unhealthy) turned
archiving on, restarted the database, then failed "prod not healthy" before the stanza existed, so
``archive-push`` failed for every WAL segment from then on (pg_wal grows until the disk is full); the
same wait after a restore's swap rolled a confirmed, started restore back."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.conftest import ROOT

PROJECT = "advpitr-faults-prod"
COMPOSE_ONLY = "compose sessions only (STACKOPS_IT_ENV set: the prod session, or compose_all's test slot; Docker, " \
            "the stand-in images)"
WORK = ROOT / ".stack" / "faults-pitr-services"


def _docker_ok() -> bool:
    # run by the compose session the noxfile gives it (OWN_PROJECT_FAULTS: prod alone, compose_all's test slot),
    # after .ci/setup-docker built the images; never by the local `tests` session, where Docker may still be
    # being set up in the background. Its projects are its own (`advpitr-faults-prod`), whatever the slot.
    if not os.environ.get("STACKOPS_IT_ENV") or shutil.which("docker") is None:
        return False
    out = subprocess.run(["docker", "image", "inspect", "stackops-standin/postgres:15"], capture_output=True)
    return out.returncode == 0


@pytest.mark.skipif(not _docker_ok(), reason=COMPOSE_ONLY)
def test_pitr_enable_with_only_the_database_running_creates_the_stanza_and_archives(
        compose_harness: dict[str, str]) -> None:
    env, compose = _project()
    _up_database_only(compose)
    try:
        proc = _invoke(env, "pitr.enable", "--env", "prod", "--yes")
        assert proc.returncode == 0, proc.stderr
        assert "stanza prod: ok" in proc.stdout, proc.stdout
    finally:
        _down(compose)


@pytest.mark.skipif(not _docker_ok(), reason=COMPOSE_ONLY)
def test_pitr_restore_with_the_database_stopped_restores_the_end_of_the_archive(
        compose_harness: dict[str, str]) -> None:
    """The database crashed and stays down: pitr.info and pitr.restore read pgBackRest's repository through a
    helper container (no `docker exec` into a stopped container), restore to the end of the archive and start
    the restored cluster in its place; the rows archived before the crash are there."""
    env, compose = _project()
    _up_database_only(compose)
    try:
        compose("stop", "database")  # before pitr.enable: the helper finds no configuration, one line, exit 22
        off = _invoke(env, "pitr.info", "--env", "prod")
        assert off.returncode == 22 and "not enabled" in off.stderr, off.stdout + off.stderr
        assert len(off.stderr.strip().splitlines()) == 1, off.stderr
        compose("up", "-d", "--wait", "database")
        assert _invoke(env, "pitr.enable", "--env", "prod", "--yes").returncode == 0
        _sql(env, "CREATE TABLE it_pitr_crash (id int PRIMARY KEY); "
                  "INSERT INTO it_pitr_crash SELECT generate_series(1, 40)")
        _wait_archived(env, _sql(env, "SELECT pg_walfile_name(pg_switch_wal())").strip())
        compose("kill", "database")  # the live cluster crashed (no shutdown checkpoint) and does not come back
        shown = _invoke(env, "pitr.info", "--env", "prod")
        assert shown.returncode == 0 and "stanza prod: ok" in shown.stdout, shown.stderr
        dry = _invoke(env, "pitr.restore", "--env", "prod", "--dry-run")
        assert dry.returncode == 0 and "the live database is stopped" in dry.stdout, dry.stdout + dry.stderr
        proc = _invoke(env, "pitr.restore", "--env", "prod", "--yes")
        assert proc.returncode == 0, proc.stderr
        assert _sql(env, "SELECT count(*) FROM it_pitr_crash").strip() == "40"
    finally:
        _down(compose)


def _database(env: dict[str, str]) -> str:
    project = env["INVOKE_STACKOPS_ENVS_PROD_COMPOSE_PROJECT"]
    out = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}",
                          "--filter", "label=com.docker.compose.service=database"], capture_output=True, text=True,
                         check=True).stdout.split()
    assert len(out) == 1, out
    return out[0]


def _sql(env: dict[str, str], query: str) -> str:
    argv = ["docker", "exec", "-u", "postgres", _database(env), "psql", "-XAtq", "-v", "ON_ERROR_STOP=1",
            "-d", "impactbot_v2", "-c", query]
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout


def _wait_archived(env: dict[str, str], segment: str) -> None:
    """Until ``segment`` (the one pg_switch_wal closed) is archived: pg_stat_archiver names it or a later one."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if _sql(env, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver").strip() >= segment:
            return
        time.sleep(0.5)
    archiver = _sql(env, "SELECT * FROM pg_stat_archiver")
    raise AssertionError(f"{segment} was not archived within 60 s: {archiver}")


def _project() -> tuple[dict[str, str], Any]:
    # the tests take the session's `compose_harness`: in a slot (compose_all) it makes the slot's image tags
    # these projects run, which otherwise exist only once some other test of the session brought it up (in
    # random order this module can run first: compose then tried to pull the slot's tags from a registry)
    from tests.compose.harness import harness_environ

    # its own project names and folders; the images stay the session's (in a slot: the slot's own tags)
    env = {k: v if k.endswith("_IMAGE") else v.replace("stackops-it-", "advpitr-faults-")
           for k, v in harness_environ(WORK).items()}
    env = {**os.environ, **env, "BACKEND_IMAGE": f"{PROJECT}/backend:local"}
    script = ("import sys; sys.path.insert(0, sys.argv[1]); from tests.conftest import invoke_settings; "
              "from stackops.runtime.compose import ComposeRuntime; "
              "ComposeRuntime(invoke_settings('prod')).compose(*sys.argv[2:])")

    def compose(*args: str) -> None:
        subprocess.run([sys.executable, "-c", script, str(ROOT), *args], env=env, cwd=ROOT, check=True,
                       timeout=600)

    return env, compose


def _invoke(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=900, stdin=subprocess.DEVNULL)


def _up_database_only(compose: Any) -> None:
    for sub in ("uploads", "backups", "state"):
        (WORK / "prod" / sub).mkdir(parents=True, exist_ok=True)
    compose("up", "-d", "--wait", "database")  # the backend and the backup service are not running


def _down(compose: Any) -> None:
    compose("down", "--volumes", "--timeout", "10")
    shutil.rmtree(WORK, ignore_errors=True)
