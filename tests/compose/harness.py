"""The compose test harness: environment variables that point stackops at harness projects, and the
nox session body that owns their lifecycle. Standard library only (the noxfile imports it).

Harness projects are named ``stackops-it-<env>``; their volumes are therefore
``stackops-it-<env>_postgres_<env>_data`` and so on, never a real environment's
(``impactbot-v2-<env>_...``). Ports are free loopback ports picked per session, folders live under
``.stack/compose-it/``, and prod's env file is generated there with a random password.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "stackops-it"
ENVS = ("dev", "test", "prod")
WORK = ROOT / ".stack" / "compose-it"
STATE_FILE = WORK / "harness.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def project(env: str) -> str:
    return f"{PREFIX}-{env}"


def harness_environ(work: Path = WORK) -> dict[str, str]:
    """Variables for `invoke ...` and pytest: every environment on its harness project, folders and ports.

    Written once per work folder (harness.json), so every process of a session sees the same ports."""
    state = work / "harness.json"
    if state.exists():
        saved: dict[str, str] = json.loads(state.read_text())
        return saved
    work.mkdir(parents=True, exist_ok=True)
    env_file = work / "prod.env"
    fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"POSTGRES_PASSWORD={secrets.token_urlsafe(24)}\n")
    from ci.images import standin_environ  # the stand-ins, never real images' names (CI has no registry)

    out = {
        **standin_environ(ROOT),
        "PROD_ENV_FILE": str(env_file),
        "DATABASE_CONTAINER_NAME": f"{project('dev')}-database",
        # the prod backup service stays idle unless a test shortens its schedule
        "BACKUP_FIRST_DELAY": "86400",
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
    state.write_text(json.dumps(out, indent=2, sort_keys=True))
    return out


def purge(env: str) -> None:
    """Remove a harness project's containers, networks and volumes (refuses any other project)."""
    name = project(env)
    if not name.startswith(PREFIX + "-"):
        raise RuntimeError(f"refusing to purge {name}: not a harness project")
    label = f"label=com.docker.compose.project={name}"
    for kind, listing in (("container", ["ps", "-aq"]), ("volume", ["volume", "ls", "-q"]),
                          ("network", ["network", "ls", "-q"])):
        ids = subprocess.run(["docker", *listing, "--filter", label], capture_output=True, text=True,
                             check=False).stdout.split()
        if ids:
            rm = ["rm", "-f"] if kind == "container" else [kind, "rm"]
            subprocess.run(["docker", *rm, *ids], capture_output=True, check=False)


def compose_session(session: Any, env: str) -> None:
    """Bring the harness dev, test and prod up through stackops' own tasks (``env`` first), run
    tests/compose/ against ``env`` with the others running beside it, then tear all three down."""
    if env not in ENVS:
        session.error(f"unknown environment {env!r}: accepted values are {', '.join(ENVS)}")
    shutil.rmtree(WORK, ignore_errors=True)
    for e in ENVS:
        purge(e)  # leftovers of an interrupted session
    environ = harness_environ()
    session.run("invoke", "images.build", env=environ)  # cached by input hash: seconds when nothing changed
    try:
        for e in (env, *[x for x in ENVS if x != env]):
            session.run("invoke", "env.up", "--env", e, env=environ)
        session.run("pytest", "tests/compose", *session.posargs,
                    env={**environ, "STACKOPS_IT_ENV": env})
        if env == "dev":  # the whole backup / restore / verify / migrate / check suite, on the compose runtime
            session.run("pytest", "tests/integration", *session.posargs,
                        env={**environ, "STACKOPS_IT_ENV": env, "STACKOPS_IT_RUNTIME": "compose"})
    finally:
        for e in ENVS:
            # dev and test: stackops' own removal; prod refuses it (protected), so its harness volumes go by label
            args = ["invoke", "env.down", "--env", e] + (["--remove-data"] if e != "prod" else [])
            session.run(*args, env=environ, success_codes=[0, 1, 2, 3, 4, 5, 6])
            purge(e)
        shutil.rmtree(WORK, ignore_errors=True)
