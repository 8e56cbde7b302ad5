"""Restore and verify: load beside the live database, check, then swap in one step.

Nothing live is touched before the backup's files and manifest have been checked and the copy
has loaded and matched the manifest's row counts. The database that was live is kept as
``<name>_pre_restore_<timestamp>`` (uploads likewise), so a wrong restore can itself be undone.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stackops.backup import (
    VERIFICATION,
    BackupCorrupt,
    BackupError,
    BackupNotFound,
    BackupSet,
    VersionMismatch,
    check_files,
    client_version,
    decompressor,
    find_backup,
    table_counts,
)
from stackops.config import Settings
from stackops.errors import CommandFailed, StackopsError
from stackops.files import atomic_write
from stackops.lock import env_lock
from stackops.proc import Cmd, pipeline, run
from stackops.report import Reporter
from stackops.runtime import Runtime

PRE_RESTORE = "_pre_restore_"


class RestoreError(StackopsError):
    """The copy did not load or did not match; the live data was left as it was."""


@dataclass(frozen=True)
class RestoreResult:
    source: str
    database: str
    previous_database: str | None
    uploads_dir: str | None
    previous_uploads: str | None
    row_counts: dict[str, int]
    seconds: float


@dataclass(frozen=True)
class VerifyResult:
    backup_id: str
    ok: bool
    verified_at: str
    restore_seconds: float
    detail: str


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S")


def _side_name(db: str, tag: str) -> str:
    return f"{db[:40]}_{tag}_{_stamp()}"


def _admin(runtime: Runtime) -> Any:
    import psycopg

    return psycopg.connect(**runtime.conninfo("postgres"), autocommit=True)


def _create_db(runtime: Runtime, name: str) -> None:
    from psycopg import sql

    with _admin(runtime) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'").format(sql.Identifier(name)))


def drop_database(runtime: Runtime, name: str) -> None:
    from psycopg import sql

    with _admin(runtime) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _disk_versions(settings: Settings) -> list[str]:
    folder = settings.migrations.directory
    if not folder.is_dir():
        return []
    from stackops.migrate.files import FILE_RE

    return sorted(m["version"].ljust(14, "0") for f in folder.iterdir() if (m := FILE_RE.match(f.name)))


def _check_gzip(path: Path) -> None:
    """A guide-format ``*.sql.gz`` must be a whole gzip stream before anything is touched."""
    if run(Cmd(["gzip", "-t", str(path)]), check=False).returncode != 0:
        raise BackupCorrupt(f"{path} is not a valid gzip file (truncated or damaged); nothing was touched")


def _preflight(settings: Settings, runtime: Runtime, backup: BackupSet, report: Reporter,
               check_head: bool = True) -> None:
    """Everything that can refuse the restore, checked before anything is created or touched."""

    check_files(backup, report)
    m = backup.manifest
    with _admin(runtime) as conn:
        server_major = conn.info.server_version // 10000
    if int(m["server_major"]) > server_major:
        raise VersionMismatch(
            f"backup {backup.id} was taken from PostgreSQL {m['server_major']} but {settings.env.name} runs "
            f"PostgreSQL {server_major}: a dump cannot be loaded into an older server; restore it on "
            f"PostgreSQL {m['server_major']} or newer"
        )
    client_version(runtime, "pg_restore", server_major)
    head = m.get("migration_head")
    if head and check_head:
        versions = _disk_versions(settings)
        newest = versions[-1] if versions else None
        if newest is None or str(head).ljust(14, "0") > newest:
            raise VersionMismatch(
                f"backup {backup.id} has migration head {head} but the newest migration on disk is {newest}: "
                "this checkout is older than the backup; update the code (migrations/) first"
            )


def _load_archive(settings: Settings, runtime: Runtime, backup: BackupSet, target: str, report: Reporter) -> None:
    dump = backup.file("database")
    if dump is None:
        raise BackupCorrupt(f"backup {backup.id} has no database archive")
    glob = backup.file("globals")
    if glob is not None:  # roles the dump's owners need; existing ones only produce ignored errors
        run(runtime.pg_cmd("psql").with_args("-X", "-q", "-d", "postgres", "-f", "-"), input=glob.read_bytes(),
            check=False)
    report.step(f"loading {backup.id} into {target}")
    started = time.monotonic()
    restore = runtime.pg_cmd("pg_restore").with_args("--exit-on-error", "--no-password", "--dbname", target)
    pipeline([decompressor(backup.manifest["compression"], dump), restore])
    report.info(f"loaded in {time.monotonic() - started:.1f}s")


def _compare_counts(runtime: Runtime, db: str, expected: dict[str, int]) -> dict[str, int]:
    import psycopg

    with psycopg.connect(**runtime.conninfo(db)) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        got = table_counts(conn)
    wrong = [f"{t}: {got.get(t)} rows, backup had {n}" for t, n in expected.items() if got.get(t) != n]
    if wrong:
        raise RestoreError(f"the restored copy does not match the backup's row counts ({'; '.join(wrong[:3])})")
    return got


def _swap_database(runtime: Runtime, live: str, new: str, report: Reporter) -> str | None:
    """Rename live -> live_pre_restore_<ts> and new -> live in one transaction."""
    import psycopg
    from psycopg import sql

    previous = _side_name(live, PRE_RESTORE.strip("_"))
    with _admin(runtime) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (live,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(new), sql.Identifier(live)))
            return None
        conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(live)))
        try:
            for attempt in range(20):
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE datname = %s AND pid <> pg_backend_pid()", (live,))
                try:
                    with conn.transaction():
                        conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                            sql.Identifier(live), sql.Identifier(previous)))
                        conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                            sql.Identifier(new), sql.Identifier(live)))
                    break
                except psycopg.errors.ObjectInUse:
                    if attempt == 19:
                        raise RestoreError(f"database {live} kept being used by other sessions; stop the "
                                           "application and retry (the live database is unchanged)") from None
                    time.sleep(0.1)
        finally:
            current = previous if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                               (previous,)).fetchone() else live
            conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(sql.Identifier(current)))
    report.info(f"swapped in the restored database; the previous one is kept as {previous}")
    return previous


def _stage_uploads(settings: Settings, backup: BackupSet, report: Reporter) -> Path:
    """Unpack the backup's uploads beside the live folder (same filesystem), checked against the manifest."""
    archive = backup.file("uploads")
    assert archive is not None
    live = settings.env.uploads_dir
    live.parent.mkdir(parents=True, exist_ok=True)
    staging = live.with_name(f"{live.name}.restoring-{_stamp()}")
    staging.mkdir(mode=0o755)
    try:
        pipeline([decompressor(backup.manifest["compression"], archive),
                  Cmd(["tar", "-C", str(staging), "--numeric-owner", "-xf", "-"])])
        files = sum(len(f) for _, _, f in os.walk(staging))
        expected = (backup.manifest.get("uploads") or {}).get("files")
        if expected is not None and files != expected:
            raise RestoreError(f"the uploads archive holds {files} files, the manifest says {expected}")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    report.info(f"unpacked {files} upload files beside {live.name}")
    return staging


def _swap_uploads(settings: Settings, runtime: Runtime, staging: Path, report: Reporter) -> str | None:
    """Rename live -> live_pre_restore_<ts> and staging -> live; returns the kept previous folder."""
    live = settings.env.uploads_dir
    previous = live.with_name(f"{live.name}{PRE_RESTORE}{_stamp()}") if live.exists() else None
    if previous is not None:
        live.rename(previous)
    try:
        staging.rename(live)
    except BaseException:
        if previous is not None:
            previous.rename(live)
        raise
    finally:
        runtime.uploads_replaced(report)  # bind mounts follow the folder they were given, not its name
    report.info(f"swapped in the restored uploads folder; the previous one is kept as {previous}")
    return str(previous) if previous else None


def restore_plan(settings: Settings, runtime: Runtime, ref: str, *, report: Reporter,
                 uploads: bool = False) -> list[str]:
    """What a restore would do, after running every check it would run first (nothing is touched)."""
    live = settings.env.db_name
    if ref.endswith(".sql.gz") and Path(ref).is_file():
        _check_gzip(Path(ref))
        source = ref
    else:
        backup = find_backup(settings, ref)
        _preflight(settings, runtime, backup, report)
        source = backup.id
    steps = [f"load {source} into a new database beside {live} and check its row counts",
             f"swap it in; keep the current {live} as {live[:40]}{PRE_RESTORE}<timestamp>"]
    if uploads:
        steps.append(f"unpack the uploads beside {settings.env.uploads_dir}, swap them in, keep the current "
                     f"folder as {settings.env.uploads_dir.name}{PRE_RESTORE}<timestamp>")
    return steps


def restore_database(settings: Settings, runtime: Runtime, ref: str, *, report: Reporter,
                     uploads: bool = False) -> RestoreResult:
    """Restore a backup set (or a guide-format ``*.sql.gz``) over the environment's database,
    and with ``uploads`` its uploads folder too. Confirmation for protected environments is the
    caller's job (tasks ask for it)."""
    started = time.monotonic()
    live = settings.env.db_name
    with env_lock(settings.env.backups_dir, "restore"):
        if ref.endswith(".sql.gz") and Path(ref).is_file():
            if uploads:
                raise BackupError(f"{ref} is a database-only dump: use `invoke restore.db {ref}`")
            return _restore_plain(settings, runtime, Path(ref), report, started)
        backup = find_backup(settings, ref)
        if uploads and backup.file("uploads") is None:
            raise BackupError(f"backup {backup.id} is a {backup.kind} backup without uploads: use "
                              f"`invoke restore.db {backup.id}` or pick a full backup")
        _preflight(settings, runtime, backup, report)
        target = _side_name(live, "restore")
        _create_db(runtime, target)
        staging = None
        try:
            _load_archive(settings, runtime, backup, target, report)
            counts = _compare_counts(runtime, target, backup.manifest["row_counts"])
            report.info(f"row counts match the backup for {len(counts)} tables")
            if uploads:  # staged before anything live is swapped, so rows and files change together
                staging = _stage_uploads(settings, backup, report)
        except BaseException as exc:
            drop_database(runtime, target)
            if isinstance(exc, CommandFailed):
                raise RestoreError(f"loading {backup.id} failed, the live database {live} is unchanged: "
                                   f"{exc}") from exc
            raise
        try:
            previous = _swap_database(runtime, live, target, report)
        except BaseException:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            drop_database(runtime, target)
            raise
        up_prev = _swap_uploads(settings, runtime, staging, report) if staging is not None else None
        return RestoreResult(backup.id, live, previous, str(settings.env.uploads_dir) if staging else None,
                             up_prev, counts, round(time.monotonic() - started, 3))


def _restore_plain(settings: Settings, runtime: Runtime, path: Path, report: Reporter,
                   started: float) -> RestoreResult:
    """The old shell script's ``database_backup_*.sql.gz``: plain SQL, gzip-checked, loaded beside."""
    _check_gzip(path)
    live = settings.env.db_name
    target = _side_name(live, "restore")
    _create_db(runtime, target)
    try:
        report.step(f"loading plain SQL dump {path.name} into {target}")
        psql = runtime.pg_cmd("psql").with_args("-X", "-q", "-v", "ON_ERROR_STOP=1", "--no-password",
                                                 "-d", target, "-f", "-")
        pipeline([Cmd(["gzip", "-dc", str(path)]), psql])
        import psycopg

        with psycopg.connect(**runtime.conninfo(target)) as conn:
            counts = table_counts(conn)
    except BaseException as exc:
        drop_database(runtime, target)
        if isinstance(exc, CommandFailed):
            raise RestoreError(f"loading {path.name} failed, the live database {live} is unchanged: {exc}") from exc
        raise
    previous = _swap_database(runtime, live, target, report)
    return RestoreResult(str(path), live, previous, None, None, counts, round(time.monotonic() - started, 3))


def previous_copies(settings: Settings, runtime: Runtime) -> list[dict[str, Any]]:
    """Databases and uploads folders kept by earlier restores (newest first)."""

    live = settings.env.db_name
    with _admin(runtime) as conn:
        rows = conn.execute(
            "SELECT datname, pg_database_size(datname) FROM pg_database WHERE datname LIKE %s ORDER BY 1 DESC",
            (f"{live[:40]}{PRE_RESTORE}%",),
        ).fetchall()
    out: list[dict[str, Any]] = [{"kind": "database", "name": n, "size": s} for n, s in rows]
    up = settings.env.uploads_dir
    if up.parent.is_dir():
        for p in sorted(up.parent.glob(f"{up.name}{PRE_RESTORE}*"), reverse=True):
            out.append({"kind": "uploads", "name": str(p), "size": None})
    return out


def drop_previous(settings: Settings, runtime: Runtime, name: str, report: Reporter) -> None:
    """Remove one copy listed by previous_copies (refuses anything else)."""
    known = {c["name"]: c for c in previous_copies(settings, runtime)}
    if name not in known:
        raise BackupNotFound(f"{name!r} is not a copy kept by a restore: see `invoke restore.previous`")
    if known[name]["kind"] == "database":
        drop_database(runtime, name)
    else:
        shutil.rmtree(name)
    report.step(f"removed {name}")


def verify_backup(settings: Settings, runtime: Runtime, ref: str, *, report: Reporter) -> VerifyResult:
    """Restore into a scratch database, compare row counts, run amcheck, drop it, record the result."""
    import psycopg

    with env_lock(settings.env.backups_dir, "verify"):
        try:
            backup = find_backup(settings, ref)
        except BackupCorrupt as exc:  # a damaged manifest: record the failure next to it, then report it
            folder = settings.env.backups_dir / ref
            if folder.is_dir():
                result = VerifyResult(folder.name, False, datetime.now(UTC).isoformat(), 0.0, str(exc))
                atomic_write(folder / VERIFICATION, json.dumps(result.__dict__, indent=2).encode())
                report.step(f"verify {folder.name}: FAILED: {exc}")
                return result
            raise
        started = time.monotonic()
        scratch = _side_name(settings.env.db_name, "verify")
        ok, detail = True, ""
        try:
            _preflight(settings, runtime, backup, report, check_head=False)
            _create_db(runtime, scratch)
            _load_archive(settings, runtime, backup, scratch, report)
            counts = _compare_counts(runtime, scratch, backup.manifest["row_counts"])
            with psycopg.connect(**runtime.conninfo(scratch), autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
                indexes = conn.execute(
                    "SELECT c.oid::regclass::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                    "JOIN pg_am a ON a.oid = c.relam JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE a.amname = 'btree' AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
                    "AND n.nspname NOT LIKE 'pg_toast%'"
                ).fetchall()
                for (index,) in indexes:
                    conn.execute("SELECT bt_index_check(%s::regclass, true)", (index,))
            detail = f"{len(counts)} tables match the manifest's row counts; amcheck passed on {len(indexes)} indexes"
        except (StackopsError, psycopg.Error) as exc:
            ok, detail = False, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        finally:
            drop_database(runtime, scratch)
        seconds = round(time.monotonic() - started, 3)
        result = VerifyResult(backup.id, ok, datetime.now(UTC).isoformat(), seconds, detail)
        atomic_write(backup.path / VERIFICATION, json.dumps(result.__dict__, indent=2).encode())
        report.step(f"verify {backup.id}: {'OK' if ok else 'FAILED'} in {seconds}s: {detail}")
        return result
