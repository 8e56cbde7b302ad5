"""kill -9 in the middle of an offsite upload (of rclone alone, or of the whole push): no set is ever
listed as complete on the remote, the local set is untouched, and the next push completes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from stackops import offsite
from stackops.backup import create_backup
from stackops.backupset import check_files, list_backups
from stackops.config import Offsite
from stackops.errors import OffsiteError
from stackops.report import NullReporter
from tests.conftest import ROOT, Fresh, cli_env, invoke_cli
from tests.integration.test_backup import populate
from tests.offsite_support import Sftp, sftp_fixture  # noqa: F401  (the `sftp` fixture)

pytestmark = pytest.mark.integration


def rclone_uploading(parent: int) -> int | None:
    """The pid of a running `rclone copy` whose parent is ``parent``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            ppid = int((entry / "stat").read_text().split(")")[-1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and argv[0].endswith(b"rclone") and b"copy" in argv:
            return int(entry.name)
    return None


@pytest.mark.parametrize("victim", ["rclone", "whole push"])
def test_kill_9_mid_transfer_leaves_no_complete_remote_set(fresh: Fresh, sftp: Sftp, victim: str) -> None:
    with fresh.connect() as conn:
        populate(conn, 20)
    (fresh.settings.env.uploads_dir / "big.bin").write_bytes(os.urandom(6 << 20))  # incompressible
    s = replace(fresh.settings, offsite=Offsite(remote=sftp.remote, path=str(sftp.folder)))
    backup = create_backup(s, fresh.runtime, kind="full", report=NullReporter())
    env = {**cli_env(s), **sftp.env(), "RCLONE_BWLIMIT": "1M"}  # slow enough to be caught mid-transfer
    push = subprocess.Popen([sys.executable, "-m", "invoke", "backup.push", "--backup", backup.id, "--env", "test"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while (pid := rclone_uploading(push.pid)) is None:
        assert push.poll() is None and time.monotonic() < deadline, push.communicate()
        time.sleep(0.05)
    time.sleep(1.5)  # some of the bytes are on the remote
    tmp = sftp.folder / s.env.name / f".tmp-{backup.id}"
    assert tmp.exists()
    if victim == "rclone":
        os.kill(pid, signal.SIGKILL)
        _, err = push.communicate(timeout=60)
        assert push.returncode == OffsiteError.exit_code, err
        assert err.strip().splitlines()[-1].startswith("stackops: uploading")
    else:
        os.killpg(push.pid, signal.SIGKILL)
        push.wait()

    assert offsite.remote_sets(s) == ([], [])  # nothing listed as complete (nor as broken)
    assert not (sftp.folder / s.env.name / backup.id).exists()
    listed = invoke_cli("backup.list", "--env", "test", env={**cli_env(s), **sftp.env()})
    assert listed.returncode == 0 and [line.split()[-1] for line in listed.stdout.splitlines()
                                       if line.startswith(backup.id)] == ["local"]
    check_files(list_backups(s)[0])  # the local set is whole

    again = offsite.push_set(s, backup.id, report=NullReporter())
    assert again.pushed
    assert [r.id for r in offsite.remote_sets(s)[0]] == [backup.id]
    assert sorted(p.name for p in (sftp.folder / s.env.name).iterdir()) == [backup.id]  # the stale upload is gone
    assert not [p for p in s.env.backups_dir.iterdir() if p.name.startswith(".tmp-")]
