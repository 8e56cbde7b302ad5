"""Helpers of the fault suite: small populated environments, fingerprints of every row and every
upload file, and the "one line" check of what the operator sees."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from stackops.backup import create_backup
from stackops.backupset import MANIFEST, seal
from stackops.files import sha256_file
from stackops.report import NullReporter
from tests.conftest import Fresh, Harness, cli_env, invoke_cli, table_hashes

SCHEMA = """
CREATE TABLE users (id bigserial PRIMARY KEY, email text UNIQUE NOT NULL);
CREATE TABLE messages (id bigserial PRIMARY KEY, user_id bigint NOT NULL REFERENCES users(id), body text);
"""


def populate(fresh: Fresh, n: int = 50) -> None:
    with fresh.connect() as conn:
        conn.execute(SCHEMA)
        conn.execute("INSERT INTO users (email) SELECT 'u' || i || '@example.org' FROM generate_series(1, %s) i",
                     (n,))
        conn.execute("INSERT INTO messages (user_id, body) SELECT id, 'hello ' || id FROM users")


def add_uploads(folder: Path) -> None:
    (folder / "org 1").mkdir(parents=True, exist_ok=True)
    (folder / "org 1" / "report.pdf").write_bytes(os.urandom(5000))
    (folder / "notes.txt").write_text("notes\n")


def files(folder: Path) -> dict[str, str]:
    """Every file (and link) below ``folder`` with its sha256 (a link: its target)."""
    if not folder.exists():
        return {}
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(folder))] = "-> " + os.readlink(p)
        elif p.is_file():
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@dataclass(frozen=True)
class Print:
    """A fingerprint of an environment: every row of every table, and every upload file."""

    rows: dict[str, str]
    uploads: dict[str, str]


def fingerprint(fresh: Fresh) -> Print:
    with fresh.connect() as conn:
        rows = table_hashes(conn, sequences=True)
    return Print(rows, files(fresh.settings.env.uploads_dir))


def accepts_connections(fresh: Fresh) -> bool:
    with psycopg.connect(**fresh.runtime.conninfo("postgres")) as conn:
        row = conn.execute("SELECT datallowconn FROM pg_database WHERE datname = %s",
                           (fresh.settings.env.db_name,)).fetchone()
    return bool(row and row[0])


def databases(fresh: Fresh) -> list[str]:
    with psycopg.connect(**fresh.runtime.conninfo("postgres")) as conn:
        return [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1",
                                           (fresh.settings.env.db_name + "%",))]


def backup(fresh: Fresh, kind: str = "full") -> str:
    return create_backup(fresh.settings, fresh.runtime, kind=kind, report=NullReporter()).id


def one_line(proc: subprocess.CompletedProcess[str], code: int | None = None) -> str:
    """The operator got one line: stderr's last line starts with ``stackops:``, no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("stackops: "), proc.stderr
    if code is not None:
        assert proc.returncode == code, proc.stderr
    return last


def replace_uploads_archive(folder: Path, build: Callable[[tarfile.TarFile], None]) -> None:
    """Swap a backup's uploads archive for a hand-made one (zstd), and reseal the manifest so that only
    the archive's content, not its checksums, can refuse it."""
    manifest = json.loads((folder / MANIFEST).read_text())
    name = next(n for n, e in manifest["files"].items() if e["role"] == "uploads")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        build(tar)
    data = subprocess.run(["zstd", "-q", "-c"], input=buf.getvalue(), capture_output=True, check=True).stdout
    (folder / name).write_bytes(data)
    manifest["files"][name].update(size=len(data), sha256=sha256_file(folder / name))
    manifest["uploads"] = None  # no file count to compare: the entries themselves must be refused
    (folder / MANIFEST).write_text(json.dumps(seal(manifest)))


def wait_for(what: Callable[[], Any], timeout: float = 60, step: float = 0.02) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = what()
        if got:
            return got
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


__all__ = ["Fresh", "Harness", "Print", "cli_env", "invoke_cli"]
