"""Issue 9, item 13: a backup with a damaged manifest is shown by `backup.list` (table and --json) as
damaged with the reason, `backup.verify --all` reports it and fails, and `latest` never picks a backup
dated in the future."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta

import pytest

from stackops.backup import create_backup
from stackops.backupset import MANIFEST, latest, read_manifest, seal
from stackops.errors import BackupNotFound, VerifyFailed
from stackops.report import NullReporter
from tests.conftest import Fresh
from tests.faults.backup_helpers import fingerprint, listed, one_line, populate, run_cli

pytestmark = pytest.mark.integration


def _two_backups(fresh: Fresh) -> tuple[str, str]:
    t0 = datetime.now(UTC) - timedelta(hours=2)
    good = create_backup(fresh.settings, fresh.runtime, kind="db", report=NullReporter(), now=lambda: t0)
    bad = create_backup(fresh.settings, fresh.runtime, kind="db", report=NullReporter(),
                        now=lambda: t0 + timedelta(hours=1))
    manifest = json.loads((bad.path / MANIFEST).read_text())
    manifest["row_counts"]["public.users"] = 0  # edited after sealing: its checksum no longer matches
    (bad.path / MANIFEST).write_text(json.dumps(manifest))
    return good.id, bad.id


def test_damaged_backup_is_listed_as_damaged_and_verify_all_fails(fresh: Fresh) -> None:
    populate(fresh)
    good, bad = _two_backups(fresh)
    before = fingerprint(fresh)
    assert listed(fresh.settings) == [good]  # never shown as complete

    shown = run_cli(fresh.settings, "backup.list")
    assert shown.returncode == 0, shown.stderr
    row = next(line for line in shown.stdout.splitlines() if line.startswith(bad))
    assert "DAMAGED" in row and "was modified after the backup was written" in row
    good_row = next(line for line in shown.stdout.splitlines() if line.startswith(good))
    assert " 2h 0m " in good_row and " never" in good_row  # age, and not verified yet
    assert shown.stdout.splitlines()[0].split()[:5] == ["backup", "kind", "started", "(UTC)", "age"]
    rows = {r["id"]: r for r in json.loads(run_cli(fresh.settings, "backup.list", "--json").stdout)}
    assert rows[good]["damaged"] is False and rows[good]["reason"] is None
    assert 7190 < rows[good]["age_s"] < 7300 and rows[bad]["age_s"] is None
    assert rows[bad]["damaged"] is True and "checksum does not match" in rows[bad]["reason"]

    proc = run_cli(fresh.settings, "backup.verify", "--all")
    line = one_line(proc, VerifyFailed.exit_code)
    assert bad in line and good not in line
    table = proc.stdout
    assert any(ln.startswith(good) and " ok " in ln for ln in table.splitlines()), table
    assert any(ln.startswith(bad) and "FAILED" in ln for ln in table.splitlines()), table
    assert fingerprint(fresh) == before
    assert listed(fresh.settings) == [good]


def test_latest_skips_a_backup_dated_in_the_future(fresh: Fresh) -> None:
    populate(fresh)
    now = datetime.now(UTC)
    past = create_backup(fresh.settings, fresh.runtime, kind="db", report=NullReporter(),
                         now=lambda: now - timedelta(hours=1))
    future_id = "db_29990101T000000Z"
    shutil.copytree(past.path, past.path.parent / future_id)
    manifest = read_manifest(past.path)
    manifest.update(id=future_id, started_at=(now + timedelta(days=3)).isoformat())
    (past.path.parent / future_id / MANIFEST).write_text(json.dumps(seal(manifest)))
    assert listed(fresh.settings) == [future_id, past.id]  # listed, newest first ...
    assert latest(fresh.settings).id == past.id  # ... but never "latest"
    assert latest(fresh.settings, now + timedelta(days=4)).id == future_id
    # ... and the operator hears of it: a warning naming the passed-over set, on the command that used `latest`
    verify = run_cli(fresh.settings, "backup.verify", "--latest")
    assert verify.returncode == 0, verify.stderr
    assert f"1 newer set(s) dated in the future passed over for `latest` ({future_id}): check this host's clock" \
        in verify.stdout + verify.stderr, verify.stdout + verify.stderr
    shutil.rmtree(past.path)  # only the future-dated set left: the error says so, not "no backups"
    line = one_line(run_cli(fresh.settings, "restore.db", "latest", "--dry-run"), BackupNotFound.exit_code)
    assert f"started before now: 1 dated in the future ({future_id}); check this host's clock" in line, line
