"""Configuration: invoke.yaml + INVOKE_* overrides -> one validated object; bad input is one clear line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from stackops.config import load
from stackops.errors import ConfigError
from tests.conftest import ROOT, make_settings, raw_config


def test_each_environment_is_typed_and_separate() -> None:
    dev, test, prod = (make_settings(name).env for name in ("dev", "test", "prod"))
    assert (dev.db_name, dev.ports.postgres, dev.protected) == ("impactbot_v2", 15432, False)
    assert prod.protected is True and test.protected is False
    assert len({e.ports.postgres for e in (dev, test, prod)}) == 3
    assert len({e.backups_dir for e in (dev, test, prod)}) == 3
    assert len({e.uploads_dir for e in (dev, test, prod)}) == 3
    assert len({e.state_dir for e in (dev, test, prod)}) == 3
    assert dev.compose_files[-1].name == "docker-compose.override.yml"
    assert prod.compose_files[-1].name == "docker-compose.prod.yml"


@pytest.mark.parametrize(
    ("env", "overrides", "expected"),
    [
        ("staging", {},
         "unknown environment 'staging' (config key stackops.envs): accepted values are dev, test, prod"),
        ("dev", {"ports": {"postgres": "abc", "redis": "1", "backend": "2"}},
         "config key stackops.envs.dev.ports.postgres has bad value 'abc': accepted values are integers 1024..65535"),
        ("dev", {"ports": {"postgres": "99999", "redis": "16379", "backend": "18000"}},
         "stackops.envs.dev.ports.postgres has bad value '99999'"),
        ("dev", {"runtime": "podman"},
         "config key stackops.envs.dev.runtime has bad value 'podman': "
         "accepted values are auto, compose, local, external"),
        ("dev", {"protected": "maybe"}, "stackops.envs.dev.protected has bad value 'maybe'"),
        ("dev", {"db_name": "Robert'); DROP"}, "stackops.envs.dev.db_name has bad value"),
        ("dev", {"colour": "blue"}, "config key stackops.envs.dev.colour is unknown"),
    ],
)
def test_bad_config_is_one_clear_error(env: str, overrides: dict[str, object], expected: str) -> None:
    raw = raw_config()
    raw["envs"]["dev"].update(overrides)
    with pytest.raises(ConfigError) as info:
        load(raw, env, ROOT)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def _invoke(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=60)


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["env.status", "--env", "staging"], {}, "unknown environment 'staging'"),
        (["env.status"], {"INVOKE_STACKOPS_ENVS_DEV_PORTS_POSTGRES": "abc"},
         "stackops.envs.dev.ports.postgres has bad value 'abc'"),
        (["env.status"], {"INVOKE_STACKOPS_ENVS_DEV_RUNTIME": "podman"},
         "stackops.envs.dev.runtime has bad value 'podman'"),
    ],
)
def test_cli_reports_bad_config_in_one_line_with_nonzero_exit(args: list[str], env: dict[str, str],
                                                               expected: str) -> None:
    proc = _invoke(*args, **env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert expected in lines[0]
    assert proc.stdout == ""


def test_environment_variables_override_declared_keys() -> None:
    proc = _invoke("env.status", "--json", INVOKE_STACKOPS_ENVS_DEV_RUNTIME="external",
                   INVOKE_STACKOPS_ENVS_DEV_PORTS_POSTGRES="1999", INVOKE_STACKOPS_ENVS_DEV_DB_HOST="127.0.0.1")
    # nothing listens on 1999: the external runtime reports unhealthy, proving both overrides arrived
    assert '"runtime": "external"' in proc.stdout
    assert '"port": 1999' in proc.stdout
    assert proc.returncode == 1


def test_task_list_does_not_import_heavy_libraries() -> None:
    """`invoke --list` stays fast because tasks.py imports no database, docker or redis client."""
    code = ("import sys, runpy; runpy.run_path('tasks.py'); "
            "print(sorted(m for m in ('psycopg', 'docker', 'redis') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_task_has_one_line_help() -> None:
    proc = _invoke("--list")
    assert proc.returncode == 0
    names = [line.split()[0] for line in proc.stdout.splitlines()[2:] if line.startswith("  ") and
             not line.startswith("   ")]
    assert {"demo", "doctor", "env.up", "env.down", "env.status"} <= set(names)
    for name in names:
        help_proc = _invoke("--help", name)
        doc = help_proc.stdout.split("Docstring:")[1].strip().splitlines()[0]
        assert doc and doc != "none", name
