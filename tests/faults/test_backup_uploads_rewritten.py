"""Issue 9, item 11: an upload rewritten in place during a full backup never ends up in the archive
with bytes its rows never saw (the backup is refused), every upload's sha256 at the snapshot is in the
manifest, and `backup.verify` catches an archive whose file bytes differ from it."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

import stackops.backup
from stackops.backup import create_backup
from stackops.backupset import MANIFEST, read_manifest, seal
from stackops.errors import BackupError, VerifyFailed
from stackops.files import sha256_file
from stackops.report import NullReporter
from stackops.verify import verify_backup
from tests.conftest import Fresh
from tests.faults.backup_helpers import add_uploads, fingerprint, listed, one_line, populate, run_cli

pytestmark = pytest.mark.integration


def test_upload_rewritten_in_place_after_the_snapshot_refuses_the_backup(fresh: Fresh,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    populate(fresh)
    up = fresh.settings.env.uploads_dir
    add_uploads(up, files=4, size=20_000)
    real = stackops.backup._link_tree

    def link_then_rewrite(src: Path, dst: Path, report: Any) -> Any:
        entries = real(src, dst, report)
        with (src / "u" / "2.bin").open("r+b") as f:  # the app rewrites an upload in place, right now
            f.write(b"X" * 100)
        return entries

    monkeypatch.setattr(stackops.backup, "_link_tree", link_then_rewrite)
    before = fingerprint(fresh).rows
    with pytest.raises(BackupError) as exc:
        create_backup(fresh.settings, fresh.runtime, kind="full", report=NullReporter())
    message = str(exc.value)
    assert "upload u/2.bin was rewritten in place after the snapshot" in message and "nothing was kept" in message
    assert "\n" not in message
    assert listed(fresh.settings) == []
    after = fingerprint(fresh)
    assert after.rows == before and sorted(after.files) == [f"u/{i}.bin" for i in range(1, 5)]

    monkeypatch.setattr(stackops.backup, "_link_tree", real)  # the next backup, undisturbed, is whole
    backup = create_backup(fresh.settings, fresh.runtime, kind="full", report=NullReporter())
    entries = backup.manifest["uploads"]["entries"]
    assert {k: v["sha256"] for k, v in entries.items()} == {k: sha256_file(up / k) for k in entries}
    assert set(entries) == set(after.files)


def _rewrite_archive_member(backup_path: Path, member: str, data: bytes) -> None:
    """Replace one file's bytes in the uploads archive and reseal the manifest over the new archive:
    an archive whose own checksum is right but whose file differs from the snapshot's sha256."""
    archive = backup_path / "uploads.tar.zst"
    raw = subprocess.run(["zstd", "-q", "-dc", str(archive)], check=True, capture_output=True).stdout
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as src, tarfile.open(fileobj=out, mode="w:") as dst:
        for m in src:
            if m.name.removeprefix("./") == member:
                m.size = len(data)
                dst.addfile(m, io.BytesIO(data))
            else:
                dst.addfile(m, src.extractfile(m) if m.isfile() else None)
    archive.write_bytes(subprocess.run(["zstd", "-q", "-c"], input=out.getvalue(), check=True,
                                       capture_output=True).stdout)
    manifest = read_manifest(backup_path)
    manifest["files"]["uploads.tar.zst"].update(size=archive.stat().st_size, sha256=sha256_file(archive))
    (backup_path / MANIFEST).write_text(json.dumps(seal(manifest)))


def test_verify_detects_an_archived_upload_that_differs_from_the_manifest(fresh: Fresh) -> None:
    populate(fresh)
    add_uploads(fresh.settings.env.uploads_dir, files=3, size=5_000)
    before = fingerprint(fresh)
    backup = create_backup(fresh.settings, fresh.runtime, kind="full", report=NullReporter())
    ok = verify_backup(fresh.settings, fresh.runtime, backup.id, report=NullReporter())
    assert ok.ok and "3 upload files match the manifest's sha256" in ok.detail

    _rewrite_archive_member(backup.path, "u/3.bin", b"other bytes")
    proc = run_cli(fresh.settings, "backup.verify", "--backup", backup.id)
    one_line(proc, VerifyFailed.exit_code)
    assert "other bytes than the manifest: u/3.bin" in proc.stdout
    recorded = json.loads((backup.path / "verification.json").read_text())
    assert recorded["ok"] is False and "u/3.bin" in recorded["detail"]
    assert fingerprint(fresh) == before
    assert listed(fresh.settings) == [backup.id]
