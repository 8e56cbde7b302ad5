"""stackops' data operations on the compose runtime, through the real CLI: migrate apply / rollback /
check, and the backup -> wipe -> restore round trip (byte-identical rows and upload files, also as the
backend container sees them through its bind mount). Each test works on its own database on the
environment's server (`own_db`), so it needs no other test's state."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.compose.conftest import OwnDatabase, backend_sha256, cli, connect, table_hashes, tree

pytestmark = pytest.mark.compose


def _migration_states(env: str, db: OwnDatabase) -> list[str]:
    out = json.loads(cli("migrate.status", "--env", env, "--json", extra_env=db.cli_env).stdout)
    return [e["state"] for e in out["entries"]]


def test_migrate_apply_check_rollback_on_compose(it_env: str, own_db: OwnDatabase) -> None:
    db = own_db
    assert set(_migration_states(it_env, db)) == {"pending"}
    applied = json.loads(cli("migrate.apply", "--env", it_env, "--json", extra_env=db.cli_env).stdout)
    assert applied["applied"] and applied["backup_id"]  # the pre-migration backup was taken through docker exec
    assert set(_migration_states(it_env, db)) == {"applied"}
    check = cli("migrate.check", "--env", it_env, "--json", check=False, extra_env=db.cli_env)
    assert check.returncode == 0, check.stdout + check.stderr
    assert json.loads(check.stdout)["ok"] is True

    yes = ["--yes"] if it_env == "prod" else []
    rolled = cli("migrate.rollback", "--env", it_env, *yes, "--json", check=False, extra_env=db.cli_env)
    assert rolled.returncode == 0, rolled.stderr
    assert "pending" in _migration_states(it_env, db)
    cli("migrate.apply", "--env", it_env, extra_env=db.cli_env)
    assert set(_migration_states(it_env, db)) == {"applied"}


def _populate(db: OwnDatabase, it_env: str) -> None:
    rt = db.rt
    cli("migrate.apply", "--env", it_env, extra_env=db.cli_env)  # the schema the sample data needs
    if it_env != "prod":  # sample data is refused in production, as the guide says
        cli("db.seed", "--env", it_env, extra_env=db.cli_env)
    with connect(rt) as conn:
        conn.execute("DROP TABLE IF EXISTS it_blobs")
        conn.execute("CREATE TABLE it_blobs (id bigserial PRIMARY KEY, name text NOT NULL, body bytea, "
                     "meta jsonb, at timestamptz DEFAULT now())")
        with conn.cursor().copy("COPY it_blobs (name, body, meta) FROM STDIN") as copy:
            for i in range(500):
                copy.write_row((f"Zoë {i} — ünïcode ✓", os.urandom(64), json.dumps({"n": i})))
    up = rt.settings.env.uploads_dir
    (up / "org 1" / "reports").mkdir(parents=True, exist_ok=True)
    (up / "org 1" / "reports" / "annual report 2024.pdf").write_bytes(os.urandom(300_000))
    (up / "日本語.txt").write_text("こんにちは\n")
    (up / "empty").write_bytes(b"")


def test_backup_wipe_restore_round_trip_is_byte_identical(it_env: str, own_db: OwnDatabase) -> None:
    _populate(own_db, it_env)
    rt = own_db.rt
    up = rt.settings.env.uploads_dir
    before_rows, before_files = table_hashes(rt), tree(up)
    taken = json.loads(cli("backup", "--env", it_env, "--json", extra_env=own_db.cli_env).stdout)
    backup_id = taken["id"]
    assert taken["manifest"]["runtime"] == "compose"
    assert set(taken["manifest"]["image_digests"]) >= {"database", "redis", "backend"}

    with connect(rt) as conn:  # wipe: rows, a whole table, files
        conn.execute("DELETE FROM it_blobs WHERE id % 2 = 0")
        conn.execute("UPDATE it_blobs SET name = 'changed'")
        conn.execute("CREATE TABLE it_late (id int)")
    shutil.rmtree(up / "org 1")
    (up / "日本語.txt").write_text("overwritten")
    (up / "new.bin").write_bytes(os.urandom(10))
    assert table_hashes(rt) != before_rows and tree(up) != before_files

    yes = ["--yes"]
    restored = cli("restore", backup_id, "--env", it_env, *yes, "--json", extra_env=own_db.cli_env)
    assert json.loads(restored.stdout)["database"]
    assert table_hashes(rt) == before_rows
    assert tree(up) == before_files
    for rel, digest in before_files.items():  # what the backend serves, through its own mount
        assert backend_sha256(rt, rel) == digest, f"the backend does not see the restored {rel}"
    assert backend_sha256(rt, "new.bin") is None

    verified = cli("backup.verify", "--backup", backup_id, "--env", it_env, check=False, extra_env=own_db.cli_env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
