"""update (the guide's "Safe Update Process") and predeploy (the gate for CI and git hooks).

Capabilities are imported inside the task bodies, to keep `invoke --list` fast (see stackops.cli)."""

from __future__ import annotations

import sys
from typing import Any

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
    runtime,
    settings,
    table,
)
from stackops.cli.migrate import render_checks
from stackops.errors import PredeployFailed, UpdateFailed


def _short(ref: str) -> str:
    ref_part, _, digest = ref.rpartition("@")
    return f"{ref_part}@{digest[:19]}" if digest else ref


def render_update(result: Any) -> str:
    lines = [f"update of {result.env}: {result.outcome}"
             + ("" if result.images_apply else " (images do not apply on this runtime: data half only)")]
    rows = [[s.step, f"{s.seconds:.2f}s", "ok" if s.ok else "FAILED", s.detail[:90]] for s in result.steps]
    lines.append(table(["step", "time", "", "detail"], rows))
    if result.digests_before or result.digests_target:
        services = sorted(set(result.digests_before) | set(result.digests_target))
        lines.append(table(["service", "before", "target", "after"],
                           [[s, _short(result.digests_before.get(s, "-")), _short(result.digests_target.get(s, "-")),
                             _short(result.digests_after.get(s, "-"))] for s in services]))
    down = ("none: no container was stopped" if not result.downtime_s else f"{result.downtime_s:.2f}s "
            "(first container stopped -> every service healthy)")
    lines.append(f"downtime: {down}; total {result.seconds:.2f}s; backup {result.backup_id or '-'}; migrations "
                 f"applied: {', '.join(result.migrations_applied) or 'none'}")
    if result.failure:
        lines.append(f"FAILED: {result.failure}")
        lines.append("rolled back: " + "; ".join(result.rolled_back))
    if result.data_checks:
        lines.append(render_checks(result.data_checks))
    if result.checks and result.outcome != "nothing-changed":
        lines.append(render_checks(result.checks))
    return "\n".join(lines)


@task(help={"env": ENV_HELP, "migrate": "apply pending migrations after the recreate (default on; --no-migrate)",
            "dry_run": DRY_RUN_HELP + " (current and target digests; the targets before the pull)",
            "yes": YES_HELP, "json": JSON_HELP})
@guarded
def update(c, env=None, migrate=True, dry_run=False, yes=False, json=False):
    """The guide's safe update: backup, record digests, pull, recreate, migrate, check; rolls back on failure."""
    from stackops.update import update as run_update
    from stackops.update import update_plan

    s = settings(c, env)
    report = reporter(json)
    rt = runtime(s, report)
    plan, info = update_plan(s, rt, migrate=migrate)
    if dry_run and json:
        print_json({"dry_run": True, "plan": plan, **info})
        return
    if not proceed(plan, yes=yes, dry_run=dry_run, as_json=json):
        return
    result = run_update(s, rt, migrate=migrate, report=report)
    if json:
        print_json({**vars(result), "ok": result.ok})
    else:
        print(render_update(result))
    if not result.ok:
        bad = [ch.name for ch in result.data_checks if not ch.ok]
        raise UpdateFailed(f"update of {s.env.name} failed ({result.failure}) and was rolled back: "
                           f"{'; '.join(result.rolled_back)}; "
                           + (f"DIFFERS from backup {result.backup_id}: {', '.join(bad)}" if bad else
                              f"nothing lost: rows, uploads and images match backup {result.backup_id} and the "
                              "recorded digests"))


@task(help={"env": ENV_HELP, "json": JSON_HELP})
@guarded
def predeploy(c, env=None, json=False):
    """Gate for CI and git hooks: squawk, compose files, check of the target, backup age, untested migrations."""
    from stackops.predeploy import predeploy as run_predeploy
    from stackops.runtime.select import make_runtime

    s = settings(c, env)
    report = reporter(json)
    rt = runtime(s, None if json else report)
    others = {}
    for name in s.env_names:
        if name != s.env.name:
            try:
                others[name] = make_runtime(settings(c, name))
            except Exception as exc:  # another environment's configuration is not this gate's business
                report.info(f"{name}: not looked at ({exc})")
    result = run_predeploy(s, rt, others=others, report=report)
    if json:
        print_json({"env": result.env, "ok": result.ok, "checks": result.checks})
    else:
        print(f"pre-deploy gate for {s.env.name}", file=sys.stdout)
        print(render_checks(result.checks))
    if not result.ok:
        raise PredeployFailed(f"{len(result.failed)} pre-deploy check(s) failed: "
                              f"{', '.join(x.name for x in result.failed)}")
