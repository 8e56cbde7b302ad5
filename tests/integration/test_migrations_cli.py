"""The migrate tasks through the real `invoke` CLI, and two apply processes racing each other."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from stackops.errors import CheckFailed
from tests.conftest import Fresh
from tests.integration.conftest import INVOKE, cli_env, snapshot, write_migration

pytestmark = pytest.mark.integration


def invoke(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*INVOKE, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120,
                          check=False)


def test_create_refuses_a_bad_name_in_one_line(tmp_path: Path) -> None:
    proc = invoke("migrate.create", "Bad Name", cwd=tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        "stackops: migration name 'Bad Name' is refused: use 1-80 lowercase letters, digits and underscores "
        "(e.g. add_new_feature)"]
    assert proc.stdout == ""


def test_create_apply_status_check_through_the_cli(fresh: Fresh, migrations_dir: Path) -> None:
    env = cli_env(fresh.settings, migrations=migrations_dir)
    created = invoke("migrate.create", "add_notes", "--env", "test", env=env)
    assert created.returncode == 0, created.stderr
    path = Path(created.stdout.strip())
    assert path.parent == migrations_dir and path.name.endswith("_add_notes.sql")
    path.write_text(path.read_text().replace("-- migrate:up\n", "-- migrate:up\nCREATE TABLE notes (id bigint);\n")
                    .replace("-- migrate:down\n", "-- migrate:down\nDROP TABLE notes;\n"))

    applied = invoke("migrate.apply", "--env", "test", "--json", env=env)
    assert applied.returncode == 0, applied.stderr
    assert [a["name"] for a in json.loads(applied.stdout)["applied"]] == ["add_notes"]
    st = json.loads(invoke("migrate.status", "--env", "test", "--json", env=env).stdout)
    assert [e["state"] for e in st["entries"]] == ["applied"]
    check = invoke("migrate.check", "--env", "test", env=env)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "FAIL" not in check.stdout and "amcheck" in check.stdout


def test_failing_apply_exits_non_zero_naming_file_and_line(fresh: Fresh, migrations_dir: Path) -> None:
    write_migration(migrations_dir, "20240101000000_ok.sql", "CREATE TABLE ok (id bigint);", "DROP TABLE ok;")
    env = cli_env(fresh.settings, migrations=migrations_dir)
    assert invoke("migrate.apply", "--env", "test", env=env).returncode == 0
    before = snapshot(fresh)
    write_migration(migrations_dir, "20240102000000_bad.sql",
                    "INSERT INTO ok VALUES (1);\nINSERT INTO ok VALUES (2);\nINSERT INTO ok VALUES ('three');",
                    "DELETE FROM ok;")
    proc = invoke("migrate.apply", "--env", "test", env=env)
    assert proc.returncode == 9
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("stackops: migration 20240102000000_bad.sql failed at line 4 (up section, statement 3 of 3)")
    assert snapshot(fresh) == before
    check = invoke("migrate.check", "--env", "test", "--json", env=env)
    assert check.returncode == CheckFailed.exit_code
    failed = [c["name"] for c in json.loads(check.stdout)["checks"] if not c["ok"]]
    assert failed == ["pending migrations"]


def test_two_apply_processes_started_together_apply_each_migration_once(fresh: Fresh, migrations_dir: Path) -> None:
    write_migration(migrations_dir, "20240101000000_hits.sql", "CREATE TABLE hits (n bigint NOT NULL);",
                    "DROP TABLE hits;")
    write_migration(migrations_dir, "20240102000000_count.sql",
                    "INSERT INTO hits VALUES (1);\nSELECT pg_sleep(1.5);", "DELETE FROM hits;")
    # built while the other process polls for the lock: the lock's idle session cannot block it
    write_migration(migrations_dir, "20240103000000_idx.sql", "CREATE INDEX CONCURRENTLY hits_n_idx ON hits (n);",
                    "DROP INDEX CONCURRENTLY hits_n_idx;", transactional=False)
    env = cli_env(fresh.settings, migrations=migrations_dir)
    procs = [subprocess.Popen([*INVOKE, "migrate.apply", "--env", "test"], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert any("holds the lock; waiting" in err for _out, err in outs), outs  # they really overlapped
    assert sum("another apply ran these migrations meanwhile" in out for out, _err in outs) == 1, outs
    with fresh.connect() as conn:
        assert conn.execute("SELECT count(*) FROM hits").fetchone() == (1,)
        assert conn.execute("SELECT version, batch, status FROM schema_migrations ORDER BY seq").fetchall() == [
            ("20240101000000", 1, "applied"), ("20240102000000", 1, "applied"), ("20240103000000", 1, "applied")]
        assert conn.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = 'hits_n_idx'::regclass"
                            ).fetchone() == (True,)
