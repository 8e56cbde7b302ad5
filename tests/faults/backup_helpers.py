"""Shared helpers of the backup fault tests: what "nothing was lost" means (every table's rows and
every upload's bytes before and after), what "nothing incomplete is listed" means, a small tmpfs for
a full disk, and the real `invoke` CLI with "the user got one line" checked."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from stackops.backupset import TMP_PREFIX, scan
from stackops.config import Settings
from tests.conftest import ROOT, Fresh, cli_env, table_hashes

SCHEMA = """
CREATE TABLE users (id bigserial PRIMARY KEY, email text UNIQUE NOT NULL, avatar bytea);
CREATE TABLE file_uploads (id bigserial PRIMARY KEY, user_id bigint REFERENCES users(id), path text NOT NULL);
"""


def populate(fresh: Fresh, users: int = 50, blob_bytes: int = 0) -> None:
    """A small schema with rows; ``blob_bytes`` of incompressible data in ``users.avatar`` in total."""
    with fresh.connect() as conn:
        conn.execute(SCHEMA)
        per = blob_bytes // users if blob_bytes else 16
        with conn.cursor().copy("COPY users (email, avatar) FROM STDIN") as copy:
            for i in range(users):
                copy.write_row((f"u{i}@example.org", os.urandom(per)))
        conn.execute("INSERT INTO file_uploads (user_id, path) SELECT id, 'u/' || id || '.bin' FROM users")
        conn.commit()


def add_uploads(folder: Path, files: int = 5, size: int = 1000) -> None:
    (folder / "u").mkdir(parents=True, exist_ok=True)
    for i in range(1, files + 1):
        (folder / "u" / f"{i}.bin").write_bytes(os.urandom(size))


@dataclass(frozen=True)
class Fingerprint:
    rows: dict[str, str]
    files: dict[str, str]


def fingerprint(fresh: Fresh, sequences: bool = True) -> Fingerprint:
    """Every table's rows (count and hash) and every upload file's sha256 (and the sequences: not
    after a server crash, whose recovery moves them ahead by design)."""
    with fresh.connect() as conn:
        rows = table_hashes(conn, sequences=sequences)
    up = fresh.settings.env.uploads_dir
    files = {str(p.relative_to(up)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(up.rglob("*")) if p.is_file()} if up.is_dir() else {}
    return Fingerprint(rows, files)


def listed(settings: Settings) -> list[str]:
    """Ids `backup.list` shows as complete; asserts no unfinished folder is left beside them."""
    folder = settings.env.backups_dir
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(TMP_PREFIX)] if folder.is_dir() else []
    assert not leftovers, f"unfinished backup folders left behind: {leftovers}"
    return [b.id for b in scan(settings)[0]]


@contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A small tmpfs mounted at ``folder`` (a full disk on demand); always unmounted."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def run_cli(settings: Settings, *args: str, extra: dict[str, str] | None = None,
            migrations: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**cli_env(settings, migrations=migrations), **(extra or {})}
    return subprocess.run([sys.executable, "-m", "invoke", *args, "--env", "test"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def one_line(proc: subprocess.CompletedProcess[str] | Any, exit_code: int | None = None) -> str:
    """The failure reached the user as one `stackops:` line (no traceback); returns that line."""
    stderr = proc.stderr if isinstance(proc.stderr, str) else proc.stderr.decode()
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("stackops: "), stderr
    if exit_code is not None:
        assert proc.returncode == exit_code, (proc.returncode, stderr)
    return str(last)


def stackops_sessions(fresh: Fresh) -> list[tuple[int, str | None, str]]:
    """(pid, wait_event_type, query) of stackops' own sessions (pg_dump included) on this test's database."""
    with psycopg.connect(**fresh.runtime.conninfo("postgres"), autocommit=True) as conn:
        rows = conn.execute("SELECT pid, wait_event_type, query FROM pg_stat_activity WHERE datname = %s "
                            "AND application_name = 'stackops'", (fresh.settings.env.db_name,)).fetchall()
    return [(int(p), w, str(q)) for p, w, q in rows]
