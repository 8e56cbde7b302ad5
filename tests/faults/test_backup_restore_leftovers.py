"""A restore over a mount-point uploads folder keeps its staging and the previous uploads inside the
mount (``.stackops*``): a later full backup must hold the uploads only, not those copies."""

from __future__ import annotations

import tarfile

import pytest

from stackops.backup import create_backup
from stackops.backupset import decompressor
from stackops.journal import OURS
from stackops.proc import spawn
from stackops.report import NullReporter
from tests.conftest import Fresh

pytestmark = pytest.mark.integration


def test_full_backup_leaves_out_a_restores_copies_inside_the_uploads_folder(fresh: Fresh) -> None:
    up = fresh.settings.env.uploads_dir
    (up / "org").mkdir()
    (up / "org" / "a.bin").write_bytes(b"a" * 1000)
    kept = up / f"{OURS}_pre_restore_20260101000000"
    kept.mkdir()
    (kept / "old.bin").write_bytes(b"o" * 1000)
    backup = create_backup(fresh.settings, fresh.runtime, kind="full", report=NullReporter())
    assert backup.manifest["uploads"]["files"] == 1
    archive = backup.file("uploads")
    assert archive is not None
    proc = spawn(decompressor(backup.compression, archive), stdout=-1)
    assert proc.stdout is not None
    with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
        names = [m.name for m in tar]
    proc.wait()
    assert any(n.endswith("org/a.bin") for n in names)
    assert not any(OURS in n for n in names), names
