"""Placeholder and short secrets: a protected environment must not start with them.

prod reads its secrets from compose/.env, a copy of compose/.env.example; started with the copy
unedited, it runs on the example's published password. ``weak_secrets`` judges one service
environment (pure: no I/O), ``compose_weak_secrets`` every service of a merged compose config,
and ``refuse_weak_secrets`` turns what they find into one ConfigError line. Reasons name the
key, never its value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stackops.errors import ConfigError

MIN_LENGTH = 16
# A key looks secret when one of its '_'-separated words is or ends with one of these
# (POSTGRES_PASSWORD, API_KEY, APIKEY, JWT_SECRET, ...; not KEYCLOAK_URL or TOKENIZER).
SECRET_WORDS = ("PASSWORD", "PASSWD", "SECRET", "TOKEN", "KEY")
# ...unless it names where the secret is rather than holding it (POSTGRES_PASSWORD_FILE).
REFERENCE_SUFFIXES = ("_FILE", "_PATH", "_DIR")
PLACEHOLDER_PARTS = ("change-me", "changeme", "change_me", "replace-me", "replaceme")
PLACEHOLDER_VALUES = frozenset({
    "example", "password", "secret", "token", "changeit", "default", "admin", "postgres", "root",
    "test", "xxx", "todo", "fixme",
})
EXAMPLE_FILE = ".env.example"
ENV_FILE_HINT = "compose/.env (or the file PROD_ENV_FILE names)"


def looks_secret(key: str) -> bool:
    upper = key.upper()
    if upper.endswith(REFERENCE_SUFFIXES):
        return False
    return any(word.endswith(SECRET_WORDS) for word in re.split(r"[^A-Z0-9]+", upper))


def parse_env_file(text: str) -> dict[str, str]:
    """KEY=VALUE lines of a compose env file (comments, blanks and `export ` skipped; quotes removed)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.removeprefix("export ").split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key.strip()] = value
    return out


def _weakness(key: str, value: str, examples: Mapping[str, str]) -> str | None:
    folded = value.strip().lower()
    if not value:
        return f"{key} is empty"
    if examples.get(key) and value == examples[key]:
        return f"{key} is the example value from compose/{EXAMPLE_FILE}"
    if any(part in folded for part in PLACEHOLDER_PARTS) or folded in PLACEHOLDER_VALUES:
        return f"{key} is a placeholder"
    if len(value) < MIN_LENGTH:
        return f"{key} is only {len(value)} characters long (at least {MIN_LENGTH} needed)"
    return None


def weak_secrets(environment: Mapping[str, str | None], examples: Mapping[str, str] | None = None) -> list[str]:
    """One reason per secret-looking key whose value is empty, a placeholder, the value ``examples``
    (the parsed .env.example) gives it, or shorter than MIN_LENGTH; sorted by key. Keys without a
    value (None: compose passes the caller's variable through) are not judged."""
    reasons = []
    for key in sorted(environment):
        value = environment[key]
        if value is None or not looks_secret(key):
            continue
        reason = _weakness(key, value, examples or {})
        if reason:
            reasons.append(reason)
    return reasons


def _environment(service: Mapping[str, Any]) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the short syntax: ["KEY=VALUE", "KEY"]
        return {k: (v[0] if v else None) for k, *v in (str(item).split("=", 1) for item in env)}
    return {str(k): None if v is None else str(v) for k, v in env.items()}


def compose_weak_secrets(config: Mapping[str, Any], examples: Mapping[str, str] | None = None) -> list[str]:
    """weak_secrets over every service of a merged compose config (``docker compose config``), one
    reason per key, naming the services that get it."""
    found: dict[str, tuple[str, list[str]]] = {}
    for name, service in sorted((config.get("services") or {}).items()):
        env = _environment(service or {})
        for reason in weak_secrets(env, examples):
            key = reason.split(" ", 1)[0]
            found.setdefault(key, (reason, []))[1].append(str(name))
    return [
        f"{key} (service{'s' if len(services) > 1 else ''} {', '.join(services)}){reason[len(key):]}"
        for key, (reason, services) in sorted(found.items())
    ]


def refuse_weak_secrets(env_name: str, config: Mapping[str, Any], compose_dir: Path) -> None:
    """Raise ConfigError (one line) when a service of ``config`` gets a weak secret."""
    example = compose_dir / EXAMPLE_FILE
    try:
        examples = parse_env_file(example.read_text())
    except (OSError, UnicodeDecodeError):
        examples = {}  # the placeholder and length rules still apply
    reasons = compose_weak_secrets(config, examples)
    if reasons:
        raise ConfigError(
            f"refusing to start protected environment {env_name}: {'; '.join(reasons)}: "
            f"set a long random value (at least {MIN_LENGTH} characters, e.g. `openssl rand -base64 32`) "
            f"in {ENV_FILE_HINT}"
        )
