"""Prerequisites: what `doctor` checks and what `env.up` installs when it can (root with apt)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys

from stackops.errors import PrerequisiteError
from stackops.proc import Cmd, run
from stackops.report import Check, Reporter
from stackops.runtime.docker import compose_argv, engine_answers

# installs docker.io, debootstrap and Compose v2, starts dockerd and builds the offline images (as root)
SETUP_DOCKER = "bash .ci/setup-docker"

# program -> Debian package providing it
SYSTEM_PACKAGES = {
    "redis-server": "redis-server",
    "redis-cli": "redis-tools",
    "zstd": "zstd",
    "gzip": "gzip",
    "tar": "tar",
}


def _apt_install_cmd(packages: list[str]) -> str:
    prefix = "" if os.geteuid() == 0 else "sudo "
    return f"{prefix}apt-get install -y {' '.join(packages)}"


def ensure_programs(programs: list[str], report: Reporter) -> None:
    """Install the Debian packages for missing ``programs`` when running as root with apt; else say how."""
    missing = [p for p in programs if shutil.which(p) is None]
    if not missing:
        return
    packages = sorted({SYSTEM_PACKAGES[p] for p in missing})
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise PrerequisiteError(
            f"{', '.join(missing)} not installed and this user cannot install it: run `{_apt_install_cmd(packages)}`"
        )
    report.step(f"installing {' '.join(packages)} (missing: {', '.join(missing)})")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    install = Cmd(["apt-get", "install", "-y", "-q", *packages], env=env)
    if run(install, check=False).returncode != 0:
        run(Cmd(["apt-get", "update", "-q"], env=env))
        run(install)
    still = [p for p in missing if shutil.which(p) is None]
    if still:
        raise PrerequisiteError(f"{', '.join(still)} still missing after apt-get install {' '.join(packages)}")


def _program(name: str, package: str) -> Check:
    path = shutil.which(name)
    return Check(name, path is not None, path or "not found", _apt_install_cmd([package]))


def _module(name: str, dist: str, required: bool = True) -> Check:
    ok = importlib.util.find_spec(name) is not None
    return Check(f"python: {dist}" + ("" if required else " (development only)"), ok,
                 "importable" if ok else "not installed", f"{sys.executable} -m pip install -e '.[dev]'", required)


def doctor_checks() -> list[Check]:
    """Every prerequisite, found or missing, each with the exact command that installs it."""
    checks = [Check("python >= 3.11", sys.version_info >= (3, 11), sys.version.split()[0],
                    "apt-get install -y python3")]
    checks += [_module(m, d) for m, d in (("invoke", "invoke"), ("psycopg", "psycopg"), ("docker", "docker"),
                                           ("redis", "redis"))]
    checks += [_module(m, m, required=False) for m in ("nox", "pytest")]  # the dev/test extras only
    pg = None
    base = "/usr/lib/postgresql"
    if os.path.isdir(base):
        majors = sorted((d for d in os.listdir(base) if d.isdigit()), key=int)
        if majors:
            pg = f"{base}/{majors[-1]}/bin"
    for tool in ("initdb", "pg_ctl", "pg_dump", "pg_restore", "pg_dumpall", "psql"):
        path = f"{pg}/{tool}" if pg and os.path.exists(f"{pg}/{tool}") else shutil.which(tool)
        checks.append(Check(tool, path is not None, path or "not found", _apt_install_cmd(["postgresql-15"])))
    checks += [_program(p, pkg) for p, pkg in SYSTEM_PACKAGES.items()]
    squawk = shutil.which("squawk")
    checks.append(Check("squawk", squawk is not None, squawk or "not found",
                        f"{sys.executable} -m pip install squawk-cli"))
    docker = shutil.which("docker")
    checks.append(Check("docker (compose runtime only)", docker is not None, docker or "not found",
                        _apt_install_cmd(["docker.io"]), required=False))
    ok, why = engine_answers()
    checks.append(Check("docker engine (compose runtime only)", ok, why,
                        f"{SETUP_DOCKER} (or: apt-get install -y docker.io && dockerd &)", required=False))
    try:
        compose, found = " ".join(compose_argv()), True
    except PrerequisiteError:
        compose, found = "not found (neither `docker compose` nor docker-compose v2)", False
    checks.append(Check("docker compose v2 (compose runtime only)", found, compose, SETUP_DOCKER, required=False))
    debootstrap = shutil.which("debootstrap")
    checks.append(Check("debootstrap (invoke images.build only)", debootstrap is not None,
                        debootstrap or "not found", f"{SETUP_DOCKER} (or: {_apt_install_cmd(['debootstrap'])})",
                        required=False))
    return checks
