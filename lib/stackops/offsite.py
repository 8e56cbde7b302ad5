"""Offsite copies of backup sets through rclone, optionally encrypted with age.

The remote layout, per environment (``<remote><path>/<env>/``)::

    <id>/                 one folder per set: its files (``<name>.age`` when encrypted) ...
    <id>/offsite.json     ... and the remote index, written LAST: a set is complete on the remote only
                          when this file exists, reads as JSON and matches its own checksum
    .tmp-<id>/            an upload in progress or interrupted (never listed; removed by the next push)

The index records every remote file's size and sha256, which local file it holds, whether it is
encrypted and for which age recipients (public keys only, never an identity), the set's kind and
start time (for remote retention) and the sha256 of the set's sealed manifest.

A push uploads into ``.tmp-<id>/``, reads every file back and checks its sha256, renames the folder
to ``<id>/`` and only then writes the index. A pull checks the index, every downloaded file's sha256,
decrypts, and hands the set to ``backupset`` (manifest seal and file checksums) before it is renamed
into the backups folder: a flipped byte anywhere is refused and nothing local changes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stackops import backupset, crypt
from stackops.backupset import MANIFEST, SHA256_HEX, TMP_PREFIX, BackupSet, malformed_head, plain_name, sized_and_hashed
from stackops.config import Retention, Settings
from stackops.errors import (
    BackupCorrupt,
    BackupNotFound,
    CommandFailed,
    OffsiteError,
    StorageFull,
    last_line,
)
from stackops.files import CHUNK, atomic_write, canonical_json, fsync_dir, private_dir, sha256_file
from stackops.lock import env_lock
from stackops.proc import Cmd, run, spawn, which
from stackops.report import Plan, Reporter, human_bytes
from stackops.retention import BackupRecord, Copies, Decision, plan

FORMAT = "stackops-offsite/1"
INDEX = "offsite.json"
PUSH_STAGING = f"{TMP_PREFIX}push-"
PULL_STAGING = f"{TMP_PREFIX}pull-"
INSTALL = "apt-get install -y rclone"
ONLY_REMOTE = "it is the only copy (not in the local backups folder)"
LAST_COPY = "the only copy (not in the local backups folder): deleted as --delete-only-copies asks"


@dataclass(frozen=True)
class RemoteSet:
    """A complete set on the remote, from its index."""

    id: str
    index: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.index["kind"])

    @property
    def started_at(self) -> datetime:
        return datetime.fromisoformat(self.index["started_at"])

    @property
    def size(self) -> int:
        return sum(int(f["size"]) for f in self.index["files"].values())

    @property
    def encrypted(self) -> bool:
        return bool(self.index["recipients"])


@dataclass(frozen=True)
class PushResult:
    id: str
    pushed: bool          # False: it was already complete on the remote
    encrypted: bool
    bytes: int
    seconds: float


@dataclass(frozen=True)
class PullResult:
    id: str
    pulled: bool          # False: it was already in the local backups folder
    encrypted: bool
    bytes: int
    seconds: float


# ----- the index -----------------------------------------------------------------------------------
def seal_index(index: dict[str, Any]) -> dict[str, Any]:
    body = {k: v for k, v in index.items() if k != "index_sha256"}
    return {**body, "index_sha256": hashlib.sha256(canonical_json(body)).hexdigest()}


def parse_index(data: bytes, where: str) -> dict[str, Any]:
    try:
        index = json.loads(data)
    except ValueError:
        raise BackupCorrupt(f"{where} is not valid JSON: the remote copy is incomplete or damaged") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise BackupCorrupt(f"{where} was not written by stackops (format {FORMAT} expected)")
    if seal_index(index)["index_sha256"] != index.get("index_sha256"):
        raise BackupCorrupt(f"{where} was modified after the push (its checksum does not match): refusing it")
    problem = _malformed(index)
    if problem:
        raise BackupCorrupt(f"{where} is malformed ({problem}): refusing it")
    return index


def _malformed(index: dict[str, Any]) -> str:
    """What is wrong with an index's fields ("" when nothing). Its checksum proves no accident, not that
    whoever can write the remote re-sealed it with sense: every name a pull writes to must be a plain
    file name inside the set (never ``../``, never a path), every size and checksum well formed."""
    if not plain_name(index.get("id")):
        return f"id {index.get('id')!r} is not a plain name"
    head = malformed_head(index)
    if head:
        return head
    if not isinstance(index.get("recipients"), list) or not all(isinstance(r, str) for r in index["recipients"]):
        return "recipients is not a list of public keys"
    if not SHA256_HEX.match(str(index.get("manifest_sha256", ""))):
        return "manifest_sha256 is not a sha256"
    files = index.get("files")
    if not isinstance(files, dict) or not files:
        return "files is not a mapping of file names"
    sources: set[str] = set()
    for name, entry in files.items():
        if not plain_name(name) or name == INDEX:
            return f"file name {name!r} is not a plain name inside the set"
        if not isinstance(entry, dict) or not plain_name(entry.get("source")) or entry.get("source") == INDEX:
            return f"the source of {name!r} is not a plain name inside the set"
        if entry["source"] in sources:
            return f"two files claim to hold {entry['source']!r}"
        sources.add(entry["source"])
        if not sized_and_hashed(entry):
            return f"the entry of {name!r} lacks a size or a sha256"
    if MANIFEST not in sources:
        return f"no file holds the set's {MANIFEST}"
    return ""


# ----- rclone --------------------------------------------------------------------------------------
ENV_REMOTE = "stackopsoffsite"  # the name a connection string's remote gets in rclone's environment


def connection(remote: str) -> tuple[str, dict[str, str]]:
    """An rclone remote as (what goes in argv, environment). A connection string
    (``:sftp,host=h,pass=...:``) carries its parameters, credentials included, so it never goes in argv
    (any user can read another's argv in /proc): it becomes a remote defined in rclone's environment
    (``RCLONE_CONFIG_<NAME>_<KEY>``) and argv names only that. A named remote (``offsite:``) is passed as
    is: its credentials live in rclone.conf. Values may be quoted as rclone allows ("a,b" or 'a,b')."""
    if not remote.startswith(":"):
        return remote, {}
    body = remote[1:-1]
    params: list[str] = []
    current, quote, i = "", "", 0
    while i < len(body):
        ch = body[i]
        if quote:
            if ch == quote and body[i + 1:i + 2] == quote:  # a doubled quote stands for itself
                current += ch
                i += 1
            elif ch == quote:
                quote = ""
            else:
                current += ch
        elif ch in "\"'" and current.endswith("="):
            quote = ch
        elif ch == ",":
            params.append(current)
            current = ""
        else:
            current += ch
        i += 1
    params.append(current)
    backend, options = params[0], params[1:]
    prefix = f"RCLONE_CONFIG_{ENV_REMOTE.upper()}_"
    env = {f"{prefix}TYPE": backend}
    for option in options:
        key, _, value = option.partition("=")
        env[prefix + key.strip().upper().replace("-", "_")] = value if _ else "true"
    return f"{ENV_REMOTE}:", env


class Remote:
    """One environment's folder on the configured rclone remote."""

    def __init__(self, settings: Settings) -> None:
        o = settings.offsite
        if not o.enabled:
            raise OffsiteError("no offsite remote is configured: set stackops.offsite.remote (an rclone remote, "
                               "e.g. INVOKE_STACKOPS_OFFSITE_REMOTE=offsite:) and see the README's offsite section")
        self.settings = settings
        name, self.env = connection(o.remote)
        self.base = f"{name}{o.path.rstrip('/')}/{settings.env.name}"
        self.display = display(settings)

    def url(self, *parts: str) -> str:
        return "/".join([self.base, *parts])

    def cmd(self, *args: str) -> Cmd:
        argv = [which("rclone", INSTALL)]
        if self.settings.offsite.rclone_config is not None:
            argv += ["--config", str(self.settings.offsite.rclone_config)]
        # one low-level retry each: a transfer that fails is reported, never silently half-done
        return Cmd([*argv, "--retries", "1", "--low-level-retries", "3", *args], env=self.env)

    def run(self, *args: str, what: str) -> bytes:
        try:
            return run(self.cmd(*args)).stdout
        except CommandFailed as exc:
            raise OffsiteError(f"{what} on {self.display} failed: {str(exc).split(': ', 1)[-1]}") from None

    def entries(self) -> list[dict[str, Any]]:
        """The folders at the top of the environment's remote folder (none when it does not exist yet)."""
        proc = run(self.cmd("lsjson", "--dirs-only", self.base), check=False)
        if proc.returncode == 3:  # rclone: directory not found
            return []
        if proc.returncode != 0:
            raise OffsiteError(f"cannot list {self.display}: {last_line(proc.stderr)}")
        data = json.loads(proc.stdout or b"[]")
        return [e for e in data if isinstance(e, dict)]

    def cat(self, *parts: str) -> bytes:
        return self.run("cat", self.url(*parts), what=f"reading {'/'.join(parts)}")

    def sha256(self, *parts: str) -> tuple[str, int]:
        """sha256 and size of a remote file, read back through rclone (whatever the backend supports)."""
        p = spawn(self.cmd("cat", self.url(*parts)), stdout=-1)
        h, size = hashlib.sha256(), 0
        assert p.stdout is not None
        while chunk := p.stdout.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
        p.stdout.close()
        _, err = p.communicate()
        if p.returncode != 0:
            raise OffsiteError(f"reading back {'/'.join(parts)} from {self.display} failed: {last_line(err)}")
        return h.hexdigest(), size

    def purge(self, *parts: str) -> None:
        proc = run(self.cmd("purge", self.url(*parts)), check=False)
        if proc.returncode not in (0, 3):
            raise OffsiteError(f"cannot remove {'/'.join(parts)} from {self.display}: {last_line(proc.stderr)}")


def display(settings: Settings) -> str:
    """The remote as messages show it: the backend or remote name and the folder, never a parameter."""
    o = settings.offsite
    return f"{o.remote.split(',')[0].rstrip(':')}:{o.path.rstrip('/')}/{settings.env.name}"


def remote_sets(settings: Settings, remote: Remote | None = None) -> tuple[list[RemoteSet], list[str]]:
    """Complete sets on the remote (newest first) and the ids of folders that are not complete
    (interrupted, damaged). Upload folders in progress (``.tmp-*``) are neither."""
    r = remote or Remote(settings)
    ids = [e["Name"] for e in r.entries() if not str(e.get("Name", ".")).startswith(".")]
    sets: list[RemoteSet] = []
    broken: list[str] = []
    for backup_id in sorted(ids):
        proc = run(r.cmd("cat", r.url(backup_id, INDEX)), check=False)
        try:
            if proc.returncode != 0:
                raise BackupCorrupt("no index")
            index = parse_index(proc.stdout, f"{backup_id}/{INDEX}")
            if index.get("id") != backup_id:
                raise BackupCorrupt("index of another set")
            sets.append(RemoteSet(backup_id, index))
        except BackupCorrupt:
            broken.append(backup_id)
    return sorted(sets, key=lambda s: s.started_at, reverse=True), broken


def locations(settings: Settings) -> tuple[dict[str, str], list[RemoteSet]]:
    """Where each set lives ("local", "remote", "both") and the sets that exist only remotely."""
    local = {b.id for b in backupset.list_backups(settings)}
    remote, _ = remote_sets(settings)
    where = {i: "local" for i in local}
    for s in remote:
        where[s.id] = "both" if s.id in local else "remote"
    return where, [s for s in remote if s.id not in local]


# ----- push ----------------------------------------------------------------------------------------
@contextmanager
def _staging(folder: Path) -> Iterator[Path]:
    shutil.rmtree(folder, ignore_errors=True)
    private_dir(folder)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _stage(backup: BackupSet, staging: Path, recipients: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Every file of the set (manifest included) in ``staging``: encrypted, or hard-linked as is."""
    files: dict[str, dict[str, Any]] = {}
    for name in [*backup.manifest["files"], MANIFEST]:
        src = backup.path / name
        if recipients:
            dst = staging / f"{name}.age"
            crypt.encrypt(src, dst, recipients)
        else:
            dst = staging / name
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
        files[dst.name] = {"source": name, "size": dst.stat().st_size, "sha256": sha256_file(dst)}
    return files


def _already(settings: Settings, r: Remote, backup: BackupSet) -> bool:
    """True when ``backup`` is complete on the remote; OffsiteError when the remote holds a complete set
    of the same id that is another set (another host's, or a hand-made one): never overwritten, never
    taken for this one's copy."""
    for s in remote_sets(settings, r)[0]:
        if s.id == backup.id:
            if not _same(s, backup):
                raise OffsiteError(f"{r.display} already holds a complete set named {backup.id} that is not this "
                                   "one (another manifest: another host pushing to the same folder?); it was not "
                                   "touched and this set is not offsite: give each host its own "
                                   "stackops.offsite.path")
            return True
    return False


def _staging_full(folder: Path, backup: BackupSet, exc: BaseException) -> StorageFull:
    """A push's staging (encrypted copies, or copies where a hard link is refused) did not fit."""
    free = shutil.disk_usage(folder).free if folder.exists() else 0
    return StorageFull(f"the backups folder's filesystem ({crypt.mount_point(folder)}, {human_bytes(free)} free) "
                       f"is full while staging {backup.id} ({human_bytes(backup.size)}) for the offsite copy"
                       f"{' (encrypting needs that much again)' if isinstance(exc, StorageFull) else ''}: the "
                       "staging was removed and nothing was pushed; free space (`invoke backup.prune`) and push again")


def push_set(settings: Settings, ref: str, *, report: Reporter, remote: Remote | None = None) -> PushResult:
    """Copy one complete local set to the remote: staged (encrypted when recipients are configured),
    uploaded under ``.tmp-<id>/``, read back and checked, renamed, then its index written last."""
    r = remote or Remote(settings)
    started = time.monotonic()
    backup = backupset.find_backup(settings, ref, report)
    recipients = settings.offsite.recipients
    if _already(settings, r, backup):
        report.info(f"{backup.id} is already complete on {r.display}")
        return PushResult(backup.id, False, bool(recipients), 0, 0.0)
    folder = settings.env.backups_dir
    with env_lock(folder, f"push of {backup.id}"), _staging(folder / f"{PUSH_STAGING}{backup.id}") as staging:
        # again under the lock: another push may have completed this set since the listing above, and
        # the purge below must never remove a complete remote copy
        if _already(settings, r, backup):
            report.info(f"{backup.id} is already complete on {r.display}")
            return PushResult(backup.id, False, bool(recipients), 0, 0.0)
        backupset.check_files(backup, report)
        report.step(f"staging {backup.id} for {r.display}" + (f" (age, {len(recipients)} recipient(s))"
                                                               if recipients else " (not encrypted)"))
        try:
            files = _stage(backup, staging, recipients)
        except (StorageFull, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise _staging_full(folder, backup, exc) from None
        manifest_sha = sha256_file(backup.path / MANIFEST)
        index = seal_index({
            "format": FORMAT, "id": backup.id, "env": settings.env.name, "kind": backup.kind,
            "started_at": backup.manifest["started_at"], "manifest_sha256": manifest_sha,
            "recipients": list(recipients), "files": files, "verification": backup.verification,
            "pushed_at": datetime.now(UTC).isoformat(timespec="seconds"),
        })
        tmp = f"{TMP_PREFIX}{backup.id}"
        r.purge(tmp)  # an earlier interrupted upload of this set
        total = sum(f["size"] for f in files.values())
        report.step(f"uploading {len(files)} files ({human_bytes(total)}) to {r.display}/{tmp}")
        r.run("copy", "--no-traverse", str(staging), r.url(tmp), what=f"uploading {backup.id}")
        for name, entry in files.items():
            digest, size = r.sha256(tmp, name)
            if (digest, size) != (entry["sha256"], entry["size"]):
                raise OffsiteError(f"{name} of {backup.id} reads back from {r.display} with another sha256 or size "
                                   "than was uploaded: the transfer is not trustworthy; the upload was left under "
                                   f"{tmp} (never listed) and the next push replaces it")
        report.info(f"read back {len(files)} files from the remote: sizes and sha256 match")
        r.purge(backup.id)  # an incomplete folder of this id (no valid index): it was never listed
        r.run("moveto", r.url(tmp), r.url(backup.id), what=f"renaming {tmp} to {backup.id}")
        atomic_write(staging / INDEX, canonical_json(index) + b"\n")
        r.run("copyto", str(staging / INDEX), r.url(backup.id, INDEX), what=f"writing the index of {backup.id}")
        if parse_index(r.cat(backup.id, INDEX), f"{backup.id}/{INDEX}") != index:
            raise OffsiteError(f"the index of {backup.id} reads back differently from {r.display}: the copy is not "
                               "listed as complete; push again")
    seconds = round(time.monotonic() - started, 2)
    report.info(f"{backup.id} is offsite: {human_bytes(total)} in {seconds}s")
    return PushResult(backup.id, True, bool(recipients), total, seconds)


def push_missing(settings: Settings, *, report: Reporter) -> list[PushResult]:
    """Push every complete local set that is not complete on the remote, oldest first."""
    r = Remote(settings)
    local = sorted(backupset.list_backups(settings), key=lambda b: b.started_at)
    done = {s.id for s in remote_sets(settings, r)[0] if any(b.id == s.id and _same(s, b) for b in local)}
    return [push_set(settings, b.id, report=report, remote=r) for b in local if b.id not in done]


# ----- pull ----------------------------------------------------------------------------------------
def find_remote(settings: Settings, ref: str, remote: Remote | None = None) -> RemoteSet:
    r = remote or Remote(settings)
    sets, broken = remote_sets(settings, r)
    if ref == "latest" and sets:
        return sets[0]
    for s in sets:
        if s.id == ref:
            return s
    if ref in broken:
        raise BackupCorrupt(f"{ref} on {r.display} is not complete (interrupted push or damaged index): push it "
                            "again from a host that has it")
    raise BackupNotFound(f"backup {ref!r} is neither in {settings.env.backups_dir} nor on {r.display}: see "
                         f"`invoke backup.list --env {settings.env.name}`")


NO_SPACE = ("no space left on device", "file too big for remaining disk space")  # rclone's words for ENOSPC


def _full(folder: Path, rs: RemoteSet) -> StorageFull:
    free = shutil.disk_usage(folder).free if folder.exists() else 0
    return StorageFull(f"the backups folder's filesystem is full ({folder}, {human_bytes(free)} free) while pulling "
                       f"{rs.id} ({human_bytes(rs.size)}): what was downloaded was removed, nothing else was touched; "
                       "free space (`invoke backup.prune`) and pull again")


def _pull_into(r: Remote, rs: RemoteSet, staging: Path, final: Path, ident: Path | None,
               report: Reporter, aside: Path | None = None) -> None:
    """Download, check, decrypt and open ``rs`` in ``staging``, then rename it to ``final`` (after renaming
    the damaged folder ``final`` to ``aside``, when given)."""
    what = f"remote copy of {rs.id}"
    if final.exists() and aside is None:
        raise BackupCorrupt(f"{final} exists but is not a complete backup: move it away before pulling {rs.id}")
    download = private_dir(staging / "download")
    report.step(f"downloading {rs.id} ({human_bytes(rs.size)}) from {r.display}")
    wanted = staging / "files"  # only what the index names: nothing else on the remote lands here
    wanted.write_text("".join(f"{name}\n" for name in rs.index["files"]))
    r.run("copy", "--files-from-raw", str(wanted), "--no-traverse", r.url(rs.id), str(download),
          what=f"downloading {rs.id}")
    for name, entry in rs.index["files"].items():
        path = download / name
        if path.is_symlink() or not path.is_file() or path.stat().st_size != entry["size"] \
                or sha256_file(path) != entry["sha256"]:
            raise BackupCorrupt(f"{what}: {name} does not match the size and sha256 recorded when it was pushed "
                                "(the remote copy is damaged); nothing local was touched")
    report.info(f"checked {len(rs.index['files'])} downloaded files: sizes and sha256 match the index")
    out = private_dir(staging / rs.id)
    for name, entry in rs.index["files"].items():
        target = out / str(entry["source"])  # a plain name (parse_index): never outside ``out``
        if ident is not None:
            crypt.decrypt(download / name, target, ident, f"{what} ({name})")
            os.chmod(target, 0o600)
        else:
            os.replace(download / name, target)
    if sha256_file(out / MANIFEST) != rs.index["manifest_sha256"]:
        raise BackupCorrupt(f"{what}: its manifest differs from the one pushed; nothing local was touched")
    pulled = backupset.open_set(out)
    extra = sorted(set(os.listdir(out)) - {*pulled.manifest["files"], MANIFEST})
    if extra:
        raise BackupCorrupt(f"{what}: its index holds files its manifest does not name ({', '.join(extra)[:200]}): "
                            "the remote copy was altered; nothing local was touched")
    backupset.check_files(pulled, report)
    if rs.index.get("verification"):
        backupset.write_verification(out, rs.index["verification"])
    fsync_dir(out)
    if aside is not None and final.exists():
        if aside.exists():
            raise BackupCorrupt(f"{aside} exists already: move it away and pull {rs.id} again; nothing was touched")
        os.rename(final, aside)  # kept, never deleted: the operator decides what to do with it
        report.info(f"the damaged local copy of {rs.id} is kept as {aside}")
    os.rename(out, final)
    fsync_dir(final.parent)


def damaged_name(backup_id: str, now: datetime | None = None) -> str:
    """The name a damaged local set is kept under when ``backup.pull --replace`` brings the remote copy
    back: beside it, listed by ``backup.list`` as damaged, never judged by retention, never deleted."""
    return f"{backup_id}.damaged-{(now or datetime.now(UTC)).strftime('%Y%m%dT%H%M%SZ')}"


def pull_set(settings: Settings, ref: str, *, report: Reporter, identity: Path | None = None,
             replace: bool = False) -> PullResult:
    """Bring one set back from the remote into the backups folder, checked (index, every file's sha256,
    decryption, the set's own manifest and checksums) before it appears there.

    A local set of that id that fails its size check (``backupset.quick_check``) is refused (BackupCorrupt)
    unless ``replace``: then the remote copy is downloaded and checked first, and only then is the damaged
    folder renamed aside (``damaged_name``, kept) and the pulled one renamed into its place."""
    started = time.monotonic()
    aside: Path | None = None
    if ref != "latest" and "/" not in ref and (settings.env.backups_dir / ref / MANIFEST).exists():
        local = backupset.find_backup(settings, ref)
        problem = backupset.quick_check(local)
        if not problem:
            report.info(f"{local.id} is already in {settings.env.backups_dir}")
            return PullResult(local.id, False, False, 0, 0.0)
        if not replace:
            raise BackupCorrupt(f"the local copy of {local.id} is damaged ({problem}), so it was not pulled: "
                                f"`invoke backup.pull {local.id} --replace` checks the remote copy, keeps the damaged "
                                f"folder as {local.id}.damaged-<time> and pulls it in its place "
                                "(or move the folder out of the backups folder yourself and pull again)")
        aside = local.path.with_name(damaged_name(local.id))
        report.warn(f"the local copy of {local.id} is damaged ({problem}): it is kept as {aside.name} once the "
                    "remote copy is checked")
    r = Remote(settings)
    rs = find_remote(settings, ref, r)
    what = f"remote copy of {rs.id}"
    ident = crypt.check_identity(identity or settings.offsite.identity_file, rs.index["recipients"], what) \
        if rs.encrypted else None
    if ident is not None and (warning := crypt.exposed(ident)):
        report.warn(warning)
    folder = private_dir(settings.env.backups_dir)
    final = folder / rs.id
    try:
        with env_lock(folder, f"pull of {rs.id}"), _staging(folder / f"{PULL_STAGING}{rs.id}") as staging:
            _pull_into(r, rs, staging, final, ident, report, aside)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        raise _full(folder, rs) from None
    except (OffsiteError, BackupCorrupt, StorageFull) as exc:
        if not isinstance(exc, StorageFull) and not any(m in str(exc).lower() for m in NO_SPACE):
            raise
        raise _full(folder, rs) from None
    seconds = round(time.monotonic() - started, 2)
    report.info(f"{rs.id} pulled into {final} in {seconds}s")
    return PullResult(rs.id, True, rs.encrypted, rs.size, seconds)


def remote_only(settings: Settings, ref: str) -> RemoteSet | None:
    """The remote set ``ref`` names when it is not in the local backups folder (None otherwise, or
    when no remote is configured)."""
    if not settings.offsite.enabled or ref.endswith(".sql.gz") or "/" in ref:
        return None
    if ref == "latest":
        return None
    if (settings.env.backups_dir / ref).exists():
        return None
    try:
        return find_remote(settings, ref)
    except BackupNotFound:
        return None


def _same(rs: RemoteSet, local: BackupSet) -> bool:
    """The local set is the one this remote copy was pushed from (same sealed manifest)."""
    return sha256_file(local.path / MANIFEST) == str(rs.index["manifest_sha256"])


def copies(settings: Settings) -> Copies:
    """The local sets whose copy on the remote is complete and is the same set: its index seals, names
    the same manifest, and every file it lists is on the remote with the recorded size. A remote that
    cannot be read counts as holding nothing (``unknown`` says why): local prune then keeps what it
    cannot prove is offsite."""
    try:
        r = Remote(settings)
        sets, _ = remote_sets(settings, r)
        proc = run(r.cmd("lsjson", "-R", "--files-only", r.base), check=False)
        if proc.returncode not in (0, 3):
            raise OffsiteError(f"cannot list {r.display}: {last_line(proc.stderr)}")
        sizes = {str(e.get("Path")): e.get("Size") for e in json.loads(proc.stdout or b"[]") if isinstance(e, dict)}
    except (OffsiteError, ValueError) as exc:
        return Copies(frozenset(), str(exc) or type(exc).__name__)
    local = {b.id: b for b in backupset.list_backups(settings)}
    ids = {rs.id for rs in sets if rs.id in local and _same(rs, local[rs.id])
           and all(sizes.get(f"{rs.id}/{name}") == entry["size"] for name, entry in rs.index["files"].items())}
    return Copies(frozenset(ids))


# ----- remote retention ----------------------------------------------------------------------------
def _records(sets: Sequence[RemoteSet]) -> list[BackupRecord]:
    out = []
    for s in sets:
        v = s.index.get("verification") or {}
        out.append(BackupRecord(
            id=s.id, started_at=s.started_at, kind=s.kind, complete=True, verified_ok=v.get("ok"),
            verified_at=datetime.fromisoformat(v["verified_at"]) if v.get("verified_at") else None))
    return out


def prune_remote_plan(settings: Settings, *, only_copies: bool = False,
                      now: datetime | None = None) -> tuple[Plan, list[Decision], set[str]]:
    """Remote retention with its own counts (stackops.offsite.daily / weekly). A set that would be
    deleted remotely but is not in the local backups folder is its only copy: kept unless
    ``only_copies``, and then the plan says so in a warning. Returns the plan, every decision, and
    the ids that would be deleted."""
    sets, _ = remote_sets(settings)
    policy = Retention(settings.offsite.daily, settings.offsite.weekly, settings.retention.pre_migration_days)
    try:
        decisions = plan(_records(sets), now or datetime.now(UTC), policy)
    except ValueError as exc:
        raise OffsiteError(f"cannot apply remote retention: {exc}") from exc
    by_id = {b.id: b for b in backupset.list_backups(settings)}
    # a local set counts as the second copy only when it is intact and the very set that was pushed
    local = {s.id for s in sets if s.id in by_id and _same(s, by_id[s.id])}
    out: list[Decision] = []
    doomed: set[str] = set()
    warnings: list[str] = []
    for d in decisions:
        if not d.keep and d.backup.id not in local and not only_copies:
            d = Decision(d.backup, True, (*d.reasons, f"but {ONLY_REMOTE}: kept; pass --delete-only-copies to "
                                          "delete it"), d.covers)
        elif not d.keep:
            doomed.add(d.backup.id)
            if d.backup.id not in local:
                d = Decision(d.backup, False, (*d.reasons, LAST_COPY), d.covers)
                warnings.append(f"{d.backup.id} exists only on the remote: deleting it deletes its last copy")
        out.append(d)
    env = settings.env
    p = Plan(f"deleting {len(doomed)} offsite backup(s) of {env.name} by remote retention", env.name, env.protected,
             [f"delete {d.backup.id} from the remote: {'; '.join(d.reasons)}" for d in out if d.backup.id in doomed],
             [f"offsite backup {i}" for i in sorted(doomed)], warnings,
             nothing_to_do="" if doomed else "nothing to delete on the remote: every set keeps a slot or is an "
                                             "only copy",
             always_confirm=bool(warnings))
    return p, out, doomed


def last_copies(decisions: Sequence[Decision]) -> set[str]:
    """The ids a remote plan deletes knowing the remote holds their only copy (--delete-only-copies)."""
    return {d.backup.id for d in decisions if not d.keep and LAST_COPY in d.reasons}


def prune_remote(settings: Settings, confirmed: set[str], *, report: Reporter, only_copies: bool = False,
                 confirmed_last: set[str] | None = None) -> list[str]:
    """Delete the confirmed ids that the plan, decided again now under the environment's lock (the one
    local prune, push and pull hold), still deletes. The index goes first, so a set stops being listed as
    complete before any of its files are removed.

    Under the lock the local copies cannot change, so a local prune that ran since the plan is seen: a
    set whose local copy went in the meantime is the only copy now and is kept, with a warning, unless
    the confirmed plan already deleted it as an only copy (``confirmed_last``, see ``last_copies``)."""
    folder = settings.env.backups_dir
    r = Remote(settings)
    deleted = []
    with env_lock(folder, "prune of the offsite copies"):
        _, decisions, doomed = prune_remote_plan(settings, only_copies=only_copies)
        now_last = last_copies(decisions)
        now_only = {d.backup.id for d in decisions if d.keep and any(ONLY_REMOTE in x for x in d.reasons)}
        for backup_id in sorted(confirmed):
            if backup_id in now_only or (backup_id in now_last and backup_id not in (confirmed_last or set())):
                report.warn(f"{backup_id} has become the only copy since the plan (its local copy is gone): kept "
                            f"on {r.display}; run `invoke backup.prune-remote` again to see it in a plan")
                continue
            if backup_id not in doomed:
                continue
            r.run("deletefile", r.url(backup_id, INDEX), what=f"deleting the index of {backup_id}")
            r.purge(backup_id)
            report.info(f"deleted {backup_id} from {r.display}")
            deleted.append(backup_id)
    return deleted


def newest_age_hours(settings: Settings, now: datetime | None = None) -> float | None:
    """Hours since the newest complete offsite set started (None: no set on the remote)."""
    sets, _ = remote_sets(settings)
    if not sets:
        return None
    return ((now or datetime.now(UTC)) - sets[0].started_at).total_seconds() / 3600

