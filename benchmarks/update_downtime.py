"""Update downtime against a bare `docker compose up -d --wait` recreate of the same services, same run.

Brings up a harness compose project (``stackops-it-<env>``) exactly as the compose test session does —
tests/compose/harness.py's variables, folders and pytest-docker's ``get_docker_services`` with the
harness's setup and cleanup commands (``down --volumes`` at the end) — so it never touches a real
environment and needs no running test session (it refuses while one holds the project). The backend
runs ``stackops-it-backend:current``; each round points that tag at the other of two backend images (v1,
v2: two digests) and either times a bare ``docker compose up -d --wait`` (the guide's ``pull && up -d``
minus the pull, which ``update`` also does before anything stops) or runs ``invoke update --json`` and
reads its downtime (first container stopped -> every service healthy). Prints one row per method, the
ratio of medians (target <= 1.2) and the update's median step times.

    python benchmarks/update_downtime.py --env dev --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "lib"))

from pytest_docker.plugin import get_docker_services  # noqa: E402

from tests.compose.harness import (  # noqa: E402
    BACKEND_IMAGE,
    ENVS,
    WORK,
    _remove_image,
    cleanup_commands,
    compose_files,
    harness_environ,
    project,
    runtime_for,
    setup_commands,
    wait_reachable,
    write_env_file,
)

REPO = "stackops-it-backend"
CURRENT = f"{REPO}:current"


def docker(*args: str, stdin: str | None = None) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True, input=stdin).stdout.strip()


def rounds(env: str, n: int) -> tuple[list[float], list[float], dict[str, list[float]]]:
    """n rounds of (bare recreate, update), alternating the backend between v1 and v2."""
    rt = runtime_for(env)
    environ = {**os.environ, "BACKEND_IMAGE": CURRENT}
    invoke = [sys.executable, "-m", "invoke", "-r", str(ROOT)]
    docker("tag", BACKEND_IMAGE, f"{REPO}:v1")
    docker("build", "-q", "-t", f"{REPO}:v2", "-", stdin=f"FROM {REPO}:v1\nLABEL stackops.bench=2\n")
    docker("tag", f"{REPO}:v1", CURRENT)
    subprocess.run([*invoke, "env.up", "--env", env], env=environ, check=True, capture_output=True)
    # every migration applied, so the update's check passes and it runs exactly: stop, recreate, wait
    subprocess.run([*invoke, "migrate.apply", "--env", env, "--yes"], env=environ, check=True, capture_output=True)
    bare: list[float] = []
    ours: list[float] = []
    steps: dict[str, list[float]] = {}
    tag = "v1"
    bare_cmd = rt.compose_cmd("up", "--detach", "--wait", "--pull", "never", "--no-build")
    for i in range(n):
        for method in ("bare", "update"):
            tag = "v2" if tag == "v1" else "v1"
            docker("tag", f"{REPO}:{tag}", CURRENT)
            if method == "bare":
                t0 = time.monotonic()
                subprocess.run(bare_cmd.argv, cwd=bare_cmd.cwd, env={**environ, **bare_cmd.env}, check=True,
                               capture_output=True)
                bare.append(time.monotonic() - t0)
            else:
                proc = subprocess.run([*invoke, "update", "--env", env, "--yes", "--json", "--no-migrate"],
                                      env=environ, capture_output=True, text=True, check=False)
                out = json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else {}
                if proc.returncode != 0 or out.get("outcome") != "updated":
                    raise RuntimeError(f"update exited {proc.returncode}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
                ours.append(float(out["downtime_s"]))
                for s in out["steps"]:
                    steps.setdefault(s["step"], []).append(float(s["seconds"]))
            print(f"round {i + 1} {method}: {(bare if method == 'bare' else ours)[-1]:.2f}s", file=sys.stderr)
    return bare, ours, steps


class Unavailable(Exception):
    """The benchmark cannot run here (no Docker engine, the harness project in use); the message says why."""


def unavailable() -> str:
    """Why the benchmark cannot run on this machine ("" when it can)."""
    if shutil.which("docker") is None:
        return "no docker CLI on this machine"
    try:
        docker("info", "--format", "{{.ServerVersion}}")
    except (subprocess.CalledProcessError, OSError) as exc:
        return "no Docker engine answers (`docker info` failed: " + \
            (getattr(exc, "stderr", "") or str(exc)).strip().splitlines()[-1][:200] + ")"
    return ""


def measure(env: str, n: int) -> dict[str, Any]:
    """n rounds of (bare recreate, update) in the harness project of ``env``: {"bare": [s...], "update": [s...],
    "steps": {step: [s...]}, "wall_s": s}. Raises Unavailable when it cannot run here."""
    reason = unavailable()
    if reason:
        raise Unavailable(reason)
    busy = docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={project(env)}")
    if busy:
        raise Unavailable(f"compose project {project(env)} is in use (a test session?): run this when it is not")
    os.environ.update(harness_environ())
    t0 = time.monotonic()
    try:
        for e in ENVS:
            write_env_file(e)
        with get_docker_services("docker compose", compose_files(env), project(env),
                                 setup_commands(env), cleanup_commands(env)) as services:
            wait_reachable(services, runtime_for(env))
            bare, ours, steps = rounds(env, n)
    finally:  # after `down`: no container runs the tags any more
        tags = [t for t in docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}", REPO).splitlines()
                if t.startswith(REPO + ":")]
        if tags:
            subprocess.run(["docker", "image", "rm", *tags], check=False, capture_output=True)
        _remove_image(BACKEND_IMAGE)
        shutil.rmtree(WORK, ignore_errors=True)
    return {"bare": bare, "update": ours, "steps": steps, "wall_s": round(time.monotonic() - t0, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--env", default="dev", choices=ENVS)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    try:
        got = measure(args.env, args.rounds)
    except Unavailable as exc:
        print(str(exc), file=sys.stderr)
        return 2
    bare, ours, steps = got["bare"], got["update"], got["steps"]
    b, u = statistics.median(bare), statistics.median(ours)
    print(f"{'method':<44} {'median s':>9}  rounds")
    print(f"{'docker compose up -d --wait (bare recreate)':<44} {b:>9.2f}  {', '.join(f'{x:.2f}' for x in bare)}")
    print(f"{'invoke update: downtime':<44} {u:>9.2f}  {', '.join(f'{x:.2f}' for x in ours)}")
    print(f"downtime ratio update / bare: {u / b:.2f} (target <= 1.2)")
    print("update step times (median s): " + ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in steps.items()))
    print(f"benchmark wall time {got['wall_s']:.0f}s ({args.env}, {args.rounds} rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
