"""apply, rollback and status: the guide's "Apply migration safely" and "Automatic rollback".

apply, in order: read files and history (refuse drift and failed steps), pick the pending files,
lint them with squawk (``strict`` refuses on any finding), take the migration advisory lock (its
own idle connection, polled with ``pg_try_advisory_lock``), read the history again under the lock,
take the pre-migration backup (finished before any DDL lock is requested), then run each
migration — a transactional one in one transaction together with its history row, a
``no-transaction`` one statement by statement with a ``running`` history row. When a migration
fails, the batch is undone: the down sections of the migrations this batch applied, in reverse
order and in one transaction; the pre-migration backup instead when a down section is missing, a
step ran outside a transaction, or a down section fails. The error names file, line and what the
undo did.
"""

from __future__ import annotations

import getpass
import re
import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stackops import pg
from stackops.backup import create_backup
from stackops.config import Settings
from stackops.errors import LockBusy, StackopsError
from stackops.lock import env_lock
from stackops.migrate import DriftError, LintRefused, MigrationError, MigrationFailed
from stackops.migrate.files import MigrationFile, Statement, discover
from stackops.migrate.history import (
    HISTORY_DDL,
    HISTORY_TABLE,
    LOCK_KEY,
    HistoryRow,
    MigrationStatus,
    compute_status,
    history_exists,
    lock_holder,
    q,
    read_history,
)
from stackops.migrate.lint import Finding, lint
from stackops.report import Plan, Reporter
from stackops.restore import restore_database
from stackops.runtime.base import Runtime


@dataclass(frozen=True)
class AppliedMigration:
    version: str
    name: str
    transactional: bool
    execution_ms: int


@dataclass(frozen=True)
class ApplyResult:
    planned: list[str]
    applied: list[AppliedMigration]
    findings: list[Finding]
    batch: int | None
    backup_id: str | None
    dry_run: bool
    message: str


@dataclass(frozen=True)
class RollbackResult:
    batch: int | None
    method: str              # down | restore | none
    migrations: list[str]    # the batch's files, in the order they are reverted
    backup_id: str | None    # restore: the backup restored; down: the safety backup taken first
    dry_run: bool
    message: str
    warnings: list[str] = field(default_factory=list)


# ----- connections, lock, backup ---------------------------------------------------------------

def connect(runtime: Runtime, *, autocommit: bool = True) -> pg.Connection[Any]:
    """A connection to the environment's database (autocommit: every migration opens its own transaction)."""
    return pg.connect(runtime, autocommit=autocommit)


@contextmanager
def migration_lock(runtime: Runtime, wait_seconds: int, report: Reporter) -> Iterator[None]:
    """Hold the session-level migration advisory lock on a connection of its own, which stays idle
    (no open transaction), so CREATE INDEX CONCURRENTLY never waits for it."""
    conn = connect(runtime)
    try:
        deadline = time.monotonic() + wait_seconds
        told = False
        while True:
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
            if row and row[0]:
                break
            holder = lock_holder(conn)
            if time.monotonic() >= deadline:
                raise LockBusy(
                    f"another migration (pid {holder or '?'}) still holds the migration lock of database "
                    f"{conn.info.dbname} after {wait_seconds}s: let it finish, or raise "
                    "stackops.migrations.lock_wait_seconds"
                )
            if not told:
                report.info(f"another migration (pid {holder or '?'}) holds the lock; waiting up to {wait_seconds}s")
                told = True
            time.sleep(0.1)
        yield
        with suppress(pg.Error):  # a restore may have ended this session (and the lock with it)
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    finally:
        conn.close()  # ending the session releases the lock in every case


def take_pre_migration_backup(settings: Settings, runtime: Runtime, report: Reporter) -> str:
    """The database-only backup of kind ``pre_migration`` taken before any DDL; returns its id."""
    report.step("taking the pre-migration backup")
    result = create_backup(settings, runtime, kind="pre_migration", report=report)
    report.info(f"pre-migration backup {result.id} at {result.path}")
    return str(result.id)


def restore_pre_migration_backup(settings: Settings, runtime: Runtime, backup_id: str,
                                 report: Reporter) -> str | None:
    """Swap the database back to the backup's content; returns the name the replaced database is kept
    under (None when there was no live database)."""
    report.step(f"restoring the pre-migration backup {backup_id}")
    return restore_database(settings, runtime, backup_id, report=report).previous_database


def _applied_by() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _set_timeouts(conn: Any, settings: Settings) -> None:
    conn.execute("SELECT set_config('lock_timeout', %s, false), set_config('statement_timeout', %s, false)",
                 (settings.migrations.lock_timeout, settings.migrations.statement_timeout))


# ----- running statements ----------------------------------------------------------------------

class _StepFailed(Exception):
    """A statement of a section (or the history write of a migration) failed."""

    def __init__(self, mf: MigrationFile, section: str, statement: Statement | None, total: int,
                 exc: BaseException, step: str = "writing its history row") -> None:
        diag = getattr(exc, "diag", None)
        primary = getattr(diag, "message_primary", None) if diag is not None else None
        self.reason = primary or pg.first_line(exc)
        position = getattr(diag, "statement_position", None) if diag is not None else None
        self.line = statement.line_at(int(position)) if statement and position else (
            statement.line if statement else None)
        self.mf = mf
        where = f"{mf.filename} line {self.line}" if self.line else mf.filename
        self.step = f"{section} section, statement {statement.index} of {total}" if statement else step
        self.where = f"{where} ({self.step})"
        super().__init__(f"{self.where}: {self.reason}")


def _run(conn: Any, mf: MigrationFile, section: str, statements: Sequence[Statement]) -> None:
    for st in statements:
        try:
            conn.execute(st.text.encode())
        except pg.Error as exc:
            raise _StepFailed(mf, section, st, len(statements), exc) from exc


@contextmanager
def _transaction(conn: Any, mf: MigrationFile, section: str, transactional: bool = True) -> Iterator[None]:
    """One transaction (or none); a failing COMMIT (deferred constraints) is a failed step too."""
    if not transactional:
        yield
        return
    try:
        with conn.transaction():
            yield
    except pg.Error as exc:
        raise _StepFailed(mf, section, None, 0, exc, step=f"committing the {section} section") from exc


def _history_write(conn: Any, mf: MigrationFile, query: str, params: Sequence[Any]) -> None:
    try:
        conn.execute(q(query), params)
    except pg.Error as exc:
        raise _StepFailed(mf, "up", None, len(mf.up), exc) from exc


_INSERT = ("INSERT INTO {history} (version, name, checksum, transactional, status, applied_by, "
           "execution_ms, batch, backup_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)")


def _apply_one(conn: Any, mf: MigrationFile, batch: int, backup_id: str, applied_by: str) -> int:
    started = time.monotonic()
    if mf.transactional:
        with _transaction(conn, mf, "up"):
            _run(conn, mf, "up", mf.up)
            ms = int((time.monotonic() - started) * 1000)
            _history_write(conn, mf, _INSERT, (mf.version, mf.name, mf.checksum, True, "applied", applied_by,
                                               ms, batch, backup_id))
        return ms
    _history_write(conn, mf, _INSERT, (mf.version, mf.name, mf.checksum, False, "running", applied_by,
                                       None, batch, backup_id))
    try:
        _run(conn, mf, "up", mf.up)
    except _StepFailed as failed:
        try:
            conn.execute(q("UPDATE {history} SET status = 'failed', error = %s WHERE version = %s"),
                         (str(failed), mf.version))
        except Exception:  # the connection may be gone; the row then stays 'running' (= interrupted)
            pass
        raise
    ms = int((time.monotonic() - started) * 1000)
    _history_write(conn, mf, "UPDATE {history} SET status = 'applied', execution_ms = %s WHERE version = %s",
                   (ms, mf.version))
    return ms


def _delete_history(conn: Any, mf: MigrationFile) -> None:
    _history_write(conn, mf, "DELETE FROM {history} WHERE version = %s", (mf.version,))


def _drop_history_if_empty(conn: Any, mf: MigrationFile) -> None:
    """No history rows left: drop the table too, so rolling back the first batch returns the
    database to exactly its state before (apply creates the table again)."""
    try:
        row = conn.execute(q("SELECT NOT EXISTS (SELECT 1 FROM {history})")).fetchone()
        if row and row[0]:
            conn.execute(q("DROP TABLE {history}"))
    except pg.Error as exc:
        raise _StepFailed(mf, "down", None, 0, exc, step="dropping the empty history table") from exc


def _run_downs(conn: Any, migrations: Sequence[MigrationFile]) -> None:
    """Down sections in the order given, each with its history row deleted; all in one transaction
    when every migration is transactional (all or nothing)."""
    if all(mf.transactional for mf in migrations):
        with _transaction(conn, migrations[-1], "down"):
            for mf in migrations:
                _run(conn, mf, "down", mf.down or ())
                _delete_history(conn, mf)
            _drop_history_if_empty(conn, migrations[-1])
        return
    for mf in migrations:
        with _transaction(conn, mf, "down", mf.transactional):
            _run(conn, mf, "down", mf.down or ())
            _delete_history(conn, mf)
    _drop_history_if_empty(conn, migrations[-1])


def _names(files: Sequence[MigrationFile]) -> str:
    return ", ".join(f.filename for f in files)


# ----- status ----------------------------------------------------------------------------------

def status(settings: Settings, runtime: Runtime) -> MigrationStatus:
    """Every migration file and history row: applied, pending, drifted, missing, failed, running."""
    files = discover(settings.migrations.directory)
    with connect(runtime) as conn:
        exists = history_exists(conn)
        history = read_history(conn)
        pid = lock_holder(conn)
    return compute_status(files, history, pid, exists)


def _refuse_unresolved(st: MigrationStatus, *, under_lock: bool) -> None:
    drifted = st.having("drifted")
    if drifted:
        raise DriftError(
            f"refusing to apply: {len(drifted)} applied migration(s) changed on disk since they were applied "
            f"({', '.join(f'{e.version}_{e.name}.sql' for e in drifted)}): restore the applied content "
            "(e.g. `git checkout -- migrations/<file>`) and put the change in a new migration "
            "(`invoke migrate.create NAME`)"
        )
    broken = st.having("failed", "running") if under_lock else st.having("failed")
    if broken:
        e = broken[0]
        raise MigrationError(
            f"refusing to apply: {e.version}_{e.name}.sql (batch {e.batch}) {e.state} part-way outside a "
            "transaction: return to its pre-migration backup with `invoke migrate.rollback --restore`, "
            f"or repair the database by hand and delete its row from {HISTORY_TABLE}"
        )


def _refuse_renamed(files: Sequence[MigrationFile], history: Sequence[HistoryRow]) -> None:
    """A pending file with exactly the content of an applied migration whose file is gone is that migration
    renamed (e.g. ``20261130_x.sql`` to ``20261130000000_x.sql``): applying it would run it a second time."""
    on_disk = {f.version for f in files}
    gone = {h.checksum: h for h in history if h.version not in on_disk and h.status == "applied"}
    applied = {h.version for h in history}
    for mf in files:
        h = gone.get(mf.checksum)
        if h is not None and mf.version not in applied:
            raise MigrationError(
                f"refusing to apply: {mf.filename} has exactly the content of {h.filename}, applied in batch "
                f"{h.batch} and no longer in the migrations folder, so it looks renamed and would run a second "
                f"time: give it back its applied name {h.filename} (or, if it is a new migration, change it)"
            )


def _select(files: Sequence[MigrationFile], st: MigrationStatus, path: str | None,
            settings: Settings) -> tuple[list[MigrationFile], str]:
    pending = {e.version for e in st.having("pending")}
    if not path:
        chosen = [f for f in files if f.version in pending]
        return chosen, "" if chosen else "nothing to do: every migration is applied"
    given = Path(path)
    directory = settings.migrations.directory.resolve()
    for base in (Path.cwd(), settings.root):
        candidate = given if given.is_absolute() else base / given
        if candidate.exists() and candidate.resolve().parent != directory:
            raise MigrationError(f"{path} is not in the migrations folder {settings.migrations.directory}: "
                                 "move it there (or create it with `invoke migrate.create NAME`)")
    match = [f for f in files if f.filename == given.name]
    guide = re.fullmatch(r"(\d{8})_([a-z0-9_]+)\.sql", given.name)
    if not match and guide:  # the guide's `migrations/20240618_add_new_feature.sql` for what `create` named
        named = [f for f in files if f.name == guide[2]]  # 20261130093015_add_new_feature.sql
        match = [f for f in named if f.version.startswith(guide[1])] or named
        if len(match) > 1:
            raise MigrationError(f"{given.name} could mean {', '.join(f.filename for f in match)}: "
                                 "give the full file name")
    if not match:
        raise MigrationError(f"no migration {given.name} in {settings.migrations.directory}: "
                             "`invoke migrate.status` lists the migrations")
    if match[0].version not in pending:
        return [], f"nothing to do: {given.name} is already applied"
    return match, ""


def _refuse_empty(targets: Sequence[MigrationFile]) -> None:
    for mf in targets:
        if not mf.up:
            raise MigrationError(f"migration {mf.filename} has an empty up section: write the change after "
                                 f"line {mf.up_range[0] - 1} (or delete the file)")


# ----- apply -----------------------------------------------------------------------------------

def apply_plan(settings: Settings, runtime: Runtime, *, path: str | None = None, strict: bool = False,
               report: Reporter) -> tuple[Plan, ApplyResult]:
    """What ``apply`` would do (lint and every refusal have run), as a plan to confirm."""
    dry = apply(settings, runtime, path=path, strict=strict, dry_run=True, report=report)
    env = settings.env
    steps = ["take a pre-migration backup", *(f"apply {name}" for name in dry.planned)]
    warnings = [f"squawk: {f.filename}:{f.line}: {f.rule}: {f.message}" for f in dry.findings]
    return Plan(f"applying {len(dry.planned)} migration(s) to {env.db_name}", env.name, env.protected, steps,
                [f"the schema of {env.db_name} changes ({', '.join(dry.planned)})"] if dry.planned else [],
                warnings, nothing_to_do="" if dry.planned else dry.message), dry


def apply(settings: Settings, runtime: Runtime, *, path: str | None = None, strict: bool = False,
          dry_run: bool = False, report: Reporter, covered_by: str | None = None) -> ApplyResult:
    """Apply every pending migration (or the one at ``path``) as one batch; see the module doc.
    ``covered_by``: the id of a backup taken just before under the same environment lock (an update's
    verified full backup); it stands in for the pre-migration backup, which is then not taken."""
    files = discover(settings.migrations.directory)
    with connect(runtime) as conn:
        holder = lock_holder(conn)  # before the history: an apply that starts in between holds the lock
        history = read_history(conn)
        st = compute_status(files, history, holder)
        server = conn.info.server_version
    _refuse_renamed(files, history)
    # a "running" row with nobody holding the migration lock was interrupted (kill -9, a crash): refused now,
    # as under the lock; while another apply holds it, this one waits for the lock and decides again there
    _refuse_unresolved(st, under_lock=holder is None)
    for e in st.having("missing"):
        report.warn(f"{e.version}_{e.name}.sql was applied (batch {e.batch}) but is not in the migrations folder")
    targets, nothing = _select(files, st, path, settings)
    late = {e.version for e in st.having("pending") if "out of order" in e.detail}
    for mf in targets:
        if mf.version in late:
            report.warn(f"{mf.filename} is older than the last applied migration: it runs out of order")
    if not targets:
        report.info(nothing)
        return ApplyResult([], [], [], None, None, dry_run, nothing)
    _refuse_empty(targets)
    planned = [f.filename for f in targets]
    report.step(f"linting {len(targets)} pending migration(s) with squawk")
    findings = lint(targets, cwd=settings.root, pg_version=f"{server // 10000}.{server % 100}")
    for f in findings:
        report.warn(f"{f.filename}:{f.line}:{f.column}: {f.rule}: {f.message}" + (f" ({f.help})" if f.help else ""))
    if findings and strict:
        first = findings[0]
        raise LintRefused(
            f"squawk found {len(findings)} problem(s) in the pending migrations (first: {first.filename} "
            f"line {first.line}, {first.rule}): fix them, or apply without --strict to accept them"
        )
    if not findings:
        report.info("squawk: no findings")
    if dry_run:
        return ApplyResult(planned, [], findings, None, None, True, f"dry run: would apply {', '.join(planned)}")

    with migration_lock(runtime, settings.migrations.lock_wait_seconds, report), \
            env_lock(settings.env.backups_dir, "migrate.apply"):
        b = _apply_locked(settings, runtime, files, targets, report, covered_by)
        if b.failure is not None and b.restore_reason is not None and b.backup_id is not None:
            # the restore ends every session of the database, this lock's idle one included
            b.undo = _undo_with_restore(settings, runtime, b.backup_id, b.restore_reason, report)
    if b.failure is None:
        message = b.nothing or f"applied {len(b.applied)} migration(s) as batch {b.batch}"
        return ApplyResult(planned, b.applied, findings, b.batch, b.backup_id, False, message)
    fail = b.failure
    line = f" at line {fail.line}" if fail.line else ""
    raise MigrationFailed(f"migration {fail.mf.filename} failed{line} ({fail.step}): {fail.reason}; {b.undo}",
                          filename=fail.mf.filename, line=fail.line, undo=b.undo)


@dataclass
class _Batch:
    applied: list[AppliedMigration] = field(default_factory=list)
    batch: int | None = None
    backup_id: str | None = None
    nothing: str = ""
    failure: _StepFailed | None = None
    undo: str = ""
    restore_reason: str | None = None


def _apply_locked(settings: Settings, runtime: Runtime, files: Sequence[MigrationFile],
                  targets: Sequence[MigrationFile], report: Reporter, covered_by: str | None = None) -> _Batch:
    """The part of apply that runs under the migration lock (history re-read, backup, DDL)."""
    b = _Batch()
    with connect(runtime) as conn:
        _set_timeouts(conn, settings)
        st = compute_status(files, read_history(conn))
        _refuse_unresolved(st, under_lock=True)
        pending = {e.version for e in st.having("pending")}
        targets = [f for f in targets if f.version in pending]
        if not targets:
            b.nothing = "nothing to do: another apply ran these migrations meanwhile"
            report.info(b.nothing)
            return b
        if covered_by is not None:
            b.backup_id = covered_by
            report.info(f"pre-migration backup skipped: {covered_by}, taken under this same lock, covers it")
        else:
            try:
                b.backup_id = take_pre_migration_backup(settings, runtime, report)
            except StackopsError as exc:
                raise MigrationError(f"the pre-migration backup failed, so no migration was applied: {exc}") from exc
        created_history = not history_exists(conn)
        conn.execute(HISTORY_DDL.encode())
        row = conn.execute(q("SELECT coalesce(max(batch), 0) + 1 FROM {history}")).fetchone()
        b.batch = int(row[0]) if row else 1
        applied_by = _applied_by()
        report.step(f"applying batch {b.batch}: {_names(targets)}")
        done: list[MigrationFile] = []
        for mf in targets:
            try:
                ms = _apply_one(conn, mf, b.batch, b.backup_id, applied_by)
            except _StepFailed as exc:
                b.failure = exc
                break
            done.append(mf)
            b.applied.append(AppliedMigration(mf.version, mf.name, mf.transactional, ms))
            report.info(f"applied {mf.filename} in {ms} ms" + ("" if mf.transactional else " (no transaction)"))
        if b.failure is not None:
            report.warn(f"migration failed: {b.failure}")
            b.undo, b.restore_reason = _undo_with_downs(conn, done, b.failure, created_history, report, b.backup_id)
    return b


def _undo_with_downs(conn: Any, done: Sequence[MigrationFile], failure: _StepFailed, created_history: bool,
                     report: Reporter, backup_id: str | None = None) -> tuple[str, str | None]:
    """Undo what the batch applied with down sections; (what happened, why a restore is needed). A down
    section puts the schema back, not the rows an up section deleted or rewrote: the message says where
    those are (the pre-migration backup)."""
    if not failure.mf.transactional:
        return "", f"{failure.mf.filename} ran outside a transaction"
    missing = [mf for mf in done if mf.down is None]
    if missing:
        return "", f"{_names(missing)} {'has' if len(missing) == 1 else 'have'} no down section"
    if not done:
        if created_history:
            try:
                _drop_history_if_empty(conn, failure.mf)
            except _StepFailed as exc:
                return "", f"cleaning up failed: {exc.reason}"
        report.info("nothing else of this batch had been applied")
        return "it ran in a transaction and was rolled back: the database is as before", None
    report.step(f"rolling the batch back: down sections of {_names(list(reversed(done)))}")
    try:
        _run_downs(conn, list(reversed(done)))
    except _StepFailed as exc:
        report.warn(f"down section failed: {exc}")
        return "", f"the down section failed at {exc.where}: {exc.reason}"
    where = (f"the pre-migration backup {backup_id} (`invoke restore.db {backup_id}` returns to it; retention keeps "
             "it for stackops.retention.pre_migration_days)" if backup_id else "no pre-migration backup")
    return (f"batch rolled back: reverted {_names(list(reversed(done)))} with their down sections: the schema is as "
            "before the batch, but rows an up section deleted or rewrote (a dropped column, an UPDATE) are not "
            f"brought back by a down section; they are in {where}"), None


def _undo_with_restore(settings: Settings, runtime: Runtime, backup_id: str, reason: str, report: Reporter) -> str:
    try:
        kept = restore_pre_migration_backup(settings, runtime, backup_id, report)
    except (StackopsError, OSError) as exc:
        return (f"AUTOMATIC ROLLBACK FAILED: {reason}, and restoring the pre-migration backup {backup_id} "
                f"failed too ({exc}): restore it with `invoke migrate.rollback --restore`")
    return (f"batch rolled back: {reason}, so the pre-migration backup {backup_id} was restored; "
            f"the database is as before the batch; {_changed_note(settings, runtime, backup_id, kept)}")


def _changed_note(settings: Settings, runtime: Runtime, backup_id: str, kept: str | None) -> str:
    """Which tables of the replaced database differ from the backup: rows the app wrote meanwhile are there."""
    from stackops.backupset import find_backup
    from stackops.restore import changed_since_backup

    if kept is None:
        return "there was no database to keep"
    try:
        changed = changed_since_backup(runtime, kept, find_backup(settings, backup_id).manifest["row_counts"])
    except (StackopsError, OSError) as exc:
        return f"the replaced database is kept as {kept} (comparing it with the backup failed: {exc})"
    counts_only = ("row counts only: an UPDATE, or a DELETE and an INSERT, made meanwhile is not seen; compare "
                   f"with {kept} before dropping it")
    if not changed:
        return f"no table's row count changed since the backup ({counts_only}); the replaced database is kept as {kept}"
    return (f"tables changed since the backup (rows written meanwhile are only in the kept copy {kept}): "
            f"{', '.join(changed)} ({counts_only}); copy what is needed from {kept}, then drop it with "
            f"`invoke restore.drop-previous {kept}`")


# ----- rollback --------------------------------------------------------------------------------

def _last_batch(history: Sequence[HistoryRow]) -> tuple[int, list[HistoryRow]]:
    batch = max(h.batch for h in history)
    return batch, sorted((h for h in history if h.batch == batch), key=lambda h: h.seq, reverse=True)


def _down_plan(rows: Sequence[HistoryRow], files: dict[str, MigrationFile]) -> tuple[list[MigrationFile], list[str]]:
    plan: list[MigrationFile] = []
    problems: list[str] = []
    for h in rows:
        mf = files.get(h.version)
        if h.status != "applied":
            problems.append(f"{h.filename} {h.status} part-way outside a transaction")
        elif mf is None:
            problems.append(f"{h.filename} is not in the migrations folder")
        elif mf.checksum != h.checksum:
            problems.append(f"{h.filename} changed since it was applied")
        elif mf.down is None:
            problems.append(f"{h.filename} has no down section")
        else:
            plan.append(mf)
    return plan, problems


def rollback_plan(settings: Settings, runtime: Runtime, *, restore: bool = False,
                  report: Reporter) -> tuple[Plan, RollbackResult]:
    """What ``rollback`` would do (every check it runs first has run), as a plan to confirm."""
    dry = rollback(settings, runtime, restore=restore, dry_run=True, report=report)
    env = settings.env
    if dry.method == "none":
        return Plan("rolling back migrations", env.name, env.protected, nothing_to_do=dry.message), dry
    if dry.method == "restore":
        steps = [f"restore the pre-migration backup {dry.backup_id} of batch {dry.batch}"]
        destroys = [f"every change written to {env.db_name} since batch {dry.batch} (the database is kept aside)"]
    else:
        steps = ["take a safety backup", *(f"run the down section of {m}" for m in dry.migrations)]
        destroys = [f"what {m} created (tables, columns and their data)" for m in dry.migrations]
    return Plan(f"rolling back migration batch {dry.batch} of {env.db_name}", env.name, env.protected,
                steps, destroys, list(dry.warnings)), dry


def rollback(settings: Settings, runtime: Runtime, *, restore: bool = False, dry_run: bool = False,
             report: Reporter) -> RollbackResult:
    """Revert the last applied batch: its down sections in reverse applied order (after a safety
    backup), or with ``restore`` its pre-migration backup (everything written since is lost).
    Confirmation in a protected environment is the caller's (the cli's plan flow)."""
    with connect(runtime) as conn:
        history = read_history(conn)
    if not history:
        report.info("nothing to roll back: no migration has been applied")
        return RollbackResult(None, "none", [], None, dry_run, "nothing to roll back: no migration has been applied")
    batch, rows = _last_batch(history)
    names = [h.filename for h in rows]
    if restore:
        return _rollback_restore(settings, runtime, batch, rows, dry_run, report)
    files = {f.version: f for f in discover(settings.migrations.directory)}
    plan, problems = _down_plan(rows, files)
    if problems:
        backup = rows[0].backup_id
        raise MigrationError(
            f"cannot roll back batch {batch} with down sections: {'; '.join(problems)}: restore its pre-migration "
            f"backup {backup} instead with `invoke migrate.rollback --restore`"
        )
    report.step(f"rollback plan for batch {batch}: down sections of {', '.join(names)}")
    if dry_run:
        return RollbackResult(batch, "down", names, None, True, f"dry run: would revert {', '.join(names)}")
    with migration_lock(runtime, settings.migrations.lock_wait_seconds, report), \
            env_lock(settings.env.backups_dir, "migrate.rollback"), connect(runtime) as conn:
        _set_timeouts(conn, settings)
        again = read_history(conn)
        if not again or _last_batch(again)[1] != rows:
            raise MigrationError("the migration history changed while waiting for the lock: "
                                 "run `invoke migrate.status` and try again")
        safety = take_pre_migration_backup(settings, runtime, report)
        report.step(f"reverting batch {batch}")
        try:
            _run_downs(conn, plan)
        except _StepFailed as exc:
            raise MigrationError(
                f"rollback of batch {batch} failed at {exc.where}: {exc.reason}: "
                + ("nothing was changed (one transaction)" if all(m.transactional for m in plan) else
                   f"it stopped part-way; the backup {safety} taken just before holds the prior state")
            ) from None
        left = {h.version for h in read_history(conn)}
    if left & {h.version for h in rows}:
        raise MigrationError(f"rollback of batch {batch} did not remove its history rows: check the database "
                             f"(backup {safety} holds the state before the rollback)")
    for n in names:
        report.info(f"reverted {n}")
    return RollbackResult(batch, "down", names, safety, False,
                          f"rolled back batch {batch}: reverted {', '.join(names)} (safety backup {safety})")


def _rollback_restore(settings: Settings, runtime: Runtime, batch: int, rows: Sequence[HistoryRow], dry_run: bool,
                      report: Reporter) -> RollbackResult:
    names = [h.filename for h in rows]
    backups = {h.backup_id for h in rows}
    if len(backups) != 1 or None in backups:
        raise MigrationError(f"batch {batch} has no single pre-migration backup recorded ({backups}): "
                             "restore a backup by hand")
    backup_id = str(next(iter(backups)))
    since = min(h.applied_at for h in rows).isoformat(timespec="seconds")
    warning = (
        f"restoring backup {backup_id} returns database {settings.env.db_name} to its state before batch {batch} "
        f"(applied {since}): every change written since then is lost, data as well as schema (rows added, "
        "changed or deleted by users after that time); files uploaded since stay in the uploads folder "
        f"without their rows; the current database is kept as {settings.env.db_name}_pre_restore_<timestamp>"
    )
    report.warn(warning)
    if dry_run:
        return RollbackResult(batch, "restore", names, backup_id, True,
                              f"dry run: would restore backup {backup_id}", [warning])
    with migration_lock(runtime, settings.migrations.lock_wait_seconds, report):
        with connect(runtime) as conn:
            again = read_history(conn)
        if not again or _last_batch(again)[1] != list(rows):
            raise MigrationError("the migration history changed while waiting for the lock: "
                                 "run `invoke migrate.status` and try again")
        restore_pre_migration_backup(settings, runtime, backup_id, report)
    with connect(runtime) as conn:
        left = {h.version for h in read_history(conn)}
    if left & {h.version for h in rows}:
        raise MigrationError(f"backup {backup_id} still records batch {batch}'s migrations: it is not the "
                             "pre-migration backup of that batch; check the database")
    return RollbackResult(batch, "restore", names, backup_id, False,
                          f"rolled back batch {batch} by restoring backup {backup_id}", [warning])
