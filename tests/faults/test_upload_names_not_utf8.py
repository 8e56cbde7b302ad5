"""An upload whose file name is not UTF-8 (bytes written by another tool, a zip extracted with a legacy
code page). Before, every full backup failed with a Python traceback (the manifest could not encode the
name), so the prod backup service took no full backup from then on. Now the set is taken, verifies, and a
restore brings the file back under its exact byte name. Real PostgreSQL, real files."""

from __future__ import annotations

import os

import pytest

from stackops.backupset import read_manifest
from stackops.report import NullReporter
from stackops.restore import restore_database
from stackops.verify import verify_backup
from tests.conftest import Fresh
from tests.faults.backup_helpers import run_cli
from tests.faults.conftest import add_uploads, fingerprint, populate

pytestmark = pytest.mark.integration

NAME = b"report-caf\xe9-\xff.txt"  # Latin-1 and a byte no encoding maps: not UTF-8


def test_a_full_backup_with_a_non_utf8_upload_name_is_taken_verified_and_restored(fresh: Fresh) -> None:
    populate(fresh)
    up = fresh.settings.env.uploads_dir
    add_uploads(up)
    os.makedirs(os.path.join(os.fsencode(up), b"u"), exist_ok=True)
    with open(os.path.join(os.fsencode(up), b"u", NAME), "wb") as f:
        f.write(b"the bytes of an upload with an odd name\n")
    before = fingerprint(fresh)
    taken = run_cli(fresh.settings, "backup", "--json")
    assert taken.returncode == 0 and "Traceback" not in taken.stderr, taken.stderr
    backup_id = next(d for d in os.listdir(fresh.settings.env.backups_dir) if d.startswith("full_"))
    manifest = read_manifest(fresh.settings.env.backups_dir / backup_id)  # seals and reads back
    assert "u/" + os.fsdecode(NAME) in manifest["uploads"]["entries"]
    assert verify_backup(fresh.settings, fresh.runtime, backup_id, report=NullReporter()).ok
    os.remove(os.path.join(os.fsencode(up), b"u", NAME))
    with fresh.connect() as conn:
        conn.execute("TRUNCATE users CASCADE")
    restore_database(fresh.settings, fresh.runtime, backup_id, report=NullReporter(), uploads=True)
    assert fingerprint(fresh) == before
    with open(os.path.join(os.fsencode(fresh.settings.env.uploads_dir), b"u", NAME), "rb") as f:
        assert f.read() == b"the bytes of an upload with an odd name\n"
