"""kill -9 in the middle of an atomic write (a restore's journal, a verification record) leaves its
``.<name>.<pid>.tmp`` file; the next backup removes it once its writer is gone, never a live writer's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stackops.journal import JOURNAL
from tests.conftest import ROOT, Fresh
from tests.faults.backup_helpers import listed, populate, run_cli
from tests.faults.conftest import wait_for

pytestmark = pytest.mark.integration

# atomic_write with its rename held back, as if the writer were killed between the write and the rename
WRITER = """
import os, sys, time
from pathlib import Path
from stackops import files
os.replace = lambda *a: time.sleep(3600)
files.atomic_write(Path(sys.argv[1]), b'{"phase": "db"}')
"""


@pytest.fixture
def writers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait()


def _writer(writers: list[subprocess.Popen[bytes]], path: Path) -> tuple[subprocess.Popen[bytes], Path]:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)],
                            env={**os.environ, "PYTHONPATH": str(ROOT / "lib")})
    writers.append(proc)
    tmp = path.with_name(f".{path.name}.{proc.pid}.tmp")
    assert wait_for(lambda: tmp.exists() and tmp.stat().st_size > 0, timeout=30), "the writer never wrote"
    return proc, tmp


def _age(path: Path, seconds: float = 3600) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old), follow_symlinks=False)


def test_a_killed_writers_temporary_files_are_removed_and_a_live_writers_kept(
        fresh: Fresh, writers: list[subprocess.Popen[bytes]]) -> None:
    populate(fresh)
    made = run_cli(fresh.settings, "backup.db")
    assert made.returncode == 0, made.stderr
    folder = fresh.settings.env.backups_dir
    [backup_id] = listed(fresh.settings)
    killed, journal_tmp = _writer(writers, folder / JOURNAL)
    killed2, record_tmp = _writer(writers, folder / backup_id / "verification.json")
    _live, live_tmp = _writer(writers, folder / ".other-state.json")
    for proc in (killed, killed2):
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    for tmp in (journal_tmp, record_tmp, live_tmp):
        _age(tmp)
    just_left = folder / f".fresh.json.{killed.pid}.tmp"  # its writer may be in another pid namespace: wait
    just_left.write_bytes(b"{}")
    planted = folder / f".link.json.{killed.pid}.tmp"
    planted.symlink_to(folder / backup_id)
    _age(planted)
    not_ours = folder / "notes.1.tmp"  # no leading dot: not a name atomic_write makes
    not_ours.write_text("mine")
    _age(not_ours)

    again = run_cli(fresh.settings, "backup.db")
    assert again.returncode == 0, again.stderr
    assert not journal_tmp.exists() and not record_tmp.exists()
    assert "a temporary file whose writer was killed" in again.stderr + again.stdout
    assert live_tmp.exists() and just_left.exists() and planted.is_symlink() and not_ours.read_text() == "mine"
    assert (folder / backup_id).is_dir() and len(listed(fresh.settings)) == 2
