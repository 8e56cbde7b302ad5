"""The compose runtime: the docker compose v2 CLI for orchestration, the docker SDK for containers,
volumes, health and image digests.

- Orchestration is ``docker compose -p <compose_project> -f <file>... <verb>`` (argv lists, run in the
  compose folder). Ports, uploads and backups folders, user and database name travel as variables in
  the subprocess environment (POSTGRES_PORT, UPLOADS_DIR, ...), never secrets: the database password
  stays in the compose files' own sources (dev/test defaults, prod's env file).
- PostgreSQL client tools run *inside* the database container (``docker exec -i``), so they always
  match the server's major version; stdin/stdout are streamed, the password goes through
  ``-e PGPASSWORD`` (value copied from Cmd.env by the docker CLI, never in argv).
- psycopg and Redis connections go to the service's published port on 127.0.0.1 when it has one
  (dev, test) and otherwise to the container's address on the project's bridge network (prod
  publishes no database or Redis port; that bridge is local to the Docker host, so stackops must run
  on it). The password is read from the database container's environment (POSTGRES_PASSWORD or
  POSTGRES_PASSWORD_FILE), the same source the server was initialised from.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from stackops.config import Settings
from stackops.errors import ConfigError, PrerequisiteError, ProtectedEnvironment, ServiceError
from stackops.files import dir_size
from stackops.pg import parse_major
from stackops.proc import Cmd, run, spawn, which
from stackops.report import Check, Reporter
from stackops.runtime.base import DataVolume, Runtime, ServiceStatus
from stackops.runtime.docker import DOCKER_INSTALL, compose_argv, docker_client, image_missing_error
from stackops.secretcheck import refuse_weak_secrets

__all__ = ["ComposeRuntime", "compose_argv", "docker_client"]

DATABASE, REDIS, BACKEND = "database", "redis", "backend"
OFFLINE_HINT = "run `invoke images.build`, then `invoke images.env >> compose/.env` to use the stand-in images"
DATA_SERVICES = (DATABASE, REDIS, BACKEND)  # must be healthy after up
SERVICE_PORTS = {DATABASE: 5432, REDIS: 6379, BACKEND: 8000}
CLEAN_START_LABEL = "stackops.clean-start"
PIN_PREFIX = "stackops-rollback-"  # <repository>:stackops-rollback-<time>: an update's rollback point
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
VOLUME_LABEL = "com.docker.compose.volume"
DOWN_V_REASON = ("the guide says of `docker-compose down -v`: \"DON'T USE THIS\" — it removes volumes and "
                 "all data")


def _split_ref(ref: str) -> tuple[str, str]:
    """``registry:5000/app:v2`` -> (``registry:5000/app``, ``v2``); no tag -> latest."""
    head, _, last = ref.rpartition("/")
    if ":" in last:
        name, tag = last.rsplit(":", 1)
        return (f"{head}/{name}" if head else name), tag
    return ref, "latest"


def _failing_checks_since(container: Any, since: datetime) -> tuple[int, int]:
    """(failed health checks in a row at the end of the container's health log that started at or after
    ``since``, the count that makes it unhealthy: its retries, at most the 5 entries Docker keeps). A verdict
    of "unhealthy" reached before ``since`` is stale: a service whose dependency was down (the backend while
    the database restarted) turns healthy again on its next passing check."""
    retries = int(((container.attrs.get("Config") or {}).get("Healthcheck") or {}).get("Retries") or 3)
    log = (container.attrs.get("State", {}).get("Health") or {}).get("Log") or []
    failed = 0
    for entry in reversed(log):
        try:
            start = datetime.fromisoformat(str(entry.get("Start", "")))
        except ValueError:
            break
        if entry.get("ExitCode") == 0 or start < since:
            break
        failed += 1
    return failed, max(1, min(retries, 5))


def _health_log_tail(container: Any) -> str:
    log = (container.attrs.get("State", {}).get("Health") or {}).get("Log") or []
    if not log:
        return ""
    out = str(log[-1].get("Output", "")).strip().splitlines()
    if not out:
        return f"exit {log[-1].get('ExitCode')}"
    line = out[-1]
    return line if len(line) <= 200 else line[:200].rsplit(" ", 1)[0] + " …"  # never cut mid-word


class ComposeRuntime(Runtime):
    kind = "compose"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.project = self.env.compose_project
        self.files = self.env.compose_files
        if not self.files:
            raise ConfigError(
                f"config key stackops.envs.{self.env.name}.compose_files is empty: list the compose files"
            )
        missing = [f for f in self.files if not f.is_file()]
        if missing:
            raise ConfigError(
                f"config key stackops.envs.{self.env.name}.compose_files names {missing[0]}, which does not exist"
            )
        self.project_dir = self.files[0].parent
        self._client: Any = None
        self._config: dict[str, Any] | None = None

    # ----- plumbing ------------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = docker_client()
        return self._client

    def compose_env(self) -> dict[str, str]:
        """Variables the compose files read; no secrets (those stay in the files' own env file)."""
        ports = self.env.ports
        return {
            "POSTGRES_PORT": str(ports.postgres),
            "REDIS_PORT": str(ports.redis),
            "BACKEND_PORT": str(ports.backend),
            "POSTGRES_USER": self.env.db_user,
            "POSTGRES_DB": self.env.db_name,
            "UPLOADS_DIR": str(self.env.uploads_dir),
            "BACKUPS_DIR": str(self.env.backups_dir),
        }

    def compose_cmd(self, *args: str) -> Cmd:
        """``docker compose -p PROJECT -f FILE... ARGS`` as a Cmd (run it with stackops.proc)."""
        argv = [*compose_argv(), "-p", self.project]
        for f in self.files:
            argv += ["-f", str(f)]
        return Cmd([*argv, *args], env=self.compose_env(), cwd=self.project_dir)

    def compose(self, *args: str, check: bool = True,
                timeout: float | None = None) -> subprocess.CompletedProcess[bytes]:
        return run(self.compose_cmd(*args), check=check, timeout=timeout)

    def _compose_streamed(self, args: list[str], report: Reporter) -> None:
        """Run a compose verb, forwarding its progress lines; raise ServiceError with its tail on failure."""
        proc = spawn(self.compose_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        tail: list[str] = []
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            if not line.strip():
                continue
            tail = [*tail[-40:], line]
            report.info(f"compose: {line.strip()[:150]}")
        if proc.wait() != 0:
            errors = [t for t in tail if "error" in t.lower()] or tail or ["no output"]
            raise ServiceError(
                f"`docker compose {args[0]}` for {self.env.name} (project {self.project}) failed with exit "
                f"{proc.returncode}: {errors[-1].strip()[:300]}"
            )

    def config(self, refresh: bool = False) -> dict[str, Any]:
        """The merged compose configuration (kept in memory only: prod's includes its env file)."""
        if self._config is None or refresh:
            proc = self.compose("config", "--format", "json", check=False)
            if proc.returncode != 0:
                why = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
                hint = ""
                if "env file" in why[0] and "not found" in why[0]:
                    hint = ": copy compose/.env.example to that path and set POSTGRES_PASSWORD (never commit it)"
                raise ConfigError(
                    f"the compose files of {self.env.name} ({', '.join(f.name for f in self.files)}) are invalid: "
                    f"{why[0][:300]}{hint or ''}"
                )
            self._config = json.loads(proc.stdout)
        return self._config

    def services(self) -> list[str]:
        return list(self.config().get("services", {}))

    def containers(self) -> dict[str, Any]:
        """The newest container of each service of this project, running or not."""
        found: dict[str, Any] = {}
        for c in self.client.containers.list(all=True, filters={"label": f"{PROJECT_LABEL}={self.project}"}):
            service = c.labels.get(SERVICE_LABEL)
            if service is None:
                continue
            if service not in found or c.attrs.get("Created", "") > found[service].attrs.get("Created", ""):
                found[service] = c
        return found

    def container(self, service: str) -> Any:
        """The running container of ``service``, or a ServiceError saying how to start it."""
        c = self.containers().get(service)
        if c is None or c.status != "running":
            state = "has no container" if c is None else f"is {c.status}"
            raise ServiceError(
                f"service {service} of environment {self.env.name} (compose project {self.project}) {state}: "
                f"start it with `invoke env.up --env {self.env.name}`"
            )
        return c

    def volumes(self) -> dict[str, str]:
        """The project's named volumes: name in the compose files (e.g. postgres_dev_data) -> Docker name."""
        out = {}
        for v in self.client.volumes.list(filters={"label": f"{PROJECT_LABEL}={self.project}"}):
            out[(v.attrs.get("Labels") or {}).get(VOLUME_LABEL, v.name)] = v.name
        return out

    @staticmethod
    def _address(container: Any, port: int) -> tuple[str, int]:
        """127.0.0.1 and the published port when there is one, else the container's bridge address."""
        bindings = (container.attrs.get("NetworkSettings", {}).get("Ports") or {}).get(f"{port}/tcp") or []
        for b in bindings:
            if b.get("HostPort"):
                return "127.0.0.1", int(b["HostPort"])
        networks = container.attrs.get("NetworkSettings", {}).get("Networks") or {}
        for net in sorted(networks, key=lambda n: not n.endswith("_default")):
            ip = networks[net].get("IPAddress")
            if ip:
                return str(ip), port
        raise ServiceError(
            f"container {container.name} publishes no port {port} and has no network address: "
            "is it attached to its compose network?"
        )

    def _container_env(self, container: Any) -> dict[str, str]:
        env = {}
        for item in container.attrs.get("Config", {}).get("Env") or []:
            key, _, value = item.partition("=")
            env[key] = value
        return env

    def _password(self, container: Any) -> str | None:
        env = self._container_env(container)
        if env.get("POSTGRES_PASSWORD"):
            return env["POSTGRES_PASSWORD"]
        if env.get("POSTGRES_PASSWORD_FILE"):
            code, out = container.exec_run(["cat", env["POSTGRES_PASSWORD_FILE"]], demux=False)
            if code == 0:
                return bytes(out).decode().strip()
        return None

    # ----- protocol: connections -----------------------------------------------------------------------
    def conninfo(self, dbname: str | None = None) -> dict[str, Any]:
        c = self.container(DATABASE)
        host, port = self._address(c, SERVICE_PORTS[DATABASE])
        info: dict[str, Any] = {
            "host": host, "port": port, "user": self.env.db_user, "dbname": dbname or self.env.db_name,
            "connect_timeout": 10, "application_name": "stackops",
        }
        password = self._password(c)
        if password is not None:
            info["password"] = password
        return info

    def pg_cmd(self, tool: str) -> Cmd:
        """``tool`` run inside the database container (the server's own version), stdin/stdout streamed.
        Arguments naming files refer to the container's filesystem: stream through stdin/stdout instead."""
        c = self.container(DATABASE)
        env = {"PGUSER": self.env.db_user, "PGDATABASE": self.env.db_name, "PGAPPNAME": "stackops"}
        password = self._password(c)
        if password is not None:
            env["PGPASSWORD"] = password
        argv = [which("docker", DOCKER_INSTALL), "exec", "-i", "-u", "postgres"]
        for name in sorted(env):
            argv += ["-e", name]  # no "=value": the docker CLI copies it from its own environment
        return Cmd([*argv, str(c.id), tool], env=env)

    def psql_session(self, extra_env: dict[str, str], *, terminal: bool) -> Cmd:
        """``docker exec -i [-t] -e NAME... <database container> psql``: values copied from the environment."""
        cmd = self.pg_cmd("psql")
        argv = list(cmd.argv)
        at = argv.index("exec") + 1
        argv[at:at] = ["-t"] if terminal else []
        for name in sorted(extra_env):
            argv[at:at] = ["-e", name]
        return Cmd(argv, {**cmd.env, **extra_env}, cmd.user, cmd.cwd)

    def redis_url(self) -> str:
        host, port = self._address(self.container(REDIS), SERVICE_PORTS[REDIS])
        return f"redis://{host}:{port}/0"

    def image_digests(self) -> dict[str, str]:
        """service -> ``image-reference@digest`` (the registry digest when known, else the local image id)."""
        out = {}
        for service, c in sorted(self.containers().items()):
            ref = str(c.attrs.get("Config", {}).get("Image", ""))
            try:
                image = self.client.images.get(c.attrs.get("Image"))
                digests = image.attrs.get("RepoDigests") or []
                digest = digests[0].split("@", 1)[1] if digests else str(image.id)
            except Exception:  # image removed since: the container still records its id
                digest = str(c.attrs.get("Image", "unknown"))
            out[service] = f"{ref}@{digest}"
        return out

    def server_free_bytes(self) -> int | None:
        """``df -P -k`` of the database container's PGDATA (the volume the server writes), run in the
        container (GNU and busybox df both take these flags); None when that fails."""
        try:
            c = self.container(DATABASE)
            data = self._container_env(c).get("PGDATA") or "/var/lib/postgresql/data"
            code, out = c.exec_run(["df", "-P", "-k", data], demux=False)
            if code != 0:
                return None
            return int(bytes(out).decode(errors="replace").strip().splitlines()[-1].split()[3]) * 1024
        except Exception:  # an engine error, an odd df: unknown, never a failure
            return None

    def server_major(self) -> int:
        out = run(Cmd([which("docker", DOCKER_INSTALL), "exec", str(self.container(DATABASE).id),
                       "postgres", "--version"])).stdout
        return parse_major(out.decode(errors="replace"))

    # ----- protocol: lifecycle -------------------------------------------------------------------------
    def _missing_images(self) -> list[str]:
        not_found = image_missing_error()
        missing = []
        for svc in self.config().get("services", {}).values():
            image = svc.get("image")
            if not image or "build" in svc:
                continue
            try:
                self.client.images.get(image)
            except not_found:
                missing.append(str(image))
        return sorted(set(missing))

    def _clean_start(self, report: Reporter) -> None:
        """Environments labelled stackops.clean-start (test) start from empty volumes when stopped."""
        labelled = [name for name, svc in self.config().get("services", {}).items()
                    if str((svc.get("labels") or {}).get(CLEAN_START_LABEL, "")).lower() == "true"]
        if not labelled:
            return
        running = self.containers()
        if all(running.get(s) is not None and running[s].status == "running" for s in labelled):
            return
        if self.env.protected:
            raise ProtectedEnvironment(
                f"environment {self.env.name} is protected but its compose files ask for a clean start "
                f"(label {CLEAN_START_LABEL}): remove that label from its overlay"
            )
        volumes = self.volumes()
        if volumes or running:
            report.step(f"clean start for {self.env.name}: removing the previous run's containers and volumes "
                        f"({', '.join(sorted(volumes)) or 'none'})")
            self.compose("down", "--volumes", "--remove-orphans", "--timeout", "30")

    def up(self, report: Reporter, *, build: bool = False, force_recreate: bool = False,
           pull: str = "missing", timeout: float = 300.0) -> None:
        """``docker compose up -d`` (idempotent), then wait until the data services are healthy."""
        if self.env.protected:  # no placeholder or short secrets (compose/.env) in a protected environment
            refuse_weak_secrets(self.env.name, self.config(), self.project_dir)
        self.env.uploads_dir.mkdir(parents=True, exist_ok=True)
        if "backup" in self.services():
            self.env.backups_dir.mkdir(parents=True, exist_ok=True)
        self._clean_start(report)
        missing = self._missing_images()
        if missing and pull in ("never", "missing"):
            report.warn(f"images not present locally: {', '.join(missing)} — "
                        + ("compose will try to pull them; " if pull == "missing" else "")
                        + f"offline: {OFFLINE_HINT}")
        report.step(f"starting {self.env.name} (compose project {self.project})")
        args = ["up", "--detach", "--remove-orphans", "--pull", pull]
        if build:
            args.append("--build")
        if force_recreate:
            args.append("--force-recreate")
        try:
            self._compose_streamed(args, report)
        except ServiceError as exc:
            if missing:
                raise ServiceError(f"{exc}; images missing locally: {', '.join(missing)} "
                                   f"(offline: {OFFLINE_HINT})") from exc
            raise
        self.wait_healthy(report, timeout=timeout)

    def wait_healthy(self, report: Reporter, timeout: float = 300.0, every: float = 1.0,
                     services: list[str] | None = None) -> None:
        """Wait until every service runs and every one that has a healthcheck is healthy (the backup
        service too: "healthy" means all of them), looking every ``every`` seconds. ``services``: only
        those (PITR restarts the database alone and must not judge it by the backend's health)."""
        started = time.monotonic()
        since = datetime.now(UTC)
        deadline = started + timeout
        wanted = self.services() if services is None else services
        last = ""
        while True:
            containers = self.containers()
            problems = []
            for service in wanted:
                c = containers.get(service)
                if c is None:
                    problems.append(f"{service}: no container")
                    continue
                state = c.attrs.get("State", {})
                status = state.get("Status", "?")
                health = (state.get("Health") or {}).get("Status")
                policy = (c.attrs.get("HostConfig", {}).get("RestartPolicy") or {}).get("Name") or "no"
                if status in ("exited", "dead") and policy in ("no", ""):
                    raise ServiceError(
                        f"service {service} of {self.env.name} exited with code {state.get('ExitCode')}: "
                        f"see `docker logs {c.name}`"
                    )
                if status != "running":
                    problems.append(f"{service}: {status}")
                elif health == "unhealthy":
                    failed, needed = _failing_checks_since(c, since)
                    if failed < needed:  # judged before this wait: its next passing check makes it healthy
                        problems.append(f"{service}: unhealthy, checking again")
                        continue
                    raise ServiceError(
                        f"service {service} of {self.env.name} is unhealthy ({_health_log_tail(c) or 'no output'}): "
                        f"see `docker logs {c.name}`"
                    )
                elif health not in (None, "healthy"):  # every service with a healthcheck, not only the data ones
                    problems.append(f"{service}: {health}")
            if not problems:
                report.info(f"{self.env.name} healthy after {time.monotonic() - started:.1f}s")
                return
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"{self.env.name} not healthy within {timeout:.0f}s ({'; '.join(problems)}): "
                    f"see `docker compose -p {self.project} logs`"
                )
            now = ", ".join(problems)
            if now != last:
                report.info(f"waiting: {now}")
                last = now
            time.sleep(every)

    def down(self, report: Reporter, *, remove_data: bool = False) -> None:
        if remove_data and self.env.protected:
            raise ProtectedEnvironment(
                f"refusing to remove the volumes of protected environment {self.env.name!r}: {DOWN_V_REASON}; "
                f"stop it without --remove-data (data is kept)"
            )
        args = ["down", "--remove-orphans", "--timeout", "60"]
        if remove_data:
            names = ", ".join(sorted(self.volumes())) or "none"
            report.step(f"stopping {self.env.name} and REMOVING its volumes ({names})")
            args.append("--volumes")
        else:
            report.step(f"stopping {self.env.name} (compose project {self.project}); volumes are kept")
        self._compose_streamed(args, report)

    def uploads_replaced(self, report: Reporter) -> None:
        """Call after the uploads folder was swapped for another one (restore renames folders): a bind
        mount follows the folder it was made from, so containers mounting the uploads path are restarted
        to mount the folder now at that path."""
        path = str(self.env.uploads_dir.resolve())
        services = sorted(
            service for service, c in self.containers().items()
            if c.status == "running" and any(
                m.get("Type") == "bind" and str(m.get("Source", "")).rstrip("/") == path
                for m in c.attrs.get("Mounts") or [])
        )
        if not services:
            return
        report.step(f"restarting {', '.join(services)} to mount the new uploads folder {path}")
        self._compose_streamed(["restart", "--timeout", "60", *services], report)
        self.wait_healthy(report)

    def pull(self, report: Reporter) -> None:
        """The guide's `docker compose pull`, offline-safe: only images missing locally are pulled, and
        images that compose builds itself are skipped."""
        report.step(f"pulling missing images for {self.env.name}")
        self._compose_streamed(["pull", "--policy", "missing", "--ignore-buildable"], report)

    def orchestration_checks(self) -> list[Check]:
        """The compose files are valid for this environment and the Docker engine answers."""
        checks = []
        try:
            services = self.services()
            checks.append(Check("compose configuration valid", True,
                                f"{', '.join(f.name for f in self.files)}: {', '.join(services)}"))
        except (ConfigError, ServiceError, PrerequisiteError) as exc:
            checks.append(Check("compose configuration valid", False, str(exc),
                                f"`docker compose -p {self.project} "
                                f"{' '.join('-f ' + str(f) for f in self.files)} config`"))
        try:
            version = self.client.version().get("Version", "?")
            checks.append(Check("container engine answers", True, f"Docker {version}"))
        except Exception as exc:  # the SDK raises its own and requests' errors
            checks.append(Check("container engine answers", False, str(exc).splitlines()[0][:200],
                                "start dockerd (`.ci/setup-docker` as root sets it up)"))
        return checks

    def _resolve(self, ref: str) -> tuple[Any | None, str]:
        """The local image ``ref`` names and its ``ref@digest`` as ``image_digests`` writes it."""
        try:
            image = self.client.images.get(ref)
        except image_missing_error():
            return None, f"{ref}@missing"
        digests = image.attrs.get("RepoDigests") or []
        return image, f"{ref}@{digests[0].split('@', 1)[1] if digests else image.id}"

    def _recorded_image(self, recorded: str) -> Any | None:
        """The local image of an ``image_digests`` entry: by image id, else by repository digest."""
        ref, _, digest = recorded.rpartition("@")
        for name in (digest, f"{_split_ref(ref)[0]}@{digest}"):
            try:
                return self.client.images.get(name)
            except image_missing_error():
                continue
            except Exception:  # an invalid reference for this engine
                continue
        return None

    def _config_images(self) -> dict[str, str]:
        return {name: str(svc["image"]) for name, svc in sorted(self.config().get("services", {}).items())
                if svc.get("image")}

    def target_digests(self) -> dict[str, str]:
        """What `up` would run now: each service's configured reference resolved against local images."""
        return {service: self._resolve(ref)[1] for service, ref in self._config_images().items()}

    def recreate(self, report: Reporter, *, timeout: float = 300.0, services: list[str] | None = None,
                 stopped: Callable[[], None] | None = None) -> None:
        """``docker compose up -d`` with images as they are now (no pull, no build: both happen before
        anything stops), so compose recreates exactly the services whose image changed; then wait.
        With ``services``: ``docker compose stop`` them first, then ``stopped()``."""
        if services:
            # through the engine (what `docker compose stop` does, without a second compose start-up inside
            # the downtime): SIGTERM, then SIGKILL after the same 60 s
            report.step(f"stopping {', '.join(services)} of {self.env.name}")
            containers = self.containers()
            for service in services:
                c = containers.get(service)
                if c is not None and c.status == "running":
                    c.stop(timeout=60)
            if stopped is not None:
                stopped()
        report.step(f"recreating the services of {self.env.name} whose image changed")
        self._compose_streamed(["up", "--detach", "--remove-orphans", "--pull", "never", "--no-build"], report)
        self.wait_healthy(report, timeout=timeout, every=0.25)

    def restore_images(self, digests: dict[str, str], report: Reporter) -> list[str]:
        """Re-tag each configured reference to the image recorded in ``digests``; the image it pointed at
        instead stays as ``<repository>:rejected-<time>`` (nothing is deleted)."""
        moved = []
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        for service, ref in self._config_images().items():
            recorded = digests.get(service)
            if recorded is None:
                continue
            now, _ = self._resolve(ref)
            old = self._recorded_image(recorded)
            if old is None:
                raise ServiceError(f"the image {service} ran before the update ({recorded}) is no longer on this "
                                   "host: pull it by that digest, then run `invoke update` again")
            if now is not None and now.id == old.id:
                continue
            repo, tag = _split_ref(ref)
            if now is not None:
                now.tag(repo, f"rejected-{stamp}")
            old.tag(repo, tag)
            report.info(f"{service}: {ref} points at {old.id[:19]} again"
                        + (f" (the rejected image is kept as {repo}:rejected-{stamp})" if now is not None else ""))
            moved.append(service)
        return moved

    def pin_images(self, digests: dict[str, str], stamp: str, report: Reporter) -> list[str]:
        """``<repository>:stackops-rollback-<stamp>`` on every recorded image (one per repository and image):
        `docker image prune -a` cannot remove an image a tag references, so the rollback point stays."""
        pins: list[str] = []
        for service, recorded in sorted(digests.items()):
            image = self._recorded_image(recorded)
            if image is None:
                raise ServiceError(f"the image {service} runs ({recorded}) is not on this host: cannot keep it as "
                                   "the update's rollback point")
            repo = _split_ref(recorded.rpartition("@")[0])[0]
            pin = f"{repo}:{PIN_PREFIX}{stamp}"
            if pin in pins:
                continue
            image.tag(repo, f"{PIN_PREFIX}{stamp}")
            pins.append(pin)
        if pins:
            report.info(f"rollback point pinned: {', '.join(pins)}")
        return pins

    def unpin_images(self, pins: list[str], report: Reporter) -> None:
        """Remove the pins: an image that another tag or a container still uses stays; one that only its pin
        kept goes, as the next prune would have removed it."""
        for pin in pins:
            try:
                self.client.images.remove(pin, noprune=True)
            except image_missing_error():
                continue
            except Exception as exc:  # the engine refuses (e.g. the image's last tag, used by a container)
                report.info(f"pin {pin} kept: {str(exc).splitlines()[0][:200]}")

    def _declared_volumes(self) -> dict[str, list[str]]:
        """service -> the named volumes its compose definition mounts (empty when the files are invalid)."""
        try:
            services = self.config().get("services", {})
        except ConfigError:
            return {}
        return {name: [str(v["source"]) for v in svc.get("volumes") or []
                       if isinstance(v, dict) and v.get("type") == "volume" and v.get("source")]
                for name, svc in services.items()}

    def data_volumes(self) -> list[DataVolume]:
        """The project's named volumes under the guide's names (what `docker volume ls` shows, with
        sizes from `docker system df`), then the uploads folder bound into the backend."""
        sizes: dict[str, int] = {}
        try:
            for v in self.client.df().get("Volumes") or []:
                size = (v.get("UsageData") or {}).get("Size")
                if isinstance(size, int) and size >= 0:
                    sizes[v["Name"]] = size
        except Exception:  # sizes are informative only
            sizes = {}
        users: dict[str, str] = {}
        for service, c in self.containers().items():
            for m in c.attrs.get("Mounts") or []:
                if m.get("Type") == "volume":
                    users[str(m.get("Name"))] = service
        declared = self.config().get("volumes") or {}
        found = self.volumes()
        out = []
        for name in sorted(set(declared) | set(found)):
            docker_name = found.get(name) or str((declared.get(name) or {}).get("name") or f"{self.project}_{name}")
            out.append(DataVolume(users.get(docker_name, "-"), name, "volume", docker_name, sizes.get(docker_name),
                                  name in found))
        uploads = self.env.uploads_dir
        out.append(DataVolume("uploads", str(uploads), "folder", str(uploads),
                              dir_size(uploads) if uploads.is_dir() else None, uploads.is_dir()))
        return out

    # ----- protocol: status ------------------------------------------------------------------------------
    def status(self) -> list[ServiceStatus]:
        containers = self.containers()
        sizes: dict[str, int] = {}
        try:
            for v in self.client.df().get("Volumes") or []:
                size = (v.get("UsageData") or {}).get("Size")
                if isinstance(size, int) and size >= 0:
                    sizes[v["Name"]] = size
        except Exception:  # sizes are informative only
            sizes = {}
        volumes = self.volumes()
        by_docker_name = {docker_name: name for name, docker_name in volumes.items()}
        out = []
        try:
            services = self.services()
        except ConfigError:
            services = sorted(containers)
        declared = self._declared_volumes()
        for service in services:
            c = containers.get(service)
            if c is None:
                kept = [name for name in declared.get(service, []) if name in volumes]
                if kept:
                    size = sum(sizes.get(volumes[name], 0) for name in kept)
                    where = ", ".join(f"volume {name}" for name in kept)
                    out.append(ServiceStatus(service, "stopped", None, None, None, where, size,
                                             f"stopped — data kept in {where}"))
                else:
                    out.append(ServiceStatus(service, "stopped", None, None, None, "-", None,
                                             "stopped — no container (holds no data of its own)"))
                continue
            state = c.attrs.get("State", {})
            running = state.get("Status") == "running"
            health = (state.get("Health") or {}).get("Status")
            healthy = {"healthy": True, "unhealthy": False}.get(health or "", None) if running else None
            port = None
            if service in SERVICE_PORTS:
                for b in (c.attrs.get("NetworkSettings", {}).get("Ports") or {}).get(
                        f"{SERVICE_PORTS[service]}/tcp") or []:
                    if b.get("HostPort"):
                        port = int(b["HostPort"])
            data, size = [], 0
            for m in c.attrs.get("Mounts") or []:
                if m.get("Type") == "volume" and m.get("Name") in by_docker_name:
                    data.append(f"volume {by_docker_name[m['Name']]}")
                    size += sizes.get(m["Name"], 0)
                elif m.get("Type") == "bind" and m.get("Destination") in ("/app/uploads", "/backups"):
                    data.append(str(m.get("Source")))
            detail = f"{c.name}, {c.attrs.get('Config', {}).get('Image', '')}"
            if health and health != "healthy":
                detail += f", health {health}: {_health_log_tail(c)}"
            elif service == "backup" and health:
                detail += f", {_health_log_tail(c)}"
            out.append(ServiceStatus(service, "running" if running else str(state.get("Status", "?")), healthy,
                                     port, state.get("Pid") or None, ", ".join(data) or "-",
                                     size if any(d.startswith("volume") for d in data) else None, detail))
        uploads = self.env.uploads_dir
        out.append(ServiceStatus("uploads", "present" if uploads.is_dir() else "missing", None, None, None,
                                 str(uploads), dir_size(uploads) if uploads.is_dir() else None,
                                 "host folder (bind mount)"))
        return out
