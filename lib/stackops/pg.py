"""The PostgreSQL layer: the only module that imports psycopg or reads a PostgreSQL version.

Connections (with the one "cannot connect" error), databases by name (create, drop, rename, list,
always through ``sql.Identifier``), the user-schema filter, user tables and their exact row counts,
the migration head, amcheck, and server / client majors. Capabilities call these; they never build
a connection or a catalog query of their own.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import errors, sql

from stackops.errors import DatabaseUnavailable, VersionMismatch
from stackops.proc import Cmd, text
from stackops.report import Check
from stackops.runtime.base import Runtime

__all__ = ["Connection", "Error", "OperationalError", "errors", "sql"]

Connection = psycopg.Connection
Error = psycopg.Error
OperationalError = psycopg.OperationalError

MAINTENANCE_DB = "postgres"
# schemas that belong to the user (alias ``n`` for pg_namespace): not the catalogs, toast or temp
USER_SCHEMAS = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp_)'"
MAX_LISTED = 5


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an error's text (PostgreSQL adds DETAIL/HINT lines)."""
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def connect(runtime: Runtime, dbname: str | None = None, *, autocommit: bool = False,
            timeout: int | None = None) -> psycopg.Connection[Any]:
    """A connection to ``dbname`` (default: the environment's database), or one DatabaseUnavailable line."""
    info = runtime.conninfo(dbname)
    if timeout is not None:
        info["connect_timeout"] = timeout
    try:
        return psycopg.connect(**info, autocommit=autocommit)
    except psycopg.OperationalError as exc:
        why = [ln for ln in str(exc).strip().splitlines() if ln.strip()][-1:] or [type(exc).__name__]
        env = runtime.settings.env.name
        raise DatabaseUnavailable(
            f"cannot connect to database {info.get('dbname')} of {env} ({why[0].strip()}): "
            f"start the environment with `invoke env.up --env {env}`"
        ) from None


def admin(runtime: Runtime) -> psycopg.Connection[Any]:
    """An autocommit connection to the maintenance database (CREATE / DROP / ALTER DATABASE)."""
    return connect(runtime, MAINTENANCE_DB, autocommit=True)


def user_objects(query: str) -> sql.Composed:
    """``query`` with ``{user_schemas}`` replaced by the filter that keeps user schemas (alias ``n``)."""
    return sql.SQL(query).format(user_schemas=sql.SQL(USER_SCHEMAS))


# ----- databases by name -------------------------------------------------------------------------
def database_exists(conn: psycopg.Connection[Any], name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def databases_like(runtime: Runtime, prefix: str) -> list[tuple[str, int, bool]]:
    """(name, size in bytes, accepts connections) of every database whose name starts with ``prefix``."""
    pattern = prefix.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%") + "%"
    with admin(runtime) as conn:
        rows = conn.execute("SELECT datname, pg_database_size(datname), datallowconn FROM pg_database "
                            "WHERE datname LIKE %s ORDER BY 1 DESC", (pattern,)).fetchall()
    return [(str(n), int(s), bool(a)) for n, s, a in rows]


def database_names(runtime: Runtime) -> list[str]:
    """The name of every database on the server (sorted)."""
    with admin(runtime) as conn:
        return [str(r[0]) for r in conn.execute("SELECT datname FROM pg_database ORDER BY 1").fetchall()]


def database_sizes(runtime: Runtime, names: Sequence[str]) -> dict[str, int]:
    """Size in bytes of each of ``names`` that exists (one query)."""
    if not names:
        return {}
    with admin(runtime) as conn:
        rows = conn.execute("SELECT datname, pg_database_size(datname) FROM pg_database WHERE datname = ANY(%s)",
                            (list(names),)).fetchall()
    return {str(n): int(s) for n, s in rows}


def create_database(runtime: Runtime, name: str) -> None:
    with admin(runtime) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'").format(sql.Identifier(name)))


def drop_database(runtime: Runtime, name: str) -> None:
    with admin(runtime) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def rename_database(conn: psycopg.Connection[Any], old: str, new: str) -> None:
    conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new)))


def allow_connections(conn: psycopg.Connection[Any], name: str, allow: bool) -> None:
    conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}").format(
        sql.Identifier(name), sql.SQL("true" if allow else "false")))


def set_database_options(conn: psycopg.Connection[Any], name: str, options: dict[str, str] | None) -> None:
    """``ALTER DATABASE name SET`` each option (new sessions of ``name`` start with them); None: RESET ALL."""
    db = sql.Identifier(name)
    if options is None:
        conn.execute(sql.SQL("ALTER DATABASE {} RESET ALL").format(db))
        return
    for key, value in options.items():
        conn.execute(sql.SQL("ALTER DATABASE {} SET {} = {}").format(db, sql.Identifier(key), sql.Literal(value)))


def terminate_sessions(conn: psycopg.Connection[Any], name: str) -> None:
    conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                 "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))


def export_snapshot(conn: psycopg.Connection[Any]) -> str:
    """Open a read-only repeatable-read transaction on ``conn`` and export its snapshot (for
    ``pg_dump --snapshot``); it stays valid while that transaction is open."""
    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    row = conn.execute("SELECT pg_export_snapshot()").fetchone()
    assert row is not None
    return str(row[0])


def limit_lock_waits(conn: psycopg.Connection[Any], timeout: str) -> None:
    """For the rest of ``conn``'s open transaction, wait at most ``timeout`` (e.g. ``60s``) for a lock."""
    conn.execute("SELECT set_config('lock_timeout', %s, true)", (timeout,))


def cancel(conn: psycopg.Connection[Any]) -> None:
    """Cancel the statement ``conn`` is running (callable from another thread); quiet if it is gone."""
    try:
        conn.cancel()
    except psycopg.Error:
        pass


# ----- tables ------------------------------------------------------------------------------------
def user_tables(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """(schema, table) of every ordinary user table, sorted."""
    rows = conn.execute(user_objects(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind = 'r' AND {user_schemas} ORDER BY 1, 2")).fetchall()
    return [(str(s), str(t)) for s, t in rows]


def table_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Exact row count of every user table (``schema.table``), as seen by ``conn``'s snapshot."""
    counts = {}
    for schema, table in user_tables(conn):
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))).fetchone()
        counts[f"{schema}.{table}"] = int(row[0]) if row else 0
    return counts


def data_size(conn: psycopg.Connection[Any]) -> int:
    """About the bytes of every user table's rows (heap and TOAST, no indexes): what a dump writes.

    Read from the catalog's page counts (as of the last VACUUM/ANALYZE), never with pg_table_size():
    that opens each table and so waits behind any lock another session holds, and this runs inside
    the backup's snapshot transaction, before pg_dump and its lock timeout."""
    row = conn.execute(user_objects(
        "SELECT coalesce(sum(greatest(c.relpages, 0) + coalesce(greatest(t.relpages, 0), 0)), 0) "
        "* current_setting('block_size')::bigint FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace LEFT JOIN pg_class t ON t.oid = c.reltoastrelid "
        "WHERE c.relkind IN ('r', 'm') AND {user_schemas}")).fetchone()
    return int(row[0]) if row else 0


def database_size(conn: psycopg.Connection[Any], name: str | None = None) -> int:
    row = conn.execute("SELECT pg_database_size(coalesce(%s, current_database()))", (name,)).fetchone()
    return int(row[0]) if row else 0


def max_wal_size(conn: psycopg.Connection[Any]) -> int:
    """``max_wal_size`` in bytes: about how much WAL the server keeps before a checkpoint recycles it."""
    row = conn.execute("SELECT pg_size_bytes(current_setting('max_wal_size'))").fetchone()
    return int(row[0]) if row else 0


def table_sizes(conn: psycopg.Connection[Any]) -> list[tuple[str, str, int, int]]:
    """The guide's "Check database size": (schema, table, total bytes with indexes and TOAST, estimated
    rows) of every user table, largest first. Rows: the planner's estimate, or the live-tuple count
    where the table was never analysed."""
    rows = conn.execute(user_objects(
        "SELECT n.nspname, c.relname, pg_total_relation_size(c.oid), "
        "CASE WHEN c.reltuples >= 0 THEN c.reltuples::bigint ELSE coalesce(s.n_live_tup, 0) END "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid "
        "WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND {user_schemas} "
        "ORDER BY 3 DESC, 1, 2")).fetchall()
    return [(str(a), str(b), int(size), int(est)) for a, b, size, est in rows]


def user_activity(conn: psycopg.Connection[Any], days: int = 7) -> tuple[int, int] | None:
    """The guide's "Check recent user activity": (total users, logged in within ``days``), or None
    where the database has no ``users`` table with ``last_login_at`` (migrations not applied)."""
    has = conn.execute("SELECT 1 FROM information_schema.columns WHERE table_schema = 'public' "
                       "AND table_name = 'users' AND column_name = 'last_login_at'").fetchone()
    if has is None:
        return None
    row = conn.execute("SELECT count(*), count(*) FILTER (WHERE last_login_at > now() - make_interval(days => %s)) "
                       "FROM public.users", (days,)).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def migration_head(conn: psycopg.Connection[Any]) -> str | None:
    """The newest applied migration version, or None without a history table."""
    exists = conn.execute("SELECT to_regclass('public.schema_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return None
    row = conn.execute("SELECT max(version)::text FROM public.schema_migrations").fetchone()
    return str(row[0]) if row and row[0] is not None else None


# ----- checks ------------------------------------------------------------------------------------
def listed(items: list[str]) -> str:
    more = len(items) - MAX_LISTED
    return ", ".join(items[:MAX_LISTED]) + (f" and {more} more" if more > 0 else "")


def invalid_indexes(conn: psycopg.Connection[Any]) -> Check:
    rows = conn.execute(user_objects(
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE NOT i.indisvalid AND {user_schemas} ORDER BY 1"
    )).fetchall()
    bad = [str(r[0]) for r in rows]
    return Check("invalid indexes", not bad, f"invalid: {listed(bad)}" if bad else "every index is valid",
                 "rebuild with REINDEX INDEX CONCURRENTLY <name> (or drop it and create it again); "
                 "an interrupted CREATE INDEX CONCURRENTLY leaves these")


@contextmanager
def _amcheck_function(conn: psycopg.Connection[Any]) -> Iterator[sql.Identifier | str]:
    """The bt_index_check function, with amcheck created inside a transaction that is rolled back
    (so a check leaves no trace), or the reason it is unavailable."""
    with conn.transaction(force_rollback=True):
        try:
            with conn.transaction():
                conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
        except psycopg.Error as exc:
            yield f"amcheck unavailable: {exc.diag.message_primary or first_line(exc)}"
            return
        row = conn.execute("SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
                           "WHERE e.extname = 'amcheck'").fetchone()
        yield sql.Identifier(str(row[0]) if row else "public", "bt_index_check")


def install_amcheck(conn: psycopg.Connection[Any]) -> bool:
    """CREATE EXTENSION amcheck, committed (for a scratch database that is dropped afterwards, so that
    other connections can check too); False when it cannot be created."""
    try:
        with conn.transaction():
            conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
    except psycopg.Error:
        return False
    return True


def amcheck(conn: psycopg.Connection[Any], workers: Sequence[psycopg.Connection[Any]] = ()) -> Check:
    """bt_index_check (heapallindexed) on every btree index amcheck can check: valid, ready, not
    temporary, and a real index (a partitioned table's parent index has no storage; its partitions'
    indexes are checked). Every failure is collected; what was skipped is said.

    ``workers``: more connections to the same database, where amcheck is installed (``install_amcheck``).
    The indexes are shared out, largest first (index and table pages: heapallindexed reads the table),
    each to the connection with the fewest pages so far, and checked in parallel: each check is CPU work
    in its own server process."""
    name = "amcheck (btree indexes)"
    with _amcheck_function(conn) as func:
        if isinstance(func, str):
            return Check(name, False, func, "ask a superuser to run CREATE EXTENSION amcheck in this database")
        rows = conn.execute(
            "SELECT c.oid, format('%I.%I', n.nspname, c.relname), c.relkind = 'i' AND i.indisvalid "
            "AND i.indisready AND c.relpersistence <> 't', greatest(c.relpages, 0) + greatest(t.relpages, 0) "
            "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_am a ON a.oid = c.relam WHERE a.amname = 'btree' ORDER BY 2"
        ).fetchall()
        checkable = [(oid, index, int(pages)) for oid, index, ok, pages in rows if ok]
        skipped = len(rows) - len(checkable)
        # a worker that cannot see a committed amcheck would report every index as corrupt: none then
        visible = all(w.execute("SELECT 1 FROM pg_extension WHERE extname = 'amcheck'").fetchone() for w in workers)
        conns = [conn, *workers] if visible else [conn]
        shares: list[list[tuple[Any, str]]] = [[] for _ in conns]
        pages = [0] * len(conns)
        for oid, index, size in sorted(checkable, key=lambda r: -r[2]):
            k = pages.index(min(pages))
            shares[k].append((oid, index))
            pages[k] += size

        def check(c: psycopg.Connection[Any], share: list[tuple[Any, str]]) -> list[str]:
            bad: list[str] = []
            for oid, index in share:
                try:
                    with c.transaction():
                        c.execute(sql.SQL("SELECT {}(%s::regclass, true)").format(func), (oid,))
                except psycopg.Error as exc:
                    bad.append(f"{index} ({exc.diag.message_primary or first_line(exc)})")
            return bad

        if len(conns) == 1:
            bad = check(conn, shares[0])
        else:
            with ThreadPoolExecutor(max_workers=len(conns), thread_name_prefix="amcheck") as pool:
                found = [pool.submit(check, c, share) for c, share in zip(conns, shares, strict=True)]
                bad = sorted(b for f in found for b in f.result())
    checked = len(checkable)
    note = f"; {skipped} skipped (partitioned parents, invalid or temporary: amcheck cannot check them)" \
        if skipped else ""
    return Check(name, not bad, f"corrupt: {listed(bad)}" if bad else
                 f"{checked} btree index(es) verified with bt_index_check{note}",
                 "REINDEX the index; if it fails again, restore from a backup and check the disk")


# ----- versions ----------------------------------------------------------------------------------
def parse_major(version_text: str) -> int:
    """The major version in ``pg_dump (PostgreSQL) 15.4``, ``15.4 (Debian ...)`` or ``PostgreSQL 16beta1``."""
    m = re.search(r"(?:\(PostgreSQL\)|PostgreSQL)?\s*(\d+)(?:[.\w]*)", version_text)
    if not m:
        raise VersionMismatch(f"cannot read a PostgreSQL version from {version_text!r}")
    return int(m.group(1))


def server_major(conn: psycopg.Connection[Any]) -> int:
    return int(conn.info.server_version) // 10000


def server_version(conn: psycopg.Connection[Any]) -> str:
    return str(conn.info.parameter_status("server_version") or conn.info.server_version)


def client_version(tool: Cmd, server: int) -> str:
    """The client tool's version text; refuse a client older than the server before anything starts."""
    version = text(tool.with_args("--version"))
    major = parse_major(version)
    if major < server:
        name = tool.argv[-1].rsplit("/", 1)[-1]
        raise VersionMismatch(
            f"{name} is version {major} but the server is PostgreSQL {server}: an older {name} cannot read a "
            f"newer server safely; install postgresql-client-{server}"
        )
    return version


def alter_system(runtime: Runtime, values: dict[str, str]) -> None:
    """ALTER SYSTEM SET each name to its value (postgresql.auto.conf; some need a restart to apply)."""
    with admin(runtime) as conn:
        for name, value in values.items():
            conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))


def reload_config(runtime: Runtime) -> None:
    """``pg_reload_conf()``: every server process re-reads its settings and wakes up. After a start,
    PostgreSQL 15's checkpointer sleeps a whole checkpoint_timeout before it first looks at
    archive_timeout (it computed its sleep while the startup process ran); this wakes it."""
    with admin(runtime) as conn:
        conn.execute("SELECT pg_reload_conf()")


def in_recovery(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    return bool(row and row[0])
