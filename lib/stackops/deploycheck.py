"""``invoke check``: the guide's ``validate-deployment.sh`` as checks (data, not printing).

One ``Check`` per question an operator asks after a deployment: is every service up and healthy,
does the database answer (and is it not in recovery), are migrations clean, does Redis answer
(a key round-trips; persistence on in a protected environment), does the backend answer its health
endpoint, is the uploads folder there and writable, is the newest verified backup young enough
(the RPO), is there room for the next backup, was an update interrupted (its journal left behind). ``deep`` adds
``migrate.check``'s integrity checks. Every check is read-only except Redis' round-trip key (written
with a 10 s expiry, then deleted) and the uploads probe file (created and removed at once). With WAL archiving on
(PITR), a row says whether archiving works (``pg_stat_archiver``).
"""

from __future__ import annotations

import os
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from stackops import backupset, pg
from stackops.config import Settings
from stackops.errors import StackopsError
from stackops.integrity import check_integrity
from stackops.migrate.files import discover
from stackops.migrate.history import compute_status, history_exists, read_history
from stackops.offsite import display, newest_age_hours
from stackops.report import Check, Reporter
from stackops.runtime.base import Runtime
from stackops.space import room_for_backups
from stackops.updatejournal import journal_check

MAX_BACKUP_AGE_HOURS = 26.0  # a daily backup plus two hours of slack: the guide's daily schedule
BACKUP_ROW = "newest verified backup"


@dataclass(frozen=True)
class CheckReport:
    env: str
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks if c.required)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok and c.required]


def _services(runtime: Runtime, env: str) -> Check:
    rows = runtime.status()
    bad = [f"{s.name} {s.state}" + ("" if s.healthy is not False else " (unhealthy)") for s in rows
           if s.name != "uploads" and (s.state not in ("running", "external") or s.healthy is False)]
    return Check("services running and healthy", not bad,
                 f"not running or unhealthy: {', '.join(bad)}" if bad else
                 ", ".join(s.name for s in rows if s.name != "uploads") + " up",
                 f"start them with `invoke env.up --env {env}` and read their logs")


def _database(runtime: Runtime, settings: Settings) -> list[Check]:
    env = settings.env.name
    try:
        with pg.connect(runtime, timeout=5) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            recovering = bool(row and row[0])
            files = discover(settings.migrations.directory)
            st = compute_status(files, read_history(conn), None, history_exists(conn))
            archiving = _archiving(conn, env)
    except (StackopsError, pg.Error) as exc:
        return [Check("database answers", False, pg.first_line(exc), f"start it with `invoke env.up --env {env}`")]
    checks = [Check("database answers", not recovering,
                    "in recovery (read-only standby)" if recovering else f"{settings.env.db_name} answers",
                    "promote the server or point the environment at the primary")]
    pending = [f"{e.version}_{e.name}" for e in st.having("pending")]
    broken = [f"{e.version}_{e.name} {e.state}" for e in st.having("failed", "running", "drifted", "missing")]
    detail = "; ".join(x for x in (f"pending: {pg.listed(pending)}" if pending else "",
                                   f"not clean: {pg.listed(broken)}" if broken else "") if x)
    checks.append(Check("migrations applied and clean", not pending and not broken,
                        detail or f"{len(files)} applied, none pending, drifted or failed",
                        f"`invoke migrate.status --env {env}`, then `invoke migrate.apply --env {env}`"))
    return checks + ([archiving] if archiving else [])


def _archiving(conn: Any, env: str) -> Check | None:
    """With WAL archiving on (PITR enabled): does it work? A failing ``archive_command`` breaks the
    point-in-time promise without a sound, and pg_wal grows until the server's disk is full.
    PostgreSQL retries a failed segment for ever, so "the last failure is newer than the last success"
    is the failing state; one failure retried with success reads as working."""
    mode = conn.execute("SELECT current_setting('archive_mode')").fetchone()
    if mode is None or mode[0] == "off":
        return None
    row = conn.execute("SELECT archived_count, last_archived_wal, last_archived_time, failed_count, "
                       "last_failed_wal, last_failed_time FROM pg_stat_archiver").fetchone()
    name = "WAL archiving works"
    if row is None:
        return None
    archived, last_wal, last_time, failed, failed_wal, failed_time = row
    if failed_time is not None and (last_time is None or failed_time > last_time):
        return Check(name, False, f"archiving {failed_wal} fails since {failed_time:%Y-%m-%d %H:%M:%S %Z} "
                                  f"({failed} failures; last archived: "
                                  f"{f'{last_wal} at {last_time:%Y-%m-%d %H:%M:%S %Z}' if last_time else 'none'}); "
                                  "point-in-time recovery cannot reach past it and pg_wal grows",
                     f"read the server's log for archive_command's error and `invoke pitr.info --env {env}`")
    return Check(name, True, f"{archived} WAL segments archived" + (f", last {last_wal}" if last_wal else ""))


def _redis(runtime: Runtime, settings: Settings) -> Check:
    import redis  # the client costs about 225 ms at import; only this check and the local runtime need it

    name = "redis answers"
    try:
        client = redis.Redis.from_url(runtime.redis_url(), socket_timeout=3, socket_connect_timeout=3)
        key = f"stackops:check:{os.getpid()}:{time.monotonic_ns()}"
        client.set(key, "1", ex=10)
        round_trip = client.get(key) == b"1"
        client.delete(key)
        persistence = client.config_get("appendonly").get("appendonly") == "yes" or \
            bool(client.config_get("save").get("save"))
        client.close()
    except (redis.RedisError, StackopsError) as exc:
        return Check(name, False, pg.first_line(exc), f"start it with `invoke env.up --env {settings.env.name}`")
    if not round_trip:
        return Check(name, False, "a key written could not be read back", "look at Redis' log (maxmemory, errors)")
    if settings.env.protected and not persistence:
        return Check(name, False, "persistence is off (no AOF, no RDB snapshots): sessions are lost on restart",
                     "enable appendonly in the environment's Redis configuration")
    return Check(name, True, "a key round-trips" + (", persistence on" if persistence else ""))


def _backend(runtime: Runtime) -> Check | None:
    port = next((s.port for s in runtime.status() if s.name == "backend" and s.port), None)
    if port is None:
        return None  # no backend in this environment, or none published to the host
    url = f"http://127.0.0.1:{port}/health"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            ok = 200 <= response.status < 300
            detail = f"{url} answered {response.status}"
    except OSError as exc:
        ok, detail = False, f"{url}: {exc}"
    return Check("backend health endpoint", ok, detail, "see the backend's logs (`docker compose logs backend`)")


def _uploads(settings: Settings) -> Check:
    folder = settings.env.uploads_dir
    name = "uploads folder writable"
    if folder.is_symlink() or not folder.is_dir():
        return Check(name, False, f"{folder} is missing", f"`invoke env.up --env {settings.env.name}` creates it")
    try:
        fd, probe = tempfile.mkstemp(prefix=".stackops-check-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return Check(name, False, f"cannot write in {folder}: {exc.strerror}",
                     "give the application's user write access to it (and check the disk)")
    return Check(name, True, f"{folder} exists and is writable")


def newest_backup_check(settings: Settings, now: datetime, max_age_hours: float) -> Check:
    name = BACKUP_ROW
    verified = [b for b in backupset.list_backups(settings) if (b.verification or {}).get("ok")
                and b.started_at <= now]
    hint = f"take and verify one: `invoke backup --env {settings.env.name}` then `invoke backup.verify --latest`"
    if not verified:
        return Check(name, False, f"no verified backup in {settings.env.backups_dir}", hint)
    newest = verified[0]
    age = (now - newest.started_at).total_seconds() / 3600
    return Check(name, age <= max_age_hours,
                 f"{newest.id}, {age:.1f} h old (policy {max_age_hours:g} h)", hint)


def _disk(settings: Settings, runtime: Runtime) -> Check:
    ok, detail = room_for_backups(settings, runtime)
    return Check("free disk", ok, detail,
                 f"free space (e.g. `invoke backup.prune --env {settings.env.name}`) or grow the filesystem")


def _offsite(settings: Settings, now: datetime, max_age_hours: float) -> Check:
    name = "newest offsite copy"
    hint = f"push one: `invoke backup.push --all-missing --env {settings.env.name}`"
    try:
        age = newest_age_hours(settings, now)
    except StackopsError as exc:
        return Check(name, False, f"the remote cannot be listed: {exc}", "check stackops.offsite and the remote")
    if age is None:
        return Check(name, False, f"no complete set on {display(settings)}", hint)
    return Check(name, age <= max_age_hours, f"{age:.1f} h old on {display(settings)} "
                 f"(policy {max_age_hours:g} h)", hint)


def check_deployment(settings: Settings, runtime: Runtime, *, report: Reporter, deep: bool = False,
                     now: datetime | None = None, max_backup_age_hours: float = MAX_BACKUP_AGE_HOURS) -> CheckReport:
    """Every check of the deployment, in the order an operator would look."""
    moment = now or datetime.now(UTC)
    checks = [_services(runtime, settings.env.name)]
    report.info("checking the database and migrations")
    checks += _database(runtime, settings)
    report.info("checking Redis")
    checks.append(_redis(runtime, settings))
    backend = _backend(runtime)
    if backend is not None:
        checks.append(backend)
    checks += [_uploads(settings), newest_backup_check(settings, moment, max_backup_age_hours),
               _disk(settings, runtime), journal_check(settings)]
    if settings.offsite.enabled:
        report.info("checking the newest offsite copy")
        checks.append(_offsite(settings, moment, max_backup_age_hours))
    if deep:
        report.info("running the integrity checks (migrate.check)")
        checks += [c for c in check_integrity(settings, runtime, report=report).checks
                   if c.name not in ("database reachable",)]
    return CheckReport(settings.env.name, checks)

