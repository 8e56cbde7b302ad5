"""The compose test harness: harness projects, the variables that point stackops at them, and their
container lifecycle through pytest-docker (loaded for the whole suite by tests/conftest.py, so the
integration suite on the compose runtime shares it).

Harness projects are named ``stackops-it-<env>``; their volumes are therefore
``stackops-it-<env>_postgres_<env>_data`` and so on, never a real environment's
(``impactbot-v2-<env>_...``). Ports are free loopback ports picked per session, folders live under
``.stack/compose-it/lone/``, and prod's env file is generated there with a random password.

Sessions that run at once on one engine (nox's three compose environments side by side, pytest-xdist
workers) each take a *slot*: STACKOPS_IT_SLOT and the xdist worker's name, joined. A slot puts its
name in every project (``stackops-it-<slot>-<env>``), work folder (``.stack/compose-it/<slot>/``) and
image: the stand-ins, the ops image and the backend run under the slot's own repositories
(``stackops-it-<slot>/postgres:15``, ... tags of the same images, removed at the end), so the rollback
pins an update puts on every service's image (``<repository>:stackops-rollback-<time>``) are the
slot's own. No two sessions share a container, volume, port, folder or pin; what stays engine-wide
(the retired real-name tags of tests/compose/test_images.py) is taken under ``engine_lock``.

One owner per container lifecycle: pytest-docker. ``docker_compose_file``,
``docker_compose_project_name``, ``docker_setup`` and ``docker_cleanup`` describe the environment under
test (STACKOPS_IT_ENV); ``docker_services`` runs the guide's own compose commands on it (``down
--volumes`` of an interrupted session's leftovers, then ``up --detach --wait``) and ``down --volumes``
at the end; ``compose_stack`` then waits (``wait_until_responsive``) until stackops' own view of it
(settings -> ports, container addresses, password) reaches PostgreSQL, Redis and the backend from
the host. ``all_envs`` brings the two other environments up the same way (pytest-docker's
``get_docker_services``) for the tests that need all three at once. Plain compose rather than
``invoke env.up``: the fixture does not depend on the code under test (env.up and env.down are tested
by tests/compose themselves), and a harness prod is removed with its volumes, which stackops refuses.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import psycopg
import pytest
import redis
from pytest_docker.plugin import Services, get_docker_services

from ci.images import standin_environ
from stackops.config import Settings
from stackops.errors import StackopsError
from stackops.runtime.compose import ComposeRuntime
from tests.conftest import invoke_settings

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "stackops-it"
ENVS = ("dev", "test", "prod")
IT_ENV = os.environ.get("STACKOPS_IT_ENV", "")
# This session's slot on the engine ("" for a lone session: the plain names above).
SLOT = "-".join(p for p in (os.environ.get("STACKOPS_IT_SLOT", ""), os.environ.get("PYTEST_XDIST_WORKER", "")) if p)
if SLOT and not re.fullmatch(r"[a-z0-9][a-z0-9-]*", SLOT):
    raise RuntimeError(f"STACKOPS_IT_SLOT={SLOT!r}: lower-case letters, digits and '-' only (a compose project name)")
WORK = ROOT / ".stack" / "compose-it" / (SLOT or "lone")
# The backend image of the harness projects: compose builds it from compose/backend (the guide's
# `up -d --build` rebuilds it, identically), and the session removes it, so the suite never writes
# impactbot-v2-backend:local or any other image it did not make.
SLOT_REPOS = f"{PREFIX}-{SLOT}/" if SLOT else ""  # the slot's own image repositories start with this
BACKEND_IMAGE = f"{SLOT_REPOS}backend:local" if SLOT else f"{PREFIX}/backend:local"
OPS_IMAGE = "impactbot-v2-ops:local"  # the prod backup service's image (`invoke images.build`)
UP_TIMEOUT = 300
LOCKS = Path(os.environ.get("STACKOPS_IT_LOCK_DIR", "/tmp"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def project(env: str) -> str:
    return f"{PREFIX}-{SLOT}-{env}" if SLOT else f"{PREFIX}-{env}"


@contextmanager
def engine_lock(name: str) -> Iterator[None]:
    """Hold the engine-wide lock ``name`` (a flock shared by every slot on this machine): for tests that
    assert on what is engine-wide, such as the rollback pins an update puts on the shared stand-ins."""
    LOCKS.mkdir(parents=True, exist_ok=True)
    with open(LOCKS / f"{PREFIX}-engine-{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def slot_tags() -> dict[str, tuple[str, str]]:
    """In a slot: for each image variable, the image it names otherwise and the slot's own tag of it."""
    if not SLOT:
        return {}
    sources = {name: os.environ.get(name, tag) for name, tag in standin_environ(ROOT).items()}
    sources["OPS_IMAGE"] = os.environ.get("OPS_IMAGE", OPS_IMAGE)
    return {name: (src, SLOT_REPOS + src.rsplit("/", 1)[-1]) for name, src in sources.items()}


def harness_environ(work: Path = WORK) -> dict[str, str]:
    """A fresh work folder and the variables of one session: every environment on its harness project,
    ports and folders; the stand-in images (or whatever POSTGRES_IMAGE, ... already name)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env_file = work / "prod.env"
    fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"POSTGRES_PASSWORD={secrets.token_urlsafe(24)}\n")
    out = {
        **{name: os.environ.get(name, tag) for name, tag in standin_environ(ROOT).items()},
        **{name: tag for name, (_src, tag) in slot_tags().items()},
        "BACKEND_IMAGE": BACKEND_IMAGE,
        "COMPOSE_DISABLE_ENV_FILE": "1",  # a developer's compose/.env never reaches the harness
        "PROD_ENV_FILE": str(env_file),
        "DATABASE_CONTAINER_NAME": f"{project('dev')}-database",
        # the prod backup service stays idle unless a test shortens its schedule; its health answers
        # within seconds, so `up --wait` does not wait for the default minute
        "BACKUP_FIRST_DELAY": "86400",
        "BACKUP_HEALTH_INTERVAL": "3s",
    }
    for env in ENVS:
        p = f"INVOKE_STACKOPS_ENVS_{env.upper()}_"
        folder = work / env
        out.update({
            p + "RUNTIME": "compose",
            p + "COMPOSE_PROJECT": project(env),
            p + "UPLOADS_DIR": str(folder / "uploads"),
            p + "BACKUPS_DIR": str(folder / "backups"),
            p + "STATE_DIR": str(folder / "state"),
            p + "PORTS_POSTGRES": str(_free_port()),
            p + "PORTS_REDIS": str(_free_port()),
            p + "PORTS_BACKEND": str(_free_port()),
        })
    return out


def settings_for(env: str) -> Settings:
    """The settings `invoke ... --env env` sees in this process (invoke.yaml + INVOKE_* variables)."""
    s = invoke_settings(env)
    if not s.env.compose_project.startswith(PREFIX + "-"):
        pytest.exit(f"refusing to test against compose project {s.env.compose_project}: not a harness project")
    return s


def runtime_for(env: str) -> ComposeRuntime:
    return ComposeRuntime(settings_for(env))


# ----- what pytest-docker runs -------------------------------------------------------------------------
def _env_file(env: str) -> Path:
    return WORK / f"{env}.compose.env"


def write_env_file(env: str) -> None:
    """The variables stackops passes to compose for ``env`` (ports, folders, user, database), as the
    ``--env-file`` of pytest-docker's commands: both see the same project."""
    rt = runtime_for(env)
    rt.env.uploads_dir.mkdir(parents=True, exist_ok=True)
    rt.env.backups_dir.mkdir(parents=True, exist_ok=True)
    _env_file(env).write_text("".join(f"{k}={v}\n" for k, v in rt.compose_env().items()))


def compose_files(env: str) -> list[str]:
    return [str(f) for f in settings_for(env).env.compose_files]


def setup_commands(env: str) -> list[str]:
    """pytest-docker runs these through a shell after `docker compose -f ... -p ...`: constant words and
    one quoted path."""
    opts = f"--env-file {shlex.quote(str(_env_file(env)))}"
    return [f"{opts} down --volumes --remove-orphans --timeout 10",
            f"{opts} up --detach --wait --wait-timeout {UP_TIMEOUT} --pull never --remove-orphans"]


def cleanup_commands(env: str) -> list[str]:
    return [f"--env-file {shlex.quote(str(_env_file(env)))} down --volumes --remove-orphans --timeout 30"]


def wait_reachable(services: Services, rt: ComposeRuntime) -> None:
    """Wait until PostgreSQL (a login and SELECT 1), Redis (PING) and the backend (/health) answer at the
    addresses stackops computes, and the backend's published port is the one stackops expects."""
    env = rt.env
    last: list[str] = ["not tried yet"]

    def reachable() -> bool:
        try:
            with psycopg.connect(**{**rt.conninfo(), "connect_timeout": 3}) as conn:
                conn.execute("SELECT 1")
            redis.Redis.from_url(rt.redis_url(), socket_timeout=3).ping()
            with urllib.request.urlopen(f"http://127.0.0.1:{env.ports.backend}/health", timeout=5) as resp:
                return bool(resp.status == 200)
        except (psycopg.Error, redis.RedisError, OSError, StackopsError) as exc:
            last[0] = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[-1]}"
            return False

    try:
        services.wait_until_responsive(check=reachable, timeout=120.0, pause=1.0)
    except Exception as exc:
        if type(exc) is not Exception:  # pytest-docker's timeout is a bare Exception; anything else is a bug
            raise
        raise RuntimeError(f"harness {env.name} ({rt.project}) not reachable after 120s: {last[0]}") from exc
    published = services.port_for("backend", 8000)
    assert published == env.ports.backend, f"{env.name}: backend published on {published}, not {env.ports.backend}"


def _remove_image(tag: str) -> None:
    found = subprocess.run(["docker", "image", "inspect", tag], capture_output=True, check=False)
    if found.returncode != 0:
        return
    rm = subprocess.run(["docker", "image", "rm", tag], capture_output=True, text=True, check=False)
    if rm.returncode != 0:
        raise RuntimeError(f"could not remove the harness image {tag}: {rm.stderr.strip()}")


# ----- fixtures ------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def it_env() -> str:
    assert IT_ENV in ENVS, f"STACKOPS_IT_ENV={IT_ENV!r}: expected one of {ENVS}"
    return IT_ENV


@pytest.fixture(scope="session")
def compose_harness(it_env: str) -> Iterator[dict[str, str]]:
    """The session's variables in os.environ (so `invoke` subprocesses see them too) and its work
    folder; at the end the harness backend image, the slot's image tags, the folder and the previous
    variables go."""
    tags = slot_tags()  # before os.environ names the slot's tags
    environ = harness_environ()
    saved = {k: os.environ.get(k) for k in environ}
    os.environ.update(environ)
    try:
        for src, tag in tags.values():
            subprocess.run(["docker", "tag", src, tag], check=True, capture_output=True)
        for env in ENVS:
            write_env_file(env)
        yield environ
        _remove_image(BACKEND_IMAGE)
        for _src, tag in tags.values():
            _remove_image(tag)
        if SLOT_REPOS:  # what tests tagged under the slot's repositories and could not untag while in use
            listed = subprocess.run(["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}"],
                                    capture_output=True, text=True, check=True).stdout.split()
            for ref in listed:
                if ref.startswith(SLOT_REPOS):
                    _remove_image(ref)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(WORK, ignore_errors=True)


@pytest.fixture(scope="session")
def docker_compose_file(compose_harness: dict[str, str], it_env: str) -> list[str]:
    return compose_files(it_env)


@pytest.fixture(scope="session")
def docker_compose_project_name(it_env: str) -> str:
    return project(it_env)


@pytest.fixture(scope="session")
def docker_setup(compose_harness: dict[str, str], it_env: str) -> list[str]:
    return setup_commands(it_env)


@pytest.fixture(scope="session")
def docker_cleanup(compose_harness: dict[str, str], it_env: str) -> list[str]:
    return cleanup_commands(it_env)


@pytest.fixture(scope="session")
def compose_stack(docker_services: Services, it_env: str) -> str:
    """The environment under test, up (pytest-docker) and reachable as stackops sees it."""
    wait_reachable(docker_services, runtime_for(it_env))
    return it_env


@pytest.fixture(scope="session")
def neighbours(compose_stack: str, docker_compose_command: str) -> Iterator[tuple[str, ...]]:
    """The two other harness environments, brought up and down the same way."""
    others = tuple(e for e in ENVS if e != compose_stack)
    with ExitStack() as stack:
        for env in others:
            services = stack.enter_context(get_docker_services(
                docker_compose_command, compose_files(env), project(env), setup_commands(env),
                cleanup_commands(env)))
            wait_reachable(services, runtime_for(env))
        yield others


@pytest.fixture
def rt(compose_stack: str) -> ComposeRuntime:
    return runtime_for(compose_stack)


@pytest.fixture
def all_envs(compose_stack: str, neighbours: tuple[str, ...]) -> dict[str, ComposeRuntime]:
    """dev, test and prod at once, each on its harness project."""
    return {env: runtime_for(env) for env in ENVS}
