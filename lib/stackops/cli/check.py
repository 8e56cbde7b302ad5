"""check: the guide's validate-deployment.sh, one row per check, non-zero exit when any fails.

Capabilities are imported inside the task bodies, to keep `invoke --list` fast (see stackops.cli)."""

from __future__ import annotations

from invoke import task

from stackops.cli import ENV_HELP, JSON_HELP, guarded, print_json, reporter, runtime, settings
from stackops.cli.migrate import render_checks
from stackops.errors import CheckFailed


@task(help={"env": ENV_HELP, "deep": "add migrate.check's integrity checks (amcheck, orphans, upload files)",
            "json": JSON_HELP})
@guarded
def check(c, env=None, deep=False, json=False):
    """Validate a deployment: services, database, migrations, Redis, backend, uploads, backup age, disk."""
    from stackops.deploycheck import check_deployment

    s = settings(c, env)
    report = reporter(json)
    result = check_deployment(s, runtime(s, None if json else report), report=report, deep=deep)
    if json:
        print_json({"env": result.env, "ok": result.ok, "checks": result.checks})
    else:
        print(f"deployment check of {s.env.name}")
        print(render_checks(result.checks))
    if not result.ok:
        raise CheckFailed(f"{len(result.failed)} deployment check(s) failed: "
                          f"{', '.join(x.name for x in result.failed)}")
