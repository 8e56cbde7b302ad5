"""monitor / monitor.volumes / monitor.tables / monitor.activity: the guide's "Check Data Status".

Capabilities are imported inside the task bodies, to keep `invoke --list` fast (see stackops.cli)."""

from __future__ import annotations

from typing import Any

from invoke import Collection, task

from stackops.cli import ENV_HELP, JSON_HELP, guarded, print_json, runtime, settings, table


def _size(n: int | None) -> str:
    from stackops.report import human_bytes

    return "-" if n is None else human_bytes(n)


def print_volumes(vols: list[Any], env: str, kind: str) -> None:
    print(f"data of {env} (runtime {kind})" + (": the guide's `docker volume ls` names" if kind == "compose" else ""))
    print(table(["service", "volume / folder", "kind", "where", "size", "exists"],
                [[v.service, v.name, v.kind, v.location, _size(v.size_bytes), "yes" if v.exists else "NO"]
                 for v in vols]))


def print_tables(t: Any) -> None:
    def growth(n: int | None) -> str:
        return "-" if n is None else f"{n:+d}"

    print(f"database {t.database}: {_size(t.database_bytes)}; growth since "
          + (f"backup {t.backup_id} ({t.backup_started_at[:19]} UTC)" if t.backup_id else "(no backup yet)"))
    print(table(["schema", "table", "size", "rows (est.)", "rows at backup", "growth"],
                [[x.schema, x.table, _size(x.total_bytes), x.rows_estimate,
                  "-" if x.rows_at_backup is None else x.rows_at_backup, growth(x.growth_rows)]
                 for x in t.tables]))


def print_activity(a: Any) -> None:
    def n(v: int | None) -> str:
        return "-" if v is None else str(v)

    print(table(["figure", "value"], [
        ["total users", n(a.total_users) if a.total_users is not None else "- (no users table: run migrate.apply)"],
        ["active users (last 7 days)", n(a.active_users_7d)],
        ["Redis keys", n(a.redis_keys)],
        ["Redis sessions", n(a.redis_sessions)],
    ]))
    print(a.redis_detail)


@task(help={"env": ENV_HELP, "json": JSON_HELP})
@guarded
def volumes(c, env=None, json=False):
    """This environment's volumes or data folders with sizes (the guide's `docker volume ls`)."""
    from stackops.monitor import volumes as get

    s = settings(c, env)
    rt = runtime(s, None)
    vols = get(rt)
    if json:
        print_json({"env": s.env.name, "runtime": rt.kind, "volumes": vols})
    else:
        print_volumes(vols, s.env.name, rt.kind)


@task(help={"env": ENV_HELP, "json": JSON_HELP})
@guarded
def tables(c, env=None, json=False):
    """Per-table total size, largest first, with row estimates and growth since the newest backup."""
    from stackops.monitor import tables as get

    s = settings(c, env)
    t = get(s, runtime(s, None))
    if json:
        print_json(t)
    else:
        print_tables(t)


@task(help={"env": ENV_HELP, "json": JSON_HELP})
@guarded
def activity(c, env=None, json=False):
    """Total users and users active in the last 7 days (the guide's query); Redis keys and sessions."""
    from stackops.monitor import activity as get

    s = settings(c, env)
    a = get(s, runtime(s, None))
    if json:
        print_json(a)
    else:
        print_activity(a)


@task(name="all", default=True, help={"env": ENV_HELP, "json": JSON_HELP})
@guarded
def all_(c, env=None, json=False):
    """All three: volumes, tables and activity (`invoke monitor`)."""
    from stackops import monitor

    s = settings(c, env)
    rt = runtime(s, None)
    vols, t, a = monitor.volumes(rt), monitor.tables(s, rt), monitor.activity(s, rt)
    if json:
        print_json({"env": s.env.name, "runtime": rt.kind, "volumes": vols, "tables": t, "activity": a})
        return
    print_volumes(vols, s.env.name, rt.kind)
    print()
    print_tables(t)
    print()
    print_activity(a)


ns = Collection("monitor")
for t_ in (all_, volumes, tables, activity):
    ns.add_task(t_)
