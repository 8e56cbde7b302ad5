"""The database server's own disk too small for the second copy that `restore.db` and `backup.verify`
load beside the live database: refused in one line (exit 19) before anything is created, the live
database intact and answering, no FAILED verification recorded; once space is freed both go through.

The cluster is this test's own, its data directory on a small tmpfs (never the shared root disk):
a full data disk is what makes PostgreSQL PANIC, taking the live database down with the load."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from stackops.backupset import MANIFEST, VERIFICATION
from stackops.config import Settings
from stackops.errors import StorageFull, UpdateRefused
from stackops.report import NullReporter
from stackops.runtime.local import LocalRuntime
from stackops.update import preflight
from tests.conftest import Fresh
from tests.faults.backup_helpers import add_uploads, fingerprint, listed, one_line, populate, run_cli
from tests.integration.test_local_runtime import own_env

pytestmark = [pytest.mark.integration, pytest.mark.local_runtime]

MiB = 1024 * 1024


@pytest.fixture
def small_server(tmp_path: Path) -> Iterator[Fresh]:
    """A local cluster of its own whose data directory (the server's home) is a 384 MiB tmpfs."""
    settings = own_env(tmp_path, "test")
    rt = LocalRuntime(settings)
    home = rt.pg_home  # under tmp_path, or /var/lib/stackops/<digest>/ when its user cannot reach tmp_path
    home.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=384m,mode=0700", "tmpfs", str(home)], check=True)
    try:
        rt.up(NullReporter())
        try:
            yield Fresh(settings, rt)
        finally:
            rt.down(NullReporter())
    finally:
        subprocess.run(["umount", "-l", str(home)], check=False)
        if home.is_relative_to("/var/lib/stackops"):
            shutil.rmtree(home.parents[1], ignore_errors=True)


def leave_free(folder: Path, free: int) -> Path:
    """Fill ``folder``'s tmpfs until ``free`` bytes are left; the filler file."""
    filler = folder / "filler"
    with filler.open("wb") as f:
        os.posix_fallocate(f.fileno(), 0, shutil.disk_usage(folder).free - free)
    return filler


def databases(settings: Settings, rt: LocalRuntime) -> list[str]:
    with psycopg.connect(**rt.conninfo("postgres")) as conn:
        return [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1",
                                           (settings.env.db_name + "%",))]


def answers(rt: LocalRuntime) -> bool:
    with psycopg.connect(**rt.conninfo()) as conn:
        return conn.execute("SELECT 1").fetchone() == (1,)


def test_restore_and_verify_are_refused_when_the_server_disk_cannot_hold_the_copy(small_server: Fresh) -> None:
    settings, rt = small_server.settings, small_server.runtime
    populate(small_server, users=50, blob_bytes=24 * MiB)  # incompressible: ~24 MiB in the database
    add_uploads(settings.env.uploads_dir)
    made = run_cli(settings, "backup")
    assert made.returncode == 0, made.stderr
    [backup_id] = listed(settings)
    manifest = json.loads((settings.env.backups_dir / backup_id / MANIFEST).read_text())
    assert manifest["database_bytes"] > 24 * MiB  # what the copy will take, recorded when backed up
    before = fingerprint(small_server)
    db = settings.env.db_name

    filler = leave_free(rt.pg_home, 24 * MiB)  # room for the server's own work, not for a second copy
    restore = run_cli(settings, "restore.db", backup_id)
    line = one_line(restore, StorageFull.exit_code)
    assert f"restore.db of {backup_id} refused: the database server's disk has" in line, line
    assert "needs about" in line and "nothing was created" in line and "free space" in line, line
    assert f"invoke restore.db {backup_id} --skip-space-check" in line, line
    dry = run_cli(settings, "restore.db", backup_id, "--dry-run")  # the dry run refuses just the same
    assert "refused: the database server's disk has" in one_line(dry, StorageFull.exit_code)
    verify = run_cli(settings, "backup.verify", "--latest")
    line = one_line(verify, StorageFull.exit_code)
    assert f"backup.verify of {backup_id} refused: the database server's disk has" in line, line
    assert f"invoke backup.verify --backup {backup_id} --skip-space-check" in line, line

    assert databases(settings, rt) == [db]  # no side, scratch or kept copy was created
    assert not (settings.env.backups_dir / backup_id / VERIFICATION).exists()  # not recorded as FAILED
    assert answers(rt)  # (the fingerprint's sorts need temporary files: taken once space is freed)
    skipped = run_cli(settings, "restore.db", backup_id, "--dry-run", "--skip-space-check")
    assert skipped.returncode == 0, skipped.stderr
    assert "would check the server's disk: the database server's free disk space was not checked " \
           "(--skip-space-check)" in skipped.stdout, skipped.stdout

    filler.unlink()
    assert fingerprint(small_server) == before  # the live rows as they were
    dry = run_cli(settings, "restore.db", backup_id, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would check the server's disk: the database server's disk has" in dry.stdout, dry.stdout
    verify = run_cli(settings, "backup.verify", "--latest")
    assert verify.returncode == 0, verify.stderr
    assert json.loads((settings.env.backups_dir / backup_id / VERIFICATION).read_text())["ok"] is True
    restore = run_cli(settings, "restore.db", backup_id)
    assert restore.returncode == 0, restore.stderr
    assert fingerprint(small_server) == before
    assert len(databases(settings, rt)) == 2  # the live one and the replaced one kept beside it


def test_an_update_whose_rollback_the_server_disk_cannot_hold_is_refused_before_it_starts(
        small_server: Fresh) -> None:
    settings, rt = small_server.settings, small_server.runtime
    populate(small_server, users=50, blob_bytes=24 * MiB)
    before = fingerprint(small_server)
    filler = leave_free(rt.pg_home, 24 * MiB)
    proc = run_cli(settings, "update")
    line = one_line(proc, UpdateRefused.exit_code)
    assert "update refused before changing anything: server disk for a rollback:" in line, line
    assert "free on the database server's disk, restoring" in line and "needs about" in line, line
    assert listed(settings) == []  # not even the update's backup was taken
    filler.unlink()
    assert fingerprint(small_server) == before
    row = next(c for c in preflight(settings, rt)[0] if c.name == "server disk for a rollback")
    assert row.ok, row.detail
