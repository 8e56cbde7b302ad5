"""Update downtime against a bare `docker compose up -d --wait` recreate of the same services, same run.

On a harness compose project (``stackops-it-<env>``, brought up by the compose nox session or by
``invoke env.up`` with tests/compose/harness.py's variables): the backend runs
``stackops-it-backend:current``; each round points that tag at the other of two backend images (v1, v2:
two digests) and either times a bare ``docker compose up -d --wait`` (the guide's ``pull && up -d``
minus the pull) or runs ``invoke update --json`` and reads its downtime (first container stopped ->
every service healthy). Prints one row per method and the ratio of medians (target <= 1.2).

    python benchmarks/update_downtime.py --env dev --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "lib"))

from tests.compose.harness import BACKEND_IMAGE, ENVS, WORK, project  # noqa: E402

REPO = "stackops-it-backend"


def docker(*args: str, stdin: str | None = None) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True, input=stdin).stdout.strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="dev", choices=["dev", "test", "prod"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--backend-image", default=BACKEND_IMAGE)
    args = ap.parse_args()
    # the variables of a running harness session (its work folder), never a real environment's
    saved = json.loads((WORK / "harness.json").read_text()) if (WORK / "harness.json").exists() else {}
    if not saved or args.env not in ENVS:
        print(f"no harness session in {WORK}: bring one up first (tests/compose/harness.py)", file=sys.stderr)
        return 2
    environ = {**os.environ, **saved, "BACKEND_IMAGE": f"{REPO}:current"}
    docker("tag", args.backend_image, f"{REPO}:v1")
    docker("build", "-q", "-t", f"{REPO}:v2", "-", stdin=f"FROM {REPO}:v1\nLABEL stackops.bench=2\n")
    files = {"dev": ["docker-compose.yml", "docker-compose.override.yml"],
             "test": ["docker-compose.yml", "docker-compose.test.yml"],
             "prod": ["docker-compose.yml", "docker-compose.prod.yml"]}[args.env]
    p = f"INVOKE_STACKOPS_ENVS_{args.env.upper()}_"
    compose_env = {**environ, "POSTGRES_PORT": environ[p + "PORTS_POSTGRES"], "REDIS_PORT": environ[p + "PORTS_REDIS"],
                   "BACKEND_PORT": environ[p + "PORTS_BACKEND"], "UPLOADS_DIR": environ[p + "UPLOADS_DIR"],
                   "BACKUPS_DIR": environ[p + "BACKUPS_DIR"]}
    compose = ["docker", "compose", "-p", project(args.env), *[x for f in files for x in ("-f", f)]]
    invoke = [sys.executable, "-m", "invoke", "-r", str(ROOT)]
    docker("tag", f"{REPO}:v1", f"{REPO}:current")
    subprocess.run([*invoke, "env.up", "--env", args.env], env=environ, check=True, capture_output=True)
    bare: list[float] = []
    ours: list[float] = []
    steps: dict[str, list[float]] = {}
    tag = "v1"
    for _ in range(args.rounds):
        for method in ("bare", "update"):
            tag = "v2" if tag == "v1" else "v1"
            docker("tag", f"{REPO}:{tag}", f"{REPO}:current")
            if method == "bare":
                t0 = time.monotonic()
                subprocess.run([*compose, "up", "-d", "--wait", "--pull", "never", "--no-build"], cwd=ROOT / "compose",
                               env=compose_env, check=True, capture_output=True)
                bare.append(time.monotonic() - t0)
            else:
                proc = subprocess.run([*invoke, "update", "--env", args.env, "--yes", "--json", "--no-migrate"],
                                      env=environ, capture_output=True, text=True)
                if proc.returncode != 0:
                    print(proc.stdout, proc.stderr, file=sys.stderr)
                    return 1
                out = json.loads(proc.stdout)
                ours.append(float(out["downtime_s"]))
                for s in out["steps"]:
                    steps.setdefault(s["step"], []).append(float(s["seconds"]))
    b, u = statistics.median(bare), statistics.median(ours)
    print(f"{'method':<44} {'median s':>9}  rounds")
    print(f"{'docker compose up -d --wait (bare recreate)':<44} {b:>9.2f}  {', '.join(f'{x:.2f}' for x in bare)}")
    print(f"{'invoke update: downtime':<44} {u:>9.2f}  {', '.join(f'{x:.2f}' for x in ours)}")
    print(f"downtime ratio update / bare: {u / b:.2f} (target <= 1.2)")
    print("update step times (median s): " + ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in steps.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
