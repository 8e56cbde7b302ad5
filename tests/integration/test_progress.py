"""Live progress of a long backup on a real terminal, and none of it on a pipe or with --json."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading

import pytest

from tests.conftest import ROOT, Fresh, cli_env, invoke_cli

pytestmark = pytest.mark.integration

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # anything but \t and \n


def _big(fresh: Fresh) -> None:
    with fresh.connect() as conn:  # ~150 MB of rows: pg_dump takes a few seconds on a shared machine
        conn.execute("CREATE TABLE big (id bigint PRIMARY KEY, body text)")
        conn.execute("INSERT INTO big SELECT g, repeat(md5(g::text), 4) || g FROM generate_series(1, 900000) g")


def _on_pty(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """Run `invoke ARGS` with stderr on a terminal; return its exit code, stdout and what the terminal saw."""
    import pty

    primary, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "invoke", *args], cwd=ROOT, env=env | {"COLUMNS": "160"},
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=secondary)
    os.close(secondary)
    seen = bytearray()

    def read() -> None:
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the other side closed
                return
            if not chunk:
                return
            seen.extend(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    out, _ = proc.communicate(timeout=300)
    reader.join(timeout=10)
    os.close(primary)
    return proc.returncode, out.decode(), seen.decode(errors="replace")


def test_backup_on_a_terminal_redraws_its_progress_line(fresh: Fresh) -> None:
    _big(fresh)
    env = cli_env(fresh.settings)
    code, out, terminal = _on_pty(["backup.db", "--env", "test"], env)
    assert code == 0, terminal
    plain = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", terminal)
    # every redraw of the live line: "database ... <done>/<total> MB ..."; at least two different figures
    figures = re.findall(r"database\s.*?(\d+(?:\.\d+)?)/(\d+(?:\.\d+)?) (?:k?B|MB)", plain)
    assert len({done for done, _ in figures}) >= 2, plain[-2000:]
    assert "ETA" in plain and "elapsed" in plain and "/s" in plain
    assert "\x1b[" in terminal  # drawn in place
    summary = [ln for ln in plain.splitlines() if ln.startswith("==> backup ") and " took " in ln]
    assert summary and "database" in summary[-1], plain[-2000:]
    assert out.strip().endswith(out.strip().split("/")[-1])  # stdout: the backup's path only


def test_json_or_a_pipe_gets_no_control_characters(fresh: Fresh) -> None:
    _big(fresh)
    env = cli_env(fresh.settings)
    made = invoke_cli("backup.db", "--env", "test", "--json", env=env)
    assert made.returncode == 0, made.stderr
    json.loads(made.stdout)
    assert not CONTROL.search(made.stdout) and not CONTROL.search(made.stderr)
    assert "==> backup " in made.stderr and " took " in made.stderr
    piped = invoke_cli("backup.verify", "--latest", "--env", "test", env=env)
    assert piped.returncode == 0, piped.stderr
    assert not CONTROL.search(piped.stderr) and "loading: " in piped.stderr
