"""The on-disk format of a backup set: the only module that knows it.

One folder per backup under the environment's backups folder, ``<kind>_<UTC time>/``, holding the
database as a pg_dump custom archive streamed through zstd (gzip when zstd is missing), the
cluster's globals, for full backups the uploads as one archive, ``manifest.json`` (every file's
size and sha256, and its own checksum) and, once verified, ``verification.json``. A set is written
under ``.tmp-<id>`` and renamed when whole, so a folder without the prefix and with a sealed
manifest is complete; anything else is in progress, interrupted or damaged.

Here: the manifest (seal / read), file checks, the compression choice, ids and temporary names,
and list / find / delete of sets.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stackops.config import Settings
from stackops.errors import BackupCorrupt, BackupError, BackupNotFound, PrerequisiteError, last_line
from stackops.files import CHUNK, atomic_write, canonical_json, fsync_dir, private_dir, sha256_file, stale_atomic_tmp
from stackops.proc import Cmd, spawn
from stackops.report import Check, Reporter

FORMAT = "stackops-backup/1"
MANIFEST = "manifest.json"
VERIFICATION = "verification.json"
TMP_PREFIX = ".tmp-"
# what each kind of backup holds: retention keeps every part protected on its own
COVERS: dict[str, tuple[str, ...]] = {
    "full": ("database", "globals", "uploads"),
    "db": ("database", "globals"),
    "pre_migration": ("database", "globals"),
}
KINDS = tuple(COVERS)


@dataclass(frozen=True)
class BackupSet:
    """A complete set. ``listing`` True: from ``scan(..., listing=True)``, whose ``manifest`` holds only the
    fields a listing shows (``LISTED``); anything that reads or restores the set opens it with ``open_set``."""

    id: str
    path: Path
    manifest: dict[str, Any]
    verification: dict[str, Any] | None
    listing: bool = False

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    @property
    def covers(self) -> tuple[str, ...]:
        return COVERS.get(self.kind, ())

    @property
    def started_at(self) -> datetime:
        return datetime.fromisoformat(self.manifest["started_at"])

    @property
    def size(self) -> int:
        return sum(int(f["size"]) for f in self.manifest["files"].values())

    @property
    def compression(self) -> str:
        return str(self.manifest["compression"])

    def file(self, role: str) -> Path | None:
        for name, entry in self.manifest["files"].items():
            if entry["role"] == role:
                return self.path / str(name)
        return None


@dataclass(frozen=True)
class Damaged:
    """A folder in the backups folder that looks like a backup but cannot be used, and why."""

    id: str
    path: Path
    reason: str


# ----- compression -------------------------------------------------------------------------------
def zstd_level(cores: int | None = None) -> int:
    """zstd's level for this machine. With two cores or fewer, compression competes with pg_dump and
    the server for the CPU: level 2 (about 40 % less CPU than 3 on ImpactBot data, archives ~3 %
    larger, still within 1.1x the guide's gzip -6). With more cores zstd's threads keep up: level 3."""
    n = cores if cores is not None else (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                         else os.cpu_count() or 1)
    return 2 if n <= 2 else 3


def compressor(*, fast: bool = False) -> tuple[str, str, list[str]]:
    """(name, file suffix, argv) of the streaming compressor: zstd on all cores, else gzip. Any level
    reads back with the same decompressor, so sets taken before stay readable.

    ``fast``: for the uploads, mostly already-compressed files (jpeg, png, pdf, zip, docx) that no level
    shrinks: zstd ``--fast=1`` (measured on the scale-0.1 uploads, 80 % binaries: 0.20 s of CPU against
    0.245 s at level 2, archive 2.8 % larger), gzip ``-1``."""
    if shutil.which("zstd"):
        return "zstd", ".zst", ["zstd", "-q", "--fast=1" if fast else f"-{zstd_level()}", "-T0", "-c"]
    return "gzip", ".gz", ["gzip", "-c", "-1" if fast else "-3"]


def decompressor(name: str, path: Path | None) -> Cmd:
    """The command that decompresses ``path`` to stdout (``path`` None: its stdin)."""
    src = [] if path is None else [str(path)]
    if name == "zstd":
        if not shutil.which("zstd"):
            raise PrerequisiteError("the backup is zstd-compressed but zstd is not installed: "
                                    "install it with `apt-get install -y zstd`")
        return Cmd(["zstd", "-q", "-dc", *src])
    if name == "gzip":
        return Cmd(["gzip", "-dc", *src])
    return Cmd(["cat", *src])


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
    problem = _malformed(manifest)
    if problem:
        raise BackupCorrupt(f"{path} is malformed ({problem}): refusing to use it")
    return manifest


SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def plain_name(name: object) -> bool:
    """A file name a command may write inside a set's folder: never a path, ``..``, a hidden name or a NUL."""
    return isinstance(name, str) and "/" not in name and "\\" not in name and "\0" not in name \
        and name not in ("", ".", "..") and not name.startswith(".")


def sized_and_hashed(entry: object) -> bool:
    """A file entry with a size (an int >= 0) and a sha256 (64 lower-case hex digits)."""
    return isinstance(entry, dict) and isinstance(entry.get("size"), int) and not isinstance(entry["size"], bool) \
        and entry["size"] >= 0 and bool(SHA256_HEX.match(str(entry.get("sha256", ""))))


def malformed_head(m: dict[str, Any]) -> str:
    """What is wrong with the fields a manifest and a remote index share, kind and started_at ("" when
    nothing)."""
    if m.get("kind") not in KINDS:
        return f"kind {m.get('kind')!r} is not one of {', '.join(KINDS)}"
    try:
        started = datetime.fromisoformat(str(m.get("started_at")))
    except ValueError:
        return f"started_at {m.get('started_at')!r} is not a time"
    if started.tzinfo is None:
        return f"started_at {m.get('started_at')!r} has no time zone"
    return ""


def _malformed(m: dict[str, Any]) -> str:
    """What is wrong with a manifest's fields ("" when nothing): its checksum proves no edit by accident,
    not that an edited one was re-sealed with sense, so every field a command reads is checked."""
    head = malformed_head(m)
    if head:
        return head
    if not isinstance(m.get("duration_s"), int | float) or isinstance(m.get("duration_s"), bool):
        return "duration_s is not a number"
    files = m.get("files")
    if not isinstance(files, dict):
        return "files is not a mapping"
    for name, entry in files.items():
        if not plain_name(name):
            return f"file name {name!r} is not a plain name"
        if not sized_and_hashed(entry) or not isinstance(entry.get("role"), str):
            return f"the entry of {name!r} lacks a role, a size or a sha256"
    size = m.get("database_bytes")  # absent in sets written before it was recorded
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        return "database_bytes is not a size in bytes"
    counts = m.get("row_counts", {})
    if not isinstance(counts, dict) or not all(isinstance(v, int) for v in counts.values()):
        return "row_counts is not a mapping of tables to numbers"
    return ""


def quick_check(backup: BackupSet) -> str:
    """Why the set's files cannot be what its manifest says, by size alone ("" when they can): cheap
    enough for every listing, so that retention and ``latest`` never count a truncated set as whole."""
    for name, entry in backup.manifest["files"].items():
        path = backup.path / name
        try:
            st = path.lstat()
        except OSError:
            return f"{name} is missing"
        if not stat.S_ISREG(st.st_mode):
            return f"{name} is not a regular file"
        if st.st_size != entry["size"]:
            return f"{name} is {st.st_size} bytes, the manifest says {entry['size']} (truncated or replaced)"
    return ""


def check_files(backup: BackupSet, report: Reporter | None = None, streamed: tuple[str, ...] = ()) -> None:
    """Every file the manifest names exists with its size and sha256; raise BackupCorrupt otherwise.

    Files whose role is in ``streamed`` are checked for presence and size only here: their caller
    reads them once through ``StreamedFile``, which hashes the bytes it hands out and raises
    BackupCorrupt at the end when they differ from the manifest (so a load into a side database
    checks the sha256 in the same read, and the side database is dropped on a mismatch)."""
    hashed: list[tuple[str, Path, str]] = []
    for name, entry in backup.manifest["files"].items():
        path = backup.path / name
        if path.is_symlink() or not path.is_file():
            raise BackupCorrupt(f"backup {backup.id}: {name} is missing; the backup cannot be used")
        size = path.stat().st_size
        if size != entry["size"]:
            raise BackupCorrupt(f"backup {backup.id}: {name} is {size} bytes, the manifest says {entry['size']} "
                                "(truncated or replaced); the backup cannot be used")
        if entry["role"] not in streamed:
            hashed.append((name, path, entry["sha256"]))
    # the files at once, one thread per core (hashlib releases the GIL): the set's largest file bounds
    # the wait instead of the sum of all of them
    workers = min(len(hashed), _cores())
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sha256") as pool:
            digests = list(pool.map(sha256_file, [path for _, path, _ in hashed]))
    else:
        digests = [sha256_file(path) for _, path, _ in hashed]
    for (name, _, expected), digest in zip(hashed, digests, strict=True):
        if digest != expected:
            raise BackupCorrupt(f"backup {backup.id}: {name} does not match its sha256 (the file is damaged); "
                                "the backup cannot be used")
    if report is not None:
        later = f" ({', '.join(streamed)}: sha256 checked while it is read)" if streamed else ""
        report.info(f"checked {len(backup.manifest['files'])} files of {backup.id}: sizes and sha256 match{later}")


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class _Discard:
    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass


class StreamedFile:
    """One file of a set, read once: ``feed(out)`` writes its bytes to ``out`` (a pipe to a
    decompressor) while hashing them; ``check()`` afterwards raises BackupCorrupt unless every byte
    was read and they match the manifest's size and sha256. When the reader stops early (a
    decompressor that failed on damaged bytes), the rest is still hashed, so damage is reported as
    damage and not as the reader's failure."""

    def __init__(self, backup: BackupSet, role: str) -> None:
        found = [(n, e) for n, e in backup.manifest["files"].items() if e["role"] == role]
        if not found:
            raise BackupCorrupt(f"backup {backup.id} has no {role} file")
        self.backup = backup
        self.name, self.entry = found[0]
        self.path = backup.path / self.name
        self.hash = hashlib.sha256()
        self.size = 0
        self.done = False
        self.error: OSError | None = None

    def feed(self, out: Any) -> None:
        """Write the file to ``out`` (then close it); never raises (``check`` reports what went wrong)."""
        writing = True
        try:
            with self.path.open("rb") as f:
                while chunk := f.read(CHUNK):
                    self.hash.update(chunk)
                    self.size += len(chunk)
                    if writing:
                        try:
                            out.write(chunk)
                        except (BrokenPipeError, ValueError):
                            writing = False  # the reader stopped: finish the hash, it says whether bytes are bad
            self.done = True
        except OSError as exc:
            self.error = exc
        finally:
            try:
                out.close()
            except OSError:
                pass

    def read_and_check(self) -> None:
        """Read the whole file only to hash it (no reader), then ``check``: for a file whose sha256 is
        checked while something else runs (restore.db's load) and before anything depends on it."""
        self.feed(_Discard())
        self.check()

    def damaged(self) -> bool:
        """The bytes read so far (all of them, after ``feed``) differ from the manifest."""
        return self.done and (self.size != self.entry["size"] or self.hash.hexdigest() != self.entry["sha256"])

    def check(self) -> None:
        if self.error is not None:
            raise BackupCorrupt(f"backup {self.backup.id}: {self.name} could not be read ({self.error}); "
                                "the backup cannot be used")
        if not self.done or self.damaged():
            raise BackupCorrupt(f"backup {self.backup.id}: {self.name} does not match its sha256 (the file is "
                                "damaged); the backup cannot be used")


def _escapes(member: str, link: str) -> bool:
    """Whether a link archived as ``member`` with target ``link`` leaves the archive's root."""
    if os.path.isabs(link):
        return True
    resolved = os.path.normpath(os.path.join("root", os.path.dirname(member), link))
    return resolved != "root" and not resolved.startswith("root" + os.sep)


def check_uploads(backup: BackupSet) -> Check | None:
    """Every file in the uploads archive against the manifest's per-file size and sha256 (recorded at
    the snapshot): the tar is streamed from the decompressor, nothing is extracted. None for a backup
    without uploads."""
    path = backup.file("uploads")
    if path is None:
        return None
    name = "uploads archive"
    entries = (backup.manifest.get("uploads") or {}).get("entries")
    if entries is None:
        return Check(name, True, "no per-file checksums in this backup's manifest (an older stackops): "
                                 "only the archive's own sha256 was checked")
    seen: dict[str, tuple[int, str]] = {}
    odd: list[str] = []
    source = StreamedFile(backup, "uploads")  # the archive's own sha256, in this same read
    r, w = os.pipe()
    feed_end = os.fdopen(w, "wb")
    feeder = threading.Thread(target=source.feed, args=(feed_end,), name="uploads-feeder", daemon=True)
    with tempfile.TemporaryFile() as err, os.fdopen(r, "rb") as archive_in:
        proc = spawn(decompressor(backup.compression, None), stdin=archive_in, stdout=subprocess.PIPE, stderr=err)
        archive_in.close()
        feeder.start()
        assert proc.stdout is not None
        unreadable: str | None = None
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                for member in tar:
                    key = member.name.removeprefix("./")
                    if member.isfile():
                        f = tar.extractfile(member)
                        assert f is not None
                        h = hashlib.sha256()
                        while chunk := f.read(CHUNK):
                            h.update(chunk)
                        seen[key] = (member.size, h.hexdigest())
                    elif member.issym() and _escapes(key, member.linkname):
                        odd.append(f"{key} (a link to {member.linkname}, outside the uploads: a restore refuses it)")
                    elif not (member.isdir() or member.issym()):
                        odd.append(key)
        except tarfile.TarError as exc:
            unreadable = f"the uploads archive cannot be read as tar ({exc})"
        except BaseException:
            proc.kill()  # do not leave the decompressor behind
            proc.wait()
            raise
        finally:
            proc.stdout.close()
        code = proc.wait()  # -13: it was still writing the end-of-archive padding when the reader stopped
        feeder.join()
        try:
            source.check()
        except BackupCorrupt as exc:
            return Check(name, False, str(exc))
        if code not in (0, -13):
            err.seek(0)
            return Check(name, False, f"the uploads archive cannot be decompressed ({last_line(err.read())})")
        if unreadable is not None:
            return Check(name, False, unreadable)
    differ = sorted(k for k in seen.keys() & entries.keys()
                    if seen[k] != (int(entries[k]["size"]), entries[k]["sha256"]))
    missing = sorted(entries.keys() - seen.keys())
    extra = sorted((seen.keys() - entries.keys()) | set(odd))
    problems = [f"{label}: {', '.join(items[:5])}{' and more' if len(items) > 5 else ''}"
                for label, items in (("other bytes than the manifest", differ), ("missing", missing),
                                     ("not in the manifest", extra)) if items]
    if problems:
        return Check(name, False, f"uploads archive files differ from the manifest's sha256 at the snapshot: "
                                  f"{'; '.join(problems)}", "take a new full backup; do not restore this one's uploads")
    return Check(name, True, f"{len(seen)} upload files match the manifest's sha256")


def open_set(folder: Path) -> BackupSet:
    return BackupSet(folder.name, folder, read_manifest(folder), _verification(folder))


def _verification(folder: Path) -> dict[str, Any] | None:
    try:
        found = json.loads((folder / VERIFICATION).read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


# ----- the listing cache -------------------------------------------------------------------------
# ``backup.list`` over hundreds of sets spent most of its time reading, sealing and checking manifests that
# had not changed. ``.list-cache.json`` in the backups folder keeps, per set, the listed fields of a manifest
# that passed ``read_manifest``, under the key of the manifest file it was read from: device, inode, size,
# mtime and ctime in ns. An edit in place changes the ctime even when the mtime is put back (only the kernel
# sets it), a replacement changes the inode, so any other key means "read it again". A manifest changed
# within RACY_NS of its last change is not cached (a second edit inside one timestamp tick would keep the
# key: git's "racily clean" entries). The cache is a hint: unreadable, malformed or hostile content (wrong
# types, names that are not plain, a link) is ignored and rewritten; a set whose key does not match is read
# as if there were no cache. Whoever can write this file can also rewrite and re-seal a manifest (the seal
# is a checksum, not a signature), so it gives nobody a power they did not have. Every listing still checks
# every file's size (``quick_check``), so a truncated set shows as damaged whatever the cache says.
LIST_CACHE = ".list-cache.json"
LIST_CACHE_FORMAT = "stackops-list-cache/1"
LISTED = ("format", "id", "kind", "started_at", "duration_s", "migration_head", "compression", "files",
          "manifest_sha256")
RACY_NS = 2_000_000_000
_CACHE_MAX = 64 << 20


def _key(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _manifest_key(folder: Path) -> list[int] | None:
    try:
        st = os.stat(folder / MANIFEST, follow_symlinks=False)
    except OSError:
        return None
    return _key(st) if stat.S_ISREG(st.st_mode) else None


def _valid_entry(entry: Any) -> bool:
    if not isinstance(entry, dict):
        return False
    key, listed = entry.get("key"), entry.get("manifest")
    if not (isinstance(key, list) and len(key) == 5 and all(type(k) is int for k in key)):
        return False
    if not isinstance(listed, dict) or set(listed) - set(LISTED) or listed.get("format") != FORMAT:
        return False
    if not isinstance(listed.get("compression"), str) or not SHA256_HEX.match(str(listed.get("manifest_sha256"))):
        return False
    head = listed.get("migration_head")
    return (head is None or isinstance(head, str)) and _malformed(listed) == ""


def _load_cache(folder: Path) -> dict[str, dict[str, Any]]:
    """The cache's entries that are well formed ({} for a missing, unreadable or malformed cache)."""
    try:
        fd = os.open(folder / LIST_CACHE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return {}
    try:
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size > _CACHE_MAX:
                return {}
            data = json.loads(f.read())
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(data, dict) or data.get("format") != LIST_CACHE_FORMAT or not isinstance(data.get("sets"), dict):
        return {}
    return {name: entry for name, entry in data["sets"].items() if _valid_entry(entry)}


def _save_cache(folder: Path, entries: dict[str, dict[str, Any]]) -> None:
    try:
        atomic_write(folder / LIST_CACHE, json.dumps({"format": LIST_CACHE_FORMAT, "sets": entries},
                                                     separators=(",", ":")).encode())
    except OSError:
        pass  # a read-only or full backups folder: list without a cache


def write_verification(folder: Path, result: dict[str, Any]) -> None:
    atomic_write(folder / VERIFICATION, json.dumps(result, indent=2).encode())


# ----- list / find / delete ----------------------------------------------------------------------
def scan(settings: Settings, *, listing: bool = False) -> tuple[list[BackupSet], list[Damaged]]:
    """Complete backups (newest first) and damaged ones (never silently left out). Folders in
    progress (``.tmp-*``) and other dot-folders are neither. ``listing``: sets carry only the listed
    fields of their manifests, through the listing cache (for ``backup.list``)."""
    return scan_folder(settings.env.backups_dir, listing=listing)


def scan_folder(folder: Path, *, listing: bool = False) -> tuple[list[BackupSet], list[Damaged]]:
    """``scan`` of a backups folder given by path (the backup service's health check has no Settings)."""
    if not folder.is_dir():
        return [], []
    sets: list[BackupSet] = []
    damaged: list[Damaged] = []
    cache = _load_cache(folder) if listing else {}
    keep: dict[str, dict[str, Any]] = {}
    now_ns = time.time_ns()
    with os.scandir(folder) as entries:  # the type from the folder listing: no stat per entry
        children = [folder / e.name for e in entries
                    if not e.name.startswith(".") and not e.is_symlink() and e.is_dir(follow_symlinks=False)]
    for child in children:
        key = _manifest_key(child) if listing else None
        hit = cache.get(child.name)
        if key is not None and hit is not None and hit["key"] == key:
            keep[child.name] = hit
            found = BackupSet(child.name, child, hit["manifest"], _verification(child), listing=True)
        else:
            try:
                found = open_set(child)
            except BackupCorrupt as exc:
                damaged.append(Damaged(child.name, child, str(exc)))
                continue
            # cached only when the key is the same after the read (no change while it was read) and settled
            if key is not None and _manifest_key(child) == key and now_ns - key[4] > RACY_NS:
                listed = {k: found.manifest[k] for k in LISTED if k in found.manifest}
                keep[child.name] = {"key": key, "manifest": listed}
        problem = quick_check(found)
        if problem:
            damaged.append(Damaged(child.name, child, f"backup {child.name}: {problem}; the backup cannot be used"))
        else:
            sets.append(found)
    if listing and keep != cache:
        _save_cache(folder, keep)
    return sorted(sets, key=lambda b: b.started_at, reverse=True), sorted(damaged, key=lambda d: d.id, reverse=True)


def newest_verified(folder: Path, now: datetime | None = None) -> BackupSet | None:
    """The newest backup in ``folder`` whose last verification passed (not one dated in the future),
    whoever took it: the backup service or an operator."""
    moment = now or datetime.now(UTC)
    for b in scan_folder(folder)[0]:
        if b.started_at <= moment and b.verification and b.verification.get("ok") is True:
            return b
    return None


def list_backups(settings: Settings) -> list[BackupSet]:
    """Complete backups of the environment, newest first."""
    return scan(settings)[0]


def latest(settings: Settings, now: datetime | None = None, report: Reporter | None = None) -> BackupSet:
    """The newest complete backup that did not start in the future (a wrong clock must not pick it);
    the sets passed over for that are named (a warning on ``report``; in the error when none is left)."""
    moment = now or datetime.now(UTC)
    sets = list_backups(settings)
    future = [b.id for b in sets if b.started_at > moment]
    named = f"({', '.join(future[:3])}{', ...' if len(future) > 3 else ''})"
    for b in sets:
        if b.started_at <= moment:
            if future and report is not None:
                report.warn(f"{len(future)} newer set(s) dated in the future passed over for `latest` {named}: "
                            "check this host's clock; name one by its id to use it")
            return b
    if future:
        raise BackupNotFound(f"no backup in {settings.env.backups_dir} started before now: {len(future)} dated "
                             f"in the future {named}; check this host's clock, or name one by its id")
    raise BackupNotFound(f"no backups in {settings.env.backups_dir}: take one with `invoke backup`")


def resolve_ref(settings: Settings, ref: str) -> Path:
    """The folder a backup reference names: an id, or a path that resolves to a direct child of the
    environment's backups folder. Anything else (``..``, another folder, a link out) is refused."""
    root = settings.env.backups_dir
    hint = f"see `invoke backup.list --env {settings.env.name}`"
    if "/" in ref:
        given = Path(ref)
        candidates = [given] if given.is_absolute() else [Path.cwd() / given, settings.root / given]
    else:
        candidates = [] if ref in ("", ".", "..") or ref.startswith(".") else [root / ref]
    for candidate in candidates:
        try:
            resolved = candidate.resolve(strict=True)
        except (OSError, RuntimeError):
            continue
        if resolved.parent != root.resolve() or resolved.name.startswith(".") or not resolved.is_dir():
            raise BackupNotFound(f"{ref!r} is not a backup of {settings.env.name}: a backup reference must name "
                                 f"a folder directly inside {root} ({hint})")
        return resolved
    raise BackupNotFound(f"backup {ref!r} not found in {root}: {hint}")


def find_backup(settings: Settings, ref: str, report: Reporter | None = None) -> BackupSet:
    """A backup by id, folder path inside the backups folder, or ``latest``; a damaged one raises BackupCorrupt."""
    if ref == "latest":
        return latest(settings, report=report)
    return open_set(resolve_ref(settings, ref))


def new_id(folder: Path, kind: str, now: datetime) -> str:
    base = f"{kind}_{now.strftime('%Y%m%dT%H%M%SZ')}"
    candidate, n = base, 1
    while (folder / candidate).exists() or (folder / f"{TMP_PREFIX}{candidate}").exists():
        candidate, n = f"{base}-{n}", n + 1
    return candidate


def remove_stale_tmp(folder: Path, report: Reporter) -> None:
    """Folders of backups that never finished (crash, kill -9), and the temporary files of atomic writes
    (a restore's journal, a verification record, the listing cache) whose writer was killed, in the
    backups folder and in its sets. Call it holding the environment's lock, so that none of the folders
    is in progress; a temporary file is removed only when its writer's process is gone."""
    for child in folder.iterdir():
        if child.name.startswith(TMP_PREFIX) and child.is_dir() and not child.is_symlink():
            report.warn(f"removing unfinished backup folder {child.name} left by an interrupted run")
            shutil.rmtree(child, ignore_errors=True)
    sets = [c for c in folder.iterdir() if not c.name.startswith(".") and c.is_dir() and not c.is_symlink()]
    for where in (folder, *sets):
        for tmp in stale_atomic_tmp(where):
            report.warn(f"removing {tmp.relative_to(folder)}: a temporary file whose writer was killed")
            tmp.unlink(missing_ok=True)


@contextmanager
def writing(settings: Settings, kind: str, now: datetime) -> Iterator[tuple[str, Path]]:
    """(id, temporary folder) for a new set; the folder is removed when the block raises.
    The caller seals it with ``commit``."""
    if kind not in KINDS:
        raise BackupError(f"unknown backup kind {kind!r}: accepted values are {', '.join(KINDS)}")
    folder = private_dir(settings.env.backups_dir)
    backup_id = new_id(folder, kind, now)
    tmp = folder / f"{TMP_PREFIX}{backup_id}"
    tmp.mkdir(mode=0o700)
    try:
        yield backup_id, tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def commit(tmp: Path, backup_id: str, manifest: dict[str, Any]) -> BackupSet:
    """Write the sealed manifest, fsync, and rename the temporary folder to its final name."""
    atomic_write(tmp / MANIFEST, json.dumps(seal(manifest), indent=2, sort_keys=True).encode())
    fsync_dir(tmp)
    final = tmp.parent / backup_id
    os.rename(tmp, final)
    fsync_dir(tmp.parent)
    return open_set(final)


def delete_set(backup: BackupSet) -> None:
    """Remove a complete set: only a folder carrying a manifest this tool wrote, first renamed out of
    sight (so it leaves ``list`` at once and a crash leaves a ``.tmp-`` folder, removed later)."""
    read_manifest(backup.path)
    trash = backup.path.parent / f"{TMP_PREFIX}delete-{backup.id}"
    os.rename(backup.path, trash)
    fsync_dir(backup.path.parent)
    shutil.rmtree(trash)
