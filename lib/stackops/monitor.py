"""The guide's "Data Monitoring": data volumes, per-table sizes (with growth since the newest backup)
and user activity (with Redis sessions). Each returns data; the cli renders tables or JSON."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stackops import backupset, pg
from stackops.config import Settings
from stackops.errors import StackopsError
from stackops.runtime.base import DataVolume, Runtime

SESSION_PATTERNS = ("sess:*", "session:*", "sessions:*")  # express-session, and the usual prefixes


@dataclass(frozen=True)
class TableSize:
    schema: str
    table: str
    total_bytes: int
    rows_estimate: int
    rows_at_backup: int | None  # exact count in the newest backup's manifest (None: not in it, or no backup)
    growth_rows: int | None     # estimate now - count then


@dataclass(frozen=True)
class Tables:
    database: str
    database_bytes: int
    tables: list[TableSize]
    backup_id: str | None      # the backup the growth is measured against
    backup_started_at: str | None


@dataclass(frozen=True)
class Activity:
    total_users: int | None    # None: no users table (migrations not applied)
    active_users_7d: int | None
    redis_keys: int | None     # None: Redis did not answer
    redis_sessions: int | None
    redis_detail: str


def volumes(runtime: Runtime) -> list[DataVolume]:
    """The guide's `docker volume ls | grep impact-bot`: the environment's volumes or data folders, sized."""
    return runtime.data_volumes()


def tables(settings: Settings, runtime: Runtime) -> Tables:
    """The guide's per-table total size query, largest first, with row estimates and the growth since
    the newest complete backup's manifest."""
    with pg.connect(runtime) as conn:
        sizes = pg.table_sizes(conn)
        db_bytes = pg.database_size(conn)
    sets, _ = backupset.scan(settings)
    newest = max(sets, key=lambda b: b.started_at, default=None)
    counts: dict[str, Any] = dict(newest.manifest.get("row_counts") or {}) if newest else {}
    rows = []
    for schema, table, total, estimate in sizes:
        then = counts.get(f"{schema}.{table}")
        then_n = int(then) if then is not None else None
        rows.append(TableSize(schema, table, total, estimate, then_n, None if then_n is None else estimate - then_n))
    return Tables(settings.env.db_name, db_bytes, rows, newest.id if newest else None,
                  str(newest.manifest["started_at"]) if newest else None)


def activity(settings: Settings, runtime: Runtime) -> Activity:
    """The guide's total users and users active in the last 7 days; Redis keys and session keys."""
    with pg.connect(runtime) as conn:
        users = pg.user_activity(conn)
    import redis  # lazy: the client costs about 225 ms at import

    keys = sessions = None
    try:
        client = redis.Redis.from_url(runtime.redis_url(), socket_timeout=3, socket_connect_timeout=3)
        keys = int(client.dbsize())
        sessions = sum(1 for pattern in SESSION_PATTERNS for _ in client.scan_iter(match=pattern, count=1000))
        client.close()
        detail = f"session keys: {', '.join(SESSION_PATTERNS)}"
    except (redis.RedisError, StackopsError) as exc:
        detail = f"Redis did not answer: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    return Activity(users[0] if users else None, users[1] if users else None, keys, sessions, detail)
