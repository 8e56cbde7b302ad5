"""The contract every runtime declares: how the services of one environment run.

Three implementations, one module each: ``local`` (PostgreSQL and Redis as processes under the
environment's state folder), ``external`` (a managed database: connection settings only, no
lifecycle) and ``compose`` (docker compose + the docker SDK). ``stackops.runtime.select.make_runtime``
picks one; capabilities take a ``Runtime`` and never ask which one they got.

**The streaming rule.** A command from ``pg_cmd`` may run somewhere else than stackops (inside the
database container for compose), so a file name in its arguments would name a file *there*. Data
therefore always travels through the command's stdin and stdout (``pg_dump ... | zstd > file``,
``zstd -dc file | pg_restore``), never as a path argument; secrets travel in its environment, never
in argv.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from stackops.config import Settings
from stackops.proc import Cmd
from stackops.report import Check, Reporter


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    state: str            # running | stopped | external | missing | present
    healthy: bool | None  # None: not applicable (stopped)
    port: int | None
    pid: int | None
    data_dir: str
    size_bytes: int | None
    detail: str = ""


@dataclass(frozen=True)
class DataVolume:
    """Where one service's data lives: a Docker volume (compose) or a folder (local runtime, uploads)."""

    service: str
    name: str             # the guide's name (postgres_dev_data) or the folder
    kind: str             # volume | folder
    location: str         # Docker's volume name / the mountpoint, or the folder's path
    size_bytes: int | None
    exists: bool


class Runtime(abc.ABC):
    """How one environment's services run. Every method may raise a StackopsError subclass."""

    kind: ClassVar[str]

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.env = settings.env

    # ----- lifecycle -------------------------------------------------------------------------------
    @abc.abstractmethod
    def up(self, report: Reporter) -> None:
        """Start every service (idempotent) and return once they answer."""

    @abc.abstractmethod
    def down(self, report: Reporter, *, remove_data: bool = False) -> None:
        """Stop every service, keeping its data unless ``remove_data``. Callers confirm ``remove_data``
        through the one confirmation flow; a protected environment refusing it here is the last guard."""

    @abc.abstractmethod
    def status(self) -> list[ServiceStatus]:
        """One row per service; never raises because a service is down."""

    def data_volumes(self) -> list[DataVolume]:
        """Where the environment's data lives, running or not (default: each service's data folder)."""
        out = []
        for x in self.status():
            if x.data_dir in ("", "-") or x.state == "external":
                continue
            path = Path(x.data_dir)
            out.append(DataVolume(x.name, str(path), "folder", str(path), x.size_bytes, path.exists()))
        return out

    # ----- data access -----------------------------------------------------------------------------
    @abc.abstractmethod
    def conninfo(self, dbname: str | None = None) -> dict[str, Any]:
        """psycopg.connect() keyword arguments (password included, in memory only)."""

    @abc.abstractmethod
    def pg_cmd(self, tool: str) -> Cmd:
        """A PostgreSQL client tool (pg_dump, pg_restore, psql, ...) of a version that can read the
        server, connected through its environment (never argv). See the streaming rule above."""

    def psql_session(self, extra_env: dict[str, str], *, terminal: bool) -> Cmd:
        """An interactive ``psql`` on the environment's database with ``extra_env`` (e.g. PGOPTIONS) set,
        the password through the environment or a password file as ``pg_cmd`` does, never argv.
        ``terminal``: stdin is a terminal (a runtime that relays it allocates one)."""
        cmd = self.pg_cmd("psql")
        return Cmd(cmd.argv, {**cmd.env, **extra_env}, cmd.user, cmd.cwd)

    @abc.abstractmethod
    def server_free_bytes(self) -> int | None:
        """Bytes free (for an unprivileged user) on the filesystem of the database server's data
        directory, where a restore's or verify's second database is written; None when this runtime
        cannot know (a server stackops does not manage). Never raises because it cannot tell."""

    @abc.abstractmethod
    def server_major(self) -> int:
        """The PostgreSQL major version of the environment's server."""

    @abc.abstractmethod
    def redis_url(self) -> str: ...

    @abc.abstractmethod
    def image_digests(self) -> dict[str, str]:
        """service -> image reference@digest of what runs now (empty where there are no images)."""

    # ----- images (updates) ------------------------------------------------------------------------
    # A runtime without images (local processes, an external database) returns empty data from the
    # queries and treats ``pull`` / ``restore_images`` as "not applicable"; ``recreate`` refuses.
    @abc.abstractmethod
    def orchestration_checks(self) -> list[Check]:
        """What must hold before an update touches anything: the runtime's configuration is valid and its
        engine answers (compose: `docker compose config`, the Docker engine). Never raises."""

    @abc.abstractmethod
    def pull(self, report: Reporter) -> None:
        """Fetch the images the configuration names, without stopping or recreating anything."""

    @abc.abstractmethod
    def target_digests(self) -> dict[str, str]:
        """service -> ``reference@digest`` of what ``recreate`` would run now (after ``pull``); empty where
        there are no images. Comparable with ``image_digests``."""

    @abc.abstractmethod
    def recreate(self, report: Reporter, *, timeout: float = 300.0, services: list[str] | None = None,
                 stopped: Callable[[], None] | None = None) -> None:
        """Recreate every service whose image changed and wait until every service is healthy. With
        ``services``: those are stopped first and ``stopped`` is called between stop and start (an
        update's journal records it)."""

    @abc.abstractmethod
    def restore_images(self, digests: dict[str, str], report: Reporter) -> list[str]:
        """Point each service's image reference back at the image recorded in ``digests`` (as
        ``image_digests`` returned it), so that what ``recreate`` runs is that code again; returns the
        services whose reference moved. Empty where there are no images."""

    @abc.abstractmethod
    def pin_images(self, digests: dict[str, str], stamp: str, report: Reporter) -> list[str]:
        """Give each image recorded in ``digests`` an extra reference ``<repository>:stackops-rollback-<stamp>``
        so that no image prune removes an update's rollback point while it runs; returns the references
        made (for ``unpin_images``). Empty where there are no images."""

    @abc.abstractmethod
    def unpin_images(self, pins: list[str], report: Reporter) -> None:
        """Remove references ``pin_images`` made (an image they alone kept becomes prunable as before)."""

    @abc.abstractmethod
    def uploads_replaced(self, report: Reporter) -> None:
        """The uploads folder was swapped for another (restore): make services that use it see the new one."""


NO_IMAGES = "images do not apply: this runtime runs no containers"


class WithoutImages:
    """The image steps of a runtime that runs no images (local processes, an external database): an
    update runs its data half only (backup, migrations, check, rollback)."""

    kind: ClassVar[str]

    def pull(self, report: Reporter) -> None:
        report.info(f"pull: {NO_IMAGES} ({self.kind})")

    def target_digests(self) -> dict[str, str]:
        return {}

    def recreate(self, report: Reporter, *, timeout: float = 300.0, services: list[str] | None = None,
                 stopped: Callable[[], None] | None = None) -> None:
        from stackops.errors import RuntimeRefused

        raise RuntimeRefused(f"cannot recreate containers: {NO_IMAGES} ({self.kind})")

    def restore_images(self, digests: dict[str, str], report: Reporter) -> list[str]:
        return []

    def pin_images(self, digests: dict[str, str], stamp: str, report: Reporter) -> list[str]:
        return []

    def unpin_images(self, pins: list[str], report: Reporter) -> None:
        return None
