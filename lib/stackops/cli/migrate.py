"""migrate.create / status / apply / rollback / check: the guide's migration-workflow.sh.

Capabilities are imported inside the task bodies, to keep `invoke --list` fast (see stackops.cli)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from invoke import Collection, task

from stackops.cli import (
    ENV_HELP,
    JSON_HELP,
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
from stackops.errors import CheckFailed


def _shown(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


@task(help={"name": "what the migration does: lowercase letters, digits and '_' (e.g. add_new_feature)",
            "env": ENV_HELP})
@guarded
def create(c, name, env=None):
    """Create a new migration file from the template: migrations/YYYYMMDDHHMMSS_NAME.sql."""
    from stackops.migrate.files import check_name
    from stackops.migrate.files import create as create_file

    check_name(name)
    s = settings(c, env)
    print(_shown(create_file(s.migrations.directory, name), s.root))


@task(help={"env": ENV_HELP, "json": JSON_HELP})
@guarded
def status(c, env=None, json=False):
    """List every migration: applied, pending, drifted, missing, failed or running (`migrate.check` gates)."""
    from stackops.migrate.engine import status as migration_status

    s = settings(c, env)
    st = migration_status(s, runtime(s, None if json else reporter()))
    if json:
        print_json({"env": s.env.name, "database": s.env.db_name, **vars(st)})
        return
    print(f"migrations of {s.env.name} ({s.env.db_name}), folder {_shown(s.migrations.directory, s.root)}")
    if not st.entries:
        print("no migrations")
        return
    rows = [[e.version, e.name, e.state.upper() if e.state not in ("applied", "pending") else e.state,
             e.batch or "", e.applied_at or "", "" if e.transactional in (True, None) else "no-tx", e.detail]
            for e in st.entries]
    print(table(["version", "name", "state", "batch", "applied at", "", "detail"], rows))
    for note in st.notes:
        print(f"note: {note}")
    counts: dict[str, int] = {}
    for e in st.entries:
        counts[e.state] = counts.get(e.state, 0) + 1
    print(", ".join(f"{v} {k}" for k, v in sorted(counts.items())))


@task(help={"path": "apply only this pending migration file, e.g. migrations/20240618_add_new_feature.sql "
                    "(default: every pending one)",
            "strict": "refuse when squawk reports any finding",
            "dry_run": "lint and show what would run; change nothing",
            "yes": YES_HELP, "env": ENV_HELP, "json": JSON_HELP})
@guarded
def apply(c, path=None, env=None, strict=False, dry_run=False, yes=False, json=False):
    """Apply pending migrations safely: squawk lint, pre-migration backup, lock, automatic rollback on failure."""
    from stackops.migrate.engine import apply as apply_migrations
    from stackops.migrate.engine import apply_plan

    s = settings(c, env)
    report = reporter(json)
    rt = runtime(s, report)
    if s.env.protected and not dry_run:
        plan, _ = apply_plan(s, rt, path=path, strict=strict, report=report)
        if not proceed(plan, yes=yes, dry_run=False):
            return
    result = apply_migrations(s, rt, path=path, strict=strict, dry_run=dry_run, report=report)
    if json:
        print_json(result)
        return
    if result.applied:
        print(table(["version", "name", "ms", ""],
                    [[a.version, a.name, a.execution_ms, "" if a.transactional else "no-tx"]
                     for a in result.applied]))
    if result.findings:
        print(table(["file", "line", "rule", "finding"],
                    [[f.filename, f.line, f.rule, f.message] for f in result.findings]))
    print(result.message + (f" (pre-migration backup {result.backup_id})" if result.backup_id else ""))


@task(help={"restore": "restore the batch's pre-migration backup instead of running down sections "
                       "(loses every change written since)",
            "yes": "confirm a rollback in a protected environment",
            "dry_run": "show what would be reverted; change nothing",
            "env": ENV_HELP, "json": JSON_HELP})
@guarded
def rollback(c, env=None, restore=False, yes=False, dry_run=False, json=False):
    """Revert the last applied batch of migrations (down sections in reverse order, or --restore)."""
    from stackops.migrate.engine import rollback as rollback_batch
    from stackops.migrate.engine import rollback_plan

    s = settings(c, env)
    report = reporter(json)
    rt = runtime(s, report)
    plan, result = rollback_plan(s, rt, restore=restore, report=report)
    if not dry_run and not plan.nothing_to_do:
        confirm(plan, yes)
        result = rollback_batch(s, rt, restore=restore, report=report)
    if json:
        print_json(result)
        return
    print(result.message)  # warnings went to the progress log (stderr) before acting


def render_checks(checks: list[Any]) -> str:
    return table(["", "check", "detail", "hint"],
                 [["ok" if x.ok else "FAIL", x.name, x.detail, "" if x.ok else x.hint] for x in checks])


@task(help={"env": ENV_HELP, "json": JSON_HELP})
@guarded
def check(c, env=None, json=False):
    """Check database integrity: migrations, indexes, constraints, amcheck, sequences, orphans, upload files."""
    from stackops.integrity import check_integrity

    s = settings(c, env)
    report = reporter(json)
    result = check_integrity(s, runtime(s, report), report=report)
    if json:
        print_json({**vars(result), "ok": result.ok})
    else:
        print(f"integrity of {s.env.name} ({s.env.db_name})")
        print(render_checks(result.checks))
    if not result.ok:
        raise CheckFailed(f"{len(result.failed)} integrity check(s) failed: "
                          f"{', '.join(x.name for x in result.failed)}")


ns = Collection("migrate")
ns.add_task(create)
ns.add_task(status)
ns.add_task(apply)
ns.add_task(rollback)
ns.add_task(check)
