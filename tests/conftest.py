"""Shared fixtures: real PostgreSQL and Redis through the local runtime, isolated per test session.

The harness cluster lives in a temporary folder on free loopback ports, so tests never touch the
developer's dev/test/prod environments. Each test that wants a database gets its own one (`fresh`).
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from stackops.config import Settings, load
from stackops.report import NullReporter

ROOT = Path(__file__).resolve().parents[1]
# The runtime the integration tests run on: the local runtime (a private cluster started here), or
# with STACKOPS_IT_RUNTIME=compose the compose runtime of the harness project STACKOPS_IT_ENV, which
# the compose harness's pytest-docker fixtures bring up and down (`nox -s "compose(env='dev')"`).
IT_RUNTIME = os.environ.get("STACKOPS_IT_RUNTIME", "local")
# The compose harness (its variables and pytest-docker lifecycle fixtures), for tests/compose and for
# the integration suite on the compose runtime.
pytest_plugins = ["tests.compose.harness"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raw_config() -> dict[str, Any]:
    with (ROOT / "invoke.yaml").open() as f:
        return copy.deepcopy(yaml.safe_load(f)["stackops"])


def make_settings(env: str = "test", **overrides: Any) -> Settings:
    """Settings for ``env`` from the project's invoke.yaml with ``overrides`` applied to that env."""
    raw = raw_config()
    raw["envs"][env].update(overrides)
    return load(raw, env, ROOT)


@dataclass
class Harness:
    """A running local cluster for the test session."""

    settings: Settings
    base: Path

    def env(self, name: str | None = None) -> Settings:
        """Settings for a new database, uploads and backups folder on the harness cluster."""
        name = name or f"t_{uuid.uuid4().hex[:10]}"
        folder = self.base / name
        env = replace(self.settings.env, db_name=name, uploads_dir=folder / "uploads",
                      backups_dir=folder / "backups")
        env.uploads_dir.mkdir(parents=True)
        return replace(self.settings, env=env)

    def fresh(self) -> Fresh:
        """A new empty database with its own folders on the harness (drop it with Fresh.drop)."""
        from psycopg import sql

        settings = self.env()
        made = Fresh(settings, self.runtime(settings))
        with psycopg.connect(**made.runtime.conninfo("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(made.settings.env.db_name)))
        return made

    def runtime(self, settings: Settings | None = None) -> Any:
        if IT_RUNTIME == "compose":
            from stackops.runtime.compose import ComposeRuntime

            return ComposeRuntime(settings or self.settings)
        from stackops.runtime.local import LocalRuntime

        return LocalRuntime(settings or self.settings)


def invoke_settings(env: str) -> Settings:
    """The settings `invoke ... --env env` sees in this process (invoke.yaml + INVOKE_* variables)."""
    from invoke import Config

    cfg = Config(project_location=str(ROOT))
    cfg.load_project()
    cfg.load_shell_env()
    return load(cfg.stackops, env, ROOT)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IT_RUNTIME != "compose":
        return
    skip = pytest.mark.skip(reason="tests of the local runtime itself: not run against a compose project")
    for item in items:
        if item.get_closest_marker("local_runtime") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def harness(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Harness]:
    base = tmp_path_factory.mktemp("harness")
    base.chmod(0o755)
    if IT_RUNTIME == "compose":
        from tests.compose.harness import settings_for

        env = request.getfixturevalue("compose_stack")  # pytest-docker owns the project's lifecycle
        yield Harness(settings_for(env), base)
        return
    settings = make_settings(
        "test", runtime="local", state_dir=str(base / "state"),
        uploads_dir=str(base / "uploads"), backups_dir=str(base / "backups"),
        ports={"postgres": str(free_port()), "redis": str(free_port()), "backend": str(free_port())},
    )
    h = Harness(settings, base)
    rt = h.runtime()
    rt.up(NullReporter())
    yield h
    rt.down(NullReporter())


def table_hashes(conn: psycopg.Connection[Any], sequences: bool = False) -> dict[str, str]:
    """Row count and a hash of every row of every user table: content, not counts. With ``sequences``
    also every sequence's last value (key ``_sequences``)."""
    from psycopg import sql

    tables = conn.execute("SELECT schemaname, tablename FROM pg_tables "
                          "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2").fetchall()
    out = {}
    for schema, table in tables:
        q = sql.SQL("SELECT count(*) || ':' || md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) "
                    "FROM {} x").format(sql.Identifier(schema, table))
        row = conn.execute(q).fetchone()
        assert row is not None
        out[f"{schema}.{table}"] = str(row[0])
    if sequences:
        seqs = conn.execute(
            "SELECT string_agg(schemaname || '.' || sequencename || ':' || coalesce(last_value, 0), ',' "
            "ORDER BY schemaname, sequencename) FROM pg_sequences").fetchone()
        out["_sequences"] = str(seqs[0] if seqs else None)
    return out


@dataclass
class Fresh:
    """One test's own database (created empty) with its uploads and backups folders."""

    settings: Settings
    runtime: Any

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(**self.runtime.conninfo(), **kwargs)

    def drop(self) -> None:
        """Drop this test's database and every copy a restore or verify left beside it."""
        from psycopg import sql

        with psycopg.connect(**self.runtime.conninfo("postgres"), autocommit=True) as conn:
            rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                (self.settings.env.db_name + "%",)).fetchall()
            for (name,) in rows:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def fresh(harness: Harness) -> Iterator[Fresh]:
    made = harness.fresh()
    yield made
    made.drop()


def cli_env(settings: Settings, as_env: str = "test", migrations: Path | None = None) -> dict[str, str]:
    """Environment variables that point ``invoke ... --env as_env`` at ``settings`` (the harness's
    cluster or compose project, this test's database and folders)."""
    e = settings.env
    values = {
        "RUNTIME": IT_RUNTIME, "STATE_DIR": str(e.state_dir), "DB_NAME": e.db_name,
        "BACKUPS_DIR": str(e.backups_dir), "UPLOADS_DIR": str(e.uploads_dir),
        "PORTS_POSTGRES": str(e.ports.postgres), "PORTS_REDIS": str(e.ports.redis),
        "PORTS_BACKEND": str(e.ports.backend),
    }
    if IT_RUNTIME == "compose":
        values |= {"COMPOSE_PROJECT": e.compose_project, "COMPOSE_FILES": ":".join(map(str, e.compose_files))}
    prefix = f"INVOKE_STACKOPS_ENVS_{as_env.upper()}_"
    return {**os.environ, **{prefix + k: v for k, v in values.items()},
            "INVOKE_STACKOPS_MIGRATIONS_DIR": str(migrations or settings.migrations.directory)}


def invoke_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run `invoke ARGS` as an operator would, without a terminal on stdin."""
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)
