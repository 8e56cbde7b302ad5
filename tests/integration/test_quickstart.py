"""The README's two commands from a clean clone on a Python that refuses global installs (PEP 668):
Debian 12's own /usr/bin/python3, which carries the EXTERNALLY-MANAGED marker."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port

# The quickstart always runs its own local environment (never the compose project under test): on compose
# the same test would run again unchanged, so it runs in the local `tests` session only.
pytestmark = [pytest.mark.integration, pytest.mark.local_runtime]

SYSTEM_PYTHON = Path("/usr/bin/python3")


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]


def _externally_managed() -> Path:
    if not SYSTEM_PYTHON.exists():
        pytest.skip("no Debian system Python at /usr/bin/python3")
    stdlib = subprocess.run([str(SYSTEM_PYTHON), "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"],
                            capture_output=True, text=True, check=True).stdout.strip()
    if not (Path(stdlib) / "EXTERNALLY-MANAGED").exists():
        pytest.skip(f"{SYSTEM_PYTHON} is not marked EXTERNALLY-MANAGED")
    return SYSTEM_PYTHON


def test_ci_runs_exactly_the_readmes_test_command() -> None:
    demo, tests = _readme_commands()
    assert demo == "./quickstart demo" and tests == "./quickstart test"
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci and "nox" not in [line.strip() for line in ci]


def test_readme_commands_work_on_a_python_that_refuses_global_installs(tmp_path: Path) -> None:
    python = _externally_managed()
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    # the files of this tree as they are now (the test may run before they are committed)
    for rel in ("quickstart", "README.md", "pyproject.toml"):
        (clone / rel).write_bytes((ROOT / rel).read_bytes())
    (clone / "quickstart").chmod(0o755)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python3").symlink_to(python)
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("INVOKE_", "PYTHON", "VIRTUAL_ENV", "PIP_USER"))}
    env = keep | {"PATH": f"{bindir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                  "INVOKE_STACKOPS_ENVS_DEV_RUNTIME": "local",  # never a compose project from a test
                  "INVOKE_STACKOPS_ENVS_DEV_PORTS_POSTGRES": str(free_port()),
                  "INVOKE_STACKOPS_ENVS_DEV_PORTS_REDIS": str(free_port()),
                  "INVOKE_STACKOPS_ENVS_DEV_PORTS_BACKEND": str(free_port())}

    refused = subprocess.run([str(python), "-m", "pip", "install", "-e", "."], cwd=clone, env=env,
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "externally-managed-environment" in refused.stderr

    started = time.monotonic()
    demo = subprocess.run(["./quickstart", "demo"], cwd=clone, env=env, capture_output=True, text=True,
                          timeout=900, stdin=subprocess.DEVNULL)
    took = time.monotonic() - started
    try:
        assert demo.returncode == 0, (demo.stdout[-3000:], demo.stderr[-3000:])
        assert "full_" in demo.stdout and re.search(r"verify full_\S+: OK", demo.stderr), demo.stderr[-3000:]
        noise = [ln for ln in demo.stdout.splitlines() + demo.stderr.splitlines()
                 if ln.startswith(("Collecting ", "Downloading ", "Requirement already", "Successfully installed"))]
        assert not noise, noise[:5]  # pip's output is in the log, not on the screen
        assert (clone / ".quickstart.log").stat().st_size > 0
        print(f"./quickstart demo took {took:.0f}s")

        tests = subprocess.run(["./quickstart", "test", "--list"], cwd=clone, env=env, capture_output=True,
                               text=True, timeout=300, stdin=subprocess.DEVNULL)
        assert tests.returncode == 0 and "tests" in tests.stdout, tests.stderr[-2000:]
    finally:
        subprocess.run([str(clone / ".venv" / "bin" / "invoke"), "env.down"], cwd=clone, env=env,
                       capture_output=True, timeout=120)


def test_a_failed_install_shows_its_log(tmp_path: Path) -> None:
    python = _externally_managed()
    clone = tmp_path / "broken"
    clone.mkdir()
    (clone / "quickstart").write_bytes((ROOT / "quickstart").read_bytes())
    (clone / "quickstart").chmod(0o755)
    (clone / "pyproject.toml").write_text("[project]\nname = 'x'\nversion = '0'\ndependencies = ['no-such-pkg-zz9']\n")
    env = {**os.environ, "PYTHON": str(python), "PIP_NO_INDEX": "1"}
    proc = subprocess.run(["./quickstart", "demo"], cwd=clone, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3
    assert "quickstart: pip install -e '.[dev]' failed" in proc.stderr and "--- last lines of" in proc.stderr
