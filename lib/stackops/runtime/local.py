"""The embedded runtime: PostgreSQL (initdb/pg_ctl) and Redis as local processes under .stack/<env>/.

Used where no Docker engine answers. PostgreSQL refuses to run as root, so when stackops runs as
root the server runs as the unprivileged ``postgres`` user (its data folder owned by it).
"""

from __future__ import annotations

import hashlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import time
from pathlib import Path
from typing import Any

from stackops import pg
from stackops.config import Settings
from stackops.errors import PrerequisiteError, ProtectedEnvironment, ServiceError, StackopsError
from stackops.files import atomic_write, dir_size
from stackops.prereq import ensure_programs
from stackops.proc import Cmd, run
from stackops.report import Check, Reporter
from stackops.runtime.base import Runtime, ServiceStatus, WithoutImages
from stackops.runtime.binaries import binary_major, pg_bindir

PG_SERVICE_USER = "postgres"
LOCAL_MARKER = "local-runtime"  # in the state dir: this environment's data lives in a local cluster


def _pid_alive(pid: int, comm_prefix: str) -> bool:
    """True when ``pid`` is a live process whose name starts with ``comm_prefix`` (not a recycled pid)."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        status = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return comm.startswith(comm_prefix) and status != "Z"


def _read_pid(path: Path) -> int | None:
    try:
        first = path.read_text().splitlines()[0].strip()
        return int(first)
    except (OSError, IndexError, ValueError):
        return None


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _traversable_by_others(path: Path) -> bool:
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.stat().st_mode & stat.S_IXOTH:
            return False
    return True


def _write_private(path: Path, content: str, owner: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, content.encode(), owner=owner)


class LocalRuntime(WithoutImages, Runtime):
    kind = "local"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.state = self.env.state_dir
        self.bindir = pg_bindir(settings)
        self.run_as = PG_SERVICE_USER if os.geteuid() == 0 else None
        self.redis_dir = self.state / "redis"
        self.secrets = self.state / "secrets"

    # ----- paths -----------------------------------------------------------------------------
    @property
    def pg_home(self) -> Path:
        """Folder owned by the server user. Under the state dir unless root's server user could not
        reach it there (e.g. a checkout below /root), then under /var/lib/stackops."""
        home = self.state / "pg"
        if self.run_as is not None and not _traversable_by_others(self.state.parent):
            digest = hashlib.sha256(str(self.state.resolve()).encode()).hexdigest()[:12]
            home = Path("/var/lib/stackops") / digest / self.env.name / "pg"
        return home

    @property
    def pg_data(self) -> Path:
        return self.pg_home / "data"

    def _password(self) -> str:
        path = self.secrets / "pg_password"
        if not path.exists():
            self.secrets.mkdir(parents=True, exist_ok=True)
            os.chmod(self.secrets, 0o700)
            _write_private(path, secrets.token_urlsafe(24))
        return path.read_text().strip()

    def _pgpass(self) -> Path:
        path = self.secrets / "pgpass"
        line = f"127.0.0.1:{self.env.ports.postgres}:*:{self.env.db_user}:{self._password()}\n"
        if not path.exists() or path.read_text() != line:
            _write_private(path, line)
        return path

    def _as_server(self, argv: list[str]) -> Cmd:
        return Cmd(argv, user=self.run_as, cwd=self.pg_home, env={"LC_ALL": "C.UTF-8"})

    def server_cmd(self, argv: list[str], env: dict[str, str] | None = None) -> Cmd:
        """A command run as the server's user in its home folder (pgBackRest, pg_ctl of a side cluster)."""
        cmd = self._as_server(argv)
        return Cmd(cmd.argv, {**cmd.env, **(env or {})}, cmd.user, cmd.cwd)

    def start_postgres(self, report: Reporter) -> None:
        self._pg_start(report)

    def stop_postgres(self, report: Reporter) -> None:
        self._pg_stop(report)

    def restart_postgres(self, report: Reporter) -> None:
        self._pg_stop(report)
        self._pg_start(report)

    def postgres_pid(self) -> int | None:
        return self._pg_running()

    # ----- connection ------------------------------------------------------------------------
    def conninfo(self, dbname: str | None = None) -> dict[str, Any]:
        return {
            "host": "127.0.0.1",
            "port": self.env.ports.postgres,
            "user": self.env.db_user,
            "password": self._password(),
            "dbname": dbname or self.env.db_name,
            "connect_timeout": 10,
            "application_name": "stackops",
        }

    def pg_cmd(self, tool: str) -> Cmd:
        return Cmd(
            [str(self.bindir / tool)],
            env={
                "PGHOST": "127.0.0.1",
                "PGPORT": str(self.env.ports.postgres),
                "PGUSER": self.env.db_user,
                "PGDATABASE": self.env.db_name,
                "PGPASSFILE": str(self._pgpass()),
                "PGAPPNAME": "stackops",
            },
        )

    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.env.ports.redis}/0"

    def server_free_bytes(self) -> int | None:
        """statvfs of the data directory (new databases go to its ``base/``, their WAL to its ``pg_wal``)."""
        try:
            return shutil.disk_usage(self.pg_data).free
        except OSError:  # not initialised yet
            return None

    def image_digests(self) -> dict[str, str]:
        return {}

    def uploads_replaced(self, report: Reporter) -> None:
        """Nothing mounts the uploads folder here: the next read sees the new folder."""

    def orchestration_checks(self) -> list[Check]:
        ok = (self.bindir / "pg_ctl").exists()
        return [Check("runtime usable", ok, f"local processes, PostgreSQL binaries in {self.bindir}" if ok else
                      f"no pg_ctl in {self.bindir}", "install postgresql (see `invoke doctor`)")]

    # ----- PostgreSQL --------------------------------------------------------------------------
    def _pg_running(self) -> int | None:
        pid = _read_pid(self.pg_data / "postmaster.pid")
        return pid if pid is not None and _pid_alive(pid, "postgres") else None

    def _pg_init(self, report: Reporter) -> None:
        if (self.pg_data / "PG_VERSION").exists():
            data_major = int((self.pg_data / "PG_VERSION").read_text().strip())
            bin_major = binary_major(self.bindir, "postgres")
            if data_major != bin_major:
                raise ServiceError(
                    f"the {self.env.name} cluster at {self.pg_data} is PostgreSQL {data_major} but the binaries in "
                    f"{self.bindir} are {bin_major}: set stackops.pg_bindir to PostgreSQL {data_major}'s bin folder"
                )
            return
        report.step(f"initialising PostgreSQL cluster for {self.env.name} in {self.pg_data}")
        if self.run_as is not None:
            try:
                pw = pwd.getpwnam(self.run_as)
            except KeyError as exc:
                raise PrerequisiteError(
                    f"running as root needs the unprivileged user {self.run_as!r} for PostgreSQL: "
                    f"create it with `useradd --system --home-dir /var/lib/postgresql {self.run_as}`"
                ) from exc
        self.pg_home.mkdir(parents=True, exist_ok=True)
        os.chmod(self.pg_home, 0o700)
        if self.run_as is not None:
            os.chown(self.pg_home, pw.pw_uid, pw.pw_gid)
        pwfile = self.pg_home / "initdb.pw"
        _write_private(pwfile, self._password() + "\n", owner=self.run_as)
        try:
            run(self._as_server([
                str(self.bindir / "initdb"), "-D", str(self.pg_data), "-U", self.env.db_user,
                "--pwfile", str(pwfile), "--auth-host=scram-sha-256", "--auth-local=scram-sha-256",
                "-E", "UTF8", "--locale=C.UTF-8", "--data-checksums",
            ]))
        finally:
            pwfile.unlink(missing_ok=True)
        with (self.pg_data / "postgresql.conf").open("a") as f:
            f.write("\n# written by stackops: per-environment settings, rewritten at every start\n"
                    "include_if_exists = 'stackops.conf'\n")

    def _pg_write_conf(self) -> None:
        conf = (
            f"listen_addresses = '127.0.0.1'\n"
            f"port = {self.env.ports.postgres}\n"
            "unix_socket_directories = ''\n"
            "max_connections = 60\n"
            "logging_collector = off\n"
        )
        _write_private(self.pg_data / "stackops.conf", conf, owner=self.run_as)

    def _pg_start(self, report: Reporter) -> None:
        self._pg_init(report)
        if self._pg_running() is not None:
            report.info(f"PostgreSQL already running on 127.0.0.1:{self.env.ports.postgres}")
            return
        pidfile = self.pg_data / "postmaster.pid"
        if pidfile.exists():
            report.warn(f"removing stale PostgreSQL pid file (pid {_read_pid(pidfile)} is not a running server)")
            pidfile.unlink()
        self._need_port(self.env.ports.postgres, "postgres")
        self._pg_write_conf()
        report.step(f"starting PostgreSQL ({self.env.name}) on 127.0.0.1:{self.env.ports.postgres}")
        proc = run(self._as_server([
            str(self.bindir / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(self.pg_data),
            "-l", str(self.pg_home / "postgres.log"),
        ]), check=False)
        if proc.returncode != 0:
            raise ServiceError(
                f"PostgreSQL ({self.env.name}) did not start: see {self.pg_home / 'postgres.log'} "
                f"({proc.stderr.decode(errors='replace').strip().splitlines()[-1:]})"
            )
        self._ensure_database(report)

    def _ensure_database(self, report: Reporter) -> None:
        with pg.admin(self) as conn:
            exists = pg.database_exists(conn, self.env.db_name)
        if not exists:
            report.info(f"creating database {self.env.db_name}")
            pg.create_database(self, self.env.db_name)

    def _pg_stop(self, report: Reporter) -> None:
        if self._pg_running() is None:
            report.info("PostgreSQL already stopped")
            return
        report.step(f"stopping PostgreSQL ({self.env.name})")
        run(self._pg_ctl_stop(self.pg_data))

    def _pg_ctl_stop(self, data: Path) -> Cmd:
        """``pg_ctl stop`` of the cluster in ``data``: fast (sessions ended, a clean checkpoint), at most 60 s."""
        return self._as_server([str(self.bindir / "pg_ctl"), "stop", "-m", "fast", "-w", "-t", "60", "-D", str(data)])

    def _pg_healthy(self) -> tuple[bool, str]:
        try:
            with pg.connect(self, timeout=3) as conn:
                return True, f"PostgreSQL {pg.server_version(conn)}"
        except (StackopsError, pg.Error) as exc:
            return False, pg.first_line(exc)

    # ----- Redis -----------------------------------------------------------------------------
    def _redis_running(self) -> int | None:
        pid = _read_pid(self.redis_dir / "redis.pid")
        return pid if pid is not None and _pid_alive(pid, "redis-server") else None

    def _redis_start(self, report: Reporter) -> None:
        ensure_programs(["redis-server"], report)
        if self._redis_running() is not None:
            report.info(f"Redis already running on 127.0.0.1:{self.env.ports.redis}")
            return
        self.redis_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.redis_dir, 0o700)
        pidfile = self.redis_dir / "redis.pid"
        if pidfile.exists():
            report.warn(f"removing stale Redis pid file (pid {_read_pid(pidfile)} is not a running server)")
            pidfile.unlink()
        self._need_port(self.env.ports.redis, "redis")
        conf = self.redis_dir / "redis.conf"
        _write_private(conf, "\n".join([
            "bind 127.0.0.1",
            "protected-mode yes",
            f"port {self.env.ports.redis}",
            f"dir {self.redis_dir}",
            "daemonize yes",
            f"pidfile {pidfile}",
            f"logfile {self.redis_dir / 'redis.log'}",
            "appendonly yes",
            "appendfsync everysec",
            "save 900 1",
            "save 60 1000",
            "",
        ]))
        report.step(f"starting Redis ({self.env.name}) on 127.0.0.1:{self.env.ports.redis}")
        run(Cmd([shutil.which("redis-server") or "redis-server", str(conf)], cwd=self.redis_dir))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._redis_healthy()[0]:
                return
            time.sleep(0.1)
        raise ServiceError(f"Redis ({self.env.name}) did not answer within 30s: see {self.redis_dir / 'redis.log'}")

    def _redis_stop(self, report: Reporter) -> None:
        pid = self._redis_running()
        if pid is None:
            report.info("Redis already stopped")
            return
        report.step(f"stopping Redis ({self.env.name})")
        os.kill(pid, signal.SIGTERM)  # redis flushes its append-only file and saves on SIGTERM
        deadline = time.monotonic() + 60
        while _pid_alive(pid, "redis-server"):
            if time.monotonic() > deadline:
                raise ServiceError(f"Redis (pid {pid}) did not stop within 60s")
            time.sleep(0.05)

    def _redis_healthy(self) -> tuple[bool, str]:
        import redis  # lazy: the client costs about 225 ms at import and only health checks need it

        try:
            client = redis.Redis.from_url(self.redis_url(), socket_timeout=2, socket_connect_timeout=2)
            info = client.info("server")
            client.close()
            return True, f"Redis {info.get('redis_version', '?')}"
        except redis.RedisError as exc:
            return False, str(exc)

    # ----- lifecycle ---------------------------------------------------------------------------
    def _need_port(self, port: int, service: str) -> None:
        if not _port_free(port):
            raise ServiceError(
                f"port {port} (stackops.envs.{self.env.name}.ports.{service}) is already in use by another "
                f"process: stop it or set INVOKE_STACKOPS_ENVS_{self.env.name.upper()}_PORTS_{service.upper()}"
            )

    def up(self, report: Reporter) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        (self.state / LOCAL_MARKER).write_text("PostgreSQL and Redis of this environment run as local processes\n")
        self.env.uploads_dir.mkdir(parents=True, exist_ok=True)
        self._pg_start(report)
        self._redis_start(report)

    def down(self, report: Reporter, *, remove_data: bool = False) -> None:
        if remove_data and self.env.protected:
            raise ProtectedEnvironment(
                f"refusing to remove the data of protected environment {self.env.name!r}: the guide forbids "
                "`docker-compose down -v` in production (it removes volumes and all data)"
            )
        self._redis_stop(report)
        self._pg_stop(report)
        for folder in self.beside_data():  # a killed point-in-time restore's side cluster runs on its own port
            pid = _read_pid(folder / "postmaster.pid")
            if pid is not None and _pid_alive(pid, "postgres"):
                report.step(f"stopping the PostgreSQL cluster in {folder} (left by an interrupted restore)")
                run(self._pg_ctl_stop(folder), check=False)
        if remove_data:
            report.step(f"removing the {self.env.name} PostgreSQL and Redis data")
            shutil.rmtree(self.pg_home, ignore_errors=True)
            shutil.rmtree(self.redis_dir, ignore_errors=True)
            (self.state / LOCAL_MARKER).unlink(missing_ok=True)

    def beside_data(self) -> list[Path]:
        """Clusters beside the live one (kept by point-in-time restores, or a killed one's side cluster):
        they go with the data on ``down(remove_data=True)``."""
        if not self.pg_home.is_dir():
            return []
        return sorted(p for p in self.pg_home.iterdir() if p.is_dir() and p != self.pg_data)

    @staticmethod
    def _kept(folder: Path) -> str:
        return f"stopped — data kept in folder {folder}" if folder.exists() else "stopped — no data yet"

    def status(self) -> list[ServiceStatus]:
        pg_pid = self._pg_running()
        pg_ok, pg_detail = self._pg_healthy() if pg_pid else (False, self._kept(self.pg_data))
        redis_pid = self._redis_running()
        redis_ok, redis_detail = self._redis_healthy() if redis_pid else (False, self._kept(self.redis_dir))
        uploads = self.env.uploads_dir
        return [
            ServiceStatus("postgres", "running" if pg_pid else "stopped", pg_ok if pg_pid else None,
                          self.env.ports.postgres, pg_pid, str(self.pg_data),
                          dir_size(self.pg_data) if self.pg_data.exists() else None, pg_detail),
            ServiceStatus("redis", "running" if redis_pid else "stopped", redis_ok if redis_pid else None,
                          self.env.ports.redis, redis_pid, str(self.redis_dir),
                          dir_size(self.redis_dir) if self.redis_dir.exists() else None, redis_detail),
            ServiceStatus("uploads", "present" if uploads.is_dir() else "missing", None, None, None,
                          str(uploads), dir_size(uploads) if uploads.is_dir() else None, "host folder"),
        ]

    def server_major(self) -> int:
        return binary_major(self.bindir, "postgres")
