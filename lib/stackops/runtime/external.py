"""A managed database: connection settings only. Lifecycle is refused; data operations work."""

from __future__ import annotations

import atexit
import os
import tempfile
from pathlib import Path
from typing import Any

from stackops import pg
from stackops.config import Settings
from stackops.errors import ConfigError, RuntimeRefused, StackopsError
from stackops.proc import Cmd
from stackops.report import Check, Reporter
from stackops.runtime.base import Runtime, ServiceStatus, WithoutImages
from stackops.runtime.binaries import pg_bindir


class ExternalRuntime(WithoutImages, Runtime):
    kind = "external"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._major: int | None = None
        self._pgpass: Path | None = None

    def _refuse(self, what: str) -> RuntimeRefused:
        return RuntimeRefused(
            f"cannot {what} environment {self.env.name!r}: its runtime is 'external' (a managed database "
            "that stackops only connects to); manage its lifecycle at the provider"
        )

    def up(self, report: Reporter) -> None:
        raise self._refuse("start")

    def down(self, report: Reporter, *, remove_data: bool = False) -> None:
        raise self._refuse("stop")

    def _password(self) -> str | None:
        path = self.env.db_password_file
        if path is None:
            return None
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"config key stackops.envs.{self.env.name}.db_password_file points at {path}, "
                f"which cannot be read ({exc.strerror})"
            ) from exc

    def conninfo(self, dbname: str | None = None) -> dict[str, Any]:
        info: dict[str, Any] = {
            "host": self.env.db_host, "port": self.env.ports.postgres, "user": self.env.db_user,
            "dbname": dbname or self.env.db_name, "connect_timeout": 10, "application_name": "stackops",
        }
        password = self._password()
        if password is not None:
            info["password"] = password
        return info

    def server_major(self) -> int:
        if self._major is None:
            with pg.connect(self) as conn:
                self._major = pg.server_major(conn)
        return self._major

    def pg_cmd(self, tool: str) -> Cmd:
        env = {
            "PGHOST": self.env.db_host, "PGPORT": str(self.env.ports.postgres), "PGUSER": self.env.db_user,
            "PGDATABASE": self.env.db_name, "PGAPPNAME": "stackops",
        }
        password = self._password()
        if password is not None:
            if self._pgpass is None:
                fd, name = tempfile.mkstemp(prefix="stackops-pgpass-")
                with os.fdopen(fd, "w") as f:
                    f.write(f"*:*:*:*:{password.replace(chr(92), chr(92) * 2).replace(':', chr(92) + ':')}\n")
                self._pgpass = Path(name)
                atexit.register(self._pgpass.unlink, missing_ok=True)
            env["PGPASSFILE"] = str(self._pgpass)
        return Cmd([str(pg_bindir(self.settings, self.server_major()) / tool)], env=env)

    def server_free_bytes(self) -> int | None:
        """A managed server's disk is the provider's: stackops cannot see it."""
        return None

    def redis_url(self) -> str:
        return f"redis://{self.env.db_host}:{self.env.ports.redis}/0"

    def image_digests(self) -> dict[str, str]:
        return {}

    def uploads_replaced(self, report: Reporter) -> None:
        """Nothing mounts the uploads folder here: the next read sees the new folder."""

    def orchestration_checks(self) -> list[Check]:
        return [Check("runtime usable", True, f"external database at {self.env.db_host}:{self.env.ports.postgres}")]

    def status(self) -> list[ServiceStatus]:
        try:
            with pg.connect(self, timeout=3) as conn:
                ok, detail = True, f"PostgreSQL {pg.server_version(conn)}"
        except (StackopsError, pg.Error) as exc:
            ok, detail = False, pg.first_line(exc)
        return [ServiceStatus("postgres", "external", ok, self.env.ports.postgres, None,
                              f"{self.env.db_host}:{self.env.ports.postgres}", None, detail)]
