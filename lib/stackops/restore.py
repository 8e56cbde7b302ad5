"""Restore: load beside the live database, check, then swap in one step.

Nothing live is touched before the backup's files and manifest have been checked and the copy
has loaded and matched the manifest's row counts. The database that was live is kept as
``<name>_pre_restore_<timestamp>`` (uploads likewise), so a wrong restore can itself be undone.

``preflight``, ``load_archive`` and ``compare_counts`` are also what ``verify`` runs into its
scratch database. ``restore_plan`` returns the plan the cli confirms; ``restore_database`` acts.

Every step that can refuse runs before the first swap (permissions, a mount-point uploads folder,
which is then swapped by moving its contents). The swap is journaled (``stackops.journal``): a
crash is completed or undone by the next stackops command, and an uploads swap that fails undoes
the database swap, so rows and files change together. Upload archives are unpacked with Python's
tarfile and its ``data`` filter (no ``..``, absolute names, links out, devices or FIFOs).
"""

from __future__ import annotations

import errno
import gzip
import os
import re
import secrets
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stackops import journal, pg, space
from stackops.backupset import TMP_PREFIX, BackupSet, StreamedFile, check_files, decompressor, find_backup
from stackops.config import Settings
from stackops.errors import (
    BackupCorrupt,
    BackupError,
    BackupNotFound,
    CommandFailed,
    DatabaseUnavailable,
    LockBusy,
    RestoreError,
    ServiceError,
    StackopsError,
    StorageFull,
    VersionMismatch,
)
from stackops.files import CHUNK, dir_size
from stackops.journal import uploads_forward
from stackops.lock import env_lock
from stackops.proc import Cmd, pipeline, run, spawn
from stackops.report import Plan, Reporter, human_bytes
from stackops.runtime.base import Runtime

DUMP_TRAILER = b"-- PostgreSQL database dump complete"
TAIL = 4096  # pg_dump >= 15.14 writes a \unrestrict line after the trailer
SIDE_TAGS = ("restore", "verify")
PRE_RESTORE = "_pre_restore_"
FOLDER_KINDS = ("uploads", "interrupted uploads")  # kinds of previous_copies that are folders, not databases
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


def _named(db: str, tags: tuple[str, ...]) -> re.Pattern[str]:
    """Exactly the names ``side_name(db, tag)`` makes for one of ``tags`` (``_free_name``'s too)."""
    return re.compile(f"{re.escape(db[:NAME_ROOM])}_(?:{'|'.join(map(re.escape, tags))})_[0-9]{{14}}_[0-9a-f]{{4}}")


def kept_names(db: str) -> re.Pattern[str]:
    """Names a restore keeps the previous live database under: ``<db[:30]>_pre_restore_<time>_<4 hex>``."""
    return _named(db, (PRE_RESTORE.strip("_"),))


def side_names(db: str) -> re.Pattern[str]:
    """Names of the scratch databases a restore or verify loads into (left behind only when killed)."""
    return _named(db, SIDE_TAGS)


def sharing_names(db: str, names: list[str]) -> list[str]:
    """Other databases whose names start with the same ``NAME_ROOM`` characters as ``db`` (not copies
    themselves): their restores and verifies make copies with the very same names as ``db``'s."""
    ours = (kept_names(db), side_names(db))
    return [n for n in names if n != db and n[:NAME_ROOM] == db[:NAME_ROOM]
            and not any(p.fullmatch(n) for p in ours)]


def is_plain_dump(ref: str) -> bool:
    """The guide's ``database_backup_*.sql.gz``: an explicitly given file, read and never written."""
    return ref.endswith(".sql.gz") and Path(ref).is_file()


def check_plain_dump(path: Path) -> None:
    """A guide-format ``*.sql.gz`` must be a whole gzip stream holding a whole pg_dump: not empty, and
    ending with pg_dump's completion trailer (``pg_dump | gzip`` leaves a valid gzip stream even when
    pg_dump died mid-dump). Checked before anything is created or touched."""
    tail, total = b"", 0
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                total += len(chunk)
                tail = (tail + chunk)[-TAIL:]
    except (OSError, EOFError, zlib.error):
        raise BackupCorrupt(f"{path} is not a valid gzip file (truncated or damaged); nothing was touched") from None
    if not tail.strip():
        raise BackupCorrupt(f"{path} holds an empty SQL stream (pg_dump wrote nothing); nothing was touched")
    if DUMP_TRAILER not in tail:
        raise BackupCorrupt(f"{path} is an incomplete dump: pg_dump's completion line {DUMP_TRAILER.decode()!r} "
                            "is missing (pg_dump stopped mid-dump); nothing was touched")


def _free_name(conn: pg.Connection[Any], db: str, tag: str) -> str:
    """A side name no database has now (the random suffix makes a repeat rare; this makes it impossible)."""
    for n in range(100):
        name = side_name(db, tag) if n == 0 else f"{side_name(db, tag)[:-4]}{n:04x}"
        if not pg.database_exists(conn, name):
            return name
    raise RestoreError(f"no free side name beside {db}: drop old copies (`invoke restore.previous`)")


def _create_side(runtime: Runtime, live: str) -> str:
    """Create the empty database a restore loads into; its name."""
    with pg.admin(runtime) as conn:
        name = _free_name(conn, live, "restore")
    try:
        pg.create_database(runtime, name)
    except pg.errors.DuplicateDatabase:
        raise RestoreError(f"database {name} already exists (another restore or verify started at the same "
                           "moment?); nothing was touched: retry") from None
    return name


def _note(notes: list[str], what: str, fn: Any, *args: Any) -> None:
    """Run a cleanup step; its failure becomes a note in the message instead of replacing the real error."""
    try:
        fn(*args)
    except (StackopsError, pg.Error, OSError) as exc:
        notes.append(f"{what} failed too ({pg.first_line(exc)})")


def _noted(message: str, notes: list[str]) -> str:
    return message + (f"; note: {'; '.join(notes)}" if notes else "")


def preflight(settings: Settings, runtime: Runtime, backup: BackupSet, report: Reporter,
              newest_migration: str | None = None, streamed: tuple[str, ...] = ()) -> None:
    """Everything that can refuse loading ``backup``, checked before anything is created or touched:
    files and checksums, server and client versions, and (given the newest migration version on
    disk) a backup whose schema is newer than this checkout. Roles in ``streamed`` (the database
    archive, when the caller loads it with ``load_archive`` into a side database) get their sha256
    checked in the load's own read instead of a read before it."""
    check_files(backup, report, streamed)
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


def load_settings() -> dict[str, str]:
    """Session settings for loading a side database: index builds and foreign-key checks sort and hash
    in memory (up to 1/16 of this machine's memory, at most 512 MB; never below the defaults), and
    commits do not wait for the WAL flush."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        ram = 0
    mb = max(64, min(512, ram // 16 // 2**20))
    return {"maintenance_work_mem": f"{mb}MB", "work_mem": f"{max(4, mb // 4)}MB", "synchronous_commit": "off"}


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


COPY_ROOM = 10  # a custom archive is at most ~10x its zstd size for ImpactBot data (text ~3-4x)


def _seekable_copy_dir(runtime: Runtime, backup: BackupSet, reserve: int = 0) -> Path | None:
    """A private folder for a decompressed, seekable copy of the archive (for ``pg_restore --jobs``),
    when that pays and is possible: two cores or more, zstd, a pg_restore that reads this machine's
    files (not inside a container), and room for the copy with 5 % of the filesystem left free, and
    ``reserve`` too: the bytes the load needs on the server's disk, which may be this very filesystem
    (a local cluster beside its backups folder), where the copy and the load must fit together.
    It is a ``.tmp-`` folder in the backups folder: a killed restore's copy is removed like a killed
    backup's folder. None: stream into a single pg_restore."""
    dump = backup.file("database")
    if dump is None or _cores() < 2 or backup.compression != "zstd" or runtime.kind == "compose":
        return None
    folder = backup.path.parent
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
    if free - COPY_ROOM * dump.stat().st_size - reserve < total // 20:
        return None
    return Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}load-", dir=folder))


def _feed(source: StreamedFile, cmds: list[Cmd], watch: Callable[[int, int], None] | None = None) -> None:
    """Run ``cmds`` with the archive's bytes on the first one's stdin, hashed as they go. When a
    command fails and the bytes were damaged, BackupCorrupt says so instead of the failure."""
    r, w = os.pipe()
    reader, writer = os.fdopen(r, "rb"), os.fdopen(w, "wb")
    feeder = threading.Thread(target=source.feed, args=(writer,), name="archive-feeder", daemon=True)
    feeder.start()
    try:
        pipeline(cmds, stdin_file=reader, watch=watch)
    except CommandFailed:
        reader.close()  # the feeder, blocked on a full pipe, stops writing and finishes the hash
        feeder.join()
        if source.damaged() or source.error is not None:
            source.check()  # damaged bytes made the decompressor or pg_restore fail: say so
        raise
    finally:
        reader.close()
        feeder.join()


def load_archive(runtime: Runtime, backup: BackupSet, target: str, report: Reporter, reserve: int = 0) -> None:
    """pg_restore the set's database archive into the existing empty database ``target``; ``reserve``:
    the bytes the load needs on the server's disk (see ``_seekable_copy_dir``)."""
    dump = backup.file("database")
    if dump is None:
        raise BackupCorrupt(f"backup {backup.id} has no database archive")
    glob = backup.file("globals")
    if glob is not None:  # roles the dump's owners need; existing ones only produce ignored errors
        run(runtime.pg_cmd("psql").with_args("-X", "-q", "-d", pg.MAINTENANCE_DB, "-f", "-"),
            input=glob.read_bytes(), check=False)
    report.step(f"loading {backup.id} into {target}")
    started = time.monotonic()
    # bulk-load settings for the side database's sessions only, reset before anything can swap it in.
    # synchronous_commit=off cannot lose a swapped-in row: the swap's own commit is synchronous and
    # flushes the WAL before it, and a crash before the swap leaves only a scratch copy.
    with pg.admin(runtime) as conn:
        pg.set_database_options(conn, target, load_settings())
    restore = runtime.pg_cmd("pg_restore").with_args("--exit-on-error", "--no-password", "--dbname", target)
    # one read of the archive, hashed as it is fed to the decompressor; a mismatch raises BackupCorrupt
    # and the caller drops ``target`` (nothing else was touched)
    source = StreamedFile(backup, "database")
    how = "streamed"
    size = dump.stat().st_size

    def progress(read: int, _written: int) -> None:
        report.progress("loading", read, started, total=size)

    copy_dir = _seekable_copy_dir(runtime, backup, reserve)
    if copy_dir is None:
        _feed(source, [decompressor(backup.compression, None), restore], watch=progress)
    else:
        try:
            copy = copy_dir / "database.dump"
            try:
                _feed(source, [Cmd(["zstd", "-q", "-d", "-o", str(copy)])], watch=progress)
                source.check()  # the copy is loaded only when the archive's sha256 matched
            except CommandFailed as exc:  # e.g. the disk filled: nothing was loaded yet, stream instead
                report.warn(f"no seekable copy for a parallel load ({exc.stderr.strip()[-200:]}): streaming")
                shutil.rmtree(copy_dir, ignore_errors=True)
                copy_dir = None
                source = StreamedFile(backup, "database")
                _feed(source, [decompressor(backup.compression, None), restore])
            else:
                jobs = _cores()
                how = f"{jobs} jobs"
                pipeline([restore.with_args(f"--jobs={jobs}", str(copy))])  # dies with stackops
        finally:
            if copy_dir is not None:
                shutil.rmtree(copy_dir, ignore_errors=True)
    with pg.admin(runtime) as conn:
        pg.set_database_options(conn, target, None)
    source.check()
    report.progress("loading", size, started, final=True, total=size)
    report.info(f"loaded in {time.monotonic() - started:.1f}s ({how}; sha256 of {source.name} checked in the "
                "same read)")


def compare_counts(runtime: Runtime, db: str, expected: dict[str, int]) -> dict[str, int]:
    """Exact row counts of ``db``; RestoreError when they differ from ``expected``."""
    with pg.connect(runtime, db) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        got = pg.table_counts(conn)
    wrong = [f"{t}: {got.get(t)} rows, backup had {n}" for t, n in expected.items() if got.get(t) != n]
    if wrong:
        raise RestoreError(f"the restored copy does not match the backup's row counts ({'; '.join(wrong[:3])})")
    return got


def changed_since_backup(runtime: Runtime, db: str, expected: dict[str, int]) -> list[str]:
    """Tables of ``db`` whose row counts differ from a backup's manifest (new and missing tables too)."""
    try:
        with pg.connect(runtime, db) as conn:
            got = pg.table_counts(conn)
    except pg.Error as exc:
        raise RestoreError(f"cannot count the rows of {db} ({pg.first_line(exc)})") from None
    out = [f"{t} ({got[t]} rows now, {expected[t]} in the backup)" for t in sorted(got)
           if t in expected and got[t] != expected[t]]
    out += [f"{t} (new, {got[t]} rows)" for t in sorted(got) if t not in expected]
    out += [f"{t} (missing now)" for t in sorted(expected) if t not in got]
    return out


def _room_on_server(runtime: Runtime, source: BackupSet | Path, live: str, report: Reporter, *, uploads: bool,
                    skip: bool) -> tuple[str, int]:
    """The server's disk must hold the copy loaded beside ``live`` (``stackops.space.server_room``):
    refused in one line before anything is created. Only the new copy needs room: the swap renames the
    live database to ``<db>_pre_restore_...`` (ALTER DATABASE RENAME: the same files where they are),
    it never copies it. What keeping it costs is that its space is not given back until that copy is
    dropped (`invoke restore.previous`), so the next restore or verify finds less free space."""
    if isinstance(source, Path):
        name, recorded, archive = source.name, None, source.stat().st_size
        retry = f"invoke restore.db {source} --skip-space-check"
    else:
        name, (recorded, archive) = source.id, space.recorded_sizes(source)
        retry = f"invoke {'restore' if uploads else 'restore.db'} {source.id} --skip-space-check"
    return space.check_server_room(runtime, live, name, recorded=recorded, archive=archive,
                                   what=f"{'restore' if uploads else 'restore.db'} of {name}", retry=retry,
                                   report=report, skip=skip)


def _preflight_swap(runtime: Runtime, live: str) -> None:
    """The database rename can only be refused for permissions: checked before anything is swapped."""
    with pg.admin(runtime) as conn:
        row = conn.execute("SELECT r.rolsuper OR (r.rolcreatedb AND d.datdba = r.oid) FROM pg_roles r "
                           "LEFT JOIN pg_database d ON d.datname = %s WHERE r.rolname = current_user",
                           (live,)).fetchone()
    if row is None or not row[0]:
        raise RestoreError(f"the database user may not rename {live} (it needs to own it with CREATEDB, or be "
                           "a superuser); nothing was touched")


def _swap_database(settings: Settings, runtime: Runtime, state: dict[str, Any], report: Reporter) -> None:
    """Rename live -> previous and new -> live in one transaction, journaled: a crash anywhere in
    here is completed or undone by ``journal.recover``."""
    live, new, previous = state["live"], state["new"], state["previous"]
    try:
        journal.write(settings, state)
    except OSError as exc:  # nothing swapped yet: drop the loaded copy, say why in one line
        dropped: list[str] = []
        _note(dropped, f"dropping the loaded copy {new}", pg.drop_database, runtime, new)
        cls = StorageFull if exc.errno == errno.ENOSPC else RestoreError
        raise cls(_noted(f"cannot write the restore journal in {settings.env.backups_dir} ({exc.strerror}): "
                         f"nothing was swapped, the loaded copy was dropped; the live database {live} is "
                         "unchanged", dropped)) from None
    try:
        with pg.admin(runtime) as conn:
            if not pg.database_exists(conn, live):
                pg.rename_database(conn, new, live)
                state["previous"] = None
                return
            if pg.database_exists(conn, previous):
                previous = state["previous"] = _free_name(conn, live, PRE_RESTORE.strip("_"))
                journal.write(settings, state)
            pg.allow_connections(conn, live, False)
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
            for name in (live, previous):
                pg.allow_connections(conn, name, True)
    except BaseException as exc:
        notes: list[str] = []
        try:
            done = journal._finish(settings, runtime, state)  # completes or undoes what the server committed
            journal.clear(settings)
        except (StackopsError, pg.Error, OSError) as again:
            done = ""
            notes.append(f"finishing the swap failed too ({pg.first_line(again)}); the next stackops command "
                         "completes or undoes it")
        if isinstance(exc, StackopsError) and not isinstance(exc, ServiceError):
            raise
        if isinstance(exc, pg.Error | ServiceError):
            raise RestoreError(_noted(f"the database server failed during the swap ({pg.first_line(exc)})"
                                      f"{': ' + done if done else ''}", notes)) from None
        raise
    report.info(f"swapped in the restored database; the previous one is kept as {previous}")


def _is_mount_point(path: Path) -> bool:
    """The folder is a mount point (bind mounts of a folder of the same filesystem included)."""
    if os.path.ismount(path):
        return True
    real = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and re.sub(r"\\(\d{3})", lambda m: chr(int(m.group(1), 8)), fields[4]) == real:
                    return True
    except OSError:
        pass
    return False


def _uploads_plan(settings: Settings) -> dict[str, Any]:
    """How the uploads will be swapped, after every check that can refuse it (nothing touched):
    ``rename`` the folder, or (a mount point cannot be renamed) move its ``contents``."""
    live = settings.env.uploads_dir
    stamp = _stamp()
    parent = live.parent
    parent.mkdir(parents=True, exist_ok=True)
    if live.is_symlink():
        raise RestoreError(f"the uploads folder {live} is a symbolic link: point the configuration at the real "
                           "folder; nothing was touched")
    if live.is_dir() and _is_mount_point(live):
        if not os.access(live, os.W_OK | os.X_OK):
            raise RestoreError(f"no write permission in the uploads folder {live}; nothing was touched")
        return {"mode": "contents", "live": str(live), "staging": str(live / f"{journal.OURS}-restoring-{stamp}"),
                "previous": str(live / f"{journal.OURS}{PRE_RESTORE}{stamp}")}
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RestoreError(f"no write permission in {parent} to swap the uploads folder; nothing was touched")
    previous = live.with_name(f"{live.name}{PRE_RESTORE}{stamp}") if live.exists() else None
    return {"mode": "rename", "live": str(live), "staging": str(live.with_name(f"{live.name}.restoring-{stamp}")),
            "previous": str(previous) if previous else None}


def _uploads_filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    """tarfile's ``data`` filter (no ``..`` or links out, no devices or FIFOs), absolute names refused
    rather than stripped, owners kept as in the archive."""
    if member.name.startswith("/"):
        raise tarfile.AbsolutePathError(member)
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        raise tarfile.SpecialFileError(member)
    safe = tarfile.data_filter(member, dest)
    return safe.replace(uid=member.uid, gid=member.gid, uname=member.uname, gname=member.gname, deep=False)


def _stage_uploads(backup: BackupSet, u: dict[str, Any], report: Reporter) -> None:
    """Unpack the backup's uploads into the staging folder (same filesystem as the live folder), with
    Python's tarfile and a filter that refuses anything hostile; checked against the manifest."""
    archive = backup.file("uploads")
    assert archive is not None
    staging = Path(u["staging"])
    staging.mkdir(mode=0o755)
    try:
        proc = spawn(decompressor(backup.compression, archive), stdout=subprocess.PIPE)
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                for member in tar:
                    tar.extract(member, staging, filter=_uploads_filter, numeric_owner=True)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        files = sum(not os.path.islink(os.path.join(d, f)) for d, _, names in os.walk(staging) for f in names)
        expected = (backup.manifest.get("uploads") or {}).get("files")  # regular files: links are not counted
        if expected is not None and files != expected:
            raise RestoreError(f"the uploads archive holds {files} files, the manifest says {expected}")
    except tarfile.FilterError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise BackupCorrupt(f"the uploads archive of {backup.id} holds a hostile entry ({exc}): refused; "
                            "the live database and uploads were not touched") from None
    except tarfile.TarError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise BackupCorrupt(f"the uploads archive of {backup.id} cannot be read ({exc}); the live database and "
                            "uploads were not touched") from None
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if exc.errno == errno.ENOSPC:
            free = shutil.disk_usage(staging.parent).free
            raise StorageFull(f"the uploads folder's filesystem is full while unpacking the backup's uploads "
                              f"({human_bytes(free)} free): the staging folder was removed; the live database "
                              "and uploads were not touched") from None
        raise RestoreError(f"unpacking the uploads failed ({exc}); the live database and uploads were not "
                           "touched") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    report.info(f"unpacked {files} upload files beside {Path(u['live']).name}")


def _swap_uploads(settings: Settings, runtime: Runtime, state: dict[str, Any], report: Reporter) -> None:
    """Swap the staged uploads in; when that fails, put the uploads back and undo the database swap,
    so rows and files change together or not at all."""
    u = state["uploads"]
    state["phase"] = "uploads"
    journal.write(settings, state)
    try:
        try:
            uploads_forward(u, mark=lambda: journal.write(settings, state))
        finally:
            runtime.uploads_replaced(report)  # bind mounts follow the folder they were given, not its name
    except OSError as exc:
        notes: list[str] = []
        state["phase"] = "undo"
        _note(notes, "writing the journal", journal.write, settings, state)
        try:
            journal._finish(settings, runtime, state)
            journal.clear(settings)
        except (StackopsError, pg.Error, OSError) as again:
            raise RestoreError(_noted(
                f"swapping the uploads folder failed ({exc}) and undoing the database swap failed too "
                f"({pg.first_line(again)}): the next stackops command undoes it (journal kept)", notes)) from None
        raise RestoreError(_noted(f"swapping the uploads folder failed ({exc}); the database swap was undone: "
                                  "the live database and uploads are unchanged", notes)) from None
    report.info(f"swapped in the restored uploads; the previous ones are kept as {u['previous']}")


def _source(settings: Settings, ref: str, uploads: bool, report: Reporter) -> BackupSet | Path:
    """The backup set ``ref`` names, or the guide-format dump file it is; refused when ``uploads`` are
    asked of something that holds none."""
    if is_plain_dump(ref):
        if uploads:
            raise BackupError(f"{ref} is a database-only dump: use `invoke restore.db {ref}`")
        return Path(ref)
    backup = find_backup(settings, ref, report)
    if uploads and backup.file("uploads") is None:
        raise BackupError(f"backup {backup.id} is a {backup.kind} backup without uploads: use "
                          f"`invoke restore.db {backup.id}` or pick a full backup")
    return backup


def restore_plan(settings: Settings, runtime: Runtime, ref: str, *, report: Reporter, uploads: bool = False,
                 newest_migration: str | None = None, skip_space_check: bool = False) -> Plan:
    """What a restore would do, after running every check it would run first (nothing is touched)."""
    env = settings.env
    live = env.db_name
    found = _source(settings, ref, uploads, report)
    if isinstance(found, Path):
        check_plain_dump(found)
        source = ref
    else:
        preflight(settings, runtime, found, report, newest_migration)
        source = found.id
    try:
        room, _ = _room_on_server(runtime, found, live, report, uploads=uploads, skip=skip_space_check)
    except pg.Error as exc:
        raise RestoreError(f"the database server failed before anything was touched ({pg.first_line(exc)})") \
            from None
    what = f"{live}{' and its uploads' if uploads else ''}"
    steps = [f"check the server's disk: {room}",
             f"load {source} into a new database beside {live} and check its row counts",
             f"swap it in; keep the current {live} as {kept_prefix(live)}<timestamp>"]
    if isinstance(found, Path):
        steps[1] = (f"load {source} into a new database beside {live}, show its row counts (an old-format dump "
                    "has no manifest to check them against) and ask before swapping")
    destroys = [f"the live database {live} is replaced (kept as {kept_prefix(live)}<timestamp>)"]
    if uploads:
        steps.append(f"unpack the uploads beside {env.uploads_dir}, swap them in, keep the current "
                     f"folder as {env.uploads_dir.name}{PRE_RESTORE}<timestamp>")
        destroys.append(f"the uploads folder {env.uploads_dir} is replaced (kept beside it)")
    return Plan(f"restoring {source} over {what}", env.name, env.protected, steps, destroys)


def restore_database(settings: Settings, runtime: Runtime, ref: str, *, report: Reporter,
                     uploads: bool = False, newest_migration: str | None = None,
                     approve: Callable[[Plan], None] | None = None,
                     skip_space_check: bool = False) -> RestoreResult:
    """Restore a backup set (or a guide-format ``*.sql.gz``) over the environment's database,
    and with ``uploads`` its uploads folder too. Confirmation is the caller's (the cli's plan flow);
    for a dump without a manifest, ``approve`` is called with a plan of the row counts about to be
    swapped in (it raises to refuse; None: the caller has approved already). Refused (StorageFull)
    before anything is created when the server's disk has no room for the copy, unless
    ``skip_space_check``."""
    started = time.monotonic()
    live = settings.env.db_name
    with env_lock(settings.env.backups_dir, "restore"):
        journal.recover(settings, runtime, report)
        try:
            backup = _source(settings, ref, uploads, report)
            if isinstance(backup, Path):
                return _restore_plain(settings, runtime, backup, report, started, approve, skip_space_check)
            # restore.db of a full set: the uploads archive's sha256 is read while the database loads (below)
            later = () if uploads or backup.file("uploads") is None else ("uploads",)
            preflight(settings, runtime, backup, report, newest_migration, streamed=("database", *later))
            _preflight_swap(runtime, live)
            _, need = _room_on_server(runtime, backup, live, report, uploads=uploads, skip=skip_space_check)
            u = _uploads_plan(settings) if uploads else None
            target = _create_side(runtime, live)
        except pg.Error as exc:
            raise RestoreError(f"the database server failed before anything was touched ({pg.first_line(exc)})") \
                from None
        checking = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256")
        try:
            # checked before the swap like every other file; a mismatch drops the loaded copy (below)
            later_checks = [checking.submit(StreamedFile(backup, role).read_and_check) for role in later]
            load_archive(runtime, backup, target, report, reserve=need)
            counts = compare_counts(runtime, target, backup.manifest["row_counts"])
            report.info(f"row counts match the backup for {len(counts)} tables")
            for done in later_checks:
                done.result()
            if u is not None:  # staged before anything live is swapped, so rows and files change together
                _stage_uploads(backup, u, report)
        except BaseException as exc:
            notes: list[str] = []
            _note(notes, f"dropping the loaded copy {target}", pg.drop_database, runtime, target)
            if isinstance(exc, CommandFailed | pg.Error | ServiceError):
                raise RestoreError(_noted(f"loading {backup.id} failed, the live database {live} is unchanged: "
                                          f"{pg.first_line(exc)}", notes)) from None
            if isinstance(exc, StackopsError) and notes:
                raise type(exc)(_noted(str(exc), notes)) from None
            raise
        finally:
            checking.shutdown(wait=True)
        state: dict[str, Any] = {"live": live, "new": target, "previous": side_name(live, PRE_RESTORE.strip("_")),
                                 "phase": "db", "uploads": u, "pid": os.getpid(), "source": backup.id}
        try:
            _swap_database(settings, runtime, state, report)
        except BaseException:
            if u is not None and Path(u["staging"]).exists():
                shutil.rmtree(u["staging"], ignore_errors=True)
            raise
        if u is not None:
            _swap_uploads(settings, runtime, state, report)
        journal.clear(settings)
        return RestoreResult(backup.id, live, state["previous"], u["live"] if u else None,
                             u["previous"] if u else None, counts, round(time.monotonic() - started, 3))


def _restore_plain(settings: Settings, runtime: Runtime, path: Path, report: Reporter, started: float,
                   approve: Callable[[Plan], None] | None, skip_space_check: bool) -> RestoreResult:
    """The old shell script's ``database_backup_*.sql.gz``: plain SQL, checked whole and complete, loaded
    beside with ON_ERROR_STOP, required to hold user tables, and its row counts approved before the swap."""
    check_plain_dump(path)
    live = settings.env.db_name
    _preflight_swap(runtime, live)
    _room_on_server(runtime, path, live, report, uploads=False, skip=skip_space_check)
    target = _create_side(runtime, live)
    try:
        report.step(f"loading plain SQL dump {path.name} into {target}")
        psql = runtime.pg_cmd("psql").with_args("-X", "-q", "-v", "ON_ERROR_STOP=1", "--no-password",
                                                 "-d", target, "-f", "-")
        size, t0 = path.stat().st_size, time.monotonic()
        pipeline([Cmd(["gzip", "-dc", str(path)]), psql],
                 watch=lambda read, _w: report.progress("loading", read, t0, total=size))
        report.progress("loading", size, t0, final=True, total=size)
        with pg.connect(runtime, target) as conn:
            counts = pg.table_counts(conn)
        if not counts:
            raise BackupCorrupt(f"{path.name} loaded no user tables (an empty schema): refusing to swap it in; "
                                f"the live database {live} is unchanged")
        env = settings.env
        if approve is not None:
            approve(Plan(f"swapping in {path.name} (no manifest) over {live}", env.name, env.protected,
                         [f"swap in {sum(counts.values())} rows in {len(counts)} tables: " +
                          ", ".join(f"{t} {n}" for t, n in sorted(counts.items()))],
                         [f"the live database {live} is replaced (kept as {kept_prefix(live)}<timestamp>)"],
                         ["an old-format dump has no manifest: check these row counts before going on"],
                         always_confirm=True))
    except BaseException as exc:
        notes: list[str] = []
        _note(notes, f"dropping the loaded copy {target}", pg.drop_database, runtime, target)
        if isinstance(exc, CommandFailed | pg.Error | ServiceError):
            raise RestoreError(_noted(f"loading {path.name} failed, the live database {live} is unchanged: "
                                      f"{pg.first_line(exc)}", notes)) from None
        raise
    state: dict[str, Any] = {"live": live, "new": target, "previous": side_name(live, PRE_RESTORE.strip("_")),
                             "phase": "db", "uploads": None, "pid": os.getpid(), "source": str(path)}
    _swap_database(settings, runtime, state, report)
    journal.clear(settings)
    return RestoreResult(str(path), live, state["previous"], None, None, counts, round(time.monotonic() - started, 3))


# ----- copies kept by earlier restores, and side copies left by killed ones ------------------------
def _operation_running(settings: Settings) -> bool:
    try:
        with env_lock(settings.env.backups_dir, "listing kept copies"):
            return False
    except LockBusy:
        return True


def previous_copies(settings: Settings, runtime: Runtime) -> list[dict[str, Any]]:
    """Databases and uploads folders kept by earlier restores (newest first), then the scratch copies
    that a killed restore or verify left (kind ``interrupted``; ``in use`` while an operation runs).

    Only names stackops makes are listed: the whole name must be what ``side_name`` builds, never just
    its beginning (``<db>_verify_results`` is someone's database). When another database shares the
    first ``NAME_ROOM`` characters of this one's name, its copies are named alike: scratch copies are
    then of kind ``unclear`` (never dropped by ``restore.clean``), and every copy names the other
    databases under ``shared_with``."""
    live = settings.env.db_name
    try:
        names = pg.database_names(runtime)
        kept = [n for n in names if kept_names(live).fullmatch(n)]
        side = [n for n in names if side_names(live).fullmatch(n)]
        sizes = pg.database_sizes(runtime, kept + side)
    except pg.Error as exc:
        raise DatabaseUnavailable(f"the database server failed while listing copies ({pg.first_line(exc)})") \
            from None
    running = _operation_running(settings)
    shared = sharing_names(live, names)
    extra: dict[str, Any] = {"shared_with": shared} if shared else {}
    side_kind = "unclear" if shared else "in use" if running else "interrupted"
    out: list[dict[str, Any]] = [{"kind": "database", "name": n, "size": sizes.get(n, 0), **extra}
                                 for n in sorted(kept, reverse=True) if n in sizes]
    out += [{"kind": side_kind, "name": n, "size": sizes.get(n, 0), **extra}
            for n in sorted(side, reverse=True) if n in sizes]
    return out + _upload_copies(settings, running)


def _folders(parent: Path, prefix: str, stamped: str) -> list[Path]:
    """Real folders (never links, never files) in ``parent`` named ``prefix`` + a restore's time stamp:
    only what a restore made is ever offered for deletion."""
    if not parent.is_dir() or parent.is_symlink():
        return []
    pattern = re.compile(re.escape(prefix) + stamped)
    return sorted((p for p in parent.iterdir() if pattern.fullmatch(p.name) and p.is_dir() and not p.is_symlink()),
                  reverse=True)


def _upload_copies(settings: Settings, running: bool) -> list[dict[str, Any]]:
    """Uploads folders kept by earlier restores, and the staging folders a killed restore left."""
    up = settings.env.uploads_dir
    stamp = r"\d{14}"
    kept = _folders(up.parent, f"{up.name}{PRE_RESTORE}", stamp) + _folders(up, f"{journal.OURS}{PRE_RESTORE}", stamp)
    staged = _folders(up.parent, f"{up.name}.restoring-", stamp) + _folders(up, f"{journal.OURS}-restoring-", stamp)
    return ([{"kind": "uploads", "name": str(p), "size": dir_size(p)} for p in kept]
            + [{"kind": "in use" if running else "interrupted uploads", "name": str(p), "size": dir_size(p)}
               for p in staged])


def drop_previous_plan(settings: Settings, runtime: Runtime, name: str) -> Plan:
    known = {c["name"]: c for c in previous_copies(settings, runtime)}
    if name not in known:
        raise BackupNotFound(f"{name!r} is not a copy kept by a restore: see `invoke restore.previous`")
    if known[name]["kind"] == "in use":
        raise LockBusy(f"{name} belongs to a restore or verify that is running now; nothing was touched")
    env = settings.env
    what = ("a scratch copy a killed restore or verify left" if known[name]["kind"].startswith("interrupted")
            else "a scratch copy a restore or verify made" if known[name]["kind"] == "unclear"
            else "a copy an earlier restore kept")
    if known[name].get("shared_with"):
        what += (f" of {env.db_name} or of {pg.listed(known[name]['shared_with'])} (their names share the first "
                 f"{NAME_ROOM} characters): check it is not theirs, nor in use")
    return Plan(f"removing {name}", env.name, env.protected, [f"remove the {known[name]['kind']} {name}"],
                [f"{name}: {what} (it cannot be brought back)"])


def drop_previous(settings: Settings, runtime: Runtime, name: str, report: Reporter) -> None:
    """Remove one copy listed by previous_copies (refuses anything else), holding the environment's lock."""
    with env_lock(settings.env.backups_dir, "removing a kept copy"):
        known = {c["name"]: c for c in previous_copies(settings, runtime)}
        if name not in known:
            raise BackupNotFound(f"{name!r} is not a copy kept by a restore: see `invoke restore.previous`")
        if known[name]["kind"] in FOLDER_KINDS:
            shutil.rmtree(name)
        else:
            pg.drop_database(runtime, name)
        report.step(f"removed {name}")


def clean_plan(settings: Settings, runtime: Runtime) -> tuple[Plan, list[str]]:
    """Every scratch copy that killed restores and verifies left: the plan to drop them, and their names."""
    copies = previous_copies(settings, runtime)
    names = [c["name"] for c in copies if c["kind"].startswith("interrupted")]
    env = settings.env
    busy = [c["name"] for c in copies if c["kind"] == "in use"]
    unclear = [c for c in copies if c["kind"] == "unclear"]
    nothing = "" if names else ("nothing to clean: no scratch copy left by an interrupted restore or verify" +
                                (f" ({len(busy)} in use by the operation running now)" if busy else ""))
    left = ([f"{len(unclear)} scratch database(s) named like {env.db_name}'s copies may belong to "
             f"{pg.listed(unclear[0]['shared_with'])} (same first {NAME_ROOM} characters): not dropped; see "
             "`invoke restore.previous` and drop one by name with `invoke restore.drop-previous`"] if unclear else [])
    if nothing and left:
        nothing += f"; {left[0]}"
    return Plan(f"dropping {len(names)} scratch database(s) left by interrupted restores or verifies", env.name,
                env.protected, [f"drop {n}" for n in names],
                [f"{n}: a half-loaded scratch copy of a backup (the backup itself is kept)" for n in names],
                left, nothing_to_do=nothing), names


def clean(settings: Settings, runtime: Runtime, names: list[str], report: Reporter) -> None:
    for name in names:
        drop_previous(settings, runtime, name, report)
