"""Backup sets: one folder per backup, written under a temporary name, fsynced, then renamed.

A set holds the database as a pg_dump custom-format archive (uncompressed by pg_dump, streamed
through zstd, or gzip when zstd is missing), the cluster's globals (roles without passwords),
for full backups the uploads folder as one archive taken from the same point in time as the
database snapshot, and a manifest that checksums all of them and itself.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stackops import __version__
from stackops.config import Settings
from stackops.errors import StackopsError
from stackops.files import atomic_write, canonical_json, fsync_dir, private_dir, sha256_file
from stackops.lock import env_lock
from stackops.proc import Cmd, pipeline, text
from stackops.report import Reporter
from stackops.runtime import Runtime

FORMAT = "stackops-backup/1"
KINDS = ("full", "db", "pre_migration")
MANIFEST = "manifest.json"
VERIFICATION = "verification.json"
TMP_PREFIX = ".tmp-"


class BackupError(StackopsError):
    """A backup could not be taken."""


class BackupCorrupt(StackopsError):
    """A backup failed its checks (checksums, sizes, manifest); nothing was touched."""

    exit_code = 7


class BackupNotFound(StackopsError):
    exit_code = 8


class VersionMismatch(StackopsError):
    """Client and server (or backup and server) PostgreSQL versions do not fit together."""


@dataclass(frozen=True)
class BackupSet:
    id: str
    path: Path
    manifest: dict[str, Any]
    verification: dict[str, Any] | None

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    @property
    def started_at(self) -> datetime:
        return datetime.fromisoformat(self.manifest["started_at"])

    @property
    def size(self) -> int:
        return sum(int(f["size"]) for f in self.manifest["files"].values())

    def file(self, role: str) -> Path | None:
        for name, entry in self.manifest["files"].items():
            if entry["role"] == role:
                return self.path / str(name)
        return None


# ----- compression -------------------------------------------------------------------------------
def compressor() -> tuple[str, list[str]]:
    """(name, argv) of the streaming compressor: zstd on all cores, else gzip."""
    if shutil.which("zstd"):
        return "zstd", ["zstd", "-q", "-3", "-T0", "-c"]
    return "gzip", ["gzip", "-c", "-3"]


def decompressor(name: str, path: Path) -> Cmd:
    if name == "zstd":
        if not shutil.which("zstd"):
            raise BackupError("the backup is zstd-compressed but zstd is not installed: "
                              "install it with `apt-get install -y zstd`")
        return Cmd(["zstd", "-q", "-dc", str(path)])
    if name == "gzip":
        return Cmd(["gzip", "-dc", str(path)])
    return Cmd(["cat", str(path)])


# ----- manifest ----------------------------------------------------------------------------------
def seal(manifest: dict[str, Any]) -> dict[str, Any]:
    """Add the manifest's own checksum (over its canonical JSON without that field)."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return {**body, "manifest_sha256": hashlib.sha256(canonical_json(body)).hexdigest()}


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of ``folder`` after checking its format and its own checksum."""
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise BackupCorrupt(f"{folder} has no {MANIFEST}: it is not a complete stackops backup") from None
    except (OSError, ValueError) as exc:
        raise BackupCorrupt(f"{path} cannot be read as JSON ({exc}): the backup is damaged") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupCorrupt(f"{path} was not written by stackops (format {FORMAT} expected)")
    if seal(manifest)["manifest_sha256"] != manifest.get("manifest_sha256"):
        raise BackupCorrupt(f"{path} was modified after the backup was written (its checksum does not match): "
                            "refusing to use it")
    return manifest


def check_files(backup: BackupSet, report: Reporter | None = None) -> None:
    """Every file the manifest names exists with its size and sha256; raise BackupCorrupt otherwise."""
    for name, entry in backup.manifest["files"].items():
        path = backup.path / name
        if not path.is_file():
            raise BackupCorrupt(f"backup {backup.id}: {name} is missing; the backup cannot be used")
        size = path.stat().st_size
        if size != entry["size"]:
            raise BackupCorrupt(f"backup {backup.id}: {name} is {size} bytes, the manifest says {entry['size']} "
                                "(truncated or replaced); the backup cannot be used")
        if sha256_file(path) != entry["sha256"]:
            raise BackupCorrupt(f"backup {backup.id}: {name} does not match its sha256 (the file is damaged); "
                                "the backup cannot be used")
    if report is not None:
        report.info(f"checked {len(backup.manifest['files'])} files of {backup.id}: sizes and sha256 match")


def _open_set(folder: Path) -> BackupSet:
    manifest = read_manifest(folder)
    verification = None
    vpath = folder / VERIFICATION
    if vpath.exists():
        try:
            verification = json.loads(vpath.read_text())
        except ValueError:
            verification = None
    return BackupSet(folder.name, folder, manifest, verification)


def list_backups(settings: Settings) -> list[BackupSet]:
    """Complete backups of the environment, newest first (folders in progress are never listed)."""
    folder = settings.env.backups_dir
    if not folder.is_dir():
        return []
    sets = []
    for child in folder.iterdir():
        if child.name.startswith(".") or not child.is_dir():
            continue
        try:
            sets.append(_open_set(child))
        except BackupCorrupt:
            continue
    return sorted(sets, key=lambda b: b.started_at, reverse=True)


def find_backup(settings: Settings, ref: str) -> BackupSet:
    """A backup by id, folder path, or ``latest``; corrupt manifests raise BackupCorrupt."""
    if ref == "latest":
        sets = list_backups(settings)
        if not sets:
            raise BackupNotFound(f"no backups in {settings.env.backups_dir}: take one with `invoke backup`")
        return sets[0]
    candidate = Path(ref)
    for folder in (settings.env.backups_dir / ref, candidate):
        if folder.is_dir() and not folder.name.startswith("."):
            return _open_set(folder)
    raise BackupNotFound(
        f"backup {ref!r} not found in {settings.env.backups_dir}: see `invoke backup.list --env {settings.env.name}`"
    )


# ----- taking a backup ---------------------------------------------------------------------------
def _major(version_text: str) -> int:
    m = re.search(r"(\d+)(?:\.\d+)?", version_text)
    if not m:
        raise VersionMismatch(f"cannot read a PostgreSQL version from {version_text!r}")
    return int(m.group(1))


def client_version(runtime: Runtime, tool: str, server_major: int) -> str:
    """The tool's version text; refuse a client older than the server before anything starts."""
    version = text(runtime.pg_cmd(tool).with_args("--version"))
    if _major(version) < server_major:
        raise VersionMismatch(
            f"{tool} is version {_major(version)} but the server is PostgreSQL {server_major}: an older "
            f"{tool} cannot read a newer server safely; install postgresql-client-{server_major}"
        )
    return version


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


def _new_id(folder: Path, kind: str, now: datetime) -> str:
    base = f"{kind}_{now.strftime('%Y%m%dT%H%M%SZ')}"
    candidate, n = base, 1
    while (folder / candidate).exists():
        candidate, n = f"{base}-{n}", n + 1
    return candidate


def _remove_stale_tmp(folder: Path, report: Reporter) -> None:
    """Folders of backups that never finished (crash, kill -9): we hold the lock, so none is in progress."""
    for child in folder.iterdir():
        if child.name.startswith(TMP_PREFIX) and child.is_dir():
            report.warn(f"removing unfinished backup folder {child.name} left by an interrupted run")
            shutil.rmtree(child, ignore_errors=True)


def table_counts(conn: Any) -> dict[str, int]:
    """Row count of every user table, as seen by ``conn``'s snapshot."""
    from psycopg import sql

    rows = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
        "AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%' ORDER BY 1, 2"
    ).fetchall()
    counts = {}
    for schema, table in rows:
        q = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
        counts[f"{schema}.{table}"] = int(conn.execute(q).fetchone()[0])
    return counts


def migration_head(conn: Any) -> str | None:
    exists = conn.execute("SELECT to_regclass('public.schema_migrations') IS NOT NULL").fetchone()[0]
    if not exists:
        return None
    row = conn.execute("SELECT max(version)::text FROM public.schema_migrations").fetchone()
    return row[0] if row else None


def create_backup(settings: Settings, runtime: Runtime, *, kind: str = "full",
                  report: Reporter, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> BackupSet:
    """Take a backup of ``kind`` (full: database + uploads; db and pre_migration: database only)."""
    import psycopg

    if kind not in KINDS:
        raise BackupError(f"unknown backup kind {kind!r}: accepted values are {', '.join(KINDS)}")
    env = settings.env
    folder = private_dir(env.backups_dir)
    with env_lock(folder, f"backup ({kind})"):
        _remove_stale_tmp(folder, report)
        started = now()
        t0 = time.monotonic()
        backup_id = _new_id(folder, kind, started)
        tmp = folder / f"{TMP_PREFIX}{backup_id}"
        tmp.mkdir(mode=0o700)
        try:
            manifest = _take(settings, runtime, kind, report, tmp, backup_id, started, psycopg)
            manifest["finished_at"] = now().isoformat()
            manifest["duration_s"] = round(time.monotonic() - t0, 3)
            atomic_write(tmp / MANIFEST, json.dumps(seal(manifest), indent=2, sort_keys=True).encode())
            fsync_dir(tmp)
            final = folder / backup_id
            os.rename(tmp, final)
            fsync_dir(folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        report.step(f"backup {backup_id} complete: {len(manifest['files'])} files, "
                    f"{sum(f['size'] for f in manifest['files'].values())} bytes, {manifest['duration_s']}s")
        return _open_set(final)


def _take(settings: Settings, runtime: Runtime, kind: str, report: Reporter, tmp: Path, backup_id: str,
          started: datetime, psycopg: Any) -> dict[str, Any]:
    env = settings.env
    comp_name, comp_argv = compressor()
    files: dict[str, dict[str, Any]] = {}
    uploads_info: dict[str, Any] | None = None
    with psycopg.connect(**runtime.conninfo()) as conn:
        server_major = conn.info.server_version // 10000
        server_version = conn.info.parameter_status("server_version")
        dump_version = client_version(runtime, "pg_dump", server_major)
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
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
        ext = ".zst" if comp_name == "zstd" else ".gz"
        dump_name = f"database.dump{ext}"
        dump = runtime.pg_cmd("pg_dump").with_args("--format=custom", "--compress=0", f"--snapshot={snapshot}",
                                                   "--dbname", env.db_name)
        # row counts and migration head are read in the same snapshot while pg_dump streams
        with ThreadPoolExecutor(max_workers=1) as pool:
            counted = pool.submit(lambda: (table_counts(conn), migration_head(conn)))
            files[dump_name] = {"role": "database", **_stream([dump, Cmd(comp_argv)], tmp / dump_name, report,
                                                              "database")}
            counts, head = counted.result()
    # the snapshot may close now: uploads are already frozen by the hard links
    globals_cmd = runtime.pg_cmd("pg_dumpall").with_args("--globals-only", "--no-role-passwords")
    files["globals.sql"] = {"role": "globals", **_stream([globals_cmd], tmp / "globals.sql", report, "globals")}
    if kind == "full":
        tar = Cmd(["tar", "-C", str(snap_uploads), "--sort=name", "--numeric-owner", "-cf", "-", "."])
        name = f"uploads.tar{ext}"
        files[name] = {"role": "uploads", **_stream([tar, Cmd(comp_argv)], tmp / name, report, "uploads")}
        shutil.rmtree(snap_uploads)
    return {
        "format": FORMAT,
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


# ----- retention ---------------------------------------------------------------------------------
def prune(settings: Settings, *, report: Reporter, dry_run: bool = False,
          now: datetime | None = None) -> list[Any]:
    """Apply the retention policy: decide for every complete backup, then delete the obsolete ones
    (only folders carrying a manifest this tool wrote). Returns the decisions."""
    from stackops.retention import BackupRecord, plan

    folder = settings.env.backups_dir
    if not folder.is_dir():
        return []
    with env_lock(folder, "prune"):
        sets = {b.id: b for b in list_backups(settings)}
        records = [
            BackupRecord(
                id=b.id, started_at=b.started_at, kind=b.kind, complete=True,
                verified_ok=(b.verification or {}).get("ok"),
                verified_at=datetime.fromisoformat(b.verification["verified_at"]) if b.verification else None,
            )
            for b in sets.values()
        ]
        try:
            decisions = plan(records, now or datetime.now(UTC), settings.retention)
        except ValueError as exc:
            raise BackupError(f"cannot apply retention in {folder}: {exc}") from exc
        for d in decisions:
            if d.keep:
                continue
            target = sets[d.backup.id]
            if dry_run:
                report.info(f"would delete {target.id}: {'; '.join(d.reasons)}")
                continue
            read_manifest(target.path)  # re-check: only ever delete what this tool wrote
            trash = folder / f"{TMP_PREFIX}delete-{target.id}"
            os.rename(target.path, trash)  # disappears from `list` at once; then removed
            shutil.rmtree(trash)
            report.info(f"deleted {target.id}: {'; '.join(d.reasons)}")
        fsync_dir(folder)
        return decisions
