"""Backups and restores on real PostgreSQL (local runtime): byte-identical round trips, refusals, crashes."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from stackops.backup import create_backup
from stackops.backupset import list_backups, read_manifest, seal
from stackops.errors import BackupCorrupt, LockBusy, RestoreError, VersionMismatch
from stackops.lock import env_lock
from stackops.migrate.files import newest_version
from stackops.report import NullReporter, Reporter
from stackops.restore import previous_copies, restore_database
from stackops.retention import prune
from stackops.verify import verify_backup
from tests.conftest import ROOT, Fresh, cli_env, invoke_cli, table_hashes

pytestmark = pytest.mark.integration

SCHEMA = """
CREATE TABLE users (id bigserial PRIMARY KEY, email text UNIQUE NOT NULL, name text, avatar bytea,
                    created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE messages (id bigserial PRIMARY KEY, user_id bigint NOT NULL REFERENCES users(id),
                       body text NOT NULL, meta jsonb);
"""


def populate(conn: psycopg.Connection[Any], n: int = 200) -> None:
    conn.execute(SCHEMA)
    with conn.cursor().copy("COPY users (email, name, avatar) FROM STDIN") as copy:
        for i in range(n):
            copy.write_row((f"u{i}@example.org", f"Zoë {i} — ünïcode", os.urandom(32)))
    conn.execute("INSERT INTO messages (user_id, body, meta) "
                 "SELECT id, 'hello ' || id, jsonb_build_object('n', id) FROM users")
    conn.commit()


def content(fresh: Fresh) -> dict[str, str]:
    """Every table's full contents as one hash each (not counts), and the sequences."""
    with fresh.connect() as conn:
        return table_hashes(conn, sequences=True)


def tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def add_uploads(folder: Path) -> None:
    (folder / "org 1" / "reports").mkdir(parents=True)
    (folder / "org 1" / "reports" / "Übersicht März.pdf").write_bytes(os.urandom(50_000))
    (folder / "org 1" / "photo with spaces.jpg").write_bytes(bytes(range(256)) * 100)
    (folder / "日本語.txt").write_text("データ\n")
    (folder / "empty").write_bytes(b"")


def databases(fresh: Fresh) -> list[str]:
    with psycopg.connect(**fresh.runtime.conninfo("postgres")) as conn:
        return [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1",
                                           (fresh.settings.env.db_name + "%",))]


def test_full_round_trip_is_byte_identical(fresh: Fresh) -> None:
    up = fresh.settings.env.uploads_dir
    with fresh.connect() as conn:
        populate(conn)
    add_uploads(up)
    before_db, before_files = content(fresh), tree(up)
    backup = create_backup(fresh.settings, fresh.runtime, kind="full", report=NullReporter())

    with fresh.connect() as conn:
        conn.execute("UPDATE users SET name = 'changed' WHERE id % 3 = 0")
        conn.execute("DELETE FROM messages WHERE id % 2 = 0")
        conn.execute("INSERT INTO users (email) VALUES ('late@example.org')")
    (up / "日本語.txt").unlink()
    (up / "org 1" / "photo with spaces.jpg").write_bytes(b"overwritten")
    (up / "new file.bin").write_bytes(os.urandom(100))
    assert content(fresh) != before_db and tree(up) != before_files

    result = restore_database(fresh.settings, fresh.runtime, backup.id, report=NullReporter(), uploads=True)
    assert content(fresh) == before_db
    assert tree(up) == before_files
    assert result.previous_database and result.previous_database in databases(fresh)
    kept = {c["name"] for c in previous_copies(fresh.settings, fresh.runtime)}
    assert result.previous_database in kept and result.previous_uploads in kept
    assert (Path(str(result.previous_uploads)) / "new file.bin").exists()  # the undo is really there


def test_backup_is_one_point_in_time(fresh: Fresh) -> None:
    """A file deleted and a row added while the backup runs: the file is in it, the row is not."""
    up = fresh.settings.env.uploads_dir
    with fresh.connect() as conn:
        populate(conn, 10)
    add_uploads(up)
    victim = up / "日本語.txt"

    class Meddler(Reporter):
        def __init__(self) -> None:
            super().__init__(quiet=True)

        def info(self, message: str) -> None:
            if message.startswith("froze the uploads folder"):
                victim.unlink()
                with fresh.connect() as c:
                    c.execute("INSERT INTO users (email) VALUES ('during@example.org')")
            super().info(message)

    before_db, before_files = content(fresh), tree(up)
    backup = create_backup(fresh.settings, fresh.runtime, kind="full", report=Meddler())
    assert backup.manifest["row_counts"]["public.users"] == 10
    restore_database(fresh.settings, fresh.runtime, backup.id, report=NullReporter(), uploads=True)
    after = content(fresh)
    # sequences are not transactional: pg_dump reads them as they are, so they may be ahead (never behind)
    assert after.pop("_sequences") >= before_db.pop("_sequences")
    assert after == before_db
    assert tree(up) == before_files


def test_manifest_records_what_an_operator_needs(fresh: Fresh) -> None:
    with fresh.connect() as conn:
        populate(conn, 5)
        conn.execute("CREATE TABLE schema_migrations (version text PRIMARY KEY)")
        conn.execute("INSERT INTO schema_migrations VALUES ('20240101000000'), ('20240618000000')")
    backup = create_backup(fresh.settings, fresh.runtime, kind="db", report=NullReporter())
    m = backup.manifest
    assert m["kind"] == "db" and m["env"] == fresh.settings.env.name
    assert m["migration_head"] == "20240618000000"
    assert m["row_counts"] == {"public.users": 5, "public.messages": 5, "public.schema_migrations": 2}
    assert m["server_major"] == 15 and "15." in m["pg_dump_version"]
    assert set(m["files"]) == {"database.dump.zst", "globals.sql"}
    password = fresh.runtime.conninfo()["password"]
    for f in backup.path.iterdir():
        assert password not in f.read_text(errors="replace")
        assert f.stat().st_mode & 0o777 == 0o600
    assert backup.path.stat().st_mode & 0o777 == 0o700
    assert "PASSWORD" not in (backup.path / "globals.sql").read_text()


@pytest.mark.parametrize("fault", ["bit flip", "truncation", "missing file", "edited manifest"])
def test_damaged_backup_is_refused_before_anything_is_touched(fresh: Fresh, fault: str) -> None:
    with fresh.connect() as conn:
        populate(conn, 50)
    backup = create_backup(fresh.settings, fresh.runtime, kind="db", report=NullReporter())
    with fresh.connect() as conn:
        conn.execute("DELETE FROM messages WHERE id > 25")
    live = content(fresh)
    dump = backup.path / "database.dump.zst"
    if fault == "bit flip":
        data = bytearray(dump.read_bytes())
        data[len(data) // 2] ^= 0x01
        dump.write_bytes(bytes(data))
    elif fault == "truncation":
        os.truncate(dump, dump.stat().st_size - 10)
    elif fault == "missing file":
        (backup.path / "globals.sql").unlink()
    else:
        manifest = json.loads((backup.path / "manifest.json").read_text())
        manifest["row_counts"]["public.messages"] = 25
        (backup.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BackupCorrupt):
        restore_database(fresh.settings, fresh.runtime, backup.id, report=NullReporter())
    assert content(fresh) == live
    assert databases(fresh) == [fresh.settings.env.db_name]
    verdict = verify_backup(fresh.settings, fresh.runtime, backup.id, report=NullReporter())
    assert verdict.ok is False


def test_backup_newer_than_this_checkout_or_server_is_refused(fresh: Fresh, tmp_path: Path) -> None:
    with fresh.connect() as conn:
        populate(conn, 5)
        conn.execute("CREATE TABLE schema_migrations (version text PRIMARY KEY)")
        conn.execute("INSERT INTO schema_migrations VALUES ('29991231000000')")
    backup = create_backup(fresh.settings, fresh.runtime, kind="db", report=NullReporter())
    (tmp_path / "20240101000000_init.sql").write_text("-- migrate:up\n-- migrate:down\n")
    settings = replace(fresh.settings, migrations=replace(fresh.settings.migrations, directory=tmp_path))
    with pytest.raises(VersionMismatch, match="newest migration on disk is 20240101000000"):
        restore_database(settings, fresh.runtime, backup.id, report=NullReporter(),
                         newest_migration=newest_version(tmp_path))
    manifest = read_manifest(backup.path)
    manifest["server_major"] = 99
    (backup.path / "manifest.json").write_text(json.dumps(seal(manifest)))
    with pytest.raises(VersionMismatch, match="PostgreSQL 99"):
        restore_database(fresh.settings, fresh.runtime, backup.id, report=NullReporter())
    assert databases(fresh) == [fresh.settings.env.db_name]


def test_failed_load_leaves_the_live_database_exactly_as_it_was(fresh: Fresh) -> None:
    with fresh.connect() as conn:
        populate(conn, 100)
        conn.execute("CREATE TABLE bulk AS SELECT g AS id, repeat(md5(g::text), 8) AS pad "
                     "FROM generate_series(1, 300000) g")
    backup = create_backup(fresh.settings, fresh.runtime, kind="db", report=NullReporter())
    with fresh.connect() as conn:
        conn.execute("UPDATE users SET name = 'after the backup'")
    live = content(fresh)
    stop = threading.Event()
    killed: list[int] = []

    def kill_the_load() -> None:  # a crash of the loading session, midway through its COPY
        with psycopg.connect(**fresh.runtime.conninfo("postgres"), autocommit=True) as conn:
            while not stop.is_set():
                rows = conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname LIKE %s AND query LIKE 'COPY%%'",
                    (fresh.settings.env.db_name + "_restore_%",)).fetchall()
                if rows:
                    conn.execute("SELECT pg_terminate_backend(%s)", (rows[0][0],))
                    killed.append(rows[0][0])
                    return
                time.sleep(0.005)

    t = threading.Thread(target=kill_the_load)
    t.start()
    try:
        with pytest.raises(RestoreError, match="unchanged"):
            restore_database(fresh.settings, fresh.runtime, backup.id, report=NullReporter())
    finally:
        stop.set()
        t.join()
    assert killed
    assert content(fresh) == live
    assert databases(fresh) == [fresh.settings.env.db_name]


def test_killed_backup_is_never_listed_and_the_next_one_works(fresh: Fresh) -> None:
    with fresh.connect() as conn:
        conn.execute("CREATE TABLE bulk AS SELECT g AS id, repeat(md5(g::text), 8) AS pad "
                     "FROM generate_series(1, 400000) g")
    s = fresh.settings.env
    env = cli_env(fresh.settings)
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "backup", "--env", "test"], cwd=ROOT, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        partial = list(s.backups_dir.glob(".tmp-*/database.dump.zst")) if s.backups_dir.exists() else []
        if partial and partial[0].stat().st_size > 0:
            break
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.01)
    else:
        pytest.fail("the backup never started writing")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(s.backups_dir.glob(".tmp-*")), "the interrupted folder should still be there"
    assert list_backups(fresh.settings) == []
    assert json.loads(invoke_cli("backup.list", "--env", "test", "--json", env=env).stdout) == []
    report = NullReporter()
    backup = create_backup(fresh.settings, fresh.runtime, kind="db", report=report)  # the lock is free
    assert any("unfinished backup folder" in line for line in report.lines)
    assert [b.id for b in list_backups(fresh.settings)] == [backup.id]
    assert not list(s.backups_dir.glob(".tmp-*"))


def test_one_operation_at_a_time_and_a_killed_holder_frees_the_lock(fresh: Fresh) -> None:
    folder = fresh.settings.env.backups_dir
    code = ("import sys, time; from pathlib import Path; from stackops.lock import env_lock\n"
            "with env_lock(Path(sys.argv[1]), 'restore'):\n    print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(LockBusy, match=r"restore \(pid \d+\) holds"):
            create_backup(fresh.settings, fresh.runtime, kind="db", report=NullReporter())
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert list_backups(fresh.settings) == []
    create_backup(fresh.settings, fresh.runtime, kind="db", report=NullReporter())
    with env_lock(folder, "restore"):  # re-entrant inside one process (a migration's own backup)
        create_backup(fresh.settings, fresh.runtime, kind="db", report=NullReporter())
    assert len(list_backups(fresh.settings)) == 2


def test_guide_format_sql_gz_restores(fresh: Fresh, tmp_path: Path) -> None:
    with fresh.connect() as conn:
        populate(conn, 30)
    expected = content(fresh)
    dump = subprocess.run([*fresh.runtime.pg_cmd("pg_dump").argv, "-d", fresh.settings.env.db_name],
                          env={**os.environ, **fresh.runtime.pg_cmd("pg_dump").env}, capture_output=True,
                          check=True).stdout
    old = tmp_path / "database_backup_20240618_120000.sql.gz"
    old.write_bytes(gzip.compress(dump))
    with fresh.connect() as conn:
        conn.execute("DROP TABLE messages")
        conn.execute("DELETE FROM users")
    restore_database(fresh.settings, fresh.runtime, str(old), report=NullReporter())
    assert content(fresh) == expected
    old.write_bytes(old.read_bytes()[:-20])
    with pytest.raises(BackupCorrupt, match="not a valid gzip"):
        restore_database(fresh.settings, fresh.runtime, str(old), report=NullReporter())


def test_verify_records_its_result_and_list_shows_it(fresh: Fresh) -> None:
    with fresh.connect() as conn:
        populate(conn, 20)
    backup = create_backup(fresh.settings, fresh.runtime, kind="db", report=NullReporter())
    result = verify_backup(fresh.settings, fresh.runtime, "latest", report=NullReporter())
    assert result.ok and result.backup_id == backup.id and result.restore_seconds > 0
    [listed] = list_backups(fresh.settings)
    assert listed.verification and listed.verification["ok"] is True
    assert databases(fresh) == [fresh.settings.env.db_name]  # the scratch database is gone


def test_prune_deletes_only_what_retention_rejects_and_only_our_backups(fresh: Fresh) -> None:
    with fresh.connect() as conn:
        populate(conn, 3)
    now = datetime(2026, 11, 30, 12, tzinfo=UTC)
    ids = []
    for hours in (1, 2, 25, 40 * 24, 300 * 24, 800 * 24):
        stamp = now - timedelta(hours=hours)
        ids.append(create_backup(fresh.settings, fresh.runtime, kind="db", report=NullReporter(),
                                 now=lambda stamp=stamp: stamp).id)
    foreign = fresh.settings.env.backups_dir / "not-ours"
    foreign.mkdir()
    (foreign / "database_backup_x.sql.gz").write_bytes(b"x")
    planned = prune(fresh.settings, report=NullReporter(), dry_run=True, now=now)
    assert len(list_backups(fresh.settings)) == 6  # dry run deletes nothing
    doomed = {d.backup.id for d in planned if not d.keep}
    assert doomed == {ids[1], ids[5]}  # an older copy of the same day; older than 52 weeks
    assert all(d.reasons for d in planned)
    prune(fresh.settings, report=NullReporter(), now=now)
    assert {b.id for b in list_backups(fresh.settings)} == set(ids) - doomed
    assert foreign.exists()
    again = prune(fresh.settings, report=NullReporter(), now=now)
    assert all(d.keep for d in again)


def test_cli_restore_in_a_protected_environment_needs_yes_and_dry_run_touches_nothing(fresh: Fresh) -> None:
    with fresh.connect() as conn:
        populate(conn, 10)
    env = cli_env(fresh.settings, "prod")
    made = invoke_cli("backup.db", "--env", "prod", "--json", env=env)
    assert made.returncode == 0, made.stderr
    backup_id = json.loads(made.stdout)["id"]
    with fresh.connect() as conn:
        conn.execute("DELETE FROM messages")
    live = content(fresh)

    refused = invoke_cli("restore.db", backup_id, "--env", "prod", env=env)
    assert refused.returncode == 6
    assert refused.stderr.strip().splitlines()[-1].startswith("stackops: restoring")
    assert "pass --yes" in refused.stderr
    plan = invoke_cli("restore.db", backup_id, "--env", "prod", "--dry-run", env=env)
    assert plan.returncode == 0 and "would load" in plan.stdout
    assert content(fresh) == live and databases(fresh) == [fresh.settings.env.db_name]

    missing = invoke_cli("restore.db", "no_such_backup", "--env", "prod", "--yes", env=env)
    assert missing.returncode == 8 and "not found" in missing.stderr and "Traceback" not in missing.stderr

    done = invoke_cli("restore.db", backup_id, "--env", "prod", "--yes", env=env)
    assert done.returncode == 0, done.stderr
    assert content(fresh) != live
    with fresh.connect() as conn:
        assert conn.execute("SELECT count(*) FROM messages").fetchone() == (10,)
    previous = json.loads(invoke_cli("restore.previous", "--env", "prod", "--json", env=env).stdout)
    assert [p["kind"] for p in previous] == ["database"]
    dropped = invoke_cli("restore.drop-previous", previous[0]["name"], "--env", "prod", "--yes", env=env)
    assert dropped.returncode == 0, dropped.stderr
    assert databases(fresh) == [fresh.settings.env.db_name]


@pytest.mark.parametrize(("typed", "restored"), [("prod", True), ("prdo", False)])
def test_cli_restore_at_a_terminal_needs_the_environment_name_typed(fresh: Fresh, typed: str, restored: bool) -> None:
    import pty

    with fresh.connect() as conn:
        populate(conn, 5)
    env = cli_env(fresh.settings, "prod")
    backup_id = json.loads(invoke_cli("backup.db", "--env", "prod", "--json", env=env).stdout)["id"]
    with fresh.connect() as conn:
        conn.execute("DELETE FROM messages")
    primary, secondary = pty.openpty()  # a real terminal on stdin, as an operator has
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "restore.db", backup_id, "--env", "prod"], cwd=ROOT,
                            env=env, stdin=secondary, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    os.close(secondary)
    os.write(primary, f"{typed}\n".encode())
    prompt, err = proc.communicate(timeout=120)
    os.close(primary)
    with fresh.connect() as conn:
        messages = conn.execute("SELECT count(*) FROM messages").fetchone()
    assert "Type the environment's name" in prompt
    if restored:
        assert proc.returncode == 0, err
        assert messages == (5,)
    else:
        assert proc.returncode == 6 and "the name typed was not 'prod'" in err
        assert messages == (0,)
