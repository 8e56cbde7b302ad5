"""``invoke update``: the guide's "Safe Update Process" as one recorded, reversible operation.

Under the environment's lock: preflight (nothing changes on a failure), a full backup checked file by
file against its manifest (the rollback point for data), every service's running image digest (the
rollback point for code), ``pull`` before anything stops, "nothing changed" when neither images nor
migrations moved, then stop / recreate / wait healthy, the pending migrations (the backup above stands
in for the engine's own pre-migration backup), and ``check``. When any of those fails, the update rolls
back by itself: the image references point at the recorded images again and the services are
recreated; when the database differs from the backup (migrations ran, rows changed) the backup is
restored (the replaced database is kept beside it); then rows and uploads are compared with the
backup's manifest and the deployment is checked again.

**The journal.** ``<backups>/.update-journal.json`` (written atomically) records the phase, the
backup id and the recorded digests before each step that changes the stack. A killed update leaves it
behind: ``env.status`` and ``check`` show it, and the next ``update`` or ``env.up`` rolls back to
what it recorded (``recover``). An update that had not stopped anything yet is simply cleared.

The journal's format and status live in ``stackops.updatejournal``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from stackops import backupset, pg
from stackops.backup import create_backup
from stackops.config import Settings
from stackops.deploycheck import BACKUP_ROW, check_deployment
from stackops.errors import LockBusy, RollbackFailed, StackopsError, UpdateRefused
from stackops.files import sha256_file
from stackops.lock import env_lock
from stackops.migrate.engine import apply as apply_migrations
from stackops.migrate.files import discover
from stackops.migrate.history import compute_status, history_exists, read_history
from stackops.report import Check, Plan, Reporter, human_bytes
from stackops.restore import restore_database
from stackops.runtime.base import NO_IMAGES, Runtime
from stackops.space import backup_need, free_bytes, server_room
from stackops.updatejournal import clear, journal_path, journal_status, read_journal, write


# ----- results -------------------------------------------------------------------------------------
@dataclass
class StepTime:
    step: str
    seconds: float
    ok: bool
    detail: str = ""


@dataclass
class UpdateResult:
    env: str
    outcome: str = "running"       # updated | nothing-changed | rolled-back
    images_apply: bool = True
    backup_id: str | None = None
    digests_before: dict[str, str] = field(default_factory=dict)
    digests_target: dict[str, str] = field(default_factory=dict)
    digests_after: dict[str, str] = field(default_factory=dict)
    images_changed: list[str] = field(default_factory=list)
    migrations_pending: list[str] = field(default_factory=list)
    migrations_applied: list[str] = field(default_factory=list)
    steps: list[StepTime] = field(default_factory=list)
    downtime_s: float | None = None
    failure: str = ""
    rolled_back: list[str] = field(default_factory=list)
    data_checks: list[Check] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    recovered: str | None = None
    pins: list[str] = field(default_factory=list)  # the rollback point's image references while it ran
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.outcome in ("updated", "nothing-changed")


def digest_of(ref_at_digest: str) -> str:
    return ref_at_digest.rpartition("@")[2]


def changed_services(before: dict[str, str], target: dict[str, str]) -> list[str]:
    return sorted(s for s, d in target.items() if digest_of(d) != digest_of(before.get(s, "")))


class _Timer:
    def __init__(self, result: UpdateResult, report: Reporter) -> None:
        self.result, self.report = result, report

    def run(self, step: str, fn: Callable[[], Any], detail: Callable[[Any], str] | None = None) -> Any:
        self.report.step(f"update: {step}")
        t0 = time.monotonic()
        try:
            value = fn()
        except BaseException as exc:
            self.result.steps.append(StepTime(step, round(time.monotonic() - t0, 2), False, str(exc)[:300]))
            raise
        self.result.steps.append(StepTime(step, round(time.monotonic() - t0, 2), True,
                                          detail(value) if detail else ""))
        return value


# ----- preflight -------------------------------------------------------------------------------------
def _rollback_room(settings: Settings, runtime: Runtime) -> Check:
    """A failed update is rolled back by restoring its backup beside the live database: an update whose
    rollback the server's disk could not hold (a full data disk PANICs PostgreSQL) is refused before it
    starts, not found out half-way."""
    live = settings.env.db_name
    room = server_room(runtime, live, "the update's backup", recorded=None, archive=0)
    name = "server disk for a rollback"
    if room.free is None:
        return Check(name, True, f"unknown to the {runtime.kind} runtime: not checked (a rollback needs about "
                                 f"{human_bytes(room.need)})")
    return Check(name, not room.short, f"{human_bytes(room.free)} free on the database server's disk, restoring "
                                       f"{live} beside itself needs about {human_bytes(room.need)} ({room.why})",
                 "free space on the database server's disk (`invoke restore.previous` lists kept copies) or grow it")


def preflight(settings: Settings, runtime: Runtime) -> tuple[list[Check], list[str]]:
    """Every check that runs before an update changes anything; (checks, pending migration names)."""
    env = settings.env.name
    checks = list(runtime.orchestration_checks())
    try:
        with env_lock(settings.env.backups_dir, "update (preflight)"):
            checks.append(Check("no other operation running", True, "the environment's lock is free"))
    except LockBusy as exc:
        checks.append(Check("no other operation running", False, str(exc), "wait for it to finish"))
    js = journal_status(settings)
    if js is not None and js["state"] == "running" and not js["own"]:
        checks.append(Check("no update running", False, f"update pid {js['pid']} is in phase {js['phase']}",
                            "wait for it"))
    pending: list[str] = []
    try:
        with pg.connect(runtime, timeout=5) as conn:
            major = pg.server_major(conn)
            files = discover(settings.migrations.directory)
            st = compute_status(files, read_history(conn), None, history_exists(conn))
        version = pg.client_version(runtime.pg_cmd("pg_dump"), major)
        checks.append(Check("client and server versions fit", True,
                            f"server PostgreSQL {major}, {version.strip().splitlines()[0]}"))
        bad = [f"{e.version}_{e.name} {e.state}" for e in st.having("failed", "running", "drifted")]
        pending = [f"{e.version}_{e.name}" for e in st.having("pending")]
        checks.append(Check("no failed or drifted migration", not bad,
                            f"not clean: {pg.listed(bad)}" if bad else f"{len(pending)} pending",
                            f"`invoke migrate.status --env {env}`; `invoke migrate.rollback` or restore the file"))
        need, why = backup_need(settings, runtime)
        free = free_bytes(settings.env.backups_dir)
        checks.append(Check("disk space for the backup", free >= need,
                            f"{human_bytes(free)} free in {settings.env.backups_dir}, a backup needs about "
                            f"{human_bytes(need)} ({why})",
                            f"free space: `invoke backup.prune --env {env}`"))
        checks.append(_rollback_room(settings, runtime))
    except (StackopsError, pg.Error, OSError) as exc:
        checks.append(Check("database answers", False, pg.first_line(exc), f"`invoke env.up --env {env}`"))
    return checks, pending


def _refuse(checks: list[Check]) -> None:
    failed = [c for c in checks if not c.ok and c.required]
    if failed:
        first = failed[0]
        raise UpdateRefused(f"update refused before changing anything: {first.name}: {first.detail}"
                            + (f" ({first.hint})" if first.hint else "")
                            + (f"; and {len(failed) - 1} more failed check(s)" if len(failed) > 1 else ""))


def update_plan(settings: Settings, runtime: Runtime, *, migrate: bool = True) -> tuple[Plan, dict[str, Any]]:
    """The plan of an update after its preflight (refused with UpdateRefused when a check fails), with
    current and target digests (targets as resolved from local images now, before the pull)."""
    env = settings.env
    checks, pending = preflight(settings, runtime)
    _refuse(checks)
    before, target = runtime.image_digests(), runtime.target_digests()
    changed = changed_services(before, target) if target else []
    steps = [f"take a full backup of {env.db_name} and the uploads and check it against its manifest",
             "record the running image digests" + ("" if target else f" ({NO_IMAGES})")]
    if target:
        steps += ["pull the images (nothing stops meanwhile)"]
        steps += [f"{s}: {before.get(s, '(not running)')} -> {target[s]}" for s in sorted(target)]
        steps += ["stop and recreate the services whose image changed; wait until every service is healthy"]
    if migrate:
        steps.append(f"apply {len(pending)} pending migration(s): {', '.join(pending)}" if pending else
                     "no pending migration")
    steps += ["check the deployment", "on any failure: roll back images and (when it changed) the database"]
    warnings = []
    if not changed and not (migrate and pending):
        warnings.append("nothing differs before the pull (same digests, no pending migration): unless the pull "
                        "brings new images, the update stops after its backup")
    info = {"checks": checks, "digests_before": before, "digests_target": target, "images_changed": changed,
            "migrations_pending": pending}
    return Plan(f"updating {env.name}", env.name, env.protected, steps,
                [f"{', '.join(changed) or 'services with a new image'} restart (downtime)"] if target else [],
                warnings), info


# ----- data compared with the backup -------------------------------------------------------------
def compare_with_backup(settings: Settings, runtime: Runtime, backup_id: str) -> tuple[list[Check], bool, bool]:
    """Rows and uploads against the backup's manifest; (checks, database differs, uploads differ)."""
    manifest = backupset.find_backup(settings, backup_id).manifest
    with pg.connect(runtime, timeout=10) as conn:
        counts = pg.table_counts(conn)
        head = pg.migration_head(conn)
    expected = manifest["row_counts"]
    diff = sorted(t for t in set(counts) | set(expected) if counts.get(t) != expected.get(t))
    db_same = not diff and head == manifest.get("migration_head")
    checks = [Check("row counts as in the backup", not diff,
                    f"{len(expected)} tables, {sum(expected.values())} rows match {backup_id}" if not diff else
                    "differ: " + pg.listed([f"{t} {expected.get(t, '-')} -> {counts.get(t, '-')}" for t in diff])),
              Check("migration head as in the backup", head == manifest.get("migration_head"),
                    f"{head or 'none'} (backup: {manifest.get('migration_head') or 'none'})")]
    entries = (manifest.get("uploads") or {}).get("entries") or {}
    folder = settings.env.uploads_dir
    bad = []
    for rel, e in sorted(entries.items()):
        p = folder / rel
        if not p.is_file() or p.stat().st_size != int(e["size"]) or sha256_file(p) != e["sha256"]:
            bad.append(rel)
    checks.append(Check("upload files as in the backup", not bad,
                        f"{len(entries)} files match their sha256 in {backup_id}" if not bad else
                        f"missing or changed: {pg.listed(bad)}"))
    return checks, not db_same, bool(bad)


# ----- rollback ----------------------------------------------------------------------------------
def _rollback(settings: Settings, runtime: Runtime, state: dict[str, Any], report: Reporter,
              result: UpdateResult) -> None:
    """Images back to the recorded digests (services recreated and healthy), then the database (and
    uploads) from the update's backup when they differ from it. Raises RollbackFailed (journal kept)."""
    backup_id = str(state["backup_id"])
    digests = dict(state.get("digests") or {})
    timer = _Timer(result, report)
    try:
        if digests:
            moved = timer.run("rollback: images", lambda: runtime.restore_images(digests, report),
                              lambda m: f"references moved back: {', '.join(m) or 'none'}")
            now = runtime.image_digests()
            if moved or any(digest_of(now.get(s, "")) != digest_of(d) for s, d in digests.items()):
                timer.run("rollback: recreate and wait healthy", lambda: runtime.recreate(report))
            else:  # every service still runs what was recorded (only data moved): nothing to restart
                result.steps.append(StepTime("rollback: recreate", 0.0, True, "not needed: the recorded images run"))
            result.rolled_back.append(f"images: {', '.join(moved) or 'none needed'} back to the recorded digests")
        else:
            timer.run("rollback: services up", lambda: runtime.up(report))
        _checks, db_changed, uploads_changed = compare_with_backup(settings, runtime, backup_id)
        if db_changed or uploads_changed:
            restored = timer.run(
                "rollback: restore the backup",
                lambda: restore_database(settings, runtime, backup_id, report=report, uploads=uploads_changed),
                lambda r: f"{backup_id} restored; the replaced database is kept as {r.previous_database}")
            result.rolled_back.append(f"database{' and uploads' if uploads_changed else ''} restored from "
                                      f"{backup_id} (the replaced database is kept as {restored.previous_database})")
        else:
            result.rolled_back.append(f"database unchanged since {backup_id}: not restored")
    except (StackopsError, pg.Error, OSError) as exc:
        raise RollbackFailed(f"the update of {settings.env.name} failed ({state.get('failure') or 'interrupted'}) "
                             f"and its rollback failed too: {pg.first_line(exc)}; the journal "
                             f"{journal_path(settings)} is kept: fix the cause and run `invoke update --env "
                             f"{settings.env.name}` (or `invoke env.up`) to finish the rollback; backup "
                             f"{backup_id} holds the data") from exc
    result.data_checks, _, _ = compare_with_backup(settings, runtime, backup_id)
    if digests:
        now = runtime.image_digests()
        back = [s for s in digests if digest_of(now.get(s, "")) != digest_of(digests[s])]
        result.data_checks.append(Check("images as recorded", not back,
                                        "every service runs its recorded digest" if not back else
                                        f"not back: {', '.join(back)}"))
        result.digests_after = now


def recover(settings: Settings, runtime: Runtime, report: Reporter) -> str | None:
    """Finish an update a kill left behind: roll back to what its journal recorded (or just clear it when
    it had not stopped anything). None when there is no journal or its update is still running."""
    js = journal_status(settings)
    if js is None or (js["state"] == "running" and not js["own"]):
        return None
    try:
        with env_lock(settings.env.backups_dir, "finishing an interrupted update"):
            state = read_journal(settings)
            if state is None:
                return None
            if state.get("damaged"):
                raise RollbackFailed(f"{journal_path(settings)} is damaged: check `invoke env.status`, images and "
                                     "`invoke backup.list` by hand, then remove it")
            if not js["stack_changed"]:
                _finish(settings, runtime, state, report)
                message = (f"an interrupted update (phase {state['phase']}) had changed nothing; its backup "
                           f"{state.get('backup_id')} is kept")
            else:
                report.warn(f"an update of {settings.env.name} was interrupted in phase {state['phase']}: "
                            "rolling back to what it recorded")
                result = UpdateResult(settings.env.name)
                state["failure"] = f"interrupted in phase {state['phase']}"
                write(settings, state, "rolling-back")
                _rollback(settings, runtime, state, report, result)
                _finish(settings, runtime, state, report)
                bad = [c.name for c in result.data_checks if not c.ok]
                message = (f"an interrupted update (phase {js['phase']}) was rolled back: "
                           f"{'; '.join(result.rolled_back)}"
                           + (f"; differs from the backup: {', '.join(bad)}" if bad else
                              "; rows, uploads and images are as recorded"))
    except LockBusy:
        return None
    report.warn(message)
    return message


def _finish(settings: Settings, runtime: Runtime, state: dict[str, Any], report: Reporter) -> None:
    """The update is over (updated, nothing changed or rolled back): its pins go, then its journal."""
    runtime.unpin_images([str(p) for p in state.get("pins") or []], report)
    clear(settings)


# ----- the update ----------------------------------------------------------------------------------
def update(settings: Settings, runtime: Runtime, *, migrate: bool = True, report: Reporter,
           timeout: float = 300.0) -> UpdateResult:
    """Run the update (see the module doc). Returns the result with outcome ``updated``,
    ``nothing-changed`` or ``rolled-back``; raises UpdateRefused (nothing changed) or RollbackFailed."""
    result = UpdateResult(settings.env.name)
    t_start = time.monotonic()
    timer = _Timer(result, report)
    with env_lock(settings.env.backups_dir, "update"):
        result.recovered = recover(settings, runtime, report)
        checks, pending = timer.run("preflight", lambda: preflight(settings, runtime),
                                    lambda r: f"{len(r[0])} checks passed")
        _refuse(checks)
        backup = timer.run("backup", lambda: create_backup(settings, runtime, kind="full", report=report),
                           lambda b: f"{b.id}, {b.size} B")
        result.backup_id = backup.id
        timer.run("verify backup checksums", lambda: backupset.check_files(backupset.find_backup(settings, backup.id),
                                                                           report),
                  lambda _: "every file's size and sha256 match the manifest")
        before = timer.run("record digests", runtime.image_digests,
                           lambda d: f"{len(d)} services" if d else NO_IMAGES)
        result.digests_before = before
        result.images_apply = bool(before) or bool(runtime.target_digests())
        state: dict[str, Any] = {"backup_id": backup.id, "digests": before, "pid": os.getpid(),
                                 "started_at": datetime.now(UTC).isoformat(), "migrate": migrate, "pins": []}
        # pinned (<repo>:stackops-rollback-<time>) so no image prune removes the rollback point meanwhile; the
        # journal names the pins, so whatever ends the update (or recovers a killed one) removes them
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        state["pins"] = runtime.pin_images(before, stamp, report)
        result.pins = list(state["pins"])
        write(settings, state, "recorded")
        timer.run("pull", lambda: runtime.pull(report), lambda _: "done" if result.images_apply else NO_IMAGES)
        target = runtime.target_digests()
        result.digests_target = target
        result.images_changed = changed_services(before, target) if target else []
        result.migrations_pending = pending if migrate else []
        write(settings, state, "pulled")
        if not result.images_changed and not result.migrations_pending:
            _finish(settings, runtime, state, report)
            result.outcome = "nothing-changed"
            result.digests_after = before
            report.step("nothing to update: same image digests, no pending migration"
                        + ("" if migrate or not pending else f" ({len(pending)} pending, --no-migrate)"))
            result.seconds = round(time.monotonic() - t_start, 2)
            return result
        down_started: float | None = None
        try:
            if result.images_changed:
                write(settings, state, "stopping")
                down_started = time.monotonic()

                def stopped() -> None:
                    write(settings, state, "stopped")

                timer.run("stop and recreate, wait healthy",
                          lambda: runtime.recreate(report, timeout=timeout, services=result.images_changed,
                                                   stopped=stopped),
                          lambda _: f"{', '.join(result.images_changed)} recreated")
                result.downtime_s = round(time.monotonic() - down_started, 2)
                write(settings, state, "recreated")
            if result.migrations_pending:
                write(settings, state, "migrating")
                applied = timer.run("migrations",
                                    lambda: apply_migrations(settings, runtime, report=report, covered_by=backup.id),
                                    lambda r: r.message)
                result.migrations_applied = [f"{m.version}_{m.name}" for m in applied.applied]
            write(settings, state, "checking")
            deployment = timer.run("check", lambda: check_deployment(settings, runtime, report=report),
                                   lambda r: f"{len(r.checks)} checks")
            # the RPO row is not the update's business: its own backup is the rollback point
            result.checks = [c for c in deployment.checks if c.name != BACKUP_ROW]
            failed = [c for c in result.checks if not c.ok and c.required]
            if failed:
                raise _CheckFailed("check failed: " + "; ".join(f"{c.name}: {c.detail}" for c in failed))
        except (StackopsError, pg.Error, OSError, _CheckFailed) as exc:
            result.failure = pg.first_line(exc)
            report.warn(f"update failed: {result.failure}; rolling back")
            state["failure"] = result.failure
            write(settings, state, "rolling-back")
            _rollback(settings, runtime, state, report, result)
            if down_started is not None:
                result.downtime_s = round(time.monotonic() - down_started, 2)
            deployment = check_deployment(settings, runtime, report=report)
            result.checks = [c for c in deployment.checks if c.name != BACKUP_ROW]
            _finish(settings, runtime, state, report)
            result.outcome = "rolled-back"
            result.seconds = round(time.monotonic() - t_start, 2)
            return result
        _finish(settings, runtime, state, report)
        result.digests_after = runtime.image_digests()
        result.outcome = "updated"
        if result.downtime_s is None:
            result.downtime_s = 0.0
        result.seconds = round(time.monotonic() - t_start, 2)
        return result


class _CheckFailed(Exception):
    """The post-update check failed (internal: turns into a rollback)."""
