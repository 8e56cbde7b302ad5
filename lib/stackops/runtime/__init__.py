"""How the services run. One protocol, one module per implementation; capabilities never ask which."""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from stackops.config import Settings
from stackops.errors import ConfigError, PrerequisiteError
from stackops.proc import Cmd
from stackops.report import Reporter


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    state: str            # running | stopped | external | missing
    healthy: bool | None  # None: not applicable (stopped)
    port: int | None
    pid: int | None
    data_dir: str
    size_bytes: int | None
    detail: str = ""


class Runtime(Protocol):
    """What every runtime offers; see local.py, external.py (and compose.py when present)."""

    kind: str
    settings: Settings

    def up(self, report: Reporter) -> None: ...

    def down(self, report: Reporter, *, remove_data: bool = False) -> None: ...

    def status(self) -> list[ServiceStatus]: ...

    def conninfo(self, dbname: str | None = None) -> dict[str, Any]:
        """psycopg.connect() keyword arguments (password included, in memory only)."""
        ...

    def pg_cmd(self, tool: str) -> Cmd:
        """A PostgreSQL client tool (pg_dump, pg_restore, psql, ...) of the server's own major version,
        connected to the server through the environment (never argv)."""
        ...

    def redis_url(self) -> str: ...

    def image_digests(self) -> dict[str, str]: ...

    def uploads_replaced(self, report: Reporter) -> None:
        """The uploads folder was swapped for another (restore): make services that use it see the new one."""
        ...


PG_INSTALL = "apt-get install -y postgresql-15"
LOCAL_MARKER = "local-runtime"  # in the state dir: this environment's data lives in a local cluster


def pg_bindir(settings: Settings, major: int | None = None) -> Path:
    """The PostgreSQL binaries folder: configured, else the wanted (or newest) major installed, else PATH."""
    if settings.pg_bindir is not None:
        if not (settings.pg_bindir / "pg_ctl").exists():
            raise ConfigError(f"config key stackops.pg_bindir has bad value {settings.pg_bindir}: no pg_ctl there")
        return settings.pg_bindir
    found: dict[int, Path] = {}
    base = Path("/usr/lib/postgresql")
    if base.is_dir():
        for child in base.iterdir():
            if child.name.isdigit() and (child / "bin" / "pg_dump").exists():
                found[int(child.name)] = child / "bin"
    if major is not None:
        if major in found:
            return found[major]
        raise PrerequisiteError(
            f"PostgreSQL {major} client binaries are not installed (found: "
            f"{', '.join(map(str, sorted(found))) or 'none'}): install them with "
            f"`apt-get install -y postgresql-client-{major}`"
        )
    if found:
        return found[max(found)]
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).parent
    raise PrerequisiteError(f"PostgreSQL server binaries not found: install them with `{PG_INSTALL}`")


def binary_major(bindir: Path, tool: str = "pg_dump") -> int:
    from stackops.proc import text

    out = text(Cmd([str(bindir / tool), "--version"]))
    m = re.search(r"(\d+)(?:\.\d+)?", out)
    if not m:
        raise PrerequisiteError(f"cannot read the version of {bindir / tool}: {out!r}")
    return int(m.group(1))


def docker_engine_answers(timeout: float = 2.0) -> tuple[bool, str]:
    """Whether a Docker engine answers a ping, and a short reason."""
    try:
        import docker

        client = docker.from_env(timeout=int(timeout))
        client.ping()
        return True, f"Docker engine {client.version().get('Version', '?')} answered"
    except Exception as exc:  # any failure means "no engine" here
        return False, f"no Docker engine answered ({type(exc).__name__})"


def compose_runtime_available() -> bool:
    try:
        import stackops.runtime.compose  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_kind(settings: Settings) -> tuple[str, str]:
    """The runtime kind to use and why (``auto`` picks compose when it can, else local)."""
    kind = settings.env.runtime
    if kind != "auto":
        return kind, f"runtime {kind} (from config)"
    if (settings.env.state_dir / LOCAL_MARKER).is_file():
        # data lives in a local cluster already: starting Docker later must not hide it behind an empty stack
        return "local", f"runtime auto -> local: this environment's data is in {settings.env.state_dir}"
    if compose_runtime_available():
        ok, why = docker_engine_answers()
        if ok:
            return "compose", f"runtime auto -> compose: {why}"
        return "local", f"runtime auto -> local: {why}"
    return "local", "runtime auto -> local: the compose runtime is not available in this version"


def make_runtime(settings: Settings, report: Reporter | None = None) -> Runtime:
    """Build the runtime for the environment in ``settings`` and say which one was picked."""
    kind, why = resolve_kind(settings)
    if report is not None and settings.env.runtime == "auto":
        report.info(why)
    if kind == "local":
        from stackops.runtime.local import LocalRuntime

        return LocalRuntime(settings)
    if kind == "external":
        from stackops.runtime.external import ExternalRuntime

        return ExternalRuntime(settings)
    if kind == "compose":
        try:
            from stackops.runtime.compose import ComposeRuntime  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            raise ConfigError(
                f"config key stackops.envs.{settings.env.name}.runtime has value 'compose', "
                "which this version cannot run yet: accepted values are auto, local, external"
            ) from exc
        runtime: Runtime = ComposeRuntime(settings)
        return runtime
    raise ConfigError(f"unknown runtime kind {kind!r}")


def dir_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total
