"""Retention policy: decide, per backup, keep or obsolete, with the reasons why.

Like Barman's retention policies this module only *reports*; deleting the obsolete backups is a
separate, confirmed step. ``plan`` is pure: no I/O, no clock reads (``now`` is passed in), and
its result depends only on its arguments.

What a backup *covers* decides its slots. A ``full`` backup holds the database, the globals and
the uploads; ``db`` and ``pre_migration`` backups hold the database and the globals only. Every
coverage dimension (DIMENSIONS) has its own slots, so a database-only backup taken later in the
day never pushes the day's full backup (the only copy of the uploads) out.

Rules (all calendar arithmetic in UTC), per dimension:

- the newest complete backup covering it of each of the last ``policy.daily`` calendar days
  (today is day 1) keeps a daily slot;
- the newest complete backup covering it of each of the last ``policy.weekly`` ISO weeks (the
  current ISO week is week 1) keeps a weekly slot;
- the newest complete backup covering it is kept, and so is the newest one whose last verify
  succeeded (so the newest full backup survives any number of newer database-only ones);

and for every backup:

- the newest complete backup is kept, so pruning never leaves zero backups; the newest
  complete backup whose last verify succeeded is kept;
- a pre-migration backup younger than ``policy.pre_migration_days`` is kept;
- incomplete backups are never judged (kept), nor are backups dated after ``now`` (kept: the
  clock or the manifest is wrong, and a human should look). Neither takes a slot or counts as
  "newest", so a bogus record can never push a real backup out;
- everything else is obsolete, with the slots that superseded it (and by which backup, for
  which dimensions) or "outside retention".
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from stackops import backupset
from stackops.backupset import COVERS, KINDS
from stackops.config import Retention, Settings
from stackops.errors import BackupCorrupt, BackupError
from stackops.files import fsync_dir
from stackops.lock import env_lock
from stackops.report import Plan, Reporter

DIMENSIONS = ("database", "globals", "uploads")


@dataclass(frozen=True)
class BackupRecord:
    id: str
    started_at: datetime  # timezone-aware; compared and bucketed in UTC
    kind: str  # one of KINDS
    complete: bool
    verified_ok: bool | None  # result of the last verify; None = never verified
    verified_at: datetime | None
    # What the backup holds, from DIMENSIONS; left empty, it is what its kind covers (COVERS).
    covers: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.covers:
            object.__setattr__(self, "covers", COVERS.get(self.kind, ()))


@dataclass(frozen=True)
class Decision:
    backup: BackupRecord
    keep: bool
    reasons: tuple[str, ...]  # never empty; human-readable
    covers: tuple[str, ...] = ()  # what the backup holds (DIMENSIONS order), for the prune plan
    superseded_by: tuple[str, ...] = ()  # obsolete: the ids of the backups that took its slots (stand in for it)


def _aware(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got naive {value.isoformat()}")
    return value.astimezone(UTC)


def _iso_week(day: date) -> str:
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


def _monday(day: date) -> date:
    return day - timedelta(days=day.weekday())


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _dims(dims: Iterable[str]) -> str:
    """Dimensions in DIMENSIONS order, comma-separated: "database, globals"."""
    wanted = set(dims)
    return ", ".join(d for d in DIMENSIONS if d in wanted)


def _check(backups: Sequence[BackupRecord], now: datetime, policy: Retention) -> datetime:
    now_utc = _aware(now, "now")
    for name in ("daily", "weekly", "pre_migration_days"):
        if getattr(policy, name) < 0:
            raise ValueError(f"retention.{name} must be >= 0, got {getattr(policy, name)}")
    seen: set[str] = set()
    for b in backups:
        if b.id in seen:
            raise ValueError(f"duplicate backup id {b.id!r}: retention decisions would be ambiguous")
        seen.add(b.id)
        if b.kind not in KINDS:
            raise ValueError(
                f"backup {b.id!r} has unknown kind {b.kind!r}: expected one of {', '.join(KINDS)}"
            )
        bad = [d for d in b.covers if d not in DIMENSIONS]
        if bad or len(set(b.covers)) != len(b.covers):
            raise ValueError(
                f"backup {b.id!r} has bad coverage {b.covers!r}: expected distinct values of {', '.join(DIMENSIONS)}"
            )
        _aware(b.started_at, f"backup {b.id!r} started_at")
        if b.verified_at is not None:
            _aware(b.verified_at, f"backup {b.id!r} verified_at")
    return now_utc


def _held(b: BackupRecord, owners: dict[tuple[str, date], BackupRecord], bucket: date) -> list[str]:
    """The dimensions of ``b`` whose slot ``bucket`` it holds."""
    return [d for d in b.covers if owners.get((d, bucket)) is b]


def _superseded(b: BackupRecord, owners: dict[tuple[str, date], BackupRecord], bucket: date) -> str:
    """ "x (database, globals) and y (uploads)": who holds the slots of ``b``'s dimensions."""
    by_owner: dict[str, list[str]] = {}
    for d in b.covers:
        by_owner.setdefault(owners[(d, bucket)].id, []).append(d)
    return " and ".join(f"{owner} ({_dims(dims)})" for owner, dims in by_owner.items())


def plan(backups: Sequence[BackupRecord], now: datetime, policy: Retention) -> list[Decision]:
    """One Decision per backup, newest first (ties broken by id, descending).

    Raises ValueError on naive datetimes, duplicate ids, unknown kinds or coverage, or a negative
    policy.
    """
    now_utc = _check(backups, now, policy)
    today = now_utc.date()
    first_day = today - timedelta(days=policy.daily - 1) if policy.daily else None
    this_monday = _monday(today)
    first_monday = this_monday - timedelta(weeks=policy.weekly - 1) if policy.weekly else None

    ordered = sorted(backups, key=lambda b: (b.started_at, b.id), reverse=True)
    # Only complete backups that are not from the future compete for slots and "newest" roles.
    eligible = [b for b in ordered if b.complete and b.started_at <= now_utc]

    # Slot owners per (dimension, day) and (dimension, Monday); newest per dimension.
    daily_owner: dict[tuple[str, date], BackupRecord] = {}
    weekly_owner: dict[tuple[str, date], BackupRecord] = {}
    newest_covering: dict[str, BackupRecord] = {}
    verified_covering: dict[str, BackupRecord] = {}
    for b in eligible:  # newest first, so setdefault keeps the newest of each bucket
        day = b.started_at.astimezone(UTC).date()
        for d in b.covers:
            daily_owner.setdefault((d, day), b)
            weekly_owner.setdefault((d, _monday(day)), b)
            newest_covering.setdefault(d, b)
            if b.verified_ok is True:
                verified_covering.setdefault(d, b)
    newest_complete = eligible[0] if eligible else None
    newest_verified = next((b for b in eligible if b.verified_ok is True), None)
    young = timedelta(days=policy.pre_migration_days)

    decisions: list[Decision] = []
    for b in ordered:
        started = b.started_at.astimezone(UTC)
        day, monday = started.date(), _monday(started.date())
        in_daily = first_day is not None and first_day <= day <= today
        in_weekly = first_monday is not None and first_monday <= monday <= this_monday
        covers = tuple(d for d in DIMENSIONS if d in b.covers)
        keep: list[str] = []
        if started > now_utc:
            keep.append(f"started in the future ({started.isoformat()} > now): kept, check the clock")
        if not b.complete:
            keep.append("incomplete: not managed by retention")
        if in_daily and (held := _held(b, daily_owner, day)):
            keep.append(f"daily slot {day.isoformat()} ({_dims(held)})")
        if in_weekly and (held := _held(b, weekly_owner, monday)):
            keep.append(f"weekly slot {_iso_week(day)} ({_dims(held)})")
        if b is newest_verified:
            keep.append("newest verified backup")
        else:
            held = [d for d in b.covers if verified_covering.get(d) is b]
            if held:
                keep.append(f"newest verified backup covering {_dims(held)}")
        if b is newest_complete:
            keep.append("newest complete backup: pruning never leaves zero backups")
        else:
            held = [d for d in b.covers if newest_covering.get(d) is b]
            if held:
                keep.append(f"newest complete backup covering {_dims(held)}")
        if b.kind == "pre_migration" and timedelta(0) <= now_utc - started < young:
            keep.append(f"pre-migration backup younger than {_plural(policy.pre_migration_days, 'day')}")
        if keep:
            decisions.append(Decision(b, True, tuple(keep), covers))
            continue
        drop: list[str] = []
        by: dict[str, None] = {}
        if in_daily:
            drop.append(f"superseded in daily slot {day.isoformat()} by {_superseded(b, daily_owner, day)}")
            by |= dict.fromkeys(daily_owner[(d, day)].id for d in b.covers)
        if in_weekly:
            drop.append(f"superseded in weekly slot {_iso_week(day)} by {_superseded(b, weekly_owner, monday)}")
            by |= dict.fromkeys(weekly_owner[(d, monday)].id for d in b.covers)
        if not drop:
            drop.append(
                f"outside retention: older than {policy.daily} daily and {policy.weekly} weekly slots"
            )
        decisions.append(Decision(b, False, tuple(drop), covers, tuple(by)))
    return decisions


# ----- acting on the plan (the separate, confirmed step) ----------------------------------------
def _records(sets: Sequence[backupset.BackupSet]) -> list[BackupRecord]:
    return [
        BackupRecord(
            id=b.id, started_at=b.started_at, kind=b.kind, complete=True,
            verified_ok=(b.verification or {}).get("ok"),
            verified_at=datetime.fromisoformat(b.verification["verified_at"]) if b.verification else None,
        )
        for b in sets
    ]


def decide(settings: Settings, now: datetime | None = None, *,
           damaged: frozenset[str] = frozenset()) -> list[Decision]:
    """The retention decision for every complete backup of the environment (nothing is deleted);
    ``damaged``: sets found damaged by a full check, which take no slot (nor are they judged)."""
    try:
        sets = [b for b in backupset.list_backups(settings) if b.id not in damaged]
        return plan(_records(sets), now or datetime.now(UTC), settings.retention)
    except ValueError as exc:
        raise BackupError(f"cannot apply retention in {settings.env.backups_dir}: {exc}") from exc


@dataclass(frozen=True)
class Copies:
    """Which local sets have a second, complete copy elsewhere (the offsite remote), as the caller could
    tell: ``ids`` complete and matching remotely; ``unknown`` says why the remote could not be read (then
    ``ids`` is empty and every set counts as having no other copy)."""

    ids: frozenset[str]
    unknown: str = ""


ONLY_COPY = "never pushed offsite: this is its only copy"


def guarded(decisions: list[Decision], copies: Copies | None,
            include_unpushed: bool) -> tuple[list[Decision], list[Decision], list[str]]:
    """Retention's decisions with the only-copy rule applied: when an offsite remote is configured
    (``copies`` given), an obsolete set that was never pushed is kept unless ``include_unpushed``, and
    then the plan warns about each one. Returns (decisions, the ones deleted, warnings)."""
    if copies is None:
        return decisions, [d for d in decisions if not d.keep], []
    out: list[Decision] = []
    doomed: list[Decision] = []
    warnings: list[str] = []
    if copies.unknown:
        warnings.append(f"the offsite remote could not be read ({copies.unknown}): no set counts as pushed")
    for d in decisions:
        if not d.keep and d.backup.id not in copies.ids:
            if not include_unpushed:
                d = Decision(d.backup, True, (*d.reasons, f"but it was {ONLY_COPY}: kept; push it "
                                              "(`invoke backup.push --all-missing`) or pass --include-unpushed"),
                             d.covers)
            else:
                d = Decision(d.backup, False, (*d.reasons, ONLY_COPY), d.covers)
                warnings.append(f"{d.backup.id} was {ONLY_COPY}: deleting it deletes its last copy")
        if not d.keep:
            doomed.append(d)
        out.append(d)
    return out, doomed, warnings


def prune_plan(settings: Settings, now: datetime | None = None, *, copies: Callable[[], Copies] | None = None,
               include_unpushed: bool = False) -> tuple[Plan, list[Decision]]:
    """The plan the cli confirms: which backups would be deleted, and why. ``copies`` (given when an
    offsite remote is configured) tells which sets are complete remotely; see ``guarded``."""
    decisions, doomed, warnings = guarded(decide(settings, now), copies() if copies else None,
                                          include_unpushed)
    env = settings.env
    only = [d for d in doomed if ONLY_COPY in d.reasons]
    p = Plan(f"deleting {_plural(len(doomed), 'backup')} of {env.name} by retention"
             + (f", {len(only)} of them never pushed offsite (their only copy)" if only else ""),
             env.name, env.protected,
             [f"delete {d.backup.id} ({d.backup.kind}, covers {'+'.join(d.covers)}): {'; '.join(d.reasons)}"
              for d in doomed],
             [f"backup {d.backup.id}" for d in doomed], warnings,
             nothing_to_do="" if doomed else "nothing to delete: every backup keeps a retention slot"
                                             + (" or has no copy offsite" if copies else ""),
             always_confirm=bool(only))
    return p, decisions


def prune(settings: Settings, *, report: Reporter, dry_run: bool = False, now: datetime | None = None,
          confirmed: set[str] | None = None, copies: Callable[[], Copies] | None = None,
          include_unpushed: bool = False) -> list[Decision]:
    """Decide for every complete backup, then (unless ``dry_run``) delete the obsolete ones. The
    decision is taken again under the lock (the offsite copies read again too); with ``confirmed``
    (the ids of a confirmed plan) only those that are still obsolete are deleted, never one the plan
    did not show."""
    folder = settings.env.backups_dir
    if not folder.is_dir():
        return []
    with env_lock(folder, "prune"):
        sets = {b.id: b for b in backupset.list_backups(settings)}
        other = copies() if copies else None
        # A set stands in for the ones it supersedes only when its bytes are whole: the listing checks sizes
        # alone, so each stand-in is hashed first. A damaged one takes no slot, and the decision is taken again
        # (the older set it would have replaced keeps the slot).
        damaged: set[str] = set()
        whole: set[str] = set()
        while True:
            decisions, doomed, _ = guarded(decide(settings, now, damaged=frozenset(damaged)), other,
                                           include_unpushed)
            doomed = [d for d in doomed if confirmed is None or d.backup.id in confirmed]
            unchecked = sorted({i for d in doomed for i in d.superseded_by} - whole - damaged)
            if not unchecked:
                break
            for i in unchecked:
                try:
                    backupset.check_files(sets[i])
                    whole.add(i)
                except BackupCorrupt as exc:
                    damaged.add(i)
                    report.warn(f"{i} is damaged ({str(exc).split(': ', 1)[-1]}): it stands in for no older "
                                "backup, so those are kept; `invoke backup.list` shows it")
        total, freed, started = sum(sets[d.backup.id].size for d in doomed), 0, time.monotonic()
        for d in doomed:
            if dry_run:
                report.info(f"would delete {d.backup.id}: {'; '.join(d.reasons)}")
                continue
            freed += sets[d.backup.id].size
            backupset.delete_set(sets[d.backup.id])
            report.info(f"deleted {d.backup.id}: {'; '.join(d.reasons)}")
            report.progress("deleted", freed, started, total=total, final=d is doomed[-1])
        fsync_dir(folder)
        return decisions
