"""Helpers of the compose acceptance tests (real Docker engine, real docker compose).

The container lifecycle belongs to pytest-docker, through the fixtures of tests/compose/harness.py
(`compose_stack` and `rt` for the environment under test, `all_envs` for dev, test and prod at once).
STACKOPS_IT_ENV names the environment under test (`nox -s "compose(env='dev')"` sets it; so can you:
`STACKOPS_IT_ENV=test pytest tests/compose`). Without it these tests are skipped; with it, a missing
engine or image fails them. Every runtime here is checked to be a harness project first.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from stackops.proc import Cmd, run
from stackops.report import NullReporter
from stackops.runtime.compose import ComposeRuntime
from tests.compose.harness import IT_ENV, ROOT
from tests.conftest import table_hashes as hashes_of


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # compose_all runs the three slots at once: the tests of dev, test and prod at once need the two
    # neighbour stacks, so they run in one slot only (STACKOPS_IT_ALL_ENVS_SLOT), not in each: two stacks of
    # idle containers less in each other slot, whose health checks alone took a fifth of the CPU
    only_in = os.environ.get("STACKOPS_IT_ALL_ENVS_SLOT")
    elsewhere = pytest.mark.skip(reason=f"dev, test and prod at once: run by the {only_in} slot of compose_all")
    for item in items:  # under xdist, one worker (one harness slot) brings the two neighbours up
        if "all_envs" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("all-envs"))
            if only_in and IT_ENV and only_in != IT_ENV:
                item.add_marker(elsewhere)
    if IT_ENV:
        return
    skip = pytest.mark.skip(reason="compose acceptance tests need STACKOPS_IT_ENV=dev|test|prod "
                                   "(`nox -s \"compose(env='dev')\"` sets it)")
    for item in items:
        if item.get_closest_marker("compose") is not None:
            item.add_marker(skip)


def cli(*args: str, check: bool = True, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real `invoke` CLI of this checkout (harness variables come from the environment)."""
    proc = subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(extra_env or {})}, check=False, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"invoke {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def compose(rt: Any, *args: str, extra_env: dict[str, str] | None = None) -> None:
    """A plain `docker compose` command as the guide writes it, on the runtime's project and files."""
    cmd = rt.compose_cmd(*args)
    run(Cmd(cmd.argv, {**cmd.env, **(extra_env or {})}, cwd=cmd.cwd), timeout=600)


def connect(rt: Any, dbname: str | None = None) -> psycopg.Connection[Any]:
    return psycopg.connect(**rt.conninfo(dbname), autocommit=True)


def put_marker(rt: Any, key: str, value: str) -> None:
    with connect(rt) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS it_marker (k text PRIMARY KEY, v text NOT NULL)")
        conn.execute("INSERT INTO it_marker VALUES (%s, %s) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                     (key, value))


def get_marker(rt: Any, key: str) -> str | None:
    with connect(rt) as conn:
        exists = conn.execute("SELECT to_regclass('public.it_marker')").fetchone()
        if not exists or exists[0] is None:
            return None
        row = conn.execute("SELECT v FROM it_marker WHERE k = %s", (key,)).fetchone()
        return None if row is None else str(row[0])


def table_hashes(rt: Any, dbname: str | None = None) -> dict[str, str]:
    """Row count and a hash of every row of every user table, and the sequences (content, not counts)."""
    with connect(rt, dbname) as conn:
        return hashes_of(conn, sequences=True)


def tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def backend_sha256(rt: Any, rel: str) -> str | None:
    """The hash of an upload as the backend container sees it (through its own mount)."""
    port = rt.settings.env.ports.backend
    url = f"http://127.0.0.1:{port}/uploads/{urllib.request.quote(rel)}/sha256"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return str(json.loads(resp.read())["sha256"])
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def wait_for(predicate: Any, timeout: float, what: str, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


@pytest.fixture
def healthy_after(rt: Any) -> Iterator[Any]:
    """Leaves the environment healthy for the next test whatever this one did to it."""
    yield rt
    rt.wait_healthy(NullReporter(), timeout=180)


@dataclass
class OwnDatabase:
    """A test's own database on the environment's server: ``rt`` points at it, ``cli_env`` points
    `invoke ... --env <env>` at it."""

    rt: ComposeRuntime
    cli_env: dict[str, str]


@pytest.fixture
def own_db(rt: ComposeRuntime) -> Iterator[OwnDatabase]:
    """A new empty database beside the environment's own, dropped afterwards with every copy a restore
    or verify left beside it: the test needs no other test's state and leaves none."""
    name = f"it_{uuid.uuid4().hex[:10]}"
    with connect(rt, "postgres") as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    own = ComposeRuntime(replace(rt.settings, env=replace(rt.env, db_name=name)))
    try:
        yield OwnDatabase(own, {f"INVOKE_STACKOPS_ENVS_{rt.env.name.upper()}_DB_NAME": name})
    finally:
        with connect(rt, "postgres") as conn:
            rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (name + "%",)).fetchall()
            for (db,) in rows:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
