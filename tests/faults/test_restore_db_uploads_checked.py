"""Issue 12: restore.db of a full set reads the uploads archive's sha256 while the database loads instead
of before it (after the plan had checked every file). The check still comes before the swap: a flipped
byte in the uploads archive refuses the restore, the loaded copy is dropped and nothing live changes."""

from __future__ import annotations

import pytest

from stackops.backupset import find_backup
from stackops.errors import BackupCorrupt
from stackops.report import NullReporter
from stackops.restore import restore_database
from tests.faults.conftest import Fresh, add_uploads, backup, databases, fingerprint, populate

pytestmark = pytest.mark.integration


def test_a_flipped_uploads_archive_refuses_restore_db_before_the_swap(fresh: Fresh) -> None:
    populate(fresh)
    add_uploads(fresh.settings.env.uploads_dir)
    bid = backup(fresh, "full")
    archive = find_backup(fresh.settings, bid).file("uploads")
    assert archive is not None
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size: only the sha256 can tell
    archive.write_bytes(bytes(data))
    with fresh.connect() as conn:  # the live database moves on after the backup
        conn.execute("DELETE FROM messages WHERE id > 10")
    before = fingerprint(fresh)

    with pytest.raises(BackupCorrupt, match=r"uploads\.tar\.(zst|gz) does not match its sha256"):
        restore_database(fresh.settings, fresh.runtime, bid, report=NullReporter())  # the act, without a plan

    assert fingerprint(fresh) == before
    assert databases(fresh) == [fresh.settings.env.db_name]  # the loaded copy dropped, nothing kept aside
