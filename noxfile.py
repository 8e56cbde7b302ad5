"""nox sessions: what CI runs (a bare `nox`), plus benchmarks on demand."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests", "compose"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

PYTHON = "3.11"


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
    PostgreSQL and Redis (local runtime), in random order (pytest-randomly; `-p no:randomly` for file order)."""
    session.install("-e", ".[test]")
    # redis-server and zstd: installed with apt when missing and root, else the exact command is printed
    session.run("python", "-c", "from stackops.prereq import ensure_programs; from stackops.report import "
                "Reporter; ensure_programs(['redis-server', 'zstd'], Reporter())")
    session.run("pytest", "tests/unit", "tests/integration", "tests/faults", *session.posargs)


@nox.session(python=PYTHON)
@nox.parametrize("env", ["dev", "test", "prod"])
def compose(session: nox.Session, env: str) -> None:
    """One compose environment on a real Docker engine: tests/compose against it (in dev also the
    integration suite on the compose runtime). pytest-docker brings the harness projects up and down
    (tests/compose/harness.py); this session only prepares Docker and names the environment."""
    session.install("-e", ".[test]")
    # docker.io, debootstrap, compose v2, dockerd and the stand-in images: seconds when all are there
    session.run("bash", ".ci/setup-docker", external=True)
    suites = ["tests/compose", "tests/integration"] if env == "dev" else ["tests/compose"]
    runtime = {"STACKOPS_IT_RUNTIME": "compose"} if env == "dev" else {}
    session.run("pytest", *suites, *session.posargs, env={"STACKOPS_IT_ENV": env, **runtime})


@nox.session(python=PYTHON, default=False)
def bench(session: nox.Session) -> None:
    """Every hot path against what it replaces (issue 12): one table of medians and ratios, and JSON.
    The scale-1 data set is generated once under /var/tmp/stackops-bench and reused;
    e.g. `nox -s bench -- --scale 0.1 --repeat 3`."""
    session.install("-e", ".[test]")
    session.run("python", "benchmarks/bench.py", *session.posargs)
