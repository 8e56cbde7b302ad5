"""A full backups filesystem when `backup.verify` records its result: one line (exit 19) that says the
verification passed but was not recorded and what to do; once space is freed, verifying again records it."""

from __future__ import annotations

import json

import pytest

from stackops.backupset import VERIFICATION
from stackops.errors import StorageFull
from tests.conftest import Fresh
from tests.faults.backup_helpers import add_uploads, fingerprint, listed, one_line, populate, run_cli, tmpfs

pytestmark = pytest.mark.integration


def test_a_full_disk_when_recording_a_verification_is_one_line_and_verifying_again_records_it(
        fresh: Fresh) -> None:
    populate(fresh)
    add_uploads(fresh.settings.env.uploads_dir)
    before = fingerprint(fresh)
    with tmpfs(fresh.settings.env.backups_dir, "4m") as folder:
        made = run_cli(fresh.settings, "backup")
        assert made.returncode == 0, made.stderr
        [backup_id] = listed(fresh.settings)
        filler = folder / ".filler"
        with filler.open("wb", buffering=0) as f, pytest.raises(OSError):
            while True:
                f.write(b"\0" * 4096)
        (folder / ".lock").unlink(missing_ok=True)  # its holder line needs a block, now there is none

        proc = run_cli(fresh.settings, "backup.verify", "--latest")
        line = one_line(proc, StorageFull.exit_code)
        assert f"the verification of {backup_id} passed but could not be recorded" in line, line
        assert "filesystem is full" in line and "free space" in line and "backup.verify" in line, line
        assert not (folder / backup_id / VERIFICATION).exists()
        assert list(folder.rglob("*.tmp")) == []  # no half-written record
        assert listed(fresh.settings) == [backup_id]

        filler.unlink()
        again = run_cli(fresh.settings, "backup.verify", "--latest")
        assert again.returncode == 0, again.stderr
        assert json.loads((folder / backup_id / VERIFICATION).read_text())["ok"] is True
    assert fingerprint(fresh) == before
