""".ci/setup-docker's lock, run against stub `docker`, `dockerd` and `python3` programs (a mock: a Docker engine
is not what is under test, and starting a real one here would race the compose sessions' engine).

.ci/run starts setup-docker in the background and the compose session calls it again, which waits on the
lock. The lock is fd 9; a dockerd started without closing fd 9 held it for as long as it ran, and CI's compose
session waited until the run timed out. These tests fail on that script."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / ".ci" / "setup-docker"

STUB_DOCKER = """#!/bin/sh
case "$1" in
  compose) echo "Docker Compose version stub"; exit 0 ;;
  info) [ -e "$STUB_STATE/dockerd-up" ] ;;
  version) echo stub ;;
  *) exit 0 ;;
esac
"""
# the stub engine: says it is up, then runs (as dockerd does) long after setup-docker ends
STUB_DOCKERD = """#!/bin/sh
echo $$ > "$STUB_STATE/dockerd.pid"
touch "$STUB_STATE/dockerd-up"
exec sleep 120
"""
STUB_PYTHON = """#!/bin/sh
exit 0
"""


@pytest.fixture
def stubs(tmp_path: Path) -> Iterator[dict[str, str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in {"docker": STUB_DOCKER, "dockerd": STUB_DOCKERD, "python3": STUB_PYTHON,
                       "debootstrap": STUB_PYTHON}.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "STUB_STATE": str(tmp_path),
           "STACKOPS_SETUP_DOCKER_LOCK": str(tmp_path / "setup.lock"),
           "STACKOPS_DOCKERD_LOG": str(tmp_path / "dockerd.log")}
    yield env
    pid_file = tmp_path / "dockerd.pid"
    if pid_file.exists():
        try:
            os.kill(int(pid_file.read_text()), 9)
        except ProcessLookupError:
            pass


def test_the_lock_is_free_once_setup_docker_ends_though_the_dockerd_it_started_runs_on_stub_docker(
        stubs: dict[str, str], tmp_path: Path) -> None:
    done = subprocess.run(["bash", str(SCRIPT)], env=stubs, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "starting dockerd" in done.stdout
    dockerd = int((tmp_path / "dockerd.pid").read_text())
    os.kill(dockerd, 0)  # still running, as a real engine would be
    # a second caller (the compose session) gets the lock at once
    second = subprocess.run(["flock", "-w", "5", stubs["STACKOPS_SETUP_DOCKER_LOCK"], "true"], timeout=30)
    assert second.returncode == 0, "the dockerd started by setup-docker still holds its lock"


def test_a_lock_held_too_long_is_one_clear_line_and_a_failure_on_stub_docker(stubs: dict[str, str]) -> None:
    holder = subprocess.Popen(["flock", stubs["STACKOPS_SETUP_DOCKER_LOCK"], "sleep", "60"])
    try:
        for _ in range(50):  # until the holder has it
            if subprocess.run(["flock", "-n", stubs["STACKOPS_SETUP_DOCKER_LOCK"], "true"]).returncode:
                break
            time.sleep(0.1)
        started = time.monotonic()
        done = subprocess.run(["bash", str(SCRIPT)], env={**stubs, "STACKOPS_SETUP_DOCKER_WAIT": "1"},
                              capture_output=True, text=True, timeout=60)
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 1
    assert time.monotonic() - started < 30
    last = done.stderr.strip().splitlines()[-1]
    assert "still locked after 1s" in last and "setup-docker.log" in last


def test_ci_run_stops_a_hung_background_setup_and_keeps_the_tests_status_on_stub_setup_docker(tmp_path: Path) -> None:
    """.ci/run's exit trap waits for the background setup-docker at most STACKOPS_SETUP_DOCKER_WAIT seconds: a
    hung image build (a stub that sleeps) is stopped, its log shown, and the run ends with the tests' status
    instead of waiting until CI's limit. The real .ci/run, in a copy of the repository's layout with a stub
    setup-docker and a stub quickstart."""
    (tmp_path / ".ci").mkdir()
    shutil.copy(ROOT / ".ci" / "run", tmp_path / ".ci" / "run")
    stubs = {".ci/setup-docker": "#!/bin/sh\necho building the images\nexec sleep 317\n",
             "quickstart": "#!/bin/sh\necho the tests failed early\nexit 3\n"}
    for rel, text in stubs.items():
        (tmp_path / rel).write_text(text)
        (tmp_path / rel).chmod(0o755)
    started = time.monotonic()
    done = subprocess.run(["bash", str(tmp_path / ".ci" / "run")], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "STACKOPS_CI_NO_APT": "1", "STACKOPS_SETUP_DOCKER_WAIT": "2"})
    assert done.returncode == 3, done.stdout + done.stderr
    assert time.monotonic() - started < 60
    assert "still runs after 2s: stopped" in done.stderr and "building the images" in done.stderr
    assert subprocess.run(["pgrep", "-f", "^sleep 317$"], capture_output=True).returncode == 1
