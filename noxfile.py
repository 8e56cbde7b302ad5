"""nox sessions: what CI runs (a bare `nox`), plus benchmarks on demand."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import nox

nox.options.sessions = ["lint", "typecheck", "tests", "compose_all"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

PYTHON = "3.11"
ENVS = ("dev", "test", "prod")
LOGS = Path(".stack") / "compose-logs"


def _workers(default: str) -> list[str]:
    """pytest-xdist options: ``default`` worker processes unless STACKOPS_TEST_WORKERS says otherwise (0 or 1:
    none, the whole suite in one process). Each worker has its own cluster, ports, folders (tests/conftest.py)
    or harness slot (tests/compose/harness.py); tests marked ``xdist_group`` share one worker."""
    n = os.environ.get("STACKOPS_TEST_WORKERS", default)
    return [] if n in ("0", "1") else ["-n", n, "--dist", "loadgroup"]


# compose_all: the slot that runs the tests of dev, test and prod at once (the other two skip them): test, the
# shortest suite (measured: test 521 s, dev 912 s, prod 936 s, in one fresh-machine run)
ALL_ENVS_SLOT = "test"


# Fault tests on compose that bring up projects of their own (not the session's harness stack): alone they run
# with prod; in compose_all with the test slot, which has the most time to spare (measured: prod 598 s, dev
# 502 s, test 402 s, with them in prod)
OWN_PROJECT_FAULTS = ["tests/faults/test_pitr_compose_other_services.py"]


def _compose_suite(env: str, together: bool = False) -> tuple[list[str], dict[str, str]]:
    """What one compose environment runs: tests/compose against it (in dev also the integration suite on the
    compose runtime), and the variables that name it. ``together``: one of compose_all's three slots."""
    suites = ["tests/compose", "tests/integration"] if env == "dev" else ["tests/compose"]
    if env == "prod":  # the fault tests that need the compose prod harness (PITR on compose): skipped elsewhere
        suites += sorted(str(p) for p in Path("tests/faults").glob("test_*compose*.py")
                         if not (together and str(p) in OWN_PROJECT_FAULTS))
    if env == ALL_ENVS_SLOT and together:
        suites += OWN_PROJECT_FAULTS
    runtime = {"STACKOPS_IT_RUNTIME": "compose"} if env == "dev" else {}
    return suites, {"STACKOPS_IT_ENV": env, **runtime}


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff over the whole repository."""
    session.install("ruff>=0.17,<0.18")
    session.run("ruff", "check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy (strict) over the helper library and ci/."""
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """pytest: unit tests (with the Docker-free compose-file checks) and integration tests on real
    PostgreSQL and Redis (local runtime), in random order (pytest-randomly; `-p no:randomly` for file order),
    spread over pytest-xdist workers (STACKOPS_TEST_WORKERS, default 3; 0 = one process)."""
    session.install("-e", ".[test]")
    # redis-server and zstd: installed with apt when missing and root, else the exact command is printed
    session.run("python", "-c", "from stackops.prereq import ensure_programs; from stackops.report import "
                "Reporter; ensure_programs(['redis-server', 'zstd'], Reporter())")
    session.run("pytest", *_workers("3"), "tests/unit", "tests/integration", "tests/faults", *session.posargs)


@nox.session(python=PYTHON)
@nox.parametrize("env", list(ENVS))
def compose(session: nox.Session, env: str) -> None:
    """One compose environment on a real Docker engine: tests/compose against it (in dev also the
    integration suite on the compose runtime). pytest-docker brings the harness projects up and down
    (tests/compose/harness.py); this session only prepares Docker and names the environment."""
    session.install("-e", ".[test]")
    # docker.io, debootstrap, compose v2, dockerd and the stand-in images: seconds when all are there
    session.run("bash", ".ci/setup-docker", external=True)
    suites, variables = _compose_suite(env)
    session.run("pytest", *suites, *session.posargs, env=variables)


@nox.session(python=PYTHON)
def compose_all(session: nox.Session) -> None:
    """dev, test and prod at once (what a bare `nox` runs): the three `compose(env=...)` suites side by side,
    each in its own harness slot (its own projects, ports, folders and backend image; dev's integration part
    over STACKOPS_COMPOSE_WORKERS xdist workers, default 2). Each environment's whole output is printed when
    it ends; the session fails naming every environment and test that failed."""
    session.install("-e", ".[test]")
    session.run("bash", ".ci/setup-docker", external=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    base = dict(os.environ)
    if session.bin_paths:  # a session venv (not `--no-venv`, where PATH already leads to the tools)
        base |= {"PATH": os.pathsep.join([*session.bin_paths, base.get("PATH", "")]),
                 "VIRTUAL_ENV": str(session.virtualenv.location)}
    base.pop("STACKOPS_TEST_WORKERS", None)
    running: dict[str, tuple[subprocess.Popen[bytes], float]] = {}
    for env in ENVS:
        suites, variables = _compose_suite(env, together=True)
        workers = _workers(os.environ.get("STACKOPS_COMPOSE_WORKERS", "2")) if env == "dev" else []
        argv = ["pytest", "-rfE", "--durations=15", *workers, *suites, *session.posargs]
        session.log(f"compose {env}: {' '.join(argv)} (output: {LOGS / env}.log)")
        with (LOGS / f"{env}.log").open("wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**base, **variables, "STACKOPS_IT_SLOT": env,
                                         "STACKOPS_IT_ALL_ENVS_SLOT": ALL_ENVS_SLOT})
        running[env] = (proc, time.monotonic())
    failed: dict[str, list[str]] = {}
    try:
        while running:
            time.sleep(1)
            for env, (proc, started) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[env]
                text = (LOGS / f"{env}.log").read_text(errors="replace")
                print(f"\n{'=' * 30} compose {env}: whole output {'=' * 30}\n{text}", flush=True)
                session.log(f"compose {env}: exit {proc.returncode} after {time.monotonic() - started:.0f} s")
                if proc.returncode != 0:
                    failed[env] = (re.findall(r"^(?:FAILED|ERROR) .*$", text, re.MULTILINE)
                                   or [f"exit {proc.returncode}"])
    finally:
        for proc, _ in running.values():  # interrupted: each pytest tears its harness projects down (SIGINT)
            proc.send_signal(signal.SIGINT)
        for proc, _ in running.values():
            proc.wait()
    if failed:
        lines = [f"{env}: {what}" for env, whats in failed.items() for what in whats]
        session.error("compose failed in " + ", ".join(failed) + ":\n" + "\n".join(lines))


@nox.session(python=PYTHON, default=False)
def bench(session: nox.Session) -> None:
    """Every hot path against what it replaces (issue 12): one table of medians and ratios, and JSON.
    The scale-1 data set is generated once under /var/tmp/stackops-bench and reused;
    e.g. `nox -s bench -- --scale 0.1 --repeat 3`."""
    session.install("-e", ".[test]")
    session.run("python", "benchmarks/bench.py", *session.posargs)
