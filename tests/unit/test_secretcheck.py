"""Placeholder and short secrets refuse a protected environment's start, in one line naming the key."""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path
from typing import Any

import pytest

from stackops.errors import ConfigError
from stackops.report import NullReporter
from stackops.runtime.compose import ComposeRuntime
from stackops.secretcheck import (
    compose_weak_secrets,
    looks_secret,
    parse_env_file,
    refuse_weak_secrets,
    weak_secrets,
)
from tests.conftest import ROOT, make_settings

EXAMPLES = parse_env_file((ROOT / "compose" / ".env.example").read_text())
STRONG = secrets.token_urlsafe(24)


def test_the_shipped_example_password_is_refused() -> None:
    example = EXAMPLES["POSTGRES_PASSWORD"]
    assert example.startswith("change-me") and len(example) >= 16  # long enough: only the rules below catch it
    assert weak_secrets({"POSTGRES_PASSWORD": example}, EXAMPLES) == [
        "POSTGRES_PASSWORD is the example value from compose/.env.example"]
    assert weak_secrets({"POSTGRES_PASSWORD": example}) == ["POSTGRES_PASSWORD is a placeholder"]


def test_the_example_value_is_refused_even_when_it_looks_random() -> None:
    published = "Zq8v0LrT4kWm2xYp9sDn"  # once in .env.example, it is public
    assert weak_secrets({"API_TOKEN": published}, {"API_TOKEN": published}) == [
        "API_TOKEN is the example value from compose/.env.example"]
    assert weak_secrets({"API_TOKEN": published}) == []


@pytest.mark.parametrize(("value", "reason"), [
    ("", "is empty"),
    ("changeme", "is a placeholder"),
    ("please-CHANGE-ME-before-going-live", "is a placeholder"),
    ("change_me_0123456789abcdef", "is a placeholder"),
    ("replace-me-with-something-long", "is a placeholder"),
    ("password", "is a placeholder"),
    ("Example", "is a placeholder"),
    ("impactbot-dev", "is only 13 characters long (at least 16 needed)"),
    ("0123456789abcde", "is only 15 characters long (at least 16 needed)"),
])
def test_weak_values_give_one_reason_without_the_value(value: str, reason: str) -> None:
    assert weak_secrets({"POSTGRES_PASSWORD": value}, EXAMPLES) == [f"POSTGRES_PASSWORD {reason}"]


# the random value gets a fixed id: test ids must be the same in every pytest-xdist worker
@pytest.mark.parametrize("value", [pytest.param(STRONG, id="random-token"), "0123456789abcdef",
                                   "correct horse battery staple"])
def test_long_non_placeholder_values_pass(value: str) -> None:
    assert weak_secrets({"POSTGRES_PASSWORD": value}, EXAMPLES) == []


@pytest.mark.parametrize(("key", "secret"), [
    ("POSTGRES_PASSWORD", True), ("DB_PASSWD", True), ("JWT_SECRET", True), ("SECRET_KEY_BASE", True),
    ("GITHUB_TOKEN", True), ("API_KEY", True), ("APIKEY", True), ("openai_api_key", True),
    ("POSTGRES_PASSWORD_FILE", False), ("TLS_KEY_PATH", False), ("POSTGRES_USER", False),
    ("KEYCLOAK_URL", False), ("TOKENIZER", False), ("BACKUP_AT", False), ("REDIS_HOST", False),
])
def test_which_keys_look_secret(key: str, secret: bool) -> None:
    assert looks_secret(key) is secret
    assert bool(weak_secrets({key: "x"})) is secret


def test_one_reason_per_key_sorted_and_unset_keys_not_judged() -> None:
    env: dict[str, str | None] = {"Z_TOKEN": "short", "A_SECRET": "changeme", "POSTGRES_USER": "postgres",
                                  "M_KEY": STRONG, "UNSET_PASSWORD": None}
    assert weak_secrets(env) == ["A_SECRET is a placeholder", "Z_TOKEN is only 5 characters long (at least 16 needed)"]


def test_compose_config_names_each_weak_key_once_with_its_services() -> None:
    # the shape `docker compose -f docker-compose.yml -f docker-compose.prod.yml config --format json`
    # gives with compose/.env copied unedited from .env.example: the env file merged into each service
    example = EXAMPLES["POSTGRES_PASSWORD"]
    config: dict[str, Any] = {"services": {
        "database": {"environment": {"POSTGRES_PASSWORD": example, "POSTGRES_USER": "postgres"}},
        "backend": {"environment": {"POSTGRES_PASSWORD": example, "POSTGRES_HOST": "database"}},
        "backup": {"environment": ["POSTGRES_PASSWORD=" + example, "STACKOPS_ENV=prod", "BACKUP_TOKEN"]},
        "redis": {"environment": None},
        "worker": {"environment": {"WORKER_SECRET": "abc"}},
    }}
    assert compose_weak_secrets(config, EXAMPLES) == [
        "POSTGRES_PASSWORD (services backend, backup, database) is the example value from compose/.env.example",
        "WORKER_SECRET (service worker) is only 3 characters long (at least 16 needed)",
    ]
    strong = {"services": {"database": {"environment": {"POSTGRES_PASSWORD": STRONG}}, "redis": {}}}
    assert compose_weak_secrets(strong, EXAMPLES) == []


def test_refusal_is_one_line_naming_the_key_and_the_fix(tmp_path: Path) -> None:
    shutil.copy(ROOT / "compose" / ".env.example", tmp_path / ".env.example")
    config = {"services": {"database": {"environment": {"POSTGRES_PASSWORD": EXAMPLES["POSTGRES_PASSWORD"]}}}}
    with pytest.raises(ConfigError) as info:
        refuse_weak_secrets("prod", config, tmp_path)
    message = str(info.value)
    assert message == (
        "refusing to start protected environment prod: POSTGRES_PASSWORD (service database) is the example "
        "value from compose/.env.example: set a long random value (at least 16 characters, e.g. "
        "`openssl rand -base64 32`) in compose/.env (or the file PROD_ENV_FILE names)"
    )
    assert EXAMPLES["POSTGRES_PASSWORD"] not in message
    refuse_weak_secrets("prod", {"services": {"database": {"environment": {"POSTGRES_PASSWORD": STRONG}}}},
                        tmp_path)


class PastTheCheck(Exception):
    pass


def _runtime(env: str, tmp_path: Path, password: str, monkeypatch: pytest.MonkeyPatch) -> ComposeRuntime:
    settings = make_settings(env, uploads_dir=str(tmp_path / "uploads"), backups_dir=str(tmp_path / "backups"))
    rt = ComposeRuntime(settings)
    config = {"services": {"database": {"environment": {"POSTGRES_PASSWORD": password}}}}
    monkeypatch.setattr(rt, "config", lambda refresh=False: config)

    def services() -> list[str]:
        raise PastTheCheck

    monkeypatch.setattr(rt, "services", services)
    return rt


def test_compose_up_refuses_a_protected_environment_with_the_example_password(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rt = _runtime("prod", tmp_path, EXAMPLES["POSTGRES_PASSWORD"], monkeypatch)
    with pytest.raises(ConfigError, match=r"^refusing to start protected environment prod: POSTGRES_PASSWORD "):
        rt.up(NullReporter())
    assert not (tmp_path / "uploads").exists()  # refused before touching anything


@pytest.mark.parametrize(("env", "password"), [pytest.param("prod", STRONG, id="prod-random-token"),
                                               ("test", "impactbot-test")])
def test_compose_up_goes_on_with_a_strong_secret_or_when_unprotected(
        env: str, password: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rt = _runtime(env, tmp_path, password, monkeypatch)
    with pytest.raises(PastTheCheck):
        rt.up(NullReporter())
