"""The prod backup service's schedule (stackops.schedule): anchored to its time of day, retried with
backoff after a failure, never moved by a restart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from stackops.schedule import next_run, parse_at, retry_delay

AT = parse_at("01:00")
M = timedelta(minutes=1)


def t(day: int, hh: int, mm: int = 0) -> datetime:
    return datetime(2025, 3, day, hh, mm, tzinfo=UTC)


def test_anchored_schedule_ignores_restarts() -> None:
    done = t(10, 1, 5)  # today's 01:00 run succeeded
    for restart in (t(10, 1, 6), t(10, 9), t(10, 23, 59)):
        assert next_run(restart, AT, done, 0, last_attempt=t(10, 1), started=restart) == t(11, 1)


def test_missed_slot_runs_at_once_and_a_first_start_runs_at_once() -> None:
    assert next_run(t(11, 9), AT, t(10, 1, 5), 0) == t(11, 9)  # the service was down at 01:00 today
    assert next_run(t(11, 9), AT, None, 0) == t(11, 9)


def test_failed_run_is_retried_with_backoff_capped_at_an_hour() -> None:
    assert [retry_delay(n) for n in (1, 2, 3, 4, 5, 6, 7, 20)] == [M, 2 * M, 4 * M, 8 * M, 16 * M, 32 * M,
                                                                    60 * M, 60 * M]
    failed = t(11, 1)  # the 01:00 run collided with a restore's lock (exit 5)
    assert next_run(t(11, 1, 0), AT, t(10, 1, 5), 1, last_attempt=failed) == failed + M
    assert next_run(t(11, 1, 5), AT, t(10, 1, 5), 3, last_attempt=t(11, 1, 3)) == t(11, 1, 7)
    # after a restart the backoff goes on from the persisted state, not from the restart
    assert next_run(t(11, 2), AT, t(10, 1, 5), 7, last_attempt=t(11, 1, 50), started=t(11, 2)) == t(11, 2, 50)
    # once the retry succeeded the schedule is back at its time of day
    assert next_run(t(11, 2, 51), AT, t(11, 2, 51), 0, last_attempt=t(11, 2, 50)) == t(12, 1)


def test_interval_mode_retries_too_and_keeps_first_delay_after_a_start() -> None:
    day = timedelta(days=1)
    assert next_run(t(10, 9), None, None, 0, started=t(10, 9), first_delay=30 * M) == t(10, 9, 30)
    assert next_run(t(10, 10), None, t(10, 9, 30), 0, last_attempt=t(10, 9, 30), started=t(10, 9),
                    interval=day) == t(11, 9, 30)
    assert next_run(t(10, 10), None, None, 2, last_attempt=t(10, 9, 30), started=t(10, 9),
                    interval=day) == t(10, 10)  # the retry is overdue: at once


@pytest.mark.parametrize("text", ["1", "24:00", "01:60", "1:0", "noon"])
def test_bad_backup_at_is_one_line(text: str) -> None:
    with pytest.raises(ValueError, match="accepted values are HH:MM"):
        parse_at(text)
