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


def _impl(rt: Any) -> Any:
    """The PITR capability of the environment's runtime: compose (pgBackRest in the database container, its
    repository in a volume) or the local one (stackops.pitr; it refuses the external runtime)."""
    if rt.kind == "compose":
        from stackops import pitr_compose

        return pitr_compose
    from stackops import pitr

    return pitr


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


def _enable_plan(s: Any) -> Any:
    from stackops.report import Plan

    env = s.env
    return Plan(
        f"turning point-in-time recovery on for {env.name}", env.name, env.protected,
        [f"write pgBackRest's configuration (stanza {env.name})",
         f"turn WAL archiving on (archive_timeout {s.pitr.archive_timeout}s: the recovery point objective)",
         "restart the database server (archive_mode takes effect only at a start): its connections drop "
         "for a few seconds",
         "create the stanza, check that WAL reaches the repository, take the first full pgBackRest backup"],
        [], [f"the {env.name} database restarts: the backend's connections drop and reconnect"])


@task(help={"env": ENV_HELP, "yes": YES_HELP, "dry_run": DRY_RUN_HELP})
@guarded
def enable(c, env=None, yes=False, dry_run=False):
    """Archive WAL to a pgBackRest repository (archive_timeout = the RPO), create the stanza, take the first
    full backup. Restarts the database: confirmed in a protected environment (--yes, or its name typed)."""
    s = settings(c, env)
    if not proceed(_enable_plan(s), yes=yes, dry_run=dry_run):
        return
    report = reporter()
    rt = runtime(s, report)
    _show(_impl(rt).enable(s, rt, report=report))


@task(help={"type": "full, diff or incr (default: incr; pgBackRest takes a full one when none exists)",
            "env": ENV_HELP})
@guarded
def backup(c, type="incr", env=None):
    """A pgBackRest backup (full / differential / incremental) of the whole cluster."""
    s = settings(c, env)
    report = reporter()
    rt = runtime(s, report)
    made = _impl(rt).backup(s, rt, type, report=report)
    print(f"{made.label} ({made.type}) ended {made.stopped_at.isoformat(timespec='seconds')}")


@task(help={"env": ENV_HELP, "json": JSON_HELP})
@guarded
def info(c, env=None, json=False):
    """pgBackRest's backups and the recoverable window (`pgbackrest info --output=json` as a table)."""
    s = settings(c, env)
    rt = runtime(s, None)
    found = _impl(rt).info(s, rt)
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
    from stackops.errors import UsageError
    from stackops.pitr import parse_target

    if to is not None and not to.strip():  # an unset shell variable: never read as "the end of the archive"
        raise UsageError("--to is empty: give a time (e.g. --to \"2026-11-30 14:03:00\"), or leave --to out to "
                         "replay everything archived")
    s = settings(c, env)
    report = reporter()
    rt = runtime(s, report)
    impl = _impl(rt)
    target = parse_target(to) if to is not None else None
    if not proceed(impl.restore_plan(s, rt, target), yes=yes, dry_run=dry_run, as_json=json):
        return
    result = impl.restore(s, rt, target, report=report)
    if json:
        print_json(result)
    else:
        print(f"restored {s.env.name} to {result.target} from {result.backup} along timeline {result.followed} "
              f"(now timeline {result.timeline}) in {result.seconds}s; the previous data folder is kept as "
              f"{result.kept_as}")


@task(help={"base": "the image to add pgBackRest to (default: the database image the environment's compose "
                    "files name, i.e. POSTGRES_IMAGE)",
            "tag": "the image to build (default impactbot-v2-postgres-pitr:15)", "env": ENV_HELP})
@guarded
def image(c, base="", tag="", env=None):
    """Compose: build the database image with pgBackRest (compose/images/postgres-pitr FROM POSTGRES_IMAGE)."""
    from stackops.pitr_compose import PITR_IMAGE, build_image

    s = settings(c, env)
    report = reporter()
    built = build_image(s, runtime(s, report), base or None, tag or PITR_IMAGE, report=report)
    print(f"{built}: select it with POSTGRES_IMAGE={built} in compose/.env, then `invoke env.up --env {s.env.name}` "
          f"and `invoke pitr.enable --env {s.env.name}`")


ns = Collection("pitr")
for t in (enable, backup, info, restore, image):
    ns.add_task(t)
