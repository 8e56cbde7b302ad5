"""restore (full) / restore.db / restore.previous / restore.drop-previous."""

from __future__ import annotations

import sys
from typing import Any

from invoke import Collection, task

from stackops.cli import ENV_HELP, JSON_HELP, guarded, print_json, reporter, runtime, settings, table
from stackops.errors import ProtectedEnvironment

YES_HELP = "confirm a destructive step in a protected environment without a prompt"


def confirm(s: Any, what: str, yes: bool) -> None:
    """Protected environments need --yes or the environment's name typed at a terminal."""
    if not s.env.protected or yes:
        return
    if not sys.stdin.isatty():
        raise ProtectedEnvironment(
            f"{what} in protected environment {s.env.name!r} needs confirmation: pass --yes"
        )
    answer = input(f"{what} in protected environment {s.env.name!r}. Type the environment's name to go on: ")
    if answer.strip() != s.env.name:
        raise ProtectedEnvironment(f"{what} cancelled: the name typed was not {s.env.name!r}; nothing was touched")


def _restore(c: Any, backup: str, env: str | None, yes: bool, dry_run: bool, as_json: bool, uploads: bool) -> None:
    from stackops.restore import restore_database, restore_plan

    s = settings(c, env)
    report = reporter()
    rt = runtime(s, report)
    if dry_run:
        steps = restore_plan(s, rt, backup, report=report, uploads=uploads)
        if as_json:
            print_json({"dry_run": True, "steps": steps})
        else:
            print("\n".join(f"would {step}" for step in steps))
        return
    confirm(s, f"restoring {backup} over {s.env.db_name}{' and its uploads' if uploads else ''}", yes)
    result = restore_database(s, rt, backup, report=report, uploads=uploads)
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
        "env": ENV_HELP, "yes": YES_HELP, "dry_run": "check the backup and print the plan; touch nothing",
        "json": JSON_HELP}


@task(default=True, help=HELP)
@guarded
def full(c, backup, env=None, yes=False, dry_run=False, json=False):
    """Full recovery: database and uploads from one backup, swapped in after checks."""
    _restore(c, backup, env, yes, dry_run, json, uploads=True)


@task(help=HELP)
@guarded
def db(c, backup, env=None, yes=False, dry_run=False, json=False):
    """Restore the database only (the guide's `restore_db FILE`), keeping the old one beside it."""
    _restore(c, backup, env, yes, dry_run, json, uploads=False)


@task(help={"env": ENV_HELP, "json": JSON_HELP})
@guarded
def previous(c, env=None, json=False):
    """List the databases and uploads folders that earlier restores kept."""
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
                                  "dry_run": "say what would be removed"})
@guarded
def drop_previous(c, name, env=None, yes=False, dry_run=False):
    """Remove one database or uploads folder kept by an earlier restore."""
    from stackops.restore import drop_previous as drop
    from stackops.restore import previous_copies

    s = settings(c, env)
    rt = runtime(s, None)
    if dry_run:
        known = [x["name"] for x in previous_copies(s, rt)]
        print(f"would remove {name}" if name in known else f"{name} is not a kept copy; nothing to do")
        return
    confirm(s, f"removing {name}", yes)
    drop(s, rt, name, reporter())


ns = Collection("restore")
for t in (full, db, previous, drop_previous):
    ns.add_task(t)
