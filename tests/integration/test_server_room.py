"""The room a restore's or verify's copy needs on the database server's disk (stackops.space.server_room):
what each runtime can see, the estimate's basis for new and older backup sets, and an external server
(whose disk stackops cannot see) verified with the check skipped and said so."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from stackops import space
from stackops.backup import create_backup
from stackops.backupset import MANIFEST, find_backup, seal
from stackops.errors import BackupCorrupt
from stackops.report import NullReporter
from stackops.runtime.external import ExternalRuntime
from stackops.verify import verify_backup
from tests.conftest import Fresh, make_settings

pytestmark = [pytest.mark.integration, pytest.mark.local_runtime]


def _populate(fresh: Fresh) -> None:
    with fresh.connect() as conn:
        conn.execute("CREATE TABLE notes (id bigint PRIMARY KEY, body text)")
        conn.execute("INSERT INTO notes SELECT i, repeat('x', 200) FROM generate_series(1, 2000) i")


def _reseal(folder: Path, **changes: object) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest.update(changes)
    manifest = {k: v for k, v in manifest.items() if v is not None}
    (folder / MANIFEST).write_text(json.dumps(seal(manifest)))


def test_the_estimate_uses_the_recorded_size_else_the_live_database(fresh: Fresh) -> None:
    _populate(fresh)
    made = create_backup(fresh.settings, fresh.runtime, kind="full", report=NullReporter())
    recorded = made.manifest["database_bytes"]
    assert recorded > 0
    free = fresh.runtime.server_free_bytes()
    assert free is not None and abs(free - shutil.disk_usage(fresh.runtime.pg_data).free) < 64 * 2**20
    db = fresh.settings.env.db_name

    room = space.server_room(fresh.runtime, db, made.id, recorded=recorded, archive=1)
    assert room.need >= int(recorded * space.DISK_MARGIN) + space.DISK_SLACK
    assert room.need <= int(recorded * space.DISK_MARGIN) + recorded + space.DISK_SLACK
    assert f"when {made.id} was taken" in room.why

    _reseal(made.path, database_bytes=None)  # a set written before the size was recorded
    old = find_backup(fresh.settings, made.id)
    assert space.recorded_sizes(old)[0] is None
    room = space.server_room(fresh.runtime, db, old.id, recorded=None, archive=space.recorded_sizes(old)[1])
    assert f"the live {db} is" in room.why and "records no database size" in room.why

    _reseal(made.path, database_bytes="lots")  # read by a command, so checked like every other field
    with pytest.raises(BackupCorrupt, match="database_bytes is not a size in bytes"):
        find_backup(fresh.settings, made.id)


def test_an_external_server_is_verified_without_the_check_and_says_so(fresh: Fresh, tmp_path: Path) -> None:
    _populate(fresh)
    made = create_backup(fresh.settings, fresh.runtime, kind="full", report=NullReporter())
    secret = tmp_path / "password"
    secret.write_text(fresh.runtime.conninfo()["password"])
    env = fresh.settings.env
    settings = make_settings("test", runtime="external", db_host="127.0.0.1", db_password_file=str(secret),
                             db_name=env.db_name, backups_dir=str(env.backups_dir), uploads_dir=str(env.uploads_dir),
                             ports={"postgres": str(env.ports.postgres), "redis": str(env.ports.redis),
                                    "backend": "18000"})
    ext = ExternalRuntime(settings)
    assert ext.server_free_bytes() is None
    report = NullReporter()
    result = verify_backup(settings, ext, made.id, report=report)
    assert result.ok, result.detail
    assert any("free disk space is unknown to the external runtime: not checked" in line for line in report.lines), \
        report.lines
