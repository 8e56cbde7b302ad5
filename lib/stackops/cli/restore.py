"""restore (full) / restore.db / restore.previous / restore.drop-previous.

Capabilities are imported inside the task bodies, to keep `invoke --list` fast (see stackops.cli)."""

from __future__ import annotations

from typing import Any

from invoke import Collection, task

from stackops.cli import (
    DRY_RUN_HELP,
    ENV_HELP,
    JSON_HELP,
    SKIP_SPACE_HELP,
    YES_HELP,
    confirm,
    guarded,
    print_json,
    proceed,
    reporter,
    runtime,
    settings,
    table,
)


def _restore(c: Any, backup: str, env: str | None, yes: bool, dry_run: bool, as_json: bool, uploads: bool,
             skip_space_check: bool) -> None:
    from stackops.migrate.files import newest_version
    from stackops.restore import restore_database, restore_plan

    s = settings(c, env)
    report = reporter(as_json)
    if s.offsite.enabled:
        from stackops.offsite import pull_set, remote_only

        remote = remote_only(s, backup)
        if remote is not None and dry_run:
            if remote.encrypted:  # the real run's first refusal (pull_set), so that the dry run does not promise more
                from stackops.crypt import check_identity

                check_identity(s.offsite.identity_file, remote.index["recipients"], f"remote copy of {remote.id}")
            print(f"dry run: {backup} exists only offsite: it would be pulled (checked, decrypted) and then restored; "
                  f"pull it first (`invoke backup.pull {backup}`) to see the whole plan")
            return
        if remote is not None:
            pull_set(s, backup, report=report)
    rt = runtime(s, report)
    newest = newest_version(s.migrations.directory)
    plan = restore_plan(s, rt, backup, report=report, uploads=uploads, newest_migration=newest,
                        skip_space_check=skip_space_check)
    if not proceed(plan, yes=yes, dry_run=dry_run, as_json=as_json):
        return
    result = restore_database(s, rt, backup, report=report, uploads=uploads, newest_migration=newest,
                              approve=lambda counts_plan: confirm(counts_plan, yes), skip_space_check=skip_space_check)
    report.summary(f"restore of {result.source}")
    if as_json:
        print_json(result)
    else:
        print(f"restored {result.source} into {result.database} in {result.seconds}s")
        if result.previous_database:
            print(f"the previous database is kept as {result.previous_database} "
                  f"(remove it with `invoke restore.drop-previous {result.previous_database}`)")
        if result.previous_uploads:
            print(f"the previous uploads folder is kept as {result.previous_uploads}")


HELP = {"backup": "backup id, folder, `latest`, or a guide-format database_backup_*.sql.gz (restore.db)",
        "env": ENV_HELP, "yes": YES_HELP, "dry_run": DRY_RUN_HELP,
        "json": JSON_HELP, "skip_space_check": SKIP_SPACE_HELP}


@task(default=True, help=HELP)
@guarded
def full(c, backup, env=None, yes=False, dry_run=False, json=False, skip_space_check=False):
    """Full recovery: database and uploads from one backup, swapped in after checks."""
    _restore(c, backup, env, yes, dry_run, json, uploads=True, skip_space_check=skip_space_check)


@task(help=HELP)
@guarded
def db(c, backup, env=None, yes=False, dry_run=False, json=False, skip_space_check=False):
    """Restore the database only (the guide's `restore_db FILE`), keeping the old one beside it."""
    _restore(c, backup, env, yes, dry_run, json, uploads=False, skip_space_check=skip_space_check)


@task(help={"env": ENV_HELP, "json": JSON_HELP})
@guarded
def previous(c, env=None, json=False):
    """List the databases and uploads folders that earlier restores kept, and scratch copies killed ones left."""
    from stackops.report import human_bytes
    from stackops.restore import previous_copies

    s = settings(c, env)
    copies = previous_copies(s, runtime(s, None))
    if json:
        print_json(copies)
    else:
        print(table(["kind", "name", "size"], [[x["kind"], x["name"], human_bytes(x["size"]) if x["size"] else "-"]
                                               for x in copies]))


@task(name="drop-previous", help={"name": "a name listed by restore.previous", "env": ENV_HELP, "yes": YES_HELP,
                                  "dry_run": DRY_RUN_HELP})
@guarded
def drop_previous(c, name, env=None, yes=False, dry_run=False):
    """Remove one database or uploads folder kept by an earlier restore (or left by a killed one)."""
    from stackops.restore import drop_previous as drop
    from stackops.restore import drop_previous_plan

    s = settings(c, env)
    rt = runtime(s, None)
    if proceed(drop_previous_plan(s, rt, name), yes=yes, dry_run=dry_run):
        drop(s, rt, name, reporter())


@task(help={"env": ENV_HELP, "yes": YES_HELP, "dry_run": DRY_RUN_HELP})
@guarded
def clean(c, env=None, yes=False, dry_run=False):
    """Drop every scratch database that a killed restore or verify left (see restore.previous)."""
    from stackops.restore import clean as drop_all
    from stackops.restore import clean_plan

    s = settings(c, env)
    rt = runtime(s, None)
    plan, names = clean_plan(s, rt)
    if proceed(plan, yes=yes, dry_run=dry_run):
        drop_all(s, rt, names, reporter())


ns = Collection("restore")
for t in (full, db, previous, drop_previous, clean):
    ns.add_task(t)
