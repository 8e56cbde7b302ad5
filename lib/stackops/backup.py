"""Taking a backup: the database from one exported snapshot, the globals, and for full backups the
uploads frozen at the same instant, written as a set (see ``stackops.backupset`` for the format).

The database is ``pg_dump --format=custom --compress=0 --snapshot=...`` streamed through the
compressor while a second reader counts every table's rows in the same snapshot; the uploads are
hard-linked while that snapshot is held, then archived.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stackops import __version__, backupset, pg
from stackops.backupset import BackupSet, compressor
from stackops.config import Settings
from stackops.errors import BackupError, CommandFailed, StorageFull
from stackops.lock import env_lock
from stackops.proc import Cmd, pipeline
from stackops.report import Reporter, human_bytes
from stackops.runtime.base import Runtime


def _link_tree(src: Path, dst: Path) -> tuple[int, int]:
    """Hard-link every file of ``src`` under ``dst`` (copy across filesystems): a frozen view of the
    uploads at this instant. Returns (files, bytes)."""
    files = total = 0
    dst.mkdir(mode=0o700)
    shutil.copymode(src, dst)  # the archive keeps the folders' own modes
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        for dirname in dirnames:
            (dst / rel / dirname).mkdir(mode=0o700, exist_ok=True)
            shutil.copymode(Path(dirpath) / dirname, dst / rel / dirname)
        for name in filenames:
            source, target = Path(dirpath) / name, dst / rel / name
            if source.is_symlink():
                os.symlink(os.readlink(source), target)
                continue
            try:
                os.link(source, target)
            except FileNotFoundError:
                continue  # deleted between listing and linking: it is not part of this instant
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise
                shutil.copy2(source, target)
            files += 1
            total += target.stat().st_size
    return files, total


def _stream(cmds: list[Cmd], dest: Path, report: Reporter, label: str) -> dict[str, Any]:
    h = hashlib.sha256()
    started = time.monotonic()
    done = 0

    def chunk(data: bytes) -> None:
        nonlocal done
        h.update(data)
        done += len(data)
        report.progress(label, done, started)

    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        pipeline(cmds, sink=f, on_chunk=chunk)
        f.flush()
        os.fsync(f.fileno())
    report.progress(label, done, started, final=True)
    return {"size": dest.stat().st_size, "sha256": h.hexdigest()}


NO_SPACE = "No space left on device"
LOCK_TIMEOUT_SQLSTATE = "55P03"  # lock_not_available: a lock_timeout expired


def _free_space(folder: Path) -> str:
    try:
        st = os.statvfs(folder)
    except OSError:
        return "free space unknown"
    return f"{human_bytes(st.f_bavail * st.f_frsize)} free of {human_bytes(st.f_blocks * st.f_frsize)}"


def _tool_line(exc: CommandFailed) -> str:
    """The line of a tool's error output that says what went wrong (pg_dump's first ``error:`` line)."""
    lines = [ln.strip() for ln in exc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error:" in ln] or lines[-1:] or [str(exc)]
    return errors[0]


@contextmanager
def _one_line(settings: Settings) -> Iterator[None]:
    """Turn what can go wrong while a backup is written into one line (the caller removes the set):
    a full filesystem, a lock that did not clear in time, the server going away, any other OS error."""
    folder = settings.env.backups_dir
    waited = f"stackops.backup.lock_wait_timeout={settings.backup.lock_wait_timeout}"
    lock_hint = (f"another session held a table lock for longer than {waited}; no backup was taken and nothing "
                 "was kept (find the holder in pg_locks / pg_stat_activity, or raise the timeout)")
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise StorageFull(f"the backups folder's filesystem is full ({folder}): {_free_space(folder)}; "
                              "nothing was kept") from None
        raise BackupError(f"the backup could not write {exc.filename or folder}: {exc.strerror or exc}; "
                          "nothing was kept") from None
    except CommandFailed as exc:
        if NO_SPACE in exc.stderr:
            raise StorageFull(f"the backups folder's filesystem is full ({folder}): {_free_space(folder)}; "
                              "nothing was kept") from None
        # pg_dump --lock-wait-timeout runs its LOCK TABLE under that statement_timeout
        if "could not obtain lock" in exc.stderr or "statement timeout" in exc.stderr:
            raise BackupError(f"{lock_hint}: {_tool_line(exc)}") from None
        raise BackupError(f"{exc.argv[0].rsplit('/', 1)[-1]} failed (exit {exc.returncode}): {_tool_line(exc)}; "
                          "nothing was kept") from None
    except pg.Error as exc:
        if getattr(exc, "sqlstate", None) == LOCK_TIMEOUT_SQLSTATE:
            raise BackupError(f"{lock_hint}: {pg.first_line(exc)}") from None
        raise BackupError(f"the backup lost the database ({pg.first_line(exc)}); nothing was kept") from None


def create_backup(settings: Settings, runtime: Runtime, *, kind: str = "full",
                  report: Reporter, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> BackupSet:
    """Take a backup of ``kind`` (full: database + globals + uploads; db and pre_migration: no uploads)."""
    with _one_line(settings), env_lock(settings.env.backups_dir, f"backup ({kind})"):
        backupset.remove_stale_tmp(settings.env.backups_dir, report)  # the lock made the folder
        started = now()
        t0 = time.monotonic()
        with backupset.writing(settings, kind, started) as (backup_id, tmp), _one_line(settings):
            # (inner: free space is measured before the set is removed)
            manifest = _take(settings, runtime, kind, report, tmp, backup_id, started)
            manifest["finished_at"] = now().isoformat()
            manifest["duration_s"] = round(time.monotonic() - t0, 3)
            result = backupset.commit(tmp, backup_id, manifest)
        report.step(f"backup {backup_id} complete: {len(manifest['files'])} files, {result.size} bytes, "
                    f"{manifest['duration_s']}s")
        return result


def _take(settings: Settings, runtime: Runtime, kind: str, report: Reporter, tmp: Path, backup_id: str,
          started: datetime) -> dict[str, Any]:
    env = settings.env
    comp_name, ext, comp_argv = compressor()
    files: dict[str, dict[str, Any]] = {}
    uploads_info: dict[str, Any] | None = None
    with pg.connect(runtime) as conn:
        server_major = pg.server_major(conn)
        server_version = pg.server_version(conn)
        dump_version = pg.client_version(runtime.pg_cmd("pg_dump"), server_major)
        snapshot = pg.export_snapshot(conn)
        report.step(f"{kind} backup {backup_id} of {env.name}/{env.db_name} (snapshot {snapshot})")
        snap_uploads = tmp / "uploads.snapshot"
        if kind == "full":
            if env.uploads_dir.is_dir():
                n, size = _link_tree(env.uploads_dir, snap_uploads)
            else:
                snap_uploads.mkdir(mode=0o700)
                n, size = 0, 0
            uploads_info = {"files": n, "bytes": size}
            report.info(f"froze the uploads folder at the snapshot: {n} files, {size} bytes")
        dump_name = f"database.dump{ext}"
        wait = settings.backup.lock_wait_timeout
        dump = runtime.pg_cmd("pg_dump").with_args("--format=custom", "--compress=0", f"--snapshot={snapshot}",
                                                   f"--lock-wait-timeout={wait}", "--dbname", env.db_name)
        # row counts and migration head are read in the same snapshot while pg_dump streams; neither
        # waits for a lock longer than the configured timeout, and a failure or Ctrl-C cancels the reader
        pg.limit_lock_waits(conn, wait)
        pool = ThreadPoolExecutor(max_workers=1)
        try:
            counted = pool.submit(lambda: (pg.table_counts(conn), pg.migration_head(conn)))
            files[dump_name] = {"role": "database", **_stream([dump, Cmd(comp_argv)], tmp / dump_name, report,
                                                              "database")}
            counts, head = counted.result()
        except BaseException:
            pg.cancel(conn)
            raise
        finally:
            pool.shutdown(wait=True)
    # the snapshot may close now: uploads are already frozen by the hard links
    globals_cmd = runtime.pg_cmd("pg_dumpall").with_args("--globals-only", "--no-role-passwords")
    files["globals.sql"] = {"role": "globals", **_stream([globals_cmd], tmp / "globals.sql", report, "globals")}
    if kind == "full":
        tar = Cmd(["tar", "-C", str(snap_uploads), "--sort=name", "--numeric-owner", "-cf", "-", "."])
        name = f"uploads.tar{ext}"
        files[name] = {"role": "uploads", **_stream([tar, Cmd(comp_argv)], tmp / name, report, "uploads")}
        shutil.rmtree(snap_uploads)
    return {
        "format": backupset.FORMAT,
        "tool": "stackops",
        "tool_version": __version__,
        "id": backup_id,
        "env": env.name,
        "kind": kind,
        "runtime": runtime.kind,
        "database": env.db_name,
        "started_at": started.isoformat(),
        "server_version": server_version,
        "server_major": server_major,
        "pg_dump_version": dump_version,
        "compression": comp_name,
        "migration_head": head,
        "image_digests": runtime.image_digests(),
        "row_counts": counts,
        "uploads": uploads_info,
        "files": files,
    }
