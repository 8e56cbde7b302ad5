"""``invoke predeploy``: the gate a CI job or a git hook runs before deploying to an environment.

Rows (``Check``): squawk over the pending migrations (any finding fails: squawk refuses it); the
runtime's configuration (compose files valid for the environment, engine answers); ``check`` of the
target environment when its database answers (when it does not, one row says so and the rest of the
gate still runs); the newest backup's age and that it was verified (the RPO row, always); and, as a
warning that does not fail the gate, pending migrations that no other environment on this host has
applied yet (the guide: "Test migrations in development first").
"""

from __future__ import annotations

from datetime import UTC, datetime

from stackops import pg
from stackops.config import Settings
from stackops.deploycheck import BACKUP_ROW, MAX_BACKUP_AGE_HOURS, CheckReport, check_deployment, newest_backup_check
from stackops.errors import StackopsError
from stackops.migrate.files import discover
from stackops.migrate.history import compute_status, history_exists, read_history
from stackops.migrate.lint import lint
from stackops.report import Check, Reporter
from stackops.runtime.base import Runtime


def _applied_versions(runtime: Runtime) -> set[str] | None:
    try:
        with pg.connect(runtime, timeout=3) as conn:
            return {h.version for h in read_history(conn) if h.status == "applied"} if history_exists(conn) else set()
    except (StackopsError, pg.Error, OSError):
        return None


def predeploy(settings: Settings, runtime: Runtime, *, others: dict[str, Runtime], report: Reporter,
              now: datetime | None = None, max_backup_age_hours: float = MAX_BACKUP_AGE_HOURS) -> CheckReport:
    """Every row of the gate for ``settings``' environment; ``others``: the other environments on this host."""
    env = settings.env.name
    moment = now or datetime.now(UTC)
    files = discover(settings.migrations.directory)
    reachable = True
    server = None
    try:
        with pg.connect(runtime, timeout=5) as conn:
            st = compute_status(files, read_history(conn), None, history_exists(conn))
            server = conn.info.server_version
        pending = [f for f in files if f.version in {e.version for e in st.having("pending")}]
    except (StackopsError, pg.Error, OSError) as exc:
        reachable = False
        pending = list(files)
        report.warn(f"{env}'s database does not answer ({pg.first_line(exc)}): linting every migration file")
    checks: list[Check] = []
    report.step(f"squawk over {len(pending)} pending migration(s)")
    findings = lint(pending, cwd=settings.root,
                    pg_version=f"{server // 10000}.{server % 100}" if server else None) if pending else []
    checks.append(Check("squawk: pending migrations", not findings,
                        f"{len(pending)} pending, no findings" if not findings else
                        "; ".join(f"{f.filename}:{f.line}: {f.rule}" for f in findings[:5]),
                        "fix the migration (squawk's rule names the problem), then run predeploy again"))
    checks += runtime.orchestration_checks()
    if reachable:
        report.step(f"checking the deployment of {env}")
        deployed = check_deployment(settings, runtime, report=report, now=moment,
                                    max_backup_age_hours=max_backup_age_hours)
        # pending migrations are what a deploy applies: the gate lints them instead of failing on them
        checks += [c if c.name != "migrations applied and clean" or "not clean" in c.detail else
                   Check(c.name, True, c.detail, c.hint, required=False) for c in deployed.checks]
    else:
        checks.append(Check("target environment answers", False, f"{env}'s database does not answer: not checked",
                            f"`invoke env.up --env {env}`, or run predeploy where {env} runs", required=False))
        checks.append(newest_backup_check(settings, moment, max_backup_age_hours))
    if pending:
        untested = set(f.version for f in pending)
        seen = []
        for name, rt in sorted(others.items()):
            applied = _applied_versions(rt)
            if applied is None:
                continue
            seen.append(name)
            untested -= applied
        names = [f.filename for f in pending if f.version in untested]
        checks.append(Check("pending migrations tested elsewhere", not names,
                            f"applied nowhere else on this host ({', '.join(seen) or 'no other environment answers'}): "
                            f"{pg.listed(names)}" if names else
                            f"each pending migration is applied in {', '.join(seen)}",
                            "apply them in dev first (`invoke migrate.apply --env dev`)", required=False))
    assert any(c.name == BACKUP_ROW for c in checks)
    return CheckReport(env, checks)
