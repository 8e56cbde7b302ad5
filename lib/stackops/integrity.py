"""The guide's "Check database integrity" (``migration-workflow.sh check``): checks as data.

Every check is one ``Check(name, ok, detail, hint)``; the task prints them with one output layer
and exits non-zero when any failed. The checks are read-only: amcheck is created (when missing)
inside a transaction that is rolled back, so ``check`` leaves no trace in the schema. A database
without the schema is no crash: it reports its pending migrations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stackops import pg
from stackops.config import Settings
from stackops.errors import DatabaseUnavailable, StackopsError
from stackops.files import sha256_file
from stackops.migrate.files import discover
from stackops.migrate.history import compute_status, history_exists, lock_holder, read_history
from stackops.pg import listed as _listed
from stackops.pg import sql
from stackops.pg import user_objects as _user_objects
from stackops.report import Check, Reporter
from stackops.runtime.base import Runtime

UPLOADS_TABLE = "file_uploads"


@dataclass(frozen=True)
class IntegrityReport:
    env: str
    database: str
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]


def check_integrity(settings: Settings, runtime: Runtime, *, report: Reporter) -> IntegrityReport:
    """Run every check against the environment's database and uploads folder."""
    db = settings.env.db_name
    checks: list[Check] = []
    try:
        conn = pg.connect(runtime, autocommit=True)
    except DatabaseUnavailable as exc:
        return IntegrityReport(settings.env.name, db, [Check(
            "database reachable", False, str(exc).split(": start the environment")[0],
            f"start the environment with `invoke env.up --env {settings.env.name}`")])
    with conn:
        version = conn.info.server_version
        checks.append(Check("database reachable", True, f"{db} on PostgreSQL {version // 10000}.{version % 100}"))
        steps: list[tuple[str, Callable[[], list[Check]]]] = [
            ("migrations", lambda: _migration_checks(settings, conn)),
            ("invalid indexes", lambda: [pg.invalid_indexes(conn)]),
            ("NOT VALID constraints", lambda: [_not_valid_constraints(conn)]),
            ("amcheck", lambda: [pg.amcheck(conn)]),
            ("sequences", lambda: [_sequences(conn)]),
            ("foreign-key orphans", lambda: [_fk_orphans(conn)]),
            ("upload files", lambda: [_uploads(settings, conn)]),
        ]
        for name, step in steps:
            report.info(f"checking {name}")
            try:
                checks.extend(step())
            except (pg.Error, StackopsError, OSError) as exc:
                why = pg.first_line(exc)
                checks.append(Check(name, False, f"the check itself failed: {why}",
                                    "fix the cause above and run the check again"))
    return IntegrityReport(settings.env.name, db, checks)


# ----- migrations ------------------------------------------------------------------------------

def _migration_checks(settings: Settings, conn: Any) -> list[Check]:
    files = discover(settings.migrations.directory)
    st = compute_status(files, read_history(conn), lock_holder(conn), history_exists(conn))

    def names(*states: str) -> list[str]:
        return [f"{e.version}_{e.name}.sql" for e in st.having(*states)]

    drifted, missing, pending = names("drifted"), names("missing"), names("pending")
    failed = [f"{e.version}_{e.name}.sql ({e.detail})" for e in st.having("failed", "running")]
    applied = len(st.having("applied", "drifted"))
    return [
        Check("migration checksums", not drifted,
              f"{len(drifted)} applied file(s) changed since: {_listed(drifted)}" if drifted else
              f"{applied} applied file(s) unchanged",
              "restore the applied content of the file (git checkout) and put the change in a new migration"),
        Check("applied migration files present", not missing,
              f"applied but not on disk: {_listed(missing)}" if missing else "every applied migration has its file",
              "restore the files from version control: rollback needs their down sections"),
        Check("pending migrations", not pending,
              f"{len(pending)} not applied: {_listed(pending)}" if pending else f"none of {len(files)} pending",
              "apply them with `invoke migrate.apply`"),
        Check("non-transactional steps", not failed,
              f"failed part-way: {_listed(failed)}" if failed else "no failed or interrupted step",
              "return to the pre-migration backup with `invoke migrate.rollback --restore`, or repair by hand "
              "and delete the row from schema_migrations"),
    ]


# ----- catalog checks --------------------------------------------------------------------------

def _not_valid_constraints(conn: Any) -> Check:
    rows = conn.execute(_user_objects(
        "SELECT format('%s on %I.%I', c.conname, n.nspname, t.relname) FROM pg_constraint c "
        "JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
        "WHERE NOT c.convalidated AND {user_schemas} ORDER BY 1"
    )).fetchall()
    bad = [r[0] for r in rows]
    return Check("NOT VALID constraints", not bad,
                 f"not validated: {_listed(bad)}" if bad else "every constraint is validated",
                 "fix the rows that violate it, then ALTER TABLE <table> VALIDATE CONSTRAINT <name>")


def _sequences(conn: Any) -> Check:
    rows = conn.execute(_user_objects(
        "SELECT sn.nspname, s.relname, n.nspname, t.relname, a.attname, q.seqincrement "
        "FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' "
        "JOIN pg_namespace sn ON sn.oid = s.relnamespace JOIN pg_sequence q ON q.seqrelid = s.oid "
        "JOIN pg_class t ON t.oid = d.refobjid JOIN pg_namespace n ON n.oid = t.relnamespace "
        "JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid "
        "WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass "
        "AND d.deptype IN ('a', 'i') AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype) "
        "AND {user_schemas} ORDER BY 3, 4, 5"
    )).fetchall()
    behind: list[str] = []
    fixes: list[str] = []
    for seq_schema, seq, schema, table, column, inc in rows:
        last, called = conn.execute(
            sql.SQL("SELECT last_value, is_called FROM {}").format(sql.Identifier(seq_schema, seq))).fetchone()
        agg = sql.SQL("max") if inc > 0 else sql.SQL("min")
        edge = conn.execute(sql.SQL("SELECT {}({}) FROM {}").format(
            agg, sql.Identifier(column), sql.Identifier(schema, table))).fetchone()[0]
        if edge is None:
            continue
        nxt = last + inc if called else last
        if (inc > 0 and nxt <= edge) or (inc < 0 and nxt >= edge):
            behind.append(f"{seq_schema}.{seq} next {nxt} <= {schema}.{table}.{column} max {edge}"
                          if inc > 0 else f"{seq_schema}.{seq} next {nxt} >= min {edge}")
            fixes.append(f"SELECT setval('{seq_schema}.{seq}', {edge})")
    return Check("sequences", not behind,
                 f"behind their column: {_listed(behind)}" if behind else
                 f"{len(rows)} sequence(s) ahead of their column's values",
                 ("run " + "; ".join(fixes[:pg.MAX_LISTED])) if fixes else
                 "SELECT setval('<sequence>', (SELECT max(<column>) FROM <table>))")


def _fk_orphans(conn: Any) -> Check:
    rows = conn.execute(_user_objects(
        "SELECT c.conname, n.nspname, t.relname, pn.nspname, p.relname, "
        "ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY k(attnum, ord) "
        "      JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum ORDER BY k.ord), "
        "ARRAY(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY k(attnum, ord) "
        "      JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum ORDER BY k.ord) "
        "FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
        "JOIN pg_class p ON p.oid = c.confrelid JOIN pg_namespace pn ON pn.oid = p.relnamespace "
        "WHERE c.contype = 'f' AND c.conparentid = 0 AND {user_schemas} ORDER BY 2, 3, 1"
    )).fetchall()
    orphans: list[str] = []
    for conname, schema, table, pschema, ptable, cols, pcols in rows:
        not_null = sql.SQL(" AND ").join(sql.SQL("c.{} IS NOT NULL").format(sql.Identifier(x)) for x in cols)
        match = sql.SQL(" AND ").join(sql.SQL("p.{} = c.{}").format(sql.Identifier(y), sql.Identifier(x))
                                      for x, y in zip(cols, pcols, strict=True))
        count = conn.execute(sql.SQL(
            "SELECT count(*) FROM {} c WHERE {} AND NOT EXISTS (SELECT 1 FROM {} p WHERE {})"
        ).format(sql.Identifier(schema, table), not_null, sql.Identifier(pschema, ptable), match)).fetchone()[0]
        if count:
            orphans.append(f"{count} row(s) of {schema}.{table} ({conname}) point to no {pschema}.{ptable}")
    return Check("foreign-key orphans", not orphans,
                 _listed(orphans) if orphans else f"{len(rows)} foreign key(s) without orphans",
                 "delete or re-point the orphan rows (or restore from a backup), then find how they got past "
                 "the constraint (disabled triggers, NOT VALID, session_replication_role)")


# ----- uploads ---------------------------------------------------------------------------------

def _upload_rows(conn: Any) -> Iterator[tuple[int, str, int, str]]:
    last = 0
    while True:
        rows = conn.execute(
            "SELECT id, storage_path, size_bytes, sha256 FROM file_uploads WHERE id > %s ORDER BY id LIMIT 1000",
            (last,)).fetchall()
        if not rows:
            return
        yield from rows
        last = rows[-1][0]


def upload_problem(root: Path, storage_path: str, size: int, digest: str) -> str | None:
    """Why the uploaded file of a row is not as registered (None: it is)."""
    rel = Path(storage_path)
    if rel.is_absolute() or ".." in rel.parts:
        return f"{storage_path}: path leaves the uploads folder"
    path = root / rel
    try:
        if not path.resolve().is_relative_to(root.resolve()):
            return f"{storage_path}: resolves outside the uploads folder"
        if not path.is_file():
            return f"{storage_path}: missing"
        if path.stat().st_size != size:
            return f"{storage_path}: {path.stat().st_size} bytes, registered {size}"
        if sha256_file(path) != digest:
            return f"{storage_path}: sha256 differs from the registered one"
    except OSError as exc:
        return f"{storage_path}: unreadable ({exc.strerror})"
    return None


def _uploads(settings: Settings, conn: Any) -> Check:
    root = settings.env.uploads_dir
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (UPLOADS_TABLE,)).fetchone()[0]
    if not exists:
        return Check("upload files", True, f"no {UPLOADS_TABLE} table yet (schema not applied)")
    total = 0
    missing: list[str] = []
    changed: list[str] = []
    for _id, storage_path, size, digest in _upload_rows(conn):
        total += 1
        problem = upload_problem(root, storage_path, size, digest)
        if problem is None:
            continue
        (missing if problem.endswith(": missing") else changed).append(problem)
    bad = missing + changed
    detail = (f"{len(missing)} missing, {len(changed)} changed of {total} in {root}: {_listed(bad)}" if bad else
              f"{total} file(s) present in {root} with their registered sha256")
    return Check("upload files", not bad, detail,
                 "restore the uploads folder from a full backup, or delete the rows of files that are gone")
