"""backup.push / backup.pull / backup.prune-remote: offsite copies through rclone (age when configured).

Capabilities are imported inside the task bodies, to keep `invoke --list` fast (see stackops.cli)."""

from __future__ import annotations

from pathlib import Path

from invoke import task

from stackops.cli import (
    DRY_RUN_HELP,
    ENV_HELP,
    JSON_HELP,
    YES_HELP,
    guarded,
    print_json,
    proceed,
    reporter,
    settings,
    table,
)
from stackops.errors import UsageError


# BACKUP is a flag, not a positional: invoke requires every positional argument, and the backup
# service's `backup.push --all-missing` names none
@task(help={"backup": "backup id or `latest` (default with no --all-missing: latest)",
            "all_missing": "push every complete local set that is not complete on the remote",
            "env": ENV_HELP, "json": JSON_HELP})
@guarded
def push(c, backup=None, all_missing=False, env=None, json=False):
    """Copy complete backup sets to the offsite remote (rclone), encrypted with age when recipients are set;
    every file is read back and checked against its sha256 before the set is listed as offsite."""
    from stackops.offsite import push_missing, push_set

    s = settings(c, env)
    report = reporter()
    if backup and all_missing:
        raise UsageError("give a BACKUP or --all-missing, not both")
    results = push_missing(s, report=report) if all_missing else [push_set(s, backup or "latest", report=report)]
    if json:
        print_json(results)
        return
    if not results:
        print("every local backup is already offsite")
    for r in results:
        print(f"{r.id}: {'pushed' if r.pushed else 'already offsite'}"
              + (f" ({r.bytes} bytes in {r.seconds}s{', encrypted' if r.encrypted else ''})" if r.pushed else ""))


@task(help={"backup": "backup id on the remote, or `latest`",
            "identity": "age identity file (default: stackops.offsite.identity_file)",
            "replace": "the local copy is damaged: check the remote copy, keep the damaged folder as "
                       "<id>.damaged-<time> (never deleted) and pull in its place",
            "env": ENV_HELP, "json": JSON_HELP})
@guarded
def pull(c, backup, identity=None, replace=False, env=None, json=False):
    """Bring one set back from the offsite remote into the backups folder, checked (and decrypted)
    before it appears there."""
    from stackops.offsite import pull_set

    s = settings(c, env)
    result = pull_set(s, backup, report=reporter(), identity=Path(identity) if identity else None,
                      replace=replace)
    if json:
        print_json(result)
    else:
        print(f"{result.id}: {'pulled' if result.pulled else 'already local'} "
              f"({result.bytes} bytes in {result.seconds}s)")


@task(name="prune-remote", help={"env": ENV_HELP, "dry_run": DRY_RUN_HELP, "yes": YES_HELP, "json": JSON_HELP,
                                 "delete_only_copies": "also delete obsolete sets that are not in the local "
                                                       "backups folder (their last copy)"})
@guarded
def prune_remote(c, env=None, dry_run=False, yes=False, json=False, delete_only_copies=False):
    """Remote retention (stackops.offsite.daily / weekly): keep or delete each offsite set, with reasons.
    A set whose only copy is the remote one is kept unless --delete-only-copies."""
    from stackops.offsite import last_copies, prune_remote_plan
    from stackops.offsite import prune_remote as do_prune

    s = settings(c, env)
    plan, decisions, doomed = prune_remote_plan(s, only_copies=delete_only_copies)
    deleted: list[str] = []
    if proceed(plan, yes=yes, dry_run=dry_run, as_json=json):
        deleted = do_prune(s, doomed, report=reporter(), only_copies=delete_only_copies,
                           confirmed_last=last_copies(decisions))
    if dry_run:
        return
    if json:
        print_json([{"id": d.backup.id, "keep": d.keep, "deleted": d.backup.id in deleted, "reasons": list(d.reasons)}
                    for d in decisions])
        return
    print(table(["offsite backup", "decision", "reasons"],
                [[d.backup.id, "deleted" if d.backup.id in deleted else "keep" if d.keep else "not deleted",
                  "; ".join(d.reasons)] for d in decisions]))
