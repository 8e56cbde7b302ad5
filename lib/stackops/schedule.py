"""When the prod `backup` service runs next: pure functions, called by stackops-backup-loop.

Anchored (``at``, a UTC time of day, e.g. 01:00): one run a day at that time, whenever the service
was (re)started; a slot missed while the service was down (no success since the latest slot) runs at
once. Interval (no ``at``): ``first_delay`` after the service starts, then ``interval`` after each
attempt. In both, a failed run is retried after 1, 2, 4 ... minutes (at most an hour), or at the
next regular slot if that comes first, until one succeeds.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, time, timedelta

RETRY_FIRST = timedelta(minutes=1)
RETRY_MAX = timedelta(hours=1)
DAY = timedelta(days=1)


def parse_at(text: str) -> time | None:
    """``HH:MM`` (UTC) as a time, None for an empty value; ValueError naming the accepted form."""
    text = text.strip()
    if not text:
        return None
    m = re.fullmatch(r"(\d{1,2}):(\d{2})", text)
    if not m or int(m.group(1)) > 23 or int(m.group(2)) > 59:
        raise ValueError(f"BACKUP_AT={text!r}: accepted values are HH:MM (UTC, 00:00..23:59) or empty")
    return time(int(m.group(1)), int(m.group(2)), tzinfo=UTC)


def retry_delay(failures: int) -> timedelta:
    """The wait after ``failures`` consecutive failures (>= 1): 1, 2, 4 ... minutes, capped at an hour."""
    doublings: int = min(max(failures, 1) - 1, 16)
    return min(RETRY_FIRST * (1 << doublings), RETRY_MAX)


def latest_slot(now: datetime, at: time) -> datetime:
    """The newest scheduled moment at or before ``now``."""
    today = datetime.combine(now.date(), at.replace(tzinfo=None), tzinfo=UTC)
    return today if today <= now else today - DAY


def next_run(now: datetime, at: time | None, last_success: datetime | None, failures: int, *,
             last_attempt: datetime | None = None, started: datetime | None = None,
             interval: timedelta = DAY, first_delay: timedelta = timedelta(0)) -> datetime:
    """The moment of the next run (``now`` when one is due). ``failures``: consecutive failed runs
    since the last success (and ``last_attempt`` the latest of them); ``started``: when this service
    process started (interval mode only)."""
    if at is not None:
        slot = latest_slot(now, at)
        covered = last_success is not None and last_success >= slot
        regular = slot + DAY if covered else now
    elif last_attempt is not None and started is not None and last_attempt >= started:
        regular = last_attempt + interval
    else:
        regular = (started or now) + first_delay
    if failures > 0 and last_attempt is not None:
        retry = last_attempt + retry_delay(failures)
        regular = min(retry, regular) if regular > now else retry
    return max(regular, now)
