"""backup / backup.db / backup.list / backup.verify / backup.prune.

Capabilities are imported inside the task bodies, to keep `invoke --list` fast (see stackops.cli)."""

from __future__ import annotations

import sys
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
    reporter,
    runtime,
    settings,
    table,
)
from stackops.errors import VerifyFailed


def _take(c: Any, env: str | None, kind: str, as_json: bool) -> None:
    from stackops.backup import create_backup  # capabilities load psycopg: see stackops.cli
    from stackops.report import human_bytes

    s = settings(c, env)
    report = reporter(as_json)
    result = create_backup(s, runtime(s, report), kind=kind, report=report)
    report.summary(f"backup {result.id} ({human_bytes(result.size)} on disk)")
    if as_json:
        print_json({"id": result.id, "path": result.path, "manifest": result.manifest})
    else:
        print(result.path)


@task(default=True, help={"env": ENV_HELP, "json": JSON_HELP})
@guarded
def full(c, env=None, json=False):
    """Full backup: database, globals and uploads, from one point in time (the guide's `backup`)."""
    _take(c, env, "full", json)


@task(help={"env": ENV_HELP, "json": JSON_HELP})
@guarded
def db(c, env=None, json=False):
    """Database-only backup (the guide's `backup_db`)."""
    _take(c, env, "db", json)


@task(name="list", help={"env": ENV_HELP, "json": JSON_HELP})
@guarded
def list_(c, env=None, json=False):
    """List backups, newest first, with their last verification; damaged ones too, marked, with why."""
    from stackops.backupset import scan

    s = settings(c, env)
    if json:
        sets, damaged = scan(s, listing=True)
        where, remote_only = _where(s)
        print_json([{"id": b.id, "kind": b.kind, "path": b.path, "started_at": b.manifest["started_at"],
                     "age_s": _age_s(b), "duration_s": b.manifest["duration_s"], "size": b.size,
                     "where": where.get(b.id, "local"),
                     "migration_head": b.manifest.get("migration_head"), "verification": b.verification,
                     "damaged": False, "reason": None}
                    for b in sets]
                   + [{"id": d.id, "kind": None, "path": d.path, "started_at": None, "age_s": None,
                       "duration_s": None, "size": None, "where": "local", "migration_head": None,
                       "verification": None, "damaged": True, "reason": d.reason} for d in damaged]
                   + [{"id": r.id, "kind": r.kind, "path": None, "started_at": r.index["started_at"], "size": r.size,
                       "where": "remote", "verification": r.index.get("verification"), "damaged": False,
                       "reason": None} for r in remote_only])
        return
    print_list(s)


def _where(s: Any) -> tuple[dict[str, str], list[Any]]:
    """Where each set lives (local, remote, both) and the remote-only sets; local only without a remote."""
    if not s.offsite.enabled:
        return {}, []
    from stackops.errors import OffsiteError
    from stackops.offsite import locations

    try:
        return locations(s)
    except OffsiteError as exc:  # the local sets are what a restore needs in an outage: list them anyway
        print(f"warning: {exc}; `where` shows the local backups folder only", file=sys.stderr)
        return {}, []


def _age_s(b: Any) -> int:
    from datetime import UTC, datetime

    return int((datetime.now(UTC) - b.started_at).total_seconds())


def age(seconds: float) -> str:
    """``45s``, ``12m``, ``5h 3m``, ``2d 4h``: how long ago, at a glance (negative: in the future)."""
    if seconds < 0:
        return "in the future"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def print_list(s: Any) -> None:
    from stackops.backupset import scan
    from stackops.report import human_bytes

    sets, damaged = scan(s, listing=True)
    where, remote_only = _where(s)
    if not sets and not damaged and not remote_only:
        print(f"no backups in {s.env.backups_dir}")
        return
    rows = []
    for b in sets:
        v = b.verification
        verified = "never" if not v else f"{'ok' if v['ok'] else 'FAILED'} {v['verified_at'][:19]} " \
                                         f"({v['restore_seconds']}s)"
        rows.append([b.id, b.kind, b.manifest["started_at"][:19], age(_age_s(b)), f"{b.manifest['duration_s']}s",
                     human_bytes(b.size), b.manifest.get("migration_head") or "-", verified, where.get(b.id, "local")])
    for r in remote_only:
        rows.append([r.id, r.kind, r.index["started_at"][:19], "-", "-", human_bytes(r.size), "-",
                     "ok (before push)" if (r.index.get("verification") or {}).get("ok") else "-", "remote"])
    rows.sort(key=lambda row: row[2], reverse=True)
    rows += [[d.id, "DAMAGED", "-", "-", "-", "-", "-", f"unusable: {d.reason}", "local"] for d in damaged]
    print(table(["backup", "kind", "started (UTC)", "age", "took", "size", "migration", "verified", "where"], rows))


@task(help={"backup": "backup id or folder (default: the newest)",
            "latest": "verify the newest backup", "all": "verify every backup (damaged ones too: they fail)",
            "env": ENV_HELP, "json": JSON_HELP, "skip_space_check": SKIP_SPACE_HELP})
@guarded
def verify(c, backup=None, latest=False, all=False, env=None, json=False, skip_space_check=False):
    """Restore into a scratch database, compare with the manifest, record the result."""
    from stackops.backupset import scan
    from stackops.verify import verify_backup

    s = settings(c, env)
    report = reporter(json)
    rt = runtime(s, report)
    sets, damaged = scan(s)
    # --all: the damaged ones too (each is recorded and reported as FAILED)
    refs = [b.id for b in sets] + [d.id for d in damaged] if all else [backup or "latest"]
    if latest:
        refs = ["latest"]
    results = [verify_backup(s, rt, ref, report=report, skip_space_check=skip_space_check) for ref in refs]
    report.summary(f"verify of {len(results)} backup(s)")
    if json:
        print_json(results)
    else:
        print(table(["backup", "result", "restore s", "detail"],
                    [[r.backup_id, "ok" if r.ok else "FAILED", r.restore_seconds, r.detail] for r in results]))
    failed = [r.backup_id for r in results if not r.ok]
    if failed:
        raise VerifyFailed(f"verification failed for {', '.join(failed)}")


@task(help={"env": ENV_HELP, "dry_run": DRY_RUN_HELP, "yes": YES_HELP, "json": JSON_HELP,
            "include_unpushed": "with an offsite remote configured, also delete obsolete sets that were never "
                                "pushed (their only copy; the plan lists each and always asks)"})
@guarded
def prune(c, env=None, dry_run=False, yes=False, json=False, include_unpushed=False):
    """Apply retention (30 daily, 52 weekly from invoke.yaml): keep or delete each backup, with reasons.
    With an offsite remote, a set never pushed there is kept unless --include-unpushed."""
    from stackops.retention import prune as do_prune
    from stackops.retention import prune_plan

    s = settings(c, env)
    copies = None
    if s.offsite.enabled:
        from stackops.offsite import copies as offsite_copies

        def copies():  # read when planning and again under the prune's lock
            return offsite_copies(s)
    plan, decisions = prune_plan(s, copies=copies, include_unpushed=include_unpushed)
    if dry_run or yes or not (plan.protected or plan.always_confirm):  # otherwise confirm shows the plan
        for warning in plan.warnings:
            print(f"warning: {warning}", file=sys.stderr)
    if not dry_run and not plan.nothing_to_do:
        confirm(plan, yes)
        report = reporter(json)
        decisions = do_prune(s, report=report, confirmed={d.backup.id for d in decisions if not d.keep},
                             copies=copies, include_unpushed=include_unpushed)
        report.summary("prune")
    if json:
        print_json([{"id": d.backup.id, "kind": d.backup.kind, "covers": list(d.covers), "keep": d.keep,
                     "reasons": list(d.reasons), "dry_run": dry_run}
                    for d in decisions])
        return
    verb = "would delete" if dry_run else "deleted"
    print(table(["backup", "covers", "decision", "reasons"],
                [[d.backup.id, "+".join(d.covers), "keep" if d.keep else verb, "; ".join(d.reasons)]
                 for d in decisions]))


ns = Collection("backup")
for t in (full, db, list_, verify, prune):
    ns.add_task(t)
