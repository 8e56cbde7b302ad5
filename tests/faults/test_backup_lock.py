"""Issue 9, item 9: a table lock held by another session stalls neither `backup` nor Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from stackops.errors import INTERRUPTED, BackupError
from tests.conftest import ROOT, Fresh, cli_env
from tests.faults.backup_helpers import add_uploads, fingerprint, listed, one_line, populate, run_cli, stackops_sessions

pytestmark = pytest.mark.integration


def test_held_table_lock_fails_the_backup_fast_with_one_line(fresh: Fresh) -> None:
    populate(fresh)
    add_uploads(fresh.settings.env.uploads_dir)
    before = fingerprint(fresh)
    with fresh.connect() as holder:
        holder.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        proc = run_cli(fresh.settings, "backup", extra={"INVOKE_STACKOPS_BACKUP_LOCK_WAIT_TIMEOUT": "2s"})
        took = time.monotonic() - started
        holder.rollback()
    line = one_line(proc, BackupError.exit_code)
    assert "lock" in line and "lock_wait_timeout=2s" in line and "nothing was kept" in line
    assert took < 20, f"the backup waited {took:.1f}s for a 2s lock timeout"
    assert listed(fresh.settings) == []
    assert fingerprint(fresh) == before
    assert stackops_sessions(fresh) == []


def test_ctrl_c_during_a_lock_wait_stops_at_once(fresh: Fresh) -> None:
    populate(fresh)
    before = fingerprint(fresh)
    with fresh.connect() as holder:
        holder.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        proc = subprocess.Popen([sys.executable, "-m", "invoke", "backup.db", "--env", "test"], cwd=ROOT,
                                env=cli_env(fresh.settings), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            # until pg_dump waits for the lock
            while not any(w == "Lock" and q.startswith("LOCK TABLE") for _, w, q in stackops_sessions(fresh)):
                assert time.monotonic() < deadline and proc.poll() is None, "pg_dump never waited for the lock"
                time.sleep(0.1)
            time.sleep(0.5)  # the row-count reader is blocked on the same lock by now
            proc.send_signal(signal.SIGINT)
            started = time.monotonic()
            _, stderr = proc.communicate(timeout=15)
            took = time.monotonic() - started
        finally:
            if proc.poll() is None:
                proc.kill()
        holder.rollback()
    assert took < 5, f"Ctrl-C took {took:.1f}s to stop the backup"
    assert one_line(subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr), INTERRUPTED)
    assert listed(fresh.settings) == []
    assert fingerprint(fresh) == before
    assert stackops_sessions(fresh) == []


@pytest.mark.parametrize("value", ["0", "0s", "forever", "-1s", ""])
def test_lock_wait_timeout_is_validated_in_one_line(value: str) -> None:
    from stackops.config import load
    from stackops.errors import ConfigError
    from tests.conftest import raw_config

    raw = raw_config()
    raw["backup"] = {"lock_wait_timeout": value}
    with pytest.raises(ConfigError, match=r"stackops\.backup\.lock_wait_timeout") as exc:
        load(raw, "test", ROOT)
    assert "\n" not in str(exc.value)
    raw["backup"] = {"lock_wait_timeout": "1500ms"}
    assert load(raw, "test", ROOT).backup.lock_wait_timeout == "1500ms"
