"""Shared fixtures: real PostgreSQL and Redis through the local runtime, isolated per test session.

The harness cluster lives in a temporary folder on free loopback ports, so tests never touch the
developer's dev/test/prod environments. Each test that wants a database gets its own one (`fresh`).
"""

from __future__ import annotations

import copy
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

    def runtime(self, settings: Settings | None = None) -> Any:
        from stackops.runtime.local import LocalRuntime

        return LocalRuntime(settings or self.settings)


@pytest.fixture(scope="session")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    base = tmp_path_factory.mktemp("harness")
    base.chmod(0o755)
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


@dataclass
class Fresh:
    """One test's own database (created empty) with its uploads and backups folders."""

    settings: Settings
    runtime: Any

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(**self.runtime.conninfo(), **kwargs)


@pytest.fixture
def fresh(harness: Harness) -> Iterator[Fresh]:
    from psycopg import sql

    settings = harness.env()
    rt = harness.runtime(settings)
    with psycopg.connect(**rt.conninfo("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(settings.env.db_name)))
    yield Fresh(settings, rt)
    with psycopg.connect(**rt.conninfo("postgres"), autocommit=True) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                            (settings.env.db_name + "%",)).fetchall()
        for (name,) in rows:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def cli_env(settings: Settings, as_env: str = "test") -> dict[str, str]:
    """Environment variables that point ``invoke ... --env as_env`` at ``settings`` (harness cluster)."""
    import os

    e = settings.env
    prefix = f"INVOKE_STACKOPS_ENVS_{as_env.upper()}_"
    return {**os.environ, **{prefix + k: v for k, v in {
        "RUNTIME": "local", "STATE_DIR": str(e.state_dir), "DB_NAME": e.db_name,
        "BACKUPS_DIR": str(e.backups_dir), "UPLOADS_DIR": str(e.uploads_dir),
        "PORTS_POSTGRES": str(e.ports.postgres), "PORTS_REDIS": str(e.ports.redis),
    }.items()}}


def invoke_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run `invoke ARGS` as an operator would, without a terminal on stdin."""
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)
