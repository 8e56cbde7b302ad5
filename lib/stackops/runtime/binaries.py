"""Where the PostgreSQL binaries are and which major version they are."""

from __future__ import annotations

import shutil
from pathlib import Path

from stackops.config import Settings
from stackops.errors import ConfigError, PrerequisiteError
from stackops.pg import parse_major
from stackops.proc import Cmd, text

PG_INSTALL = "apt-get install -y postgresql-15"


def installed_majors() -> dict[int, Path]:
    """major -> bin folder of every PostgreSQL under /usr/lib/postgresql that has client tools."""
    found: dict[int, Path] = {}
    base = Path("/usr/lib/postgresql")
    if base.is_dir():
        for child in base.iterdir():
            if child.name.isdigit() and (child / "bin" / "pg_dump").exists():
                found[int(child.name)] = child / "bin"
    return found


def pg_bindir(settings: Settings, major: int | None = None) -> Path:
    """The PostgreSQL binaries folder: configured, else the wanted (or newest) major installed, else PATH."""
    if settings.pg_bindir is not None:
        if not (settings.pg_bindir / "pg_ctl").exists():
            raise ConfigError(f"config key stackops.pg_bindir has bad value {settings.pg_bindir}: no pg_ctl there")
        return settings.pg_bindir
    found = installed_majors()
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
    """The major version of ``bindir/tool`` (read from ``--version``)."""
    return parse_major(text(Cmd([str(bindir / tool), "--version"])))
