"""Typed, validated configuration: one object per environment, built from invoke's config.

invoke merges invoke.yaml and the INVOKE_STACKOPS_* environment variables; this module turns
the merged ``stackops`` mapping into frozen dataclasses and stops on the first bad key with
one line naming the key and the accepted values. Nothing below tasks.py reads os.environ.

invoke.yaml writes every leaf as a string (invoke then hands overrides over verbatim; for a YAML
boolean it would turn any text but "0" and "" into true). Protection can be added by an override
but only removed in invoke.yaml itself: ``load`` re-reads that file to tell the two apart.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stackops.errors import ConfigError

RUNTIME_KINDS = ("auto", "compose", "local", "external")
ENV_KEYS = {
    "runtime", "compose_project", "compose_files", "db_name", "db_user", "db_host",
    "db_password_file", "ports", "uploads_dir", "backups_dir", "state_dir", "protected",
}
PORT_KEYS = ("postgres", "redis", "backend")
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_PROJECT = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_DURATION = re.compile(r"^\d+(ms|s|min)?$")
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
PROJECT_FILE = "invoke.yaml"  # the project's own config file, next to tasks.py (invoke's "project" level)


@dataclass(frozen=True)
class Ports:
    postgres: int
    redis: int
    backend: int


@dataclass(frozen=True)
class EnvConfig:
    """Everything stackops knows about one environment (dev, test or prod)."""

    name: str
    runtime: str
    compose_project: str
    compose_files: tuple[Path, ...]
    db_name: str
    db_user: str
    db_host: str
    db_password_file: Path | None
    ports: Ports
    uploads_dir: Path
    backups_dir: Path
    state_dir: Path
    protected: bool


@dataclass(frozen=True)
class Retention:
    daily: int
    weekly: int
    pre_migration_days: int


@dataclass(frozen=True)
class MigrationSettings:
    directory: Path
    lock_timeout: str
    statement_timeout: str
    lock_wait_seconds: int


@dataclass(frozen=True)
class BackupSettings:
    lock_wait_timeout: str  # pg_dump --lock-wait-timeout, and the lock_timeout of the row-count reader


@dataclass(frozen=True)
class Offsite:
    """Offsite copies through rclone (``remote`` empty: off), optionally encrypted with age."""

    remote: str = ""                       # an rclone remote: "name:" of rclone.conf, or ":sftp,host=...:"
    path: str = "stackops"                 # folder on the remote; each environment in <path>/<env>
    rclone_config: Path | None = None      # rclone.conf (None: rclone's own default)
    daily: int = 30                        # remote retention, like stackops.retention
    weekly: int = 104
    recipients: tuple[str, ...] = ()       # age recipients (public keys): encrypt before upload when set
    identity_file: Path | None = None      # age identity (private key) used to decrypt on pull

    @property
    def enabled(self) -> bool:
        return bool(self.remote)


@dataclass(frozen=True)
class Pitr:
    """Point-in-time recovery through pgBackRest (WAL archiving + base backups)."""

    repo_dir: Path | None = None           # None: <state_dir>/pgbackrest
    archive_timeout: int = 60              # seconds: the most WAL a crash can lose (the RPO)
    retention_full: int = 2                # full pgBackRest backups kept (older ones and their WAL expire)


@dataclass(frozen=True)
class Settings:
    """The validated configuration for the environment a task was asked to work on."""

    root: Path
    env: EnvConfig
    env_names: tuple[str, ...]
    retention: Retention
    migrations: MigrationSettings
    pg_bindir: Path | None
    backup: BackupSettings = BackupSettings("60s")
    offsite: Offsite = field(default_factory=Offsite)
    pitr: Pitr = field(default_factory=Pitr)


def _key(env: str | None, *parts: str) -> str:
    return ".".join(["stackops", *(["envs", env] if env else []), *parts])


def _str(raw: Mapping[str, Any], key: str, where: str, pattern: re.Pattern[str] | None = None,
         accepted: str = "") -> str:
    if key not in raw:
        raise ConfigError(f"config key {where} is missing: set it in invoke.yaml")
    value = raw[key]
    if not isinstance(value, str) or value == "":
        raise ConfigError(f"config key {where} must be a non-empty string, got {value!r}")
    if pattern is not None and not pattern.match(value):
        raise ConfigError(f"config key {where} has bad value {value!r}: accepted values are {accepted}")
    return value


def _int(value: Any, where: str, low: int, high: int) -> int:
    text = str(value).strip()
    if isinstance(value, bool) or not re.fullmatch(r"\d+", text) or not low <= int(text) <= high:
        raise ConfigError(
            f"config key {where} has bad value {value!r}: accepted values are integers {low}..{high}"
        )
    return int(text)


def _bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = value.strip().lower() if isinstance(value, str) else None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(
        f"config key {where} has bad value {value!r}: accepted values are {', '.join(_TRUE + _FALSE)}"
    )


def _file_protected(root: Path, name: str) -> bool:
    """Whether the project file itself (``root``/invoke.yaml, not an override) marks ``name`` protected."""
    import yaml

    path = root / PROJECT_FILE
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        return False
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"cannot read {path} to check which environments are protected: {why}") from exc
    value: Any = data
    for part in ("stackops", "envs", name):
        value = value.get(part) if isinstance(value, dict) else None
    if not isinstance(value, dict) or "protected" not in value:
        return False
    return _bool(value["protected"], f"{_key(name, 'protected')} in {path}")


def _path(root: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else root / p


def _env(name: str, raw: Mapping[str, Any], root: Path) -> EnvConfig:
    unknown = sorted(set(raw) - ENV_KEYS)
    if unknown:
        raise ConfigError(
            f"config key {_key(name, unknown[0])} is unknown: accepted keys are {', '.join(sorted(ENV_KEYS))}"
        )
    runtime = _str(raw, "runtime", _key(name, "runtime"))
    if runtime not in RUNTIME_KINDS:
        raise ConfigError(
            f"config key {_key(name, 'runtime')} has bad value {runtime!r}: "
            f"accepted values are {', '.join(RUNTIME_KINDS)}"
        )
    ports_raw = raw.get("ports")
    if not isinstance(ports_raw, Mapping):
        raise ConfigError(f"config key {_key(name, 'ports')} must map {', '.join(PORT_KEYS)} to port numbers")
    ports = Ports(**{
        k: _int(ports_raw.get(k), _key(name, "ports", k), 1024, 65535) for k in PORT_KEYS
    })
    password_file = str(raw.get("db_password_file") or "")
    folders = {k: _path(root, _str(raw, k, _key(name, k))) for k in ("uploads_dir", "backups_dir", "state_dir")}
    _apart(name, folders)
    return EnvConfig(
        name=name,
        runtime=runtime,
        compose_project=_str(raw, "compose_project", _key(name, "compose_project"), _PROJECT,
                             "lowercase letters, digits, '-' and '_'"),
        compose_files=tuple(
            _path(root, f) for f in _str(raw, "compose_files", _key(name, "compose_files")).split(":") if f
        ),
        db_name=_str(raw, "db_name", _key(name, "db_name"), _IDENT, "a lowercase SQL identifier"),
        db_user=_str(raw, "db_user", _key(name, "db_user"), _IDENT, "a lowercase SQL identifier"),
        db_host=_str(raw, "db_host", _key(name, "db_host")),
        db_password_file=_path(root, password_file) if password_file else None,
        ports=ports,
        uploads_dir=folders["uploads_dir"],
        backups_dir=folders["backups_dir"],
        state_dir=folders["state_dir"],
        protected=_bool(raw.get("protected", False), _key(name, "protected")),
    )


def _apart(name: str, folders: dict[str, Path]) -> None:
    """The uploads folder shares nothing with the backups or state folder (a backup would archive itself, a
    restore that swaps the uploads folder would swap the backups or the database's files with it), and no
    data folder is a filesystem's root."""
    for key, path in folders.items():
        if path.resolve() == Path(path.resolve().anchor):
            raise ConfigError(f"config key {_key(name, key)} is {path}, the root of the filesystem: give it a "
                              "folder of its own")
    up = folders["uploads_dir"].resolve()
    for key in ("backups_dir", "state_dir"):
        other = folders[key].resolve()
        if up == other or up in other.parents or other in up.parents:
            raise ConfigError(f"config keys {_key(name, 'uploads_dir')} ({folders['uploads_dir']}) and "
                              f"{_key(name, key)} ({folders[key]}) overlap: a backup would archive its own output "
                              "and a restore of the uploads would replace the other folder too; give each a "
                              "folder of its own")


_OFFSITE_KEYS = {"remote", "path", "rclone_config", "daily", "weekly", "recipients", "identity_file"}
_PITR_KEYS = {"repo_dir", "archive_timeout", "retention_full"}
_REMOTE = re.compile(r"^(:[a-z0-9]+(,[^:\s]*)?|[A-Za-z0-9_][A-Za-z0-9_. -]*):$")
_AGE_RECIPIENT = re.compile(r"^(age1[0-9a-z]{58}|ssh-(ed25519|rsa) [A-Za-z0-9+/=]+)$")


def _section(raw: Any, name: str, keys: set[str]) -> dict[str, Any]:
    section = raw.get(name) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"config key stackops.{name} must be a mapping of {', '.join(sorted(keys))}")
    unknown = sorted(set(section) - keys)
    if unknown:
        raise ConfigError(f"config key stackops.{name}.{unknown[0]} is unknown: accepted keys are "
                          f"{', '.join(sorted(keys))}")
    return section


def _offsite(raw: Any, root: Path) -> Offsite:
    o = _section(raw, "offsite", _OFFSITE_KEYS)
    remote = str(o.get("remote") or "").strip()
    if remote and not _REMOTE.match(remote):
        raise ConfigError(f"config key stackops.offsite.remote has bad value {remote!r}: accepted values are an "
                          "rclone remote name ending in ':' (e.g. 'offsite:') or a connection string "
                          "(e.g. ':sftp,host=backup.example,user=impactbot:'), or empty for no offsite copies")
    path = str(o.get("path") or "stackops").rstrip("/") or "/"
    if not re.fullmatch(r"[A-Za-z0-9_./-]+", path) or ".." in path.split("/"):
        raise ConfigError(f"config key stackops.offsite.path has bad value {path!r}: accepted values are a folder "
                          "path of letters, digits, '_', '-', '.' and '/' without '..'")
    recipients = tuple(r.strip() for r in str(o.get("recipients") or "").split(":") if r.strip())
    for r in recipients:
        if not _AGE_RECIPIENT.match(r):
            raise ConfigError(f"config key stackops.offsite.recipients has bad value {r[:8]!r}... (shortened): "
                              "accepted values are age public keys (age1...) or ssh-ed25519 or ssh-rsa keys")
    rc, ident = str(o.get("rclone_config") or ""), str(o.get("identity_file") or "")
    return Offsite(
        remote=remote, path=path, rclone_config=_path(root, rc) if rc else None,
        daily=_int(o.get("daily", 30), "stackops.offsite.daily", 0, 3650),
        weekly=_int(o.get("weekly", 104), "stackops.offsite.weekly", 0, 520),
        recipients=recipients, identity_file=_path(root, ident) if ident else None,
    )


def _pitr(raw: Any, root: Path) -> Pitr:
    p = _section(raw, "pitr", _PITR_KEYS)
    repo = str(p.get("repo_dir") or "")
    return Pitr(
        repo_dir=_path(root, repo) if repo else None,
        archive_timeout=_int(p.get("archive_timeout", 60), "stackops.pitr.archive_timeout", 1, 3600),
        retention_full=_int(p.get("retention_full", 2), "stackops.pitr.retention_full", 1, 100),
    )


def _plain(value: Any) -> Any:
    """invoke's DataProxy -> plain dicts, so validation sees ordinary mappings."""
    if isinstance(value, Mapping) or (hasattr(value, "keys") and hasattr(value, "__getitem__")):
        return {k: _plain(value[k]) for k in value.keys()}
    return value


def load(raw_config: Any, env_name: str | None, root: Path) -> Settings:
    """Validate the ``stackops`` config mapping and return the Settings for ``env_name``."""
    raw = _plain(raw_config)
    if not isinstance(raw, dict):
        raise ConfigError("config key stackops is missing: the project's invoke.yaml was not loaded")
    envs = raw.get("envs")
    if not isinstance(envs, dict) or not envs:
        raise ConfigError("config key stackops.envs is missing: declare dev, test and prod in invoke.yaml")
    names = tuple(envs)
    if env_name is not None and not env_name.strip():  # `--env "$ENV"` with ENV unset must not mean dev
        raise ConfigError(f"--env is empty: name an environment ({', '.join(names)})")
    name = env_name or raw.get("default_env") or "dev"
    if name not in envs:
        raise ConfigError(
            f"unknown environment {name!r} (config key stackops.envs): accepted values are {', '.join(names)}"
        )
    env = _env(name, envs[name], root)
    if not env.protected and _file_protected(root, name):
        raise ConfigError(
            f"config key {_key(name, 'protected')} is turned off by an override (e.g. "
            f"INVOKE_{_key(name, 'protected').upper().replace('.', '_')}) but {root / PROJECT_FILE} marks "
            f"{name} protected: only that file can unprotect an environment, edit it there"
        )
    ret = raw.get("retention") or {}
    mig = raw.get("migrations") or {}
    for key in ("lock_timeout", "statement_timeout"):
        value = str(mig.get(key, "0"))
        if not _DURATION.match(value):
            raise ConfigError(
                f"config key stackops.migrations.{key} has bad value {value!r}: "
                "accepted values are a number with unit ms, s or min (e.g. 5s)"
            )
    bak = raw.get("backup") or {}
    lock_wait = str(bak.get("lock_wait_timeout", "60s")).strip()
    if not _DURATION.match(lock_wait) or not re.search(r"[1-9]", lock_wait):
        raise ConfigError(
            f"config key stackops.backup.lock_wait_timeout has bad value {lock_wait!r}: accepted values are "
            "a number above 0 with unit ms, s or min (e.g. 60s); a backup must not wait for a lock without limit"
        )
    bindir = str(raw.get("pg_bindir") or "")
    return Settings(
        root=root,
        env=env,
        env_names=names,
        retention=Retention(
            daily=_int(ret.get("daily", 30), "stackops.retention.daily", 0, 3650),
            weekly=_int(ret.get("weekly", 52), "stackops.retention.weekly", 0, 520),
            pre_migration_days=_int(ret.get("pre_migration_days", 7), "stackops.retention.pre_migration_days",
                                    0, 3650),
        ),
        migrations=MigrationSettings(
            directory=_path(root, str(mig.get("dir", "migrations"))),
            lock_timeout=str(mig.get("lock_timeout", "5s")),
            statement_timeout=str(mig.get("statement_timeout", "0")),
            lock_wait_seconds=_int(mig.get("lock_wait_seconds", 60), "stackops.migrations.lock_wait_seconds",
                                   0, 86400),
        ),
        pg_bindir=_path(root, bindir) if bindir else None,
        backup=BackupSettings(lock_wait_timeout=lock_wait),
        offsite=_offsite(raw, root),
        pitr=_pitr(raw, root),
    )
