"""Configuration: invoke.yaml + INVOKE_* overrides -> one validated object; bad input is one clear line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

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
        # a backup would archive itself, a restore of the uploads would swap the other folder out too
        ("dev", {"backups_dir": "compose/backend/uploads/bk"},
         "/compose/backend/uploads) and stackops.envs.dev.backups_dir ("),
        ("dev", {"uploads_dir": ".stack/dev/uploads"}, "/.stack/dev) overlap: a backup would archive"),
        ("dev", {"uploads_dir": "backups/dev"}, "/backups/dev) overlap"),
        ("dev", {"backups_dir": "/"}, "config key stackops.envs.dev.backups_dir is /, the root of the filesystem"),
    ],
)
def test_bad_config_is_one_clear_error(env: str, overrides: dict[str, object], expected: str) -> None:
    raw = raw_config()
    raw["envs"]["dev"].update(overrides)
    with pytest.raises(ConfigError) as info:
        load(raw, env, ROOT)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


BOOL_ACCEPTED = "accepted values are true, yes, on, 1, false, no, off, 0"


@pytest.mark.parametrize(("value", "expected"), [
    (True, True), ("true", True), ("YES", True), (" On ", True), ("1", True),
    (False, False), ("false", False), ("No", False), ("OFF", False), ("0", False),
])
def test_booleans_accept_the_usual_spellings(value: object, expected: bool) -> None:
    assert make_settings("dev", protected=value).env.protected is expected


@pytest.mark.parametrize("value", ["maybe", "", "2", "prod", "nope", "t", 1, 0, None])
def test_any_other_boolean_is_one_line_naming_key_and_accepted_values(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        make_settings("dev", protected=value)
    assert str(info.value) == f"config key stackops.envs.dev.protected has bad value {value!r}: {BOOL_ACCEPTED}"


@pytest.mark.parametrize("value", [False, "false", "no", "off", "0", "FALSE"])
def test_an_override_cannot_unprotect_what_invoke_yaml_protects(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        make_settings("prod", protected=value)
    message = str(info.value)
    assert message.startswith("config key stackops.envs.prod.protected is turned off by an override "
                              "(e.g. INVOKE_STACKOPS_ENVS_PROD_PROTECTED)")
    assert f"{ROOT / 'invoke.yaml'} marks prod protected" in message and "edit it there" in message
    assert "\n" not in message


def test_an_override_can_protect_and_invoke_yaml_itself_can_unprotect(tmp_path: Path) -> None:
    assert make_settings("dev", protected="yes").env.protected is True
    assert make_settings("prod", protected="on").env.protected is True
    text = (ROOT / "invoke.yaml").read_text()
    assert text.count('protected: "true"') == 1  # prod's
    (tmp_path / "invoke.yaml").write_text(text.replace('protected: "true"', 'protected: "false"'))
    raw = yaml.safe_load((tmp_path / "invoke.yaml").read_text())["stackops"]
    assert load(raw, "prod", tmp_path).env.protected is False


def test_a_bad_protected_value_in_invoke_yaml_is_named_with_the_file(tmp_path: Path) -> None:
    text = (ROOT / "invoke.yaml").read_text().replace('protected: "true"', 'protected: "sure"')
    (tmp_path / "invoke.yaml").write_text(text)
    raw = raw_config()
    raw["envs"]["prod"]["protected"] = "no"  # an override: the file's own value is then checked
    with pytest.raises(ConfigError, match=re.escape(f"stackops.envs.prod.protected in {tmp_path}/invoke.yaml has bad")):
        load(raw, "prod", tmp_path)


def test_invoke_yaml_writes_every_leaf_as_a_string() -> None:
    """invoke casts an override to the type of the file's value; for a YAML boolean it reads any text
    but "0" and "" as true ("false" would protect, "0" unprotect). Strings pass through verbatim."""
    def leaves(value: object, path: str) -> list[tuple[str, object]]:
        if isinstance(value, dict):
            return [leaf for k, v in value.items() for leaf in leaves(v, f"{path}.{k}")]
        return [(path, value)]

    loose = [(k, v) for k, v in leaves(raw_config(), "stackops") if not isinstance(v, str)]
    assert loose == []


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


@pytest.mark.parametrize(("value", "shown"), [("false", False), ("no", False), ("0", False),
                                            ("true", True), ("YES", True), ("1", True)])
def test_protected_from_an_environment_variable_means_what_it_says(value: str, shown: bool) -> None:
    proc = _invoke("env.status", INVOKE_STACKOPS_ENVS_DEV_RUNTIME="external",
                   INVOKE_STACKOPS_ENVS_DEV_PORTS_POSTGRES="1999", INVOKE_STACKOPS_ENVS_DEV_PROTECTED=value)
    assert proc.stdout.startswith("environment dev (runtime external" + (", protected)" if shown else ")")), proc
    assert proc.returncode == 1  # nothing listens on 1999: unhealthy, but the config was accepted


@pytest.mark.parametrize(("env", "value", "expected"), [
    ("dev", "maybe", f"stackops: config key stackops.envs.dev.protected has bad value 'maybe': {BOOL_ACCEPTED}"),
    ("prod", "0", "stackops: config key stackops.envs.prod.protected is turned off by an override"),
    ("prod", "false", "stackops: config key stackops.envs.prod.protected is turned off by an override"),
])
def test_protected_environment_variables_are_validated(env: str, value: str, expected: str) -> None:
    proc = _invoke("env.status", "--env", env, **{f"INVOKE_STACKOPS_ENVS_{env.upper()}_PROTECTED": value})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(expected), proc.stderr
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
    with ThreadPoolExecutor(max_workers=4) as pool:  # one `invoke --help` each, a few at a time
        helps = dict(zip(names, pool.map(lambda name: _invoke("--help", name), names), strict=True))
    for name, help_proc in helps.items():
        doc = help_proc.stdout.split("Docstring:")[1].strip().splitlines()[0]
        assert doc and doc != "none", name
