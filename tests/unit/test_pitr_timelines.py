"""Which timeline a point-in-time restore to a time follows (stackops.pitr.choose_timeline): the one live at
that wall-clock moment, per the timelines pitr.restore recorded, and a backup on its line of descent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from stackops.errors import PitrError
from stackops.pitr import Branch, PitrBackup, PitrInfo, TimelineRecord, choose_timeline, parse_history

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def backup(label: str, timeline: int, ended: float, lsn_stop: str) -> PitrBackup:
    wal = f"{timeline:08X}0000000000000002"
    return PitrBackup(label, "full", at(ended - 1), at(ended), 1, 1, wal, wal, "0/2000028", lsn_stop)


def info(*backups: PitrBackup) -> PitrInfo:
    return PitrInfo("test", "ok", list(backups), "000000010000000000000002", "000000030000000000000009", "repo",
                    "15-1", "42")


def record(timeline: int, parent: int, live_from: float) -> TimelineRecord:
    return TimelineRecord(timeline, parent, at(live_from), "...", "42")


# timeline 1 from the start; at minute 30 a restore to minute 10 put timeline 2 live (branch at 0/4000000);
# at minute 50 a restore to minute 20 (on timeline 1) put timeline 3 live (branch at 0/5000000)
HISTORIES = {2: [Branch(1, 0x4000000, "before 2026-11-30 12:10:00.5+00")],
             3: [Branch(1, 0x5000000, "before 2026-11-30 12:20:00.5+00")]}
RECORDS = {2: record(2, 1, 30), 3: record(3, 1, 50)}
BACKUPS = (backup("B1", 1, 1, "0/2000100"), backup("B2", 2, 31, "0/6000100"), backup("B3", 3, 51, "0/8000100"))


@pytest.mark.parametrize(("minute", "timeline", "label"), [
    (5, 1, "B1"), (20, 1, "B1"), (29.9, 1, "B1"),  # before the first restore: timeline 1, however far it ran on
    (30, 2, "B1"), (40, 2, "B2"),                     # timeline 2 was live: from B1 until B2 exists
    (50.5, 3, "B1"), (55, 3, "B3"),                   # timeline 3 descends from timeline 1 (B2 is not on its line)
])
def test_the_timeline_live_at_the_target_is_followed(minute: float, timeline: int, label: str) -> None:
    choice = choose_timeline(info(*BACKUPS), HISTORIES, RECORDS, at(minute), "test")
    assert (choice.timeline, choice.backup.label, choice.explicit) == (timeline, label, True)


def test_the_end_of_the_timeline_is_when_the_next_one_went_live() -> None:
    assert choose_timeline(info(*BACKUPS), HISTORIES, RECORDS, at(20), "test").until == at(30)
    assert choose_timeline(info(*BACKUPS), HISTORIES, RECORDS, at(40), "test").until == at(50)
    assert choose_timeline(info(*BACKUPS), HISTORIES, RECORDS, at(55), "test").until is None
    assert choose_timeline(info(*BACKUPS), HISTORIES, RECORDS, at(40), "test").branch_lsn == 0x4000000


def test_a_backup_on_the_parent_after_the_branch_point_is_not_used() -> None:
    late = backup("B1b", 1, 25, "0/4800000")  # timeline 1 ran on past timeline 2's branch point (0/4000000)
    choice = choose_timeline(info(BACKUPS[0], late, *BACKUPS[1:]), HISTORIES, RECORDS, at(30.5), "test")
    assert choice.backup.label == "B1"
    assert choose_timeline(info(BACKUPS[0], late, *BACKUPS[1:]), HISTORIES, RECORDS, at(26), "test").backup == late


def test_a_timeline_whose_backups_expired_is_refused_in_one_line() -> None:
    with pytest.raises(PitrError, match=r"timeline 1 .*expired") as err:
        choose_timeline(info(*BACKUPS[1:]), HISTORIES, RECORDS, at(20), "test")
    assert "\n" not in str(err.value)


def test_several_timelines_without_a_record_are_refused_never_guessed() -> None:
    with pytest.raises(PitrError, match="timeline 3 of test has no record"):
        choose_timeline(info(*BACKUPS), HISTORIES, {2: RECORDS[2]}, at(55), "test")
    with pytest.raises(PitrError, match="is damaged"):
        choose_timeline(info(*BACKUPS), HISTORIES, None, at(55), "test")
    with pytest.raises(PitrError, match="timeline 2 of test has no record"):  # 2 may have gone live by then
        choose_timeline(info(*BACKUPS), HISTORIES, {3: RECORDS[3]}, at(40), "test")


def test_an_unrecorded_timeline_that_cannot_matter_is_no_reason_to_refuse() -> None:
    only_3 = {3: RECORDS[3]}
    # timeline 2 was made before timeline 3, so it went live before it: at minute 55 timeline 3 was live
    assert choose_timeline(info(*BACKUPS), HISTORIES, only_3, at(55), "test").timeline == 3
    # timeline 2 was restored to minute 10: it cannot have been live at minute 5
    assert choose_timeline(info(*BACKUPS), HISTORIES, only_3, at(5), "test").timeline == 1


def test_one_timeline_needs_no_record_and_no_target_follows_the_newest() -> None:
    one = PitrInfo("test", "ok", [BACKUPS[0]], "000000010000000000000002", "000000010000000000000009", "repo")
    assert choose_timeline(one, {}, {}, at(20), "test").timeline == 1
    with pytest.raises(PitrError, match="before the oldest pgBackRest backup ended"):
        choose_timeline(one, {}, {}, at(0.5), "test")
    newest = choose_timeline(info(*BACKUPS), HISTORIES, None, None, "test")
    assert (newest.timeline, newest.explicit) == (3, False)


def test_history_files_and_their_stop_times_are_read() -> None:
    branches = parse_history("1\t0/402C468\tbefore 2026-11-30 19:45:43.493358+00\n\n"
                             "2\t0/5000000\tno recovery target specified\n")
    assert branches[0] == Branch(1, 0x402C468, "before 2026-11-30 19:45:43.493358+00")
    assert branches[0].stop_time == datetime(2026, 11, 30, 19, 45, 43, 493358, tzinfo=UTC)
    assert branches[1].stop_time is None
