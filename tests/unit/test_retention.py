"""Retention planning: property tests over random histories, plus worked examples with real dates."""

from __future__ import annotations

import random
import re
from datetime import UTC, date, datetime, time, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stackops.config import Retention
from stackops.retention import COVERS, DIMENSIONS, KINDS, BackupRecord, Decision, plan

DEFAULT = Retention(daily=30, weekly=52, pre_migration_days=7)
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)  # a Sunday, ISO week 2026-W48
PROPS = settings(max_examples=200, deadline=None)
ALL = "database, globals, uploads"  # what a full backup covers


def rec(id_: str, started_at: datetime, kind: str = "full", complete: bool = True,
        verified_ok: bool | None = None) -> BackupRecord:
    verified_at = started_at + timedelta(hours=1) if verified_ok is not None else None
    return BackupRecord(id_, started_at, kind, complete, verified_ok, verified_at)


def daily_history(days: int, now: datetime = NOW, hour: int = 2) -> list[BackupRecord]:
    today = now.date()
    return [
        rec(f"d{i:04d}", datetime.combine(today - timedelta(days=i), datetime.min.time(), UTC)
            + timedelta(hours=hour))
        for i in range(days)
    ]


def by_id(decisions: list[Decision]) -> dict[str, Decision]:
    return {d.backup.id: d for d in decisions}


def utc_day(b: BackupRecord) -> date:
    return b.started_at.astimezone(UTC).date()


def monday(d: date) -> date:
    return d - timedelta(days=d.weekday())


def newest(records: list[BackupRecord]) -> BackupRecord:
    return max(records, key=lambda b: (b.started_at, b.id))


def apply(decisions: list[Decision]) -> list[BackupRecord]:
    return [d.backup for d in decisions if d.keep]


# --- strategies -----------------------------------------------------------------------------------

ZONES = [UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=14)),
         timezone(timedelta(hours=5, minutes=30))]


# One backup is one drawn integer, decoded below: a single draw per backup keeps generation fast
# (hypothesis spends far more time drawing than plan() spends planning).
MAX_CODE = 743 * 86400 * 256 - 1


def decode(i: int, code: int, now: datetime) -> BackupRecord:
    bits, rest = code % 256, code // 256
    secs, days = rest % 86400, rest // 86400 - 2  # -2 .. 740 days ago: some from the future
    if bits & 128:
        days = days % 40  # half the backups cluster in the recent weeks: several per day
    started = (now - timedelta(days=days, seconds=secs)).astimezone(ZONES[(bits >> 5) & 3])
    verified = (None, True, False, True)[(bits >> 3) & 3]
    return BackupRecord(
        id=f"b{i:03d}", started_at=started, kind=KINDS[(bits & 3) % 3],
        complete=bits & 4 == 0 or bits & 64 == 0,  # ~75 % complete
        verified_ok=verified,
        verified_at=None if verified is None else started + timedelta(minutes=30),
    )


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[BackupRecord], datetime]:
    # "now" varies across years so ISO-week-53 years and year boundaries get exercised.
    now = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(seconds=draw(st.integers(0, 1100 * 86400)))
    n = draw(st.integers(0, 60))
    codes = draw(st.lists(st.integers(0, MAX_CODE), min_size=n, max_size=n))
    return [decode(i, c, now) for i, c in enumerate(codes)], now


policies = st.one_of(
    st.just(DEFAULT),
    st.builds(Retention, daily=st.integers(0, 40), weekly=st.integers(0, 60),
              pre_migration_days=st.integers(0, 10)),
)


def managed(backups: list[BackupRecord], now: datetime) -> list[BackupRecord]:
    """Backups that compete for slots: complete and not from the future."""
    return [b for b in backups if b.complete and b.started_at <= now]


def covering(backups: list[BackupRecord], dim: str) -> list[BackupRecord]:
    return [b for b in backups if dim in COVERS[b.kind]]


SLOT = re.compile(r"^(daily|weekly) slot (\S+) \(([a-z, ]+)\)$")


def holders(decisions: dict[str, Decision], period: str, bucket: str, dim: str) -> list[str]:
    """Ids of the backups whose reasons say they hold ``period`` slot ``bucket`` for ``dim``."""
    out = []
    for i, d in decisions.items():
        for r in d.reasons:
            m = SLOT.match(r)
            if m and m[1] == period and m[2] == bucket and dim in m[3].split(", "):
                out.append(i)
    return out


def iso_week(d: date) -> str:
    year, week, _ = d.isocalendar()
    return f"{year}-W{week:02d}"


# --- properties -----------------------------------------------------------------------------------

@PROPS
@given(histories(), policies)
def test_shape_order_reasons_and_coverage(case: tuple[list[BackupRecord], datetime],
                                          policy: Retention) -> None:
    backups, now = case
    decisions = plan(backups, now, policy)
    assert sorted(d.backup.id for d in decisions) == sorted(b.id for b in backups)
    starts = [d.backup.started_at for d in decisions]
    assert starts == sorted(starts, reverse=True)
    for d in decisions:
        assert d.reasons and all(isinstance(r, str) and r for r in d.reasons)
        assert d.covers == d.backup.covers == COVERS[d.backup.kind]
        assert ("uploads" in d.covers) == (d.backup.kind == "full")
        for r in d.reasons:  # every slot a backup holds or lost names dimensions it covers
            m = SLOT.match(r)
            if m:
                assert set(m[3].split(", ")) <= set(d.covers)


@PROPS
@given(histories(), policies, st.randoms(use_true_random=False))
def test_deterministic_regardless_of_input_order(case: tuple[list[BackupRecord], datetime],
                                                 policy: Retention, rnd: random.Random) -> None:
    backups, now = case
    shuffled = list(backups)
    rnd.shuffle(shuffled)
    assert plan(shuffled, now, policy) == plan(backups, now, policy)


@PROPS
@given(histories(), policies)
def test_newest_of_every_coverage_never_deleted(case: tuple[list[BackupRecord], datetime],
                                                policy: Retention) -> None:
    backups, now = case
    kept = by_id(plan(backups, now, policy))
    verified = [b for b in backups if b.verified_ok is True]
    if verified:
        assert kept[newest(verified).id].keep
    pool = managed(backups, now)
    if pool:
        assert kept[newest(pool).id].keep
        assert "newest complete backup: pruning never leaves zero backups" in kept[newest(pool).id].reasons
    for dim in DIMENSIONS:  # e.g. the newest full backup, however many db-only backups came after it
        if covering(pool, dim):
            assert kept[newest(covering(pool, dim)).id].keep, dim
        if covering([b for b in pool if b.verified_ok is True], dim):
            assert kept[newest(covering([b for b in pool if b.verified_ok is True], dim)).id].keep, dim


@PROPS
@given(histories(), policies)
def test_daily_slots_per_coverage(case: tuple[list[BackupRecord], datetime], policy: Retention) -> None:
    backups, now = case
    decisions = by_id(plan(backups, now, policy))
    today = now.date()
    window = {today - timedelta(days=i) for i in range(policy.daily)}
    for dim in DIMENSIONS:
        for day in window:
            on_day = [b for b in covering(managed(backups, now), dim) if utc_day(b) == day]
            held = holders(decisions, "daily", day.isoformat(), dim)
            if on_day:
                assert held == [newest(on_day).id], (dim, day)
                assert decisions[held[0]].keep
            else:
                assert held == []
    outside = [d for d in decisions.values() if any(r.startswith("daily slot") for r in d.reasons)
               and utc_day(d.backup) not in window]
    assert outside == []


@PROPS
@given(histories(), policies)
def test_weekly_slots_per_coverage(case: tuple[list[BackupRecord], datetime], policy: Retention) -> None:
    backups, now = case
    decisions = by_id(plan(backups, now, policy))
    this_monday = monday(now.date())
    window = {this_monday - timedelta(weeks=i) for i in range(policy.weekly)}
    for dim in DIMENSIONS:
        for mon in window:
            in_week = [b for b in covering(managed(backups, now), dim) if monday(utc_day(b)) == mon]
            held = holders(decisions, "weekly", iso_week(mon), dim)
            if in_week:
                assert held == [newest(in_week).id], (dim, mon)
                assert decisions[held[0]].keep
            else:
                assert held == []
        slots = sum(bool(holders({i: d}, "weekly", iso_week(utc_day(d.backup)), dim))
                    for i, d in decisions.items())
        assert slots <= policy.weekly


@PROPS
@given(histories(), policies)
def test_incomplete_future_and_young_pre_migration_kept(case: tuple[list[BackupRecord], datetime],
                                                        policy: Retention) -> None:
    backups, now = case
    for d in plan(backups, now, policy):
        b = d.backup
        if not b.complete:
            assert d.keep and "incomplete: not managed by retention" in d.reasons
        if b.started_at > now:
            assert d.keep and any(r.startswith("started in the future") for r in d.reasons)
        if b.kind == "pre_migration" and now - b.started_at < timedelta(days=policy.pre_migration_days):
            assert d.keep


@PROPS
@given(histories(), policies)
def test_kept_exactly_when_some_rule_protects(case: tuple[list[BackupRecord], datetime],
                                              policy: Retention) -> None:
    """Independent oracle: a backup is deleted iff none of the rules in the brief protects it."""
    backups, now = case
    pool = managed(backups, now)
    today, this_monday = now.date(), monday(now.date())
    protected: set[str] = {b.id for b in backups if not b.complete or b.started_at > now}
    protected |= {b.id for b in backups if b.kind == "pre_migration"
                  and now - b.started_at < timedelta(days=policy.pre_migration_days)}
    verified = [b for b in pool if b.verified_ok is True]
    protected |= {newest(verified).id} if verified else set()
    protected |= {newest(pool).id} if pool else set()
    for dim in DIMENSIONS:
        holding = covering(pool, dim)
        for i in range(policy.daily):
            day = [b for b in holding if utc_day(b) == today - timedelta(days=i)]
            protected |= {newest(day).id} if day else set()
        for i in range(policy.weekly):
            week = [b for b in holding if monday(utc_day(b)) == this_monday - timedelta(weeks=i)]
            protected |= {newest(week).id} if week else set()
        protected |= {newest(holding).id} if holding else set()
        holding_verified = covering(verified, dim)
        protected |= {newest(holding_verified).id} if holding_verified else set()
    for d in plan(backups, now, policy):
        assert d.keep == (d.backup.id in protected), d


@PROPS
@given(histories(), policies)
def test_database_only_backups_never_change_which_full_backups_survive(
        case: tuple[list[BackupRecord], datetime], policy: Retention) -> None:
    """Adding any number of db and pre-migration backups keeps exactly the same full backups."""
    backups, now = case
    fulls = [b for b in backups if b.kind == "full"]
    alone = {d.backup.id for d in plan(fulls, now, policy) if d.keep}
    mixed = {d.backup.id for d in plan(backups, now, policy) if d.keep and d.backup.kind == "full"}
    assert mixed == alone


@PROPS
@given(histories(), policies)
def test_idempotent(case: tuple[list[BackupRecord], datetime], policy: Retention) -> None:
    backups, now = case
    first = plan(backups, now, policy)
    second = plan(apply(first), now, policy)
    assert all(d.keep for d in second)
    assert [d.reasons for d in second] == [d.reasons for d in first if d.keep]


# --- examples ---------------------------------------------------------------------------------

def test_ninety_daily_backups() -> None:
    # 2026-09-01 .. 2026-11-29 at 02:00. Daily window 2026-10-31 .. 2026-11-29 (30 kept); the
    # newest of weeks W36..W43 are the Sundays before (8 kept); W44's newest (Sun 11-01) is
    # already a daily keep, so Mon 10-26 .. Fri 10-30 go.
    decisions = plan(daily_history(90), NOW, DEFAULT)
    kept = [d for d in decisions if d.keep]
    assert len(kept) == 38
    assert len(decisions) - len(kept) == 52
    ids = by_id(decisions)
    assert ids["d0000"].reasons == (
        f"daily slot 2026-11-29 ({ALL})", f"weekly slot 2026-W48 ({ALL})",
        "newest complete backup: pruning never leaves zero backups",
    )
    assert ids["d0007"].reasons == (f"daily slot 2026-11-22 ({ALL})", f"weekly slot 2026-W47 ({ALL})")
    assert ids["d0029"].reasons == (f"daily slot 2026-10-31 ({ALL})",)
    assert ids["d0028"].reasons == (f"daily slot 2026-11-01 ({ALL})", f"weekly slot 2026-W44 ({ALL})")
    assert not ids["d0030"].keep  # Fri 2026-10-30
    assert ids["d0030"].reasons == (f"superseded in weekly slot 2026-W44 by d0028 ({ALL})",)
    assert ids["d0035"].reasons == (f"weekly slot 2026-W43 ({ALL})",)  # Sun 2026-10-25
    assert ids["d0089"].reasons == (f"superseded in weekly slot 2026-W36 by d0084 ({ALL})",)  # Tue 2026-09-01


def test_two_years_of_daily_backups() -> None:
    # 30 daily slots + 52 weekly slots, of which W44..W48 are owned by backups already kept daily.
    decisions = plan(daily_history(730), NOW, DEFAULT)
    assert sum(d.keep for d in decisions) == 30 + 47
    oldest = decisions[-1]
    assert not oldest.keep
    assert oldest.reasons == ("outside retention: older than 30 daily and 52 weekly slots",)


def test_several_per_day_keep_only_the_newest_of_the_day() -> None:
    day = datetime(2026, 11, 28, tzinfo=UTC)
    backups = [rec("early", day + timedelta(hours=1)), rec("late", day + timedelta(hours=23)),
               rec("today", NOW - timedelta(hours=1))]
    ids = by_id(plan(backups, NOW, DEFAULT))
    assert ids["late"].reasons == (f"daily slot 2026-11-28 ({ALL})",)
    assert not ids["early"].keep
    assert ids["early"].reasons == (f"superseded in daily slot 2026-11-28 by late ({ALL})",
                                    f"superseded in weekly slot 2026-W48 by today ({ALL})")


def test_a_later_pre_migration_backup_does_not_push_out_the_days_full_backup() -> None:
    """The issue's repro: a full backup at now-3h, a pre-migration backup at now-1h, then prune."""
    full = rec("full_0900", NOW - timedelta(hours=3))
    pre = rec("pre_migration_1100", NOW - timedelta(hours=1), kind="pre_migration")
    ids = by_id(plan([full, pre], NOW, DEFAULT))
    assert ids["full_0900"].keep
    assert ids["full_0900"].reasons == ("daily slot 2026-11-29 (uploads)", "weekly slot 2026-W48 (uploads)",
                                        "newest complete backup covering uploads")
    assert ids["full_0900"].covers == ("database", "globals", "uploads")
    assert ids["pre_migration_1100"].reasons == (
        "daily slot 2026-11-29 (database, globals)", "weekly slot 2026-W48 (database, globals)",
        "newest complete backup: pruning never leaves zero backups", "pre-migration backup younger than 7 days",
    )
    assert ids["pre_migration_1100"].covers == ("database", "globals")


def test_superseded_names_each_slot_holder_with_what_it_holds() -> None:
    day = datetime(2026, 11, 28, tzinfo=UTC)
    backups = [rec("full_early", day + timedelta(hours=1)), rec("full_noon", day + timedelta(hours=12)),
               rec("db_late", day + timedelta(hours=20), kind="db"), rec("full_today", NOW - timedelta(hours=2))]
    ids = by_id(plan(backups, NOW, DEFAULT))
    assert not ids["full_early"].keep
    assert ids["full_early"].reasons == (
        "superseded in daily slot 2026-11-28 by db_late (database, globals) and full_noon (uploads)",
        f"superseded in weekly slot 2026-W48 by full_today ({ALL})",
    )
    assert ids["full_noon"].reasons == ("daily slot 2026-11-28 (uploads)",)
    assert ids["db_late"].reasons == ("daily slot 2026-11-28 (database, globals)",)


def test_newest_full_and_newest_verified_full_outlive_every_slot() -> None:
    """With no slots at all, newer db-only backups still never displace the uploads' last copies."""
    old = NOW - timedelta(days=400)
    backups = [rec("full_verified", old, verified_ok=True),
               rec("full_older", old - timedelta(days=1), verified_ok=True),
               rec("full_unverified", old + timedelta(days=10)),
               rec("db_verified", NOW - timedelta(days=2), kind="db", verified_ok=True),
               rec("db_newest", NOW - timedelta(hours=1), kind="db")]
    ids = by_id(plan(backups, NOW, Retention(daily=0, weekly=0, pre_migration_days=0)))
    assert ids["full_verified"].reasons == ("newest verified backup covering uploads",)
    assert ids["full_unverified"].reasons == ("newest complete backup covering uploads",)
    assert ids["db_verified"].reasons == ("newest verified backup",)
    assert ids["db_newest"].reasons == ("newest complete backup: pruning never leaves zero backups",)
    assert not ids["full_older"].keep


def simulate(days: int, start: date, prune_at: time,
             pre_migration_every: int = 0) -> tuple[list[BackupRecord], datetime]:
    """``days`` days of a full backup at 01:00 and db-only backups at 09:00 and 17:00 (plus, every
    ``pre_migration_every`` days, a pre-migration backup at 13:00), pruned once a day at ``prune_at``
    with only the kept backups carried into the next day."""
    kept: list[BackupRecord] = []
    now = datetime.combine(start, prune_at, UTC)
    for n in range(days):
        day = start + timedelta(days=n)
        taken = [rec(f"full_{day}", datetime.combine(day, time(1), UTC)),
                 rec(f"db_{day}_09", datetime.combine(day, time(9), UTC), kind="db"),
                 rec(f"db_{day}_17", datetime.combine(day, time(17), UTC), kind="db")]
        if pre_migration_every and n % pre_migration_every == 0:
            taken.append(rec(f"pre_migration_{day}", datetime.combine(day, time(13), UTC), kind="pre_migration"))
        now = datetime.combine(day, prune_at, UTC)
        kept = apply(plan([*kept, *(b for b in taken if b.started_at <= now)], now, DEFAULT))
        kept += [b for b in taken if b.started_at > now]  # taken after today's prune: judged tomorrow
    return kept, now


# Survivors: per coverage, the 30 daily slots 2026-12-16 .. 2027-01-14 plus the weekly slots of W49 and
# W50 (Sundays 12-06 and 12-13; W51 onwards already have a daily keep): 32 full and 32 db-only backups.
# Pruned at 09:30, the last day's 17:00 backup is not judged yet (+1); every third day's pre-migration
# backup is kept for 7 days (+2: 2027-01-09 and 01-12) and never holds a slot (the 17:00 db is newer).
@pytest.mark.parametrize(("prune_at", "pre_migration_every", "fulls", "total"), [
    (time(23, 30), 0, 32, 64),
    (time(9, 30), 0, 32, 65),
    (time(23, 30), 3, 32, 66),
])
def test_forty_five_days_of_daily_pruning_keep_the_uploads_under_the_same_rule_as_the_database(
        prune_at: time, pre_migration_every: int, fulls: int, total: int) -> None:
    """The issue's acceptance: a daily full and twice-daily db-only backups, pruned every day for 45
    days (2026-12-01 .. 2027-01-14, across a year end and the 53-week ISO year 2026)."""
    start = date(2026, 12, 1)
    kept, now = simulate(45, start, prune_at, pre_migration_every)
    today = now.date()
    with_uploads = [b for b in kept if "uploads" in b.covers]
    for i in range(30):  # every day of the last 30 has a copy of the uploads and of the database
        day = today - timedelta(days=i)
        assert any(utc_day(b) == day for b in with_uploads), f"no backup of the uploads from {day}"
        assert any(utc_day(b) == day and "database" in b.covers for b in kept), f"no database backup from {day}"
    mon = monday(today)
    while mon >= max(monday(start), monday(today - timedelta(days=365))):  # every week of 12 months, in span
        assert any(monday(utc_day(b)) == mon for b in with_uploads), f"no backup of the uploads in {iso_week(mon)}"
        mon -= timedelta(weeks=1)
    assert (len(with_uploads), len(kept)) == (fulls, total)


def test_days_are_utc_days() -> None:
    # 20:30 at UTC-5 on the 27th is 01:30 UTC on the 28th: both backups share the UTC day 2026-11-28.
    est = timezone(timedelta(hours=-5))
    a = rec("a", datetime(2026, 11, 27, 20, 30, tzinfo=est))
    b = rec("b", datetime(2026, 11, 28, 0, 30, tzinfo=UTC))
    ids = by_id(plan([a, b, rec("now", NOW)], NOW, DEFAULT))
    assert ids["a"].reasons == (f"daily slot 2026-11-28 ({ALL})",)
    assert not ids["b"].keep


def test_newest_verified_survives_outside_every_slot() -> None:
    old = NOW - timedelta(days=800)
    backups = [rec("verified", old, verified_ok=True),
               rec("older", old - timedelta(days=1), verified_ok=True),
               rec("failed", NOW - timedelta(hours=2), verified_ok=False)]
    ids = by_id(plan(backups, NOW, Retention(daily=0, weekly=0, pre_migration_days=0)))
    assert ids["verified"].reasons == ("newest verified backup",)
    assert not ids["older"].keep
    assert ids["failed"].reasons == ("newest complete backup: pruning never leaves zero backups",)


def test_pre_migration_age_boundary() -> None:
    policy = Retention(daily=0, weekly=0, pre_migration_days=7)
    young = rec("young", NOW - timedelta(days=7) + timedelta(seconds=1), kind="pre_migration")
    aged = rec("aged", NOW - timedelta(days=7), kind="pre_migration")
    ids = by_id(plan([young, aged, rec("newest", NOW)], NOW, policy))
    assert ids["young"].reasons == ("pre-migration backup younger than 7 days",)
    assert not ids["aged"].keep


def test_future_and_incomplete_do_not_take_slots() -> None:
    future = rec("future", NOW + timedelta(hours=3), verified_ok=True)
    broken = rec("broken", NOW - timedelta(minutes=5), complete=False)
    real = rec("real", NOW - timedelta(hours=6))
    decisions = plan([real, broken, future], NOW, DEFAULT)
    assert [d.backup.id for d in decisions] == ["future", "broken", "real"]
    ids = by_id(decisions)
    assert ids["future"].keep and ids["future"].reasons[0].startswith("started in the future")
    assert ids["broken"].reasons == ("incomplete: not managed by retention",)
    assert ids["real"].reasons[:2] == (f"daily slot 2026-11-29 ({ALL})", f"weekly slot 2026-W48 ({ALL})")


def test_explicit_coverage_decides_the_slots() -> None:
    """A record may say what it holds (e.g. from its manifest); that, not the kind, picks its slots."""
    db_with_uploads = BackupRecord("odd", NOW - timedelta(hours=5), "db", True, None, None,
                                   covers=("uploads", "database", "globals"))
    assert by_id(plan([db_with_uploads, rec("db", NOW - timedelta(hours=1), kind="db")], NOW, DEFAULT))[
        "odd"].reasons == ("daily slot 2026-11-29 (uploads)", "weekly slot 2026-W48 (uploads)",
                           "newest complete backup covering uploads")
    assert rec("f", NOW).covers == ("database", "globals", "uploads")
    assert rec("p", NOW, kind="pre_migration").covers == ("database", "globals")


def test_empty_history() -> None:
    assert plan([], NOW, DEFAULT) == []


def test_timestamp_ties_break_by_id() -> None:
    t = NOW - timedelta(hours=1)
    decisions = plan([rec("a", t), rec("b", t)], NOW, DEFAULT)
    assert [(d.backup.id, d.keep) for d in decisions] == [("b", True), ("a", False)]


@pytest.mark.parametrize(("backups", "now", "message"), [
    ([], datetime(2026, 11, 29), "now must be timezone-aware"),
    ([rec("x", datetime(2026, 1, 1))], NOW, "started_at must be timezone-aware"),
    ([rec("x", NOW - timedelta(days=1)), rec("x", NOW)], NOW, "duplicate backup id"),
    ([rec("x", NOW, kind="weird")], NOW, "unknown kind"),
    ([BackupRecord("x", NOW, "db", True, None, None, covers=("database", "logs"))], NOW, "bad coverage"),
    ([BackupRecord("x", NOW, "db", True, None, None, covers=("database", "database"))], NOW, "bad coverage"),
])
def test_rejects_bad_input(backups: list[BackupRecord], now: datetime, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan(backups, now, DEFAULT)


def test_rejects_negative_policy() -> None:
    with pytest.raises(ValueError, match=r"retention\.daily"):
        plan([], NOW, Retention(daily=-1, weekly=52, pre_migration_days=7))
