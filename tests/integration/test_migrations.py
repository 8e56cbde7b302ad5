"""migrate.apply / status / rollback on real PostgreSQL: the schema, failures, drift, lint, rollback."""

from __future__ import annotations

from pathlib import Path

import pytest

from stackops.backupset import list_backups
from stackops.integrity import check_integrity
from stackops.migrate import DriftError, LintRefused, MigrationError, MigrationFailed
from stackops.migrate.engine import apply, rollback, status
from stackops.report import NullReporter
from tests.conftest import ROOT, Fresh
from tests.integration.conftest import schema_dump, snapshot, with_migrations, write_migration

pytestmark = pytest.mark.integration

TABLES = {"organizations", "users", "conversations", "messages", "file_uploads", "indicators", "measurements",
          "schema_migrations"}

BASE_UP = """
CREATE TABLE items (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, label text NOT NULL);
INSERT INTO items (label) VALUES ('one'), ('two'), ('three');
"""


def tables(fresh: Fresh) -> set[str]:
    with fresh.connect() as conn:
        return {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def history(fresh: Fresh) -> list[tuple[str, int, str]]:
    with fresh.connect() as conn:
        return [(r[0], r[1], r[2]) for r in conn.execute(
            "SELECT version, batch, status FROM schema_migrations ORDER BY seq")]


def base(fresh: Fresh, folder: Path) -> None:
    """A first applied batch with data, so later failures have real history to keep."""
    write_migration(folder, "20240101000000_items.sql", BASE_UP, "DROP TABLE items;")
    apply(with_migrations(fresh.settings, folder), fresh.runtime, report=NullReporter())


# ----- the real schema -------------------------------------------------------------------------

def test_empty_database_gets_every_table_then_nothing_to_do_and_clean(fresh: Fresh) -> None:
    first = apply(fresh.settings, fresh.runtime, report=NullReporter())
    assert tables(fresh) == TABLES
    assert [a.name for a in first.applied][:2] == ["organizations_and_users", "chat_history"]
    assert first.batch == 1 and first.backup_id is not None
    backups = {b.id: b for b in list_backups(fresh.settings)}
    assert backups[first.backup_id].kind == "pre_migration"
    with fresh.connect() as conn:
        rows = conn.execute("SELECT batch, backup_id, status, applied_by, execution_ms >= 0, "
                            "checksum ~ '^[0-9a-f]{64}$' FROM schema_migrations").fetchall()
        invalid = conn.execute("SELECT count(*) FROM pg_index WHERE NOT indisvalid").fetchone()
    assert len(rows) == len(first.applied) >= 5
    assert {(r[0], r[1], r[2], r[4], r[5]) for r in rows} == {(1, first.backup_id, "applied", True, True)}
    assert invalid == (0,)  # the CONCURRENTLY index was built outside the lock without deadlock

    again = apply(fresh.settings, fresh.runtime, report=NullReporter())
    assert again.applied == [] and again.message.startswith("nothing to do")
    assert len(list_backups(fresh.settings)) == 1  # no backup when nothing is pending
    assert status(fresh.settings, fresh.runtime).clean
    result = check_integrity(fresh.settings, fresh.runtime, report=NullReporter())
    assert result.ok, result.failed


def test_guide_activity_query_runs_on_the_schema(fresh: Fresh) -> None:
    apply(fresh.settings, fresh.runtime, report=NullReporter())
    with fresh.connect() as conn:
        conn.execute("INSERT INTO users (email, last_login_at) VALUES ('a@x.org', now()), ('b@x.org', NULL)")
        row = conn.execute("""
            SELECT COUNT(*) as total_users,
                   COUNT(*) FILTER (WHERE last_login_at > NOW() - INTERVAL '7 days') as active_users
            FROM users""").fetchone()
        assert row == (2, 1)
        with pytest.raises(Exception, match="users_email_key"):
            conn.execute("INSERT INTO users (email) VALUES ('A@X.org')")


# ----- failures --------------------------------------------------------------------------------

def test_error_on_third_statement_leaves_schema_and_history_as_before(fresh: Fresh, migrations_dir: Path) -> None:
    base(fresh, migrations_dir)
    before = snapshot(fresh)
    write_migration(migrations_dir, "20240102000000_broken.sql", """
-- two good statements, then a bad one
ALTER TABLE items ADD COLUMN note text;
UPDATE items SET note = 'x';
INSERT INTO items (label)
  SELECT label FROM no_such_table;
SELECT 1;
""", "ALTER TABLE items DROP COLUMN note;")
    settings = with_migrations(fresh.settings, migrations_dir)
    with pytest.raises(MigrationFailed) as err:
        apply(settings, fresh.runtime, report=NullReporter())
    msg = str(err.value)
    assert "20240102000000_broken.sql" in msg and err.value.line == 6 and "at line 6" in msg
    assert "statement 3 of 4" in msg and "no_such_table" in msg and "\n" not in msg
    assert snapshot(fresh) == before
    assert [e.state for e in status(settings, fresh.runtime).entries] == ["applied", "pending"]


def test_failure_of_the_first_batch_leaves_no_history_table(fresh: Fresh, migrations_dir: Path) -> None:
    before = snapshot(fresh)
    write_migration(migrations_dir, "20240101000000_bad.sql", "CREATE TABLE a (id int);\nSELECT 1/0;")
    with pytest.raises(MigrationFailed, match=r"at line 3 .*division by zero"):
        apply(with_migrations(fresh.settings, migrations_dir), fresh.runtime, report=NullReporter())
    assert snapshot(fresh) == before


def test_batch_of_three_with_third_failing_equals_pre_batch_state(fresh: Fresh, migrations_dir: Path) -> None:
    base(fresh, migrations_dir)
    before = snapshot(fresh)
    write_migration(migrations_dir, "20240102000000_tags.sql",
                    "CREATE TABLE tags (id bigint PRIMARY KEY, name text);\nINSERT INTO tags VALUES (1, 'a');",
                    "DROP TABLE tags;")
    write_migration(migrations_dir, "20240103000000_rename.sql",
                    "ALTER TABLE items RENAME COLUMN label TO title;\nUPDATE items SET title = upper(title);",
                    "UPDATE items SET title = lower(title);\nALTER TABLE items RENAME COLUMN title TO label;")
    write_migration(migrations_dir, "20240104000000_fails.sql",
                    "ALTER TABLE items ADD COLUMN n bigint;\n"
                    "ALTER TABLE items ADD CONSTRAINT n_set CHECK (n IS NOT NULL);",
                    "ALTER TABLE items DROP COLUMN n;")
    with pytest.raises(MigrationFailed) as err:
        apply(with_migrations(fresh.settings, migrations_dir), fresh.runtime, report=NullReporter())
    msg = str(err.value)
    assert "20240104000000_fails.sql failed at line 3" in msg
    assert "reverted 20240103000000_rename.sql, 20240102000000_tags.sql with their down sections" in msg
    # a down section puts the schema back, not rows an up section dropped: the message never claims more,
    # and names the backup that holds them
    assert "as before the batch, but rows an up section deleted or rewrote" in msg, msg
    assert "the pre-migration backup pre_migration_" in msg and "invoke restore.db pre_migration_" in msg, msg
    assert snapshot(fresh) == before


def test_an_applied_migration_renamed_to_the_long_version_is_refused_not_run_twice(fresh: Fresh,
                                                                                  migrations_dir: Path) -> None:
    """Before: renaming the applied 20240102_bonus.sql to 20240102000000_bonus.sql ran its UPDATE again (a
    warning about an out-of-order file was all)."""
    base(fresh, migrations_dir)
    old = write_migration(migrations_dir, "20240102_bonus.sql", "UPDATE items SET label = label || ' (bonus)';",
                          "SELECT 1;")
    settings = with_migrations(fresh.settings, migrations_dir)
    apply(settings, fresh.runtime, report=NullReporter())
    before = snapshot(fresh)
    old.rename(migrations_dir / "20240102000000_bonus.sql")
    with pytest.raises(MigrationError, match=r"has exactly the content of 20240102_bonus\.sql"):
        apply(settings, fresh.runtime, report=NullReporter())
    assert snapshot(fresh) == before  # the UPDATE ran once


def test_failure_at_commit_is_a_failed_migration_too(fresh: Fresh, migrations_dir: Path) -> None:
    base(fresh, migrations_dir)
    before = snapshot(fresh)
    write_migration(migrations_dir, "20240102000000_deferred.sql", """
CREATE TABLE parts (item_id bigint REFERENCES items (id) DEFERRABLE INITIALLY DEFERRED);
INSERT INTO parts VALUES (999);""", "DROP TABLE parts;")
    committing = r"_deferred\.sql failed \(committing the up section\).*parts_item_id_fkey"
    with pytest.raises(MigrationFailed, match=committing):
        apply(with_migrations(fresh.settings, migrations_dir), fresh.runtime, report=NullReporter())
    assert snapshot(fresh) == before


def test_batch_with_a_missing_down_section_is_undone_from_the_backup(fresh: Fresh, migrations_dir: Path) -> None:
    base(fresh, migrations_dir)
    before = snapshot(fresh)
    write_migration(migrations_dir, "20240102000000_one_way.sql", "DELETE FROM items WHERE label = 'two';")
    write_migration(migrations_dir, "20240103000000_fails.sql", "SELECT no_such_function();", "SELECT 1;")
    with pytest.raises(MigrationFailed) as err:
        apply(with_migrations(fresh.settings, migrations_dir), fresh.runtime, report=NullReporter())
    assert "20240102000000_one_way.sql has no down section" in str(err.value)
    assert "pre-migration backup" in str(err.value) and "was restored" in str(err.value)
    assert snapshot(fresh) == before


def test_failed_step_outside_a_transaction_is_undone_from_the_backup(fresh: Fresh, migrations_dir: Path) -> None:
    base(fresh, migrations_dir)
    with fresh.connect() as conn:
        conn.execute("INSERT INTO items (label) VALUES ('one')")  # a duplicate: the unique index fails
    before = snapshot(fresh)
    write_migration(migrations_dir, "20240102000000_unique.sql",
                    "CREATE UNIQUE INDEX CONCURRENTLY items_label_key ON items (label);",
                    "DROP INDEX CONCURRENTLY IF EXISTS items_label_key;", transactional=False)
    with pytest.raises(MigrationFailed) as err:
        apply(with_migrations(fresh.settings, migrations_dir), fresh.runtime, report=NullReporter())
    assert "ran outside a transaction" in str(err.value) and "was restored" in str(err.value)
    assert snapshot(fresh) == before  # no invalid index, no 'failed' history row


def test_lock_timeout_from_config_stops_a_blocked_migration(fresh: Fresh, migrations_dir: Path) -> None:
    base(fresh, migrations_dir)
    before = snapshot(fresh)
    write_migration(migrations_dir, "20240102000000_blocked.sql", "ALTER TABLE items ADD COLUMN x text;",
                    "ALTER TABLE items DROP COLUMN x;")
    settings = with_migrations(fresh.settings, migrations_dir, lock_timeout="300ms")
    with fresh.connect() as holder:
        holder.execute("LOCK TABLE items IN ACCESS SHARE MODE")  # open transaction, like a long report query
        with pytest.raises(MigrationFailed, match="lock timeout"):
            apply(settings, fresh.runtime, report=NullReporter())
        holder.rollback()
    assert snapshot(fresh) == before


def test_apply_gives_up_when_another_session_holds_the_lock(fresh: Fresh, migrations_dir: Path) -> None:
    from stackops.errors import LockBusy
    from stackops.migrate.history import LOCK_KEY

    write_migration(migrations_dir, "20240101000000_a.sql", "CREATE TABLE a (id bigint);", "DROP TABLE a;")
    settings = with_migrations(fresh.settings, migrations_dir, lock_wait_seconds=1)
    with fresh.connect(autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        with pytest.raises(LockBusy, match=r"still holds the migration lock .* after 1s"):
            apply(settings, fresh.runtime, report=NullReporter())
    assert tables(fresh) == set() and list_backups(settings) == []  # no backup, no DDL


# ----- drift, lint, path -----------------------------------------------------------------------

def test_edited_applied_file_is_drift_and_apply_refuses_until_resolved(fresh: Fresh, migrations_dir: Path) -> None:
    base(fresh, migrations_dir)
    settings = with_migrations(fresh.settings, migrations_dir)
    applied_file = migrations_dir / "20240101000000_items.sql"
    original = applied_file.read_bytes()
    applied_file.write_bytes(original.replace(b"\n", b"\r\n"))  # line endings alone are not drift
    assert status(settings, fresh.runtime).clean
    applied_file.write_bytes(original + b"-- a later edit\n")
    write_migration(migrations_dir, "20240102000000_next.sql", "CREATE TABLE nxt (id bigint);", "DROP TABLE nxt;")

    assert [e.state for e in status(settings, fresh.runtime).entries] == ["drifted", "pending"]
    checks = {c.name: c for c in check_integrity(settings, fresh.runtime, report=NullReporter()).checks}
    assert not checks["migration checksums"].ok and "20240101000000_items.sql" in checks["migration checksums"].detail
    with pytest.raises(DriftError, match=r"20240101000000_items\.sql"):
        apply(settings, fresh.runtime, report=NullReporter())
    assert "nxt" not in tables(fresh)

    applied_file.write_bytes(original)
    assert [a.name for a in apply(settings, fresh.runtime, report=NullReporter()).applied] == ["next"]


DANGEROUS = "ALTER TABLE items ADD COLUMN owner text NOT NULL;"


def test_squawk_flags_a_dangerous_migration_and_strict_refuses(fresh: Fresh, migrations_dir: Path) -> None:
    base(fresh, migrations_dir)
    with fresh.connect() as conn:
        conn.execute("DELETE FROM items")
    write_migration(migrations_dir, "20240102000000_owner.sql", "-- who owns it\n" + DANGEROUS,
                    "ALTER TABLE items DROP COLUMN owner;")
    settings = with_migrations(fresh.settings, migrations_dir)
    backups = len(list_backups(settings))
    with pytest.raises(LintRefused, match=r"20240102000000_owner\.sql line 3, adding-required-field"):
        apply(settings, fresh.runtime, strict=True, report=NullReporter())
    assert len(list_backups(settings)) == backups and status(settings, fresh.runtime).having("pending")

    dry = apply(settings, fresh.runtime, dry_run=True, report=NullReporter())
    assert dry.dry_run and dry.applied == [] and status(settings, fresh.runtime).having("pending")
    result = apply(settings, fresh.runtime, report=NullReporter())
    assert [(f.rule, f.line) for f in result.findings] == [("adding-required-field", 3)]
    assert [a.name for a in result.applied] == ["owner"]


def test_project_schema_passes_strict_lint(fresh: Fresh) -> None:
    result = apply(fresh.settings, fresh.runtime, strict=True, dry_run=True, report=NullReporter())
    assert result.findings == [] and len(result.planned) >= 5


def test_apply_named_file_only(fresh: Fresh, migrations_dir: Path) -> None:
    settings = with_migrations(fresh.settings, migrations_dir)
    write_migration(migrations_dir, "20240101_a.sql", "CREATE TABLE a (id bigint);", "DROP TABLE a;")
    write_migration(migrations_dir, "20240102_b.sql", "CREATE TABLE b (id bigint);", "DROP TABLE b;")
    result = apply(settings, fresh.runtime, path=str(migrations_dir / "20240102_b.sql"), report=NullReporter())
    assert [a.version for a in result.applied] == ["20240102"] and tables(fresh) == {"b", "schema_migrations"}
    again = apply(settings, fresh.runtime, path="migrations/20240102_b.sql", report=NullReporter())
    assert again.applied == [] and "already applied" in again.message
    with pytest.raises(MigrationError, match=r"no migration 20240103_c\.sql"):
        apply(settings, fresh.runtime, path="20240103_c.sql", report=NullReporter())
    outside = ROOT / "migrations" / "20240618090000_organizations_and_users.sql"
    with pytest.raises(MigrationError, match="is not in the migrations folder"):
        apply(settings, fresh.runtime, path=str(outside), report=NullReporter())


def test_unwritten_migration_is_refused(fresh: Fresh, migrations_dir: Path) -> None:
    from stackops.migrate.files import create

    path = create(migrations_dir, "todo")
    with pytest.raises(MigrationError, match=f"{path.name} has an empty up section"):
        apply(with_migrations(fresh.settings, migrations_dir), fresh.runtime, report=NullReporter())


# ----- rollback --------------------------------------------------------------------------------

def second_batch(folder: Path) -> None:
    write_migration(folder, "20240102000000_tags.sql",
                    "CREATE TABLE tags (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text);\n"
                    "INSERT INTO tags (name) SELECT label FROM items;", "DROP TABLE tags;")
    write_migration(folder, "20240103000000_split.sql",
                    "ALTER TABLE items ADD COLUMN upper_label text;\nUPDATE items SET upper_label = upper(label);",
                    "ALTER TABLE items DROP COLUMN upper_label;")
    write_migration(folder, "20240104000000_idx.sql",
                    "CREATE INDEX CONCURRENTLY IF NOT EXISTS items_upper_idx ON items (upper_label);",
                    "DROP INDEX CONCURRENTLY IF EXISTS items_upper_idx;", transactional=False)


def test_rollback_reverts_the_last_batch_to_the_state_before(fresh: Fresh, migrations_dir: Path) -> None:
    base(fresh, migrations_dir)
    settings = with_migrations(fresh.settings, migrations_dir)
    before = snapshot(fresh)
    second_batch(migrations_dir)
    assert len(apply(settings, fresh.runtime, report=NullReporter()).applied) == 3
    plan = rollback(settings, fresh.runtime, dry_run=True, report=NullReporter())
    assert plan.migrations == ["20240104000000_idx.sql", "20240103000000_split.sql", "20240102000000_tags.sql"]
    assert len(history(fresh)) == 4  # the dry run changed nothing

    result = rollback(settings, fresh.runtime, report=NullReporter())
    assert result.method == "down" and result.batch == 2 and result.migrations == plan.migrations
    assert snapshot(fresh) == before
    assert result.backup_id in {b.id for b in list_backups(settings)}  # a safety backup came first


def test_rollback_of_the_first_batch_returns_to_an_empty_database(fresh: Fresh) -> None:
    empty = schema_dump(fresh)
    apply(fresh.settings, fresh.runtime, report=NullReporter())
    rollback(fresh.settings, fresh.runtime, report=NullReporter())
    assert schema_dump(fresh) == empty
    nothing = rollback(fresh.settings, fresh.runtime, report=NullReporter())
    assert nothing.method == "none"


def test_rollback_restore_returns_to_the_pre_migration_backup(fresh: Fresh, migrations_dir: Path) -> None:
    base(fresh, migrations_dir)
    settings = with_migrations(fresh.settings, migrations_dir)
    before = snapshot(fresh)
    second_batch(migrations_dir)
    applied = apply(settings, fresh.runtime, report=NullReporter())
    with fresh.connect() as conn:
        conn.execute("INSERT INTO tags (name) VALUES ('written after the batch')")
    result = rollback(settings, fresh.runtime, restore=True, report=NullReporter())
    assert result.method == "restore" and result.backup_id == applied.backup_id
    assert "every change written since then is lost" in result.warnings[0]
    assert snapshot(fresh) == before


def test_rollback_needs_down_sections_or_restore(fresh: Fresh, migrations_dir: Path) -> None:
    base(fresh, migrations_dir)
    settings = with_migrations(fresh.settings, migrations_dir)
    write_migration(migrations_dir, "20240102000000_one_way.sql", "DELETE FROM items;")
    apply(settings, fresh.runtime, report=NullReporter())
    with pytest.raises(MigrationError, match=r"20240102000000_one_way\.sql has no down section.*--restore"):
        rollback(settings, fresh.runtime, report=NullReporter())
    assert len(history(fresh)) == 2

