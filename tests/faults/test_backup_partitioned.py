"""Issue 9, item 14: a database with a partitioned table: its backup verifies OK and the integrity
check's amcheck passes, saying what it skipped (the partitioned parent's index has no storage)."""

from __future__ import annotations

import pytest

from stackops.backup import create_backup
from stackops.integrity import check_integrity
from stackops.report import NullReporter
from stackops.verify import verify_backup
from tests.conftest import Fresh
from tests.faults.backup_helpers import fingerprint, listed

pytestmark = pytest.mark.integration

SCHEMA = """
CREATE TABLE events (id bigint NOT NULL, at date NOT NULL, body text, PRIMARY KEY (id, at))
    PARTITION BY RANGE (at);
CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE INDEX events_body ON events (body);
INSERT INTO events SELECT g, date '2024-06-01' + (g % 400), 'e' || g FROM generate_series(1, 500) g;
"""


def test_backup_of_a_partitioned_table_verifies_and_amcheck_passes(fresh: Fresh) -> None:
    with fresh.connect() as conn:
        conn.execute(SCHEMA)
    before = fingerprint(fresh)
    backup = create_backup(fresh.settings, fresh.runtime, kind="full", report=NullReporter())
    assert backup.manifest["row_counts"] == {"public.events_2024": 314, "public.events_2025": 186}

    result = verify_backup(fresh.settings, fresh.runtime, backup.id, report=NullReporter())
    assert result.ok, result.detail
    assert "2 skipped" in result.detail  # the parents of the primary key and of events_body

    amcheck = {c.name: c for c in check_integrity(fresh.settings, fresh.runtime, report=NullReporter()).checks}
    check = amcheck["amcheck (btree indexes)"]
    assert check.ok and "2 skipped" in check.detail, check.detail
    assert fingerprint(fresh) == before
    assert listed(fresh.settings) == [backup.id]
