"""env.up / env.down / env.status and doctor.

Capabilities are imported inside the task bodies, to keep `invoke --list` fast (see stackops.cli)."""

from __future__ import annotations

from typing import Any

from invoke import Collection, Exit, task

from stackops.cli import (
    DRY_RUN_HELP,
    ENV_HELP,
    JSON_HELP,
    YES_HELP,
    guarded,
    print_json,
    proceed,
    reporter,
    runtime,
    settings,
    table,
)
from stackops.errors import ProtectedEnvironment


def show_status(rt: Any, s: Any, as_json: bool) -> bool:
    from stackops.journal import status as swap_status
    from stackops.report import human_bytes
    from stackops.updatejournal import journal_status

    services = rt.status()
    swap = swap_status(s, rt)
    upd = journal_status(s)
    healthy = all(x.healthy is not False for x in services) and any(x.state == "running" or
                                                                      x.state == "external" for x in services)
    if as_json:
        print_json({"env": s.env.name, "runtime": rt.kind, "healthy": healthy, "services": services,
                    "backups_dir": s.env.backups_dir, "database": swap, "update": upd})
        return healthy and upd is None
    print(f"environment {s.env.name} (runtime {rt.kind}{', protected' if s.env.protected else ''})")
    rows = []
    for x in services:
        health = {True: "healthy", False: "UNHEALTHY", None: "-"}[x.healthy]
        size = human_bytes(x.size_bytes) if x.size_bytes is not None else "-"
        rows.append([x.name, x.state, health, x.port or "-", x.pid or "-", size, x.data_dir, x.detail])
    print(table(["service", "state", "health", "port", "pid", "size", "data", "detail"], rows))
    accepts = {True: "accepts connections", False: "REFUSES CONNECTIONS", None: "not reachable"}
    print(f"live database: {swap['live_database']} ({accepts[swap['accepts_connections']]}); interrupted restore: "
          f"{swap['interrupted_restore'] or 'none'}")
    if upd is not None:
        print(f"update: {upd['state'].upper()} in phase {upd['phase']} (pid {upd['pid']}, backup {upd['backup_id']}, "
              f"started {upd['started_at']})"
              + (f"; `invoke update --env {s.env.name}` or `invoke env.up --env {s.env.name}` rolls it back"
                 if upd["state"] == "interrupted" else ""))
    if not any(x.state in ("running", "external") for x in services):
        kept = [x.data_dir for x in services if x.name != "uploads" and x.data_dir not in ("", "-")]
        print(f"environment {s.env.name} is stopped — its data is kept ({'; '.join(kept) or 'no data yet'}); "
              f"start it with `invoke env.up --env {s.env.name}`")
    return (healthy and swap["interrupted_restore"] is None and swap["accepts_connections"] is not False
            and (upd is None or upd["state"] == "running"))


@task(help={"env": ENV_HELP})
@guarded
def up(c, env=None):
    """Start the environment's services (idempotent) and wait until they are healthy."""
    s = settings(c, env)
    report = reporter()
    rt = runtime(s, report)
    from stackops.updatejournal import journal_path

    if journal_path(s).exists():  # an update killed half-way: back to the images and data it recorded
        from stackops.update import recover as recover_update

        if rt.image_digests() == {} and not rt.target_digests():
            rt.up(report)  # no images: the database must answer before its data is compared
        recover_update(s, rt, report)
    rt.up(report)
    from stackops.journal import recover  # a swap left pending while the server was down

    recover(s, rt, report)
    if not show_status(rt, s, as_json=False):
        raise Exit(f"stackops: environment {s.env.name} started but is not healthy (see the table above)", code=1)


@task(help={"env": ENV_HELP, "remove_data": "also delete the databases and Redis data (refused when protected)",
            "yes": YES_HELP, "dry_run": DRY_RUN_HELP})
@guarded
def down(c, env=None, remove_data=False, yes=False, dry_run=False):
    """Stop the environment's services, keeping their data (idempotent)."""
    s = settings(c, env)
    report = reporter()
    rt = runtime(s, report)
    if remove_data:
        if s.env.protected:  # checked before anything is shown or asked: no confirmation makes it allowed
            raise ProtectedEnvironment(
                f"refusing to remove the data of protected environment {s.env.name!r}: the guide says of "
                "`docker-compose down -v`: \"DON'T USE THIS\" (it removes volumes and all data); the guide forbids "
                "it in production; stop it without --remove-data (data is kept)"
            )
        data = [f"{x.name}: {x.data_dir}" for x in rt.status() if x.name != "uploads" and x.data_dir != "-"]
        from stackops.files import dir_size
        from stackops.report import Plan, human_bytes
        from stackops.runtime.local import LocalRuntime

        beside = rt.beside_data() if isinstance(rt, LocalRuntime) else []
        data += [f"{p} ({human_bytes(dir_size(p))})" for p in beside]
        kept = [p.name for p in beside if p.name.startswith("data_pre_")]
        plan = Plan(f"stopping {s.env.name} and removing its data", s.env.name, s.env.protected,
                    ["stop every service", "delete the PostgreSQL and Redis data"
                     + (f" and the {len(beside)} cluster folder(s) beside it" if beside else "")],
                    data or ["no data found"],
                    [f"{', '.join(kept)}: kept by point-in-time restores, the only copy of the state before each; "
                     "deleted with the data (copy what is needed first)"] if kept else [],
                    always_confirm=bool(kept))
        if not proceed(plan, yes=yes, dry_run=dry_run):
            return
    elif dry_run:
        print(f"dry run: would stop {s.env.name}; data is kept")
        return
    rt.down(report, remove_data=remove_data)


@task(help={"env": ENV_HELP, "json": JSON_HELP})
@guarded
def status(c, env=None, json=False):
    """Show services, ports, health, data folders and sizes; exit 1 when not healthy."""
    s = settings(c, env)
    rt = runtime(s, None if json else reporter())
    if not show_status(rt, s, as_json=json):
        raise Exit(code=1)


@task(help={"json": JSON_HELP})
@guarded
def doctor(c, json=False):
    """List every prerequisite, found or missing, with the exact command that installs it."""
    from stackops.prereq import doctor_checks

    checks = doctor_checks()
    if json:
        print_json(checks)
    else:
        rows = [["ok" if x.ok else ("MISSING" if x.required else "absent"), x.name, x.detail,
                 "" if x.ok else x.hint] for x in checks]
        print(table(["", "prerequisite", "found", "install with"], rows))
    missing = [x.name for x in checks if x.required and not x.ok]
    if missing:
        raise Exit(f"stackops: missing prerequisites: {', '.join(missing)}", code=3)


ns = Collection("env")
ns.add_task(up)
ns.add_task(down)
ns.add_task(status)
