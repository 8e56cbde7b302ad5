"""Verify a backup: restore it into a scratch database, compare its row counts with the manifest,
run amcheck on its indexes, drop it, and record the result beside the backup."""

from __future__ import annotations

import errno
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from stackops import backupset, pg, space
from stackops.config import Settings
from stackops.errors import BackupCorrupt, DatabaseUnavailable, ServiceError, StackopsError, StorageFull
from stackops.files import free_space
from stackops.lock import env_lock
from stackops.report import Reporter
from stackops.restore import compare_counts, load_archive, preflight, side_name
from stackops.runtime.base import Runtime


@dataclass(frozen=True)
class VerifyResult:
    backup_id: str
    ok: bool
    verified_at: str
    restore_seconds: float
    detail: str


def _record(folder_id: str, ok: bool, seconds: float, detail: str) -> VerifyResult:
    return VerifyResult(folder_id, ok, datetime.now(UTC).isoformat(), seconds, detail)


def _save(folder: Path, result: VerifyResult) -> None:
    """Record ``result`` beside the backup; a failure to write it is one line that says what the
    verification found, that it was not recorded, and what to do (nothing else was touched)."""
    try:
        backupset.write_verification(folder, asdict(result))
    except OSError as exc:
        found = "passed" if result.ok else f"FAILED ({result.detail})"
        again = f"then run `invoke backup.verify --backup {folder.name}` again to record it"
        if exc.errno == errno.ENOSPC:
            raise StorageFull(f"the verification of {folder.name} {found} but could not be recorded: the backups "
                              f"folder's filesystem is full ({folder.parent}, {free_space(folder.parent)}); free "
                              f"space there, {again}") from None
        raise StackopsError(f"the verification of {folder.name} {found} but could not be recorded in {folder} "
                            f"({exc.strerror or exc}); make that folder writable, {again}") from None


def _drop(runtime: Runtime, scratch: str) -> str:
    """Drop the scratch database; a failure (the server gone) is a note, never the error itself."""
    try:
        pg.drop_database(runtime, scratch)
    except (StackopsError, pg.Error) as exc:
        return f"; note: dropping the scratch database {scratch} failed too ({pg.first_line(exc)}): " \
               "`invoke restore.clean` removes it"
    return ""


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _server_answers(runtime: Runtime) -> bool:
    try:
        with pg.admin(runtime) as conn:
            conn.execute("SELECT 1")
    except (StackopsError, pg.Error):
        return False
    return True


def verify_backup(settings: Settings, runtime: Runtime, ref: str, *, report: Reporter,
                  skip_space_check: bool = False) -> VerifyResult:
    """Restore into a scratch database, compare row counts, run amcheck, drop it, record the result.
    Refused (StorageFull, nothing created, nothing recorded: the backup is not at fault) when the
    server's disk has no room for the scratch copy, unless ``skip_space_check``."""
    with env_lock(settings.env.backups_dir, "verify"):
        try:
            backup = backupset.find_backup(settings, ref, report)
        except BackupCorrupt as exc:  # a damaged manifest: record the failure next to it, then report it
            folder = backupset.resolve_ref(settings, ref)
            result = _record(folder.name, False, 0.0, str(exc))
            _save(folder, result)
            report.step(f"verify {folder.name}: FAILED: {exc}")
            return result
        live = settings.env.db_name
        try:  # before the try below: a refusal for room is not a FAILED verification of the backup
            recorded, archive = space.recorded_sizes(backup)
            _, need = space.check_server_room(runtime, live, backup.id, recorded=recorded, archive=archive,
                                    what=f"backup.verify of {backup.id}",
                                    retry=f"invoke backup.verify --backup {backup.id} --skip-space-check",
                                    report=report, skip=skip_space_check)
        except pg.Error as exc:
            raise DatabaseUnavailable(f"the database server failed before verifying {backup.id} "
                                      f"({pg.first_line(exc)}); no result was recorded") from None
        started = datetime.now(UTC)
        scratch = side_name(live, "verify")
        ok, detail = True, ""
        try:
            preflight(settings, runtime, backup, report, streamed=("database", "uploads"))
            # every archived upload against its sha256, read while the database loads (other resources)
            pool = ThreadPoolExecutor(max_workers=1)
            try:
                checked = pool.submit(backupset.check_uploads, backup)
                pg.create_database(runtime, scratch)
                load_archive(runtime, backup, scratch, report, reserve=need)
                uploads = checked.result()
            finally:
                pool.shutdown(wait=True)
            counts = compare_counts(runtime, scratch, backup.manifest["row_counts"])
            with pg.connect(runtime, scratch, autocommit=True) as conn, ExitStack() as more:
                # amcheck on one connection per core (at most 4): each index check is CPU work in the
                # server; the scratch database is dropped afterwards, so amcheck may be installed in it
                workers = [more.enter_context(pg.connect(runtime, scratch, autocommit=True))
                           for _ in range(min(_cores(), 4) - 1)] if _cores() > 1 and pg.install_amcheck(conn) else []
                checks = [pg.invalid_indexes(conn), pg.amcheck(conn, workers)]
            failed = [c for c in [*checks, uploads] if c is not None and not c.ok]
            if failed:
                ok, detail = False, "; ".join(f"{c.name}: {c.detail}" for c in failed)
            else:
                detail = f"{len(counts)} tables match the manifest's row counts; {checks[1].detail}" + \
                    (f"; {uploads.detail}" if uploads is not None else "")
        except (StackopsError, pg.Error) as exc:
            if not isinstance(exc, ServiceError | pg.OperationalError) and _server_answers(runtime):
                ok, detail = False, pg.first_line(exc)
                _drop(runtime, scratch)
            else:  # the server failed, not the backup: nothing is recorded
                notes = _drop(runtime, scratch)
                raise DatabaseUnavailable(f"the database server failed while verifying {backup.id} "
                                          f"({pg.first_line(exc)}); no result was recorded{notes}") from None
        except BaseException:
            _drop(runtime, scratch)
            raise
        else:
            _drop(runtime, scratch)
        seconds = round((datetime.now(UTC) - started).total_seconds(), 3)
        result = _record(backup.id, ok, seconds, detail)
        _save(backup.path, result)
        report.step(f"verify {backup.id}: {'OK' if ok else 'FAILED'} in {seconds}s: {detail}")
        return result
