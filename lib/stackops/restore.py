"""Restore: load beside the live database, check, then swap in one step.

Nothing live is touched before the backup's files and manifest have been checked and the copy
has loaded and matched the manifest's row counts. The database that was live is kept as
``<name>_pre_restore_<timestamp>`` (uploads likewise), so a wrong restore can itself be undone.

``preflight``, ``load_archive`` and ``compare_counts`` are also what ``verify`` runs into its
scratch database. ``restore_plan`` returns the plan the cli confirms; ``restore_database`` acts.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stackops import pg
from stackops.backupset import BackupSet, check_files, decompressor, find_backup
from stackops.config import Settings
from stackops.errors import BackupCorrupt, BackupError, BackupNotFound, CommandFailed, RestoreError, VersionMismatch
from stackops.lock import env_lock
from stackops.proc import Cmd, pipeline, run
from stackops.report import Plan, Reporter
from stackops.runtime.base import Runtime

PRE_RESTORE = "_pre_restore_"
NAME_ROOM = 30  # side names: 30 + "_pre_restore_" + 14-digit time + "_" + 4 hex = 62 < 63 (PostgreSQL's limit)


@dataclass(frozen=True)
class RestoreResult:
    source: str
    database: str
    previous_database: str | None
    uploads_dir: str | None
    previous_uploads: str | None
    row_counts: dict[str, int]
    seconds: float


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S")


def side_name(db: str, tag: str) -> str:
    """A database name beside ``db`` that no other restore or verify can take, even in the same second."""
    return f"{db[:NAME_ROOM]}_{tag}_{_stamp()}_{secrets.token_hex(2)}"


def kept_prefix(db: str) -> str:
    return f"{db[:NAME_ROOM]}{PRE_RESTORE}"


def is_plain_dump(ref: str) -> bool:
    """The guide's ``database_backup_*.sql.gz``: an explicitly given file, read and never written."""
    return ref.endswith(".sql.gz") and Path(ref).is_file()


def _check_gzip(path: Path) -> None:
    """A guide-format ``*.sql.gz`` must be a whole gzip stream before anything is touched."""
    if run(Cmd(["gzip", "-t", str(path)]), check=False).returncode != 0:
        raise BackupCorrupt(f"{path} is not a valid gzip file (truncated or damaged); nothing was touched")


def preflight(settings: Settings, runtime: Runtime, backup: BackupSet, report: Reporter,
              newest_migration: str | None = None) -> None:
    """Everything that can refuse loading ``backup``, checked before anything is created or touched:
    files and checksums, server and client versions, and (given the newest migration version on
    disk) a backup whose schema is newer than this checkout."""
    check_files(backup, report)
    m = backup.manifest
    with pg.admin(runtime) as conn:
        server = pg.server_major(conn)
    if int(m["server_major"]) > server:
        raise VersionMismatch(
            f"backup {backup.id} was taken from PostgreSQL {m['server_major']} but {settings.env.name} runs "
            f"PostgreSQL {server}: a dump cannot be loaded into an older server; restore it on "
            f"PostgreSQL {m['server_major']} or newer"
        )
    pg.client_version(runtime.pg_cmd("pg_restore"), server)
    head = m.get("migration_head")
    if head and newest_migration is not None and str(head).ljust(14, "0") > newest_migration.ljust(14, "0"):
        raise VersionMismatch(
            f"backup {backup.id} has migration head {head} but the newest migration on disk is "
            f"{newest_migration or 'none'}: this checkout is older than the backup; update the code "
            "(migrations/) first"
        )


def load_archive(runtime: Runtime, backup: BackupSet, target: str, report: Reporter) -> None:
    """pg_restore the set's database archive into the existing empty database ``target``."""
    dump = backup.file("database")
    if dump is None:
        raise BackupCorrupt(f"backup {backup.id} has no database archive")
    glob = backup.file("globals")
    if glob is not None:  # roles the dump's owners need; existing ones only produce ignored errors
        run(runtime.pg_cmd("psql").with_args("-X", "-q", "-d", pg.MAINTENANCE_DB, "-f", "-"),
            input=glob.read_bytes(), check=False)
    report.step(f"loading {backup.id} into {target}")
    started = time.monotonic()
    restore = runtime.pg_cmd("pg_restore").with_args("--exit-on-error", "--no-password", "--dbname", target)
    pipeline([decompressor(backup.compression, dump), restore])
    report.info(f"loaded in {time.monotonic() - started:.1f}s")


def compare_counts(runtime: Runtime, db: str, expected: dict[str, int]) -> dict[str, int]:
    """Exact row counts of ``db``; RestoreError when they differ from ``expected``."""
    with pg.connect(runtime, db) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        got = pg.table_counts(conn)
    wrong = [f"{t}: {got.get(t)} rows, backup had {n}" for t, n in expected.items() if got.get(t) != n]
    if wrong:
        raise RestoreError(f"the restored copy does not match the backup's row counts ({'; '.join(wrong[:3])})")
    return got


def _swap_database(runtime: Runtime, live: str, new: str, report: Reporter) -> str | None:
    """Rename live -> live_pre_restore_<ts> and new -> live in one transaction."""
    previous = side_name(live, PRE_RESTORE.strip("_"))
    with pg.admin(runtime) as conn:
        if not pg.database_exists(conn, live):
            pg.rename_database(conn, new, live)
            return None
        pg.allow_connections(conn, live, False)
        try:
            for attempt in range(20):
                pg.terminate_sessions(conn, live)
                try:
                    with conn.transaction():
                        pg.rename_database(conn, live, previous)
                        pg.rename_database(conn, new, live)
                    break
                except pg.errors.ObjectInUse:
                    if attempt == 19:
                        raise RestoreError(f"database {live} kept being used by other sessions; stop the "
                                           "application and retry (the live database is unchanged)") from None
                    time.sleep(0.1)
        finally:
            current = previous if pg.database_exists(conn, previous) else live
            pg.allow_connections(conn, current, True)
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
        pipeline([decompressor(backup.compression, archive),
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


def _source(settings: Settings, ref: str, uploads: bool) -> BackupSet | Path:
    """The backup set ``ref`` names, or the guide-format dump file it is; refused when ``uploads`` are
    asked of something that holds none."""
    if is_plain_dump(ref):
        if uploads:
            raise BackupError(f"{ref} is a database-only dump: use `invoke restore.db {ref}`")
        return Path(ref)
    backup = find_backup(settings, ref)
    if uploads and backup.file("uploads") is None:
        raise BackupError(f"backup {backup.id} is a {backup.kind} backup without uploads: use "
                          f"`invoke restore.db {backup.id}` or pick a full backup")
    return backup


def restore_plan(settings: Settings, runtime: Runtime, ref: str, *, report: Reporter, uploads: bool = False,
                 newest_migration: str | None = None) -> Plan:
    """What a restore would do, after running every check it would run first (nothing is touched)."""
    env = settings.env
    live = env.db_name
    found = _source(settings, ref, uploads)
    if isinstance(found, Path):
        _check_gzip(found)
        source = ref
    else:
        preflight(settings, runtime, found, report, newest_migration)
        source = found.id
    what = f"{live}{' and its uploads' if uploads else ''}"
    steps = [f"load {source} into a new database beside {live} and check its row counts",
             f"swap it in; keep the current {live} as {kept_prefix(live)}<timestamp>"]
    destroys = [f"the live database {live} is replaced (kept as {kept_prefix(live)}<timestamp>)"]
    if uploads:
        steps.append(f"unpack the uploads beside {env.uploads_dir}, swap them in, keep the current "
                     f"folder as {env.uploads_dir.name}{PRE_RESTORE}<timestamp>")
        destroys.append(f"the uploads folder {env.uploads_dir} is replaced (kept beside it)")
    return Plan(f"restoring {source} over {what}", env.name, env.protected, steps, destroys)


def restore_database(settings: Settings, runtime: Runtime, ref: str, *, report: Reporter,
                     uploads: bool = False, newest_migration: str | None = None) -> RestoreResult:
    """Restore a backup set (or a guide-format ``*.sql.gz``) over the environment's database,
    and with ``uploads`` its uploads folder too. Confirmation is the caller's (the cli's plan flow)."""
    started = time.monotonic()
    live = settings.env.db_name
    with env_lock(settings.env.backups_dir, "restore"):
        backup = _source(settings, ref, uploads)
        if isinstance(backup, Path):
            return _restore_plain(settings, runtime, backup, report, started)
        preflight(settings, runtime, backup, report, newest_migration)
        target = side_name(live, "restore")
        pg.create_database(runtime, target)
        staging = None
        try:
            load_archive(runtime, backup, target, report)
            counts = compare_counts(runtime, target, backup.manifest["row_counts"])
            report.info(f"row counts match the backup for {len(counts)} tables")
            if uploads:  # staged before anything live is swapped, so rows and files change together
                staging = _stage_uploads(settings, backup, report)
        except BaseException as exc:
            pg.drop_database(runtime, target)
            if isinstance(exc, CommandFailed):
                raise RestoreError(f"loading {backup.id} failed, the live database {live} is unchanged: "
                                   f"{exc}") from exc
            raise
        try:
            previous = _swap_database(runtime, live, target, report)
        except BaseException:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            pg.drop_database(runtime, target)
            raise
        up_prev = _swap_uploads(settings, runtime, staging, report) if staging is not None else None
        return RestoreResult(backup.id, live, previous, str(settings.env.uploads_dir) if staging else None,
                             up_prev, counts, round(time.monotonic() - started, 3))


def _restore_plain(settings: Settings, runtime: Runtime, path: Path, report: Reporter,
                   started: float) -> RestoreResult:
    """The old shell script's ``database_backup_*.sql.gz``: plain SQL, gzip-checked, loaded beside."""
    _check_gzip(path)
    live = settings.env.db_name
    target = side_name(live, "restore")
    pg.create_database(runtime, target)
    try:
        report.step(f"loading plain SQL dump {path.name} into {target}")
        psql = runtime.pg_cmd("psql").with_args("-X", "-q", "-v", "ON_ERROR_STOP=1", "--no-password",
                                                 "-d", target, "-f", "-")
        pipeline([Cmd(["gzip", "-dc", str(path)]), psql])
        with pg.connect(runtime, target) as conn:
            counts = pg.table_counts(conn)
    except BaseException as exc:
        pg.drop_database(runtime, target)
        if isinstance(exc, CommandFailed):
            raise RestoreError(f"loading {path.name} failed, the live database {live} is unchanged: {exc}") from exc
        raise
    previous = _swap_database(runtime, live, target, report)
    return RestoreResult(str(path), live, previous, None, None, counts, round(time.monotonic() - started, 3))


# ----- copies kept by earlier restores ---------------------------------------------------------
def previous_copies(settings: Settings, runtime: Runtime) -> list[dict[str, Any]]:
    """Databases and uploads folders kept by earlier restores (newest first)."""
    live = settings.env.db_name
    out: list[dict[str, Any]] = [{"kind": "database", "name": n, "size": s}
                                 for n, s, _ in pg.databases_like(runtime, kept_prefix(live))]
    up = settings.env.uploads_dir
    if up.parent.is_dir():
        for p in sorted(up.parent.glob(f"{up.name}{PRE_RESTORE}*"), reverse=True):
            out.append({"kind": "uploads", "name": str(p), "size": None})
    return out


def drop_previous_plan(settings: Settings, runtime: Runtime, name: str) -> Plan:
    known = {c["name"]: c for c in previous_copies(settings, runtime)}
    if name not in known:
        raise BackupNotFound(f"{name!r} is not a copy kept by a restore: see `invoke restore.previous`")
    env = settings.env
    return Plan(f"removing {name}", env.name, env.protected, [f"remove the {known[name]['kind']} {name}"],
                [f"{name}: a copy an earlier restore kept (it cannot be brought back)"])


def drop_previous(settings: Settings, runtime: Runtime, name: str, report: Reporter) -> None:
    """Remove one copy listed by previous_copies (refuses anything else)."""
    known = {c["name"]: c for c in previous_copies(settings, runtime)}
    if name not in known:
        raise BackupNotFound(f"{name!r} is not a copy kept by a restore: see `invoke restore.previous`")
    if known[name]["kind"] == "database":
        pg.drop_database(runtime, name)
    else:
        shutil.rmtree(name)
    report.step(f"removed {name}")
