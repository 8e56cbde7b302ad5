"""Issue 9, item 7 (backup side): the database server stopped while a backup runs, and down before it
starts: one line each, nothing kept, and (after the server is back) nothing lost. Runs on a private
cluster, since the server is stopped."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stackops.errors import BackupError, ServiceError
from stackops.proc import run
from stackops.report import NullReporter
from tests.conftest import ROOT, Fresh, Harness, cli_env, free_port, make_settings
from tests.faults.backup_helpers import add_uploads, fingerprint, listed, one_line, populate, stackops_sessions

pytestmark = [pytest.mark.integration, pytest.mark.local_runtime]


@pytest.fixture
def private(harness: Harness, tmp_path: Path) -> Iterator[Fresh]:
    base = tmp_path / "cluster"
    base.mkdir()
    base.chmod(0o755)
    settings = make_settings(
        "test", runtime="local", state_dir=str(base / "state"), uploads_dir=str(base / "uploads"),
        backups_dir=str(base / "backups"), db_name="faults",
        ports={"postgres": str(free_port()), "redis": str(free_port()), "backend": str(free_port())})
    settings.env.uploads_dir.mkdir()
    rt = harness.runtime(settings)
    rt.up(NullReporter())
    try:
        yield Fresh(settings, rt)
    finally:
        rt.down(NullReporter(), remove_data=True)


def _stop_immediately(fresh: Fresh) -> None:
    rt = fresh.runtime
    run(rt._as_server([str(rt.bindir / "pg_ctl"), "stop", "-m", "immediate", "-w", "-D", str(rt.pg_data)]))


def test_server_stopped_mid_backup_is_one_line_and_nothing_is_kept(private: Fresh) -> None:
    populate(private)
    add_uploads(private.settings.env.uploads_dir)
    before = fingerprint(private, sequences=False)
    holder = private.connect()  # holds pg_dump at its LOCK TABLE: a moment mid-backup, every time
    try:
        holder.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        proc = subprocess.Popen([sys.executable, "-m", "invoke", "backup", "--env", "test"], cwd=ROOT,
                                env=cli_env(private.settings), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            while not any(w == "Lock" and q.startswith("LOCK TABLE") for _, w, q in stackops_sessions(private)):
                assert time.monotonic() < deadline and proc.poll() is None, "the backup never reached pg_dump"
                time.sleep(0.1)
            _stop_immediately(private)
            _, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    finally:
        holder.close()
    line = one_line(subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr), BackupError.exit_code)
    assert "nothing was kept" in line
    assert listed(private.settings) == []

    # with the server down before it starts: one line too
    down = subprocess.run([sys.executable, "-m", "invoke", "backup", "--env", "test"], cwd=ROOT,
                          env=cli_env(private.settings), capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert "cannot connect to database" in one_line(down, ServiceError.exit_code)
    assert listed(private.settings) == []

    private.runtime.up(NullReporter())  # crash recovery: every committed row is still there
    assert fingerprint(private, sequences=False) == before
