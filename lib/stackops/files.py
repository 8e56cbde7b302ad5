"""Durable files: write to a temporary name, fsync, rename, fsync the folder. Checksums and sizes.

The one atomic write and the one sha256 of stackops live here.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import re
import time
from pathlib import Path
from typing import Any

from stackops.report import human_bytes

CHUNK = 1 << 20


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


ATOMIC_TMP = re.compile(r"\.(?P<name>.+)\.(?P<pid>[0-9]+)\.tmp")  # atomic_write's temporary file of ``name``
STALE_AFTER = 60.0  # seconds: atomic_write holds its temporary file for about one fsync


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (one of another user counts; so does an unknown answer)."""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def stale_atomic_tmp(folder: Path, now: float | None = None) -> list[Path]:
    """Temporary files ``atomic_write`` left in ``folder`` when its writer was killed: regular files (never
    links) named ``.<name>.<pid>.tmp`` whose writer ``pid`` is gone and untouched for ``STALE_AFTER``
    seconds (a writer in another pid namespace, a container, is not taken for dead while it writes)."""
    now = time.time() if now is None else now
    out = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for e in entries:
        m = ATOMIC_TMP.fullmatch(e.name)
        if m is None or not e.is_file(follow_symlinks=False):
            continue
        try:
            old = now - e.stat(follow_symlinks=False).st_mtime > STALE_AFTER
        except OSError:
            continue
        if old and not pid_alive(int(m["pid"])):
            out.append(folder / e.name)
    return sorted(out)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600, owner: str | None = None) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file, never half.

    The temporary file is created with O_EXCL|O_NOFOLLOW (never through a planted link), fsynced,
    given ``owner`` (a user name) when asked, renamed over ``path``, and the folder is fsynced."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if owner is not None:
            pw = pwd.getpwnam(owner)
            os.chown(tmp, pw.pw_uid, pw.pw_gid)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def free_space(folder: Path) -> str:
    """``<free> free of <size>`` of the filesystem holding ``folder`` (for a full-disk message)."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return "free space unknown"
    return f"{human_bytes(st.f_bavail * st.f_frsize)} free of {human_bytes(st.f_blocks * st.f_frsize)}"


def canonical_json(data: Any) -> bytes:
    """Sorted, compact, UTF-8 JSON. A file name that is not UTF-8 reaches Python as lone surrogates
    (os.fsdecode); they are written as JSON's own ``\\udcXX`` escapes, which ``json.loads`` reads back as the
    same string, so such a name round-trips. Every other text is written exactly as before (checksums of
    existing manifests are unchanged)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8",
                                                                                             "backslashreplace")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def dir_size(path: Path) -> int:
    """Bytes of every file below ``path`` (links not followed; unreadable entries skipped)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total
