"""The Docker engine and the compose v2 CLI: found once, with one clear line when missing.

The docker SDK is imported inside these functions on purpose: it costs about 155 ms at import
(measured with ``python -X importtime``), and only the compose runtime and ``doctor`` need it.
"""

from __future__ import annotations

import shutil
from functools import cache
from typing import Any

from stackops.errors import PrerequisiteError
from stackops.proc import Cmd, run, text

SETUP_HINT = "run `.ci/setup-docker` (installs docker.io and compose, starts dockerd)"
DOCKER_INSTALL = "apt-get install -y docker.io"


def engine_answers(timeout: float = 2.0) -> tuple[bool, str]:
    """Whether a Docker engine answers a ping, and a short reason."""
    try:
        import docker

        client = docker.from_env(timeout=int(timeout))
        client.ping()
        return True, f"Docker engine {client.version().get('Version', '?')} answered"
    except Exception as exc:  # any failure means "no engine" here
        return False, f"no Docker engine answered ({type(exc).__name__})"


def docker_client(timeout: int = 60) -> Any:
    """A docker SDK client whose engine answered a ping (image builds want a longer ``timeout``)."""
    try:
        import docker
    except ImportError as exc:
        raise PrerequisiteError("the docker Python package is missing: run `pip install -e '.[dev]'`") from exc
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except Exception as exc:  # any failure means "no engine"
        raise PrerequisiteError(f"no Docker engine answered ({type(exc).__name__}): {SETUP_HINT}") from exc
    return client


def image_missing_error() -> type[Exception]:
    """docker.errors.ImageNotFound (the SDK imported on first use)."""
    import docker.errors

    return docker.errors.ImageNotFound  # type: ignore[no-any-return]


@cache
def compose_argv() -> tuple[str, ...]:
    """The docker compose v2 command: the CLI plugin (``docker compose``), else a v2 ``docker-compose``."""
    docker = shutil.which("docker")
    if docker is not None:
        proc = run(Cmd([docker, "compose", "version", "--short"]), check=False)
        if proc.returncode == 0:
            return (docker, "compose")
    standalone = shutil.which("docker-compose")
    if standalone is not None:
        version = text(Cmd([standalone, "version", "--short"]), check=False)
        if version.lstrip("v").startswith("2"):
            return (standalone,)
    raise PrerequisiteError(
        f"docker compose v2 not found (neither `docker compose` nor docker-compose v2): {SETUP_HINT}"
    )
