"""pitr.enable / pitr.backup / pitr.info / pitr.restore: point-in-time recovery through pgBackRest.

Capabilities are imported inside the task bodies, to keep `invoke --list` fast (see stackops.cli)."""

from __future__ import annotations

from typing import Any

from invoke import Collection, task

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


def _show(found: Any) -> None:
    from stackops.report import human_bytes

    print(f"stanza {found.stanza}: {found.status}; repository {found.repo}")
    print(table(["backup", "type", "started (UTC)", "ended (UTC)", "database", "in repository", "WAL"],
                [[b.label, b.type, b.started_at.isoformat(timespec="seconds")[:19],
                  b.stopped_at.isoformat(timespec="seconds")[:19], human_bytes(b.size), human_bytes(b.repo_size),
                  f"{b.wal_start}..{b.wal_stop}"] for b in found.backups]))
    if found.earliest is not None:
        print(f"recoverable: from {found.earliest.isoformat(timespec='seconds')} to the last archived WAL "
              f"({found.wal_max})")


@task(help={"env": ENV_HELP})
@guarded
def enable(c, env=None):
    """Archive WAL to a pgBackRest repository (archive_timeout = the RPO), create the stanza, take the first
    full backup."""
    from stackops.pitr import enable as do_enable

    s = settings(c, env)
    report = reporter()
    _show(do_enable(s, runtime(s, report), report=report))


@task(help={"type": "full, diff or incr (default: incr; pgBackRest takes a full one when none exists)",
            "env": ENV_HELP})
@guarded
def backup(c, type="incr", env=None):
    """A pgBackRest backup (full / differential / incremental) of the whole cluster."""
    from stackops.pitr import backup as do_backup

    s = settings(c, env)
    report = reporter()
    made = do_backup(s, runtime(s, report), type, report=report)
    print(f"{made.label} ({made.type}) ended {made.stopped_at.isoformat(timespec='seconds')}")


@task(help={"env": ENV_HELP, "json": JSON_HELP})
@guarded
def info(c, env=None, json=False):
    """pgBackRest's backups and the recoverable window (`pgbackrest info --output=json` as a table)."""
    from stackops.pitr import info as do_info

    s = settings(c, env)
    found = do_info(s, runtime(s, None))
    if json:
        print_json(found)
    else:
        _show(found)


@task(help={"to": "target time, e.g. \"2026-11-30 14:03:00\" (UTC unless a zone is given); "
                  "omitted: the end of the archived WAL", "env": ENV_HELP, "yes": YES_HELP,
            "dry_run": DRY_RUN_HELP, "json": JSON_HELP})
@guarded
def restore(c, to=None, env=None, yes=False, dry_run=False, json=False):
    """Restore the cluster as it was at --to into a new cluster beside the live one, check it, swap it in
    (the live data folder is kept aside)."""
    from stackops.pitr import parse_target, restore_plan
    from stackops.pitr import restore as do_restore

    s = settings(c, env)
    report = reporter()
    rt = runtime(s, report)
    target = parse_target(to) if to else None
    if not proceed(restore_plan(s, rt, target), yes=yes, dry_run=dry_run, as_json=json):
        return
    result = do_restore(s, rt, target, report=report)
    if json:
        print_json(result)
    else:
        print(f"restored {s.env.name} to {result.target} from {result.backup} in {result.seconds}s; "
              f"the previous data folder is kept as {result.kept_as}")


ns = Collection("pitr")
for t in (enable, backup, info, restore):
    ns.add_task(t)
