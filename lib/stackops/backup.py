"""Taking a backup: the database from one exported snapshot, the globals, and for full backups the
uploads frozen at the same instant, written as a set (see ``stackops.backupset`` for the format).

The database is ``pg_dump --format=custom --compress=0 --snapshot=...`` streamed through the
compressor while a second reader counts every table's rows in the same snapshot; the uploads are
hard-linked while that snapshot is held, each linked file hashed at once (the manifest records every
upload's size and sha256 as of the snapshot), then archived.

A hard link shares its inode with the upload, so an in-place rewrite after the snapshot would reach
the archive. Two guards: a file that changes while it is hashed gets a private copy; and the archive
is written here (Python's tarfile), hashing each file's bytes as they go in, so a file rewritten
after it was hashed is caught and the backup refused (one line, nothing kept) rather than archived
with bytes its rows never saw. Copying every upload would close the window too, at twice the disk.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import threading
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
from stackops.files import CHUNK, free_space, sha256_file
from stackops.journal import OURS
from stackops.lock import env_lock
from stackops.proc import Cmd, pipeline, spawn
from stackops.report import Reporter
from stackops.runtime.base import Runtime


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _freeze_file(source: Path, target: Path) -> dict[str, Any] | None:
    """Hard-link ``source`` at ``target`` (copy across filesystems) and hash the linked bytes: the
    upload as of the snapshot. A file that changes while it is hashed is being written: it gets a
    private copy instead, hashed again. None when it vanished before it could be linked."""
    try:
        os.link(source, target)
    except FileNotFoundError:
        return None  # deleted between listing and linking: it is not part of this instant
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        shutil.copy2(source, target)
    before = os.stat(target)
    digest = sha256_file(target)
    if _identity(os.stat(target)) != _identity(before):
        target.unlink()
        shutil.copy2(source, target)  # private bytes: a later rewrite of the upload cannot reach them
        digest = sha256_file(target)
    return {"size": os.stat(target).st_size, "sha256": digest}


def _leaves(root: Path, folder: Path, link: str) -> bool:
    """Whether a symbolic link in ``folder`` with target ``link`` points outside ``root`` (by its text:
    absolute, or climbing out with ``..``), as a restore's archive filter judges it."""
    if os.path.isabs(link):
        return True
    resolved = os.path.normpath(os.path.join(folder, link))
    return os.path.commonpath([resolved, os.path.normpath(root)]) != os.path.normpath(root)


def _link_tree(src: Path, dst: Path, report: Reporter) -> dict[str, dict[str, Any]]:
    """A frozen view of the uploads at this instant under ``dst``: every regular file hard-linked
    (or copied, see ``_freeze_file``), symlinks recreated, anything else (FIFOs, devices, sockets)
    left out with a warning. Returns each file's size and sha256 by its path relative to ``src``."""
    frozen: list[tuple[str, Path, Path]] = []
    dst.mkdir(mode=0o700)
    shutil.copymode(src, dst)  # the archive keeps the folders' own modes
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        if rel == Path("."):  # a restore's staging and kept copy inside a mount-point uploads folder
            dirnames[:] = [d for d in dirnames if not d.startswith(OURS)]
        for dirname in dirnames:
            (dst / rel / dirname).mkdir(mode=0o700, exist_ok=True)
            shutil.copymode(Path(dirpath) / dirname, dst / rel / dirname)
        for name in filenames:
            source, target = Path(dirpath) / name, dst / rel / name
            try:
                mode = os.lstat(source).st_mode
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(mode):
                link = os.readlink(source)
                if _leaves(src, Path(dirpath), link):  # a restore refuses such a link: never archive one
                    report.warn(f"left out {rel / name} of the uploads: a link to {link}, outside the uploads folder")
                    continue
                os.symlink(link, target)
            elif not stat.S_ISREG(mode):
                report.warn(f"left out {rel / name} of the uploads: not a regular file, folder or link")
            else:
                frozen.append(((rel / name).as_posix(), source, target))
    # linked and hashed one file per core at once (hashlib releases the GIL): this runs while the snapshot
    # is held and before pg_dump starts, with the cores otherwise idle
    with ThreadPoolExecutor(max_workers=_cores(), thread_name_prefix="freeze") as pool:
        done = list(pool.map(lambda f: _freeze_file(f[1], f[2]), frozen))
    return {key: entry for (key, _, _), entry in zip(frozen, done, strict=True) if entry is not None}


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class _HashingReader:
    """Reads a file for tarfile while hashing exactly what goes into the archive."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.h = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data: bytes = self.f.read(n)
        self.h.update(data)
        return data


class _Cancelled(Exception):
    """The archive was abandoned because the rest of the backup failed."""


def _add_tree(tar: tarfile.TarFile, root: Path, rel: Path, entries: dict[str, dict[str, Any]],
              stop: threading.Event | None = None) -> None:
    """Add ``root/rel`` and below in name order (like ``tar --sort=name --numeric-owner``); every
    regular file's archived bytes must hash to what was recorded when it was frozen."""
    if stop is not None and stop.is_set():
        raise _Cancelled
    path = root / rel
    info = tar.gettarinfo(str(path), arcname="." if rel == Path(".") else f"./{rel.as_posix()}")
    info.uname = info.gname = ""
    if info.isdir():
        tar.addfile(info)
        for child in sorted(os.listdir(path)):
            _add_tree(tar, root, rel / child, entries, stop)
        return
    if info.issym():
        tar.addfile(info)
        return
    key = rel.as_posix()
    expected = entries[key]
    info.type, info.linkname, info.size = tarfile.REGTYPE, "", int(expected["size"])  # never a hard-link member
    with path.open("rb") as f:
        reader = _HashingReader(f)
        try:
            tar.addfile(info, reader)
        except OSError as exc:
            if exc.errno is not None:
                raise
            reader.h.update(b"\0short")  # tarfile: "unexpected end of data" (the file was truncated)
    if reader.h.hexdigest() != expected["sha256"]:
        raise BackupError(f"upload {key} was rewritten in place after the snapshot, so the backup cannot hold "
                          "the bytes its rows refer to; nothing was kept: take the backup again")


def _archive_uploads(snap: Path, entries: dict[str, dict[str, Any]], dest: Path, comp_argv: list[str],
                     report: Reporter, stop: threading.Event | None = None) -> dict[str, Any]:
    """The frozen uploads as one tar stream (written here, hashed file by file) through the compressor."""
    started = time.monotonic()
    digest = hashlib.sha256()
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out, tempfile.TemporaryFile() as err:
        proc = spawn(Cmd(comp_argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
        assert proc.stdin is not None and proc.stdout is not None
        failure: list[BaseException] = []

        def drain(pipe: Any) -> None:  # the archive's sha256 as it is written: no second read of the file
            try:
                while chunk := pipe.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
            except BaseException as exc:  # e.g. ENOSPC: raised below, after the compressor stopped
                failure.append(exc)
                pipe.close()

        writer = threading.Thread(target=drain, args=(proc.stdout,), name="uploads-writer", daemon=True)
        writer.start()
        try:
            try:
                with tarfile.open(fileobj=proc.stdin, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                    _add_tree(tar, snap, Path("."), entries, stop)
                proc.stdin.close()
            except BrokenPipeError:
                pass  # the compressor stopped: its exit status and error output say why
            code = proc.wait()
            writer.join()
        except BaseException:
            proc.kill()
            proc.wait()
            writer.join()
            raise
        if failure:
            raise failure[0]
        if code != 0:
            err.seek(0)
            raise CommandFailed(comp_argv, code, err.read().decode(errors="replace"))
        out.flush()
        os.fsync(out.fileno())
    return {"size": dest.stat().st_size, "sha256": digest.hexdigest(), "started": started}


def _stream(cmds: list[Cmd], dest: Path, report: Reporter, label: str, total: int | None = None) -> dict[str, Any]:
    """With ``total`` (the data's size in the database), progress counts what the first command wrote
    (pg_dump's uncompressed output) against it; otherwise the bytes written to ``dest``."""
    h = hashlib.sha256()
    started = time.monotonic()
    done = dumped = 0

    def chunk(data: bytes) -> None:
        nonlocal done
        h.update(data)
        done += len(data)
        if total is None:
            report.progress(label, done, started)

    def watch(_read: int, written: int) -> None:
        nonlocal dumped
        dumped = written
        report.progress(label, written, started, total=total)

    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        pipeline(cmds, sink=f, on_chunk=chunk, watch=None if total is None else watch)
        f.flush()
        os.fsync(f.fileno())
    report.progress(label, done if total is None else dumped, started, final=True, total=total)
    return {"size": dest.stat().st_size, "sha256": h.hexdigest()}


NO_SPACE = "No space left on device"
LOCK_TIMEOUT_SQLSTATE = "55P03"  # lock_not_available: a lock_timeout expired


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
            raise StorageFull(f"the backups folder's filesystem is full ({folder}): {free_space(folder)}; "
                              "nothing was kept") from None
        raise BackupError(f"the backup could not write {exc.filename or folder}: {exc.strerror or exc}; "
                          "nothing was kept") from None
    except CommandFailed as exc:
        if NO_SPACE in exc.stderr:
            raise StorageFull(f"the backups folder's filesystem is full ({folder}): {free_space(folder)}; "
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
        entries: dict[str, dict[str, Any]] = {}
        if kind == "full":
            if env.uploads_dir.is_dir():
                entries = _link_tree(env.uploads_dir, snap_uploads, report)
            else:
                snap_uploads.mkdir(mode=0o700)
            n, size = len(entries), sum(int(e["size"]) for e in entries.values())
            # every file's size and sha256 at the snapshot: the archive is checked against them as it is
            # written, and backup.verify checks it again
            uploads_info = {"files": n, "bytes": size, "entries": entries}
            report.info(f"froze the uploads folder at the snapshot: {n} files, {size} bytes")
        dump_name = f"database.dump{ext}"
        wait = settings.backup.lock_wait_timeout
        dump = runtime.pg_cmd("pg_dump").with_args("--format=custom", "--compress=0", f"--snapshot={snapshot}",
                                                   f"--lock-wait-timeout={wait}", "--dbname", env.db_name)
        # row counts and migration head are read in the same snapshot while pg_dump streams; neither
        # waits for a lock longer than the configured timeout, and a failure or Ctrl-C cancels the reader
        pg.limit_lock_waits(conn, wait)
        data_size = pg.data_size(conn)  # for progress: what pg_dump will write, roughly
        # the database's size with indexes: what a restore or verify of this set needs on the server's disk
        database_bytes = pg.database_size(conn)
        # the frozen uploads (hard links, hashed) need no snapshot: archived while pg_dump streams
        pool = ThreadPoolExecutor(max_workers=2)
        stop = threading.Event()
        archived = None
        if kind == "full":
            up_name = f"uploads.tar{ext}"
            archived = pool.submit(_archive_uploads, snap_uploads, entries, tmp / up_name,
                                   compressor(fast=True)[2], report, stop)
        try:
            counted = pool.submit(lambda: (pg.table_counts(conn), pg.migration_head(conn)))
            files[dump_name] = {"role": "database", **_stream([dump, Cmd(comp_argv)], tmp / dump_name, report,
                                                              "database", total=data_size)}
            counts, head = counted.result()
        except BaseException:
            stop.set()  # the archive stops at its next file
            pg.cancel(conn)
            raise
        finally:
            pool.shutdown(wait=True)
    # the snapshot may close now: uploads are already frozen by the hard links
    globals_cmd = runtime.pg_cmd("pg_dumpall").with_args("--globals-only", "--no-role-passwords")
    files["globals.sql"] = {"role": "globals", **_stream([globals_cmd], tmp / "globals.sql", report, "globals")}
    if archived is not None:
        done = archived.result()
        report.progress("uploads", done["size"], done.pop("started"), final=True)  # from this thread only
        files[f"uploads.tar{ext}"] = {"role": "uploads", **done}
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
        "database_bytes": database_bytes,
        "uploads": uploads_info,
        "files": files,
    }
