"""The ``schema_migrations`` history table and the status of every migration file against it.

One row per applied migration: version, name, checksum (line endings normalised), applied_at,
applied_by, execution_ms, batch, the pre-migration backup id, and for migrations that run outside
a transaction a status (``running`` while their steps run, ``failed`` when one failed) — a
transactional migration's row is written in the migration's own transaction, so it is either
``applied`` or absent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from stackops.migrate.files import MigrationFile
from stackops.pg import sql

HISTORY_TABLE = "schema_migrations"
#: pg_advisory_lock key held (session level, on its own connection) by apply and rollback.
LOCK_KEY = int.from_bytes(hashlib.sha256(b"stackops:migrations").digest()[:8], "big", signed=True)

HISTORY_DDL = f"""
CREATE TABLE IF NOT EXISTS {HISTORY_TABLE} (
    version      text PRIMARY KEY,
    name         text NOT NULL,
    checksum     text NOT NULL CHECK (checksum ~ '^[0-9a-f]{{64}}$'),
    transactional boolean NOT NULL,
    status       text NOT NULL DEFAULT 'applied' CHECK (status IN ('running', 'applied', 'failed')),
    applied_at   timestamptz NOT NULL DEFAULT now(),
    applied_by   text NOT NULL,
    execution_ms bigint CHECK (execution_ms >= 0),
    batch        integer NOT NULL CHECK (batch > 0),
    seq          bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    backup_id    text,
    error        text
)
"""


def q(text: str) -> sql.Composed:
    """A query over the history table: ``{history}`` in ``text`` becomes its quoted identifier."""
    return sql.SQL(text).format(history=sql.Identifier(HISTORY_TABLE))


@dataclass(frozen=True)
class HistoryRow:
    version: str
    name: str
    checksum: str
    transactional: bool
    status: str
    applied_at: datetime
    applied_by: str
    execution_ms: int | None
    batch: int
    seq: int
    backup_id: str | None
    error: str | None

    @property
    def filename(self) -> str:
        return f"{self.version}_{self.name}.sql"


@dataclass(frozen=True)
class MigrationState:
    """One line of ``migrate.status``: a file, a history row, or both."""

    version: str
    name: str
    state: str  # applied | pending | drifted | missing | failed | running
    applied_at: str | None
    batch: int | None
    transactional: bool | None
    detail: str = ""


@dataclass(frozen=True)
class MigrationStatus:
    entries: list[MigrationState]
    history_table: bool
    lock_holder: int | None = None  # pid of the session holding the migration lock, if any
    notes: list[str] = field(default_factory=list)

    def having(self, *states: str) -> list[MigrationState]:
        return [e for e in self.entries if e.state in states]

    @property
    def clean(self) -> bool:
        return all(e.state == "applied" for e in self.entries)


def history_exists(conn: Any) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (HISTORY_TABLE,)).fetchone()
    return bool(row and row[0])


def read_history(conn: Any) -> list[HistoryRow]:
    """Every history row in the order applied; [] when the table does not exist yet."""
    if not history_exists(conn):
        return []
    cur = conn.execute(q(
        "SELECT version, name, checksum, transactional, status, applied_at, applied_by, execution_ms, "
        "batch, seq, backup_id, error FROM {history} ORDER BY seq"
    ))
    return [HistoryRow(*r) for r in cur.fetchall()]


def lock_holder(conn: Any) -> int | None:
    """pid of the session holding the migration advisory lock in this database, if any."""
    row = conn.execute(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND classid = ((%s::bigint >> 32) & 4294967295)::oid AND objid = (%s::bigint & 4294967295)::oid "
        "AND objsubid = 1 LIMIT 1",
        (LOCK_KEY, LOCK_KEY),
    ).fetchone()
    return int(row[0]) if row else None


def compute_status(files: Sequence[MigrationFile], history: Sequence[HistoryRow],
                   lock_pid: int | None = None, history_table: bool = True) -> MigrationStatus:
    """Files against history (pure): applied, pending, drifted (checksum changed), missing (applied,
    file gone), failed / running (a step outside a transaction failed or was interrupted)."""
    by_version = {h.version: h for h in history}
    entries: list[MigrationState] = []
    notes: list[str] = []
    last_applied = max((h.version.ljust(14, "0") for h in history), default="")
    for mf in files:
        h = by_version.pop(mf.version, None)
        if h is None:
            late = bool(last_applied) and mf.sort_key[0] < last_applied
            detail = ("up section is empty (not written yet)" if not mf.up else
                      "older than the last applied migration (will run out of order)" if late else "")
            entries.append(MigrationState(mf.version, mf.name, "pending", None, None, mf.transactional, detail))
            continue
        when = h.applied_at.isoformat(timespec="seconds")
        if h.status != "applied":
            detail = h.error or ""
            if h.status == "running":
                detail = (f"in progress (pid {lock_pid} holds the migration lock)" if lock_pid else
                          "interrupted outside a transaction: its steps ran only in part")
            entries.append(MigrationState(mf.version, mf.name, h.status, when, h.batch, h.transactional, detail))
        elif h.checksum != mf.checksum:
            entries.append(MigrationState(
                mf.version, mf.name, "drifted", when, h.batch, h.transactional,
                f"file changed after it was applied (applied {h.checksum[:12]}, on disk {mf.checksum[:12]})",
            ))
        else:
            entries.append(MigrationState(mf.version, mf.name, "applied", when, h.batch, h.transactional))
        if h.name != mf.name:
            notes.append(f"{mf.filename} was applied under the name {h.name!r}")
    for h in by_version.values():
        entries.append(MigrationState(
            h.version, h.name, "missing" if h.status == "applied" else h.status,
            h.applied_at.isoformat(timespec="seconds"), h.batch, h.transactional,
            f"applied, but {h.filename} is not in the migrations folder" if h.status == "applied"
            else (h.error or "failed outside a transaction, and its file is gone"),
        ))
    entries.sort(key=lambda e: (e.version.ljust(14, "0"), e.version))
    return MigrationStatus(entries, history_table, lock_pid, notes)
