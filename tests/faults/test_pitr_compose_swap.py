"""A point-in-time restore on compose killed in the middle of its swap (the renames inside the data volume):
the half-swapped volume never starts as a mix of two clusters, and the next stackops command finishes the
swap from its journal. Real compose prod harness (STACKOPS_IT_ENV=prod), real pgBackRest, real renames."""

from __future__ import annotations

import pytest

from stackops import pitr, pitr_compose
from stackops.report import NullReporter
from stackops.runtime.compose import ComposeRuntime
from tests.compose.conftest import cli, connect, wait_for
from tests.compose.harness import IT_ENV

pytestmark = [pytest.mark.compose,
              pytest.mark.skipif(IT_ENV != "prod", reason="PITR on compose runs on the prod harness "
                                                          "(STACKOPS_IT_ENV=prod; pgbackrest_prod_repo)")]

# What a kill -9 leaves after the swap's first two renames: the marker in phase 1, global/ (pg_control) and
# base/ already moved to the kept folder, everything else of the live cluster still at the root.
KILLED_AFTER_TWO_RENAMES = r"""
set -euo pipefail
pgdata=$1; away=$2; in=$3; w="$pgdata/.pitr"
printf '%s\n%s\n1\n' "$away" "$in" > "$w/swap"
mkdir -m 0700 "$w/$away"
mv -T "$pgdata/global" "$w/$away/global"
mv -T "$pgdata/base" "$w/$away/base"
sync
"""


def _rows(rt: ComposeRuntime) -> list[int] | None:
    with connect(rt) as conn:
        if not conn.execute("SELECT to_regclass('it_pitr_swap') IS NOT NULL").fetchone()[0]:  # type: ignore[index]
            return None
        return [r[0] for r in conn.execute("SELECT id FROM it_pitr_swap ORDER BY id")]


def _reachable(rt: ComposeRuntime) -> bool:
    try:
        with connect(rt) as conn:
            conn.execute("SELECT 1")
        return True
    except Exception:  # any failure to connect: not serving
        return False


def test_kill_9_in_the_pitr_swap_never_starts_a_mix_and_the_next_command_finishes_it(rt: ComposeRuntime) -> None:
    settings = rt.settings
    pitr_compose.enable(settings, rt, report=NullReporter())
    with connect(rt) as conn:
        conn.execute("DROP TABLE IF EXISTS it_pitr_swap")
        conn.execute("CREATE TABLE it_pitr_swap (id int PRIMARY KEY)")
        conn.execute("INSERT INTO it_pitr_swap SELECT generate_series(1, 50)")
        conn.execute("SELECT pg_sleep(1)")
        noted = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
        conn.execute("SELECT pg_sleep(1)")
        conn.execute("INSERT INTO it_pitr_swap SELECT generate_series(51, 80)")
    try:
        # restore beside and check, as pitr.restore does, then journal the swap and stop the live cluster
        name, side, _, (timeline, system_id, branch) = pitr_compose.restore_beside(settings, rt, noted,
                                                                                  report=NullReporter())
        pitr_compose.stop_side(side)
        state = pitr_compose.swap_state(name, timeline, system_id, branch, noted)
        pitr_compose._write_journal(settings, state)
        live = pitr_compose.Live(settings, rt)
        live.c.stop(timeout=60)
        live.helper(KILLED_AFTER_TWO_RENAMES, live.pgdata, state["kept"], state["side"])

        # an operator (or the restart policy) starts the half-swapped volume: it refuses, it never serves a mix
        live.c.start()
        wait_for(lambda: "pg_control" in live.c.logs(tail=20).decode(errors="replace"), 60,
                 "PostgreSQL to refuse the volume without pg_control")
        assert not _reachable(rt)

        # the next stackops command finishes the swap from the journal and starts the database
        done = cli("pitr.info", "--env", "prod")
        assert "an interrupted point-in-time restore was finished" in done.stderr, done.stderr
        assert not (settings.env.backups_dir / pitr_compose.JOURNAL).exists()
        assert _rows(rt) == list(range(1, 51))  # the restored cluster, whole: the rows of the noted moment
        assert state["kept"] in pitr_compose.kept_clusters(settings, rt)
        # the finished swap recorded the restored timeline as live: a later restore to a time can follow it
        recorded = pitr.timeline_records(settings, system_id)
        assert recorded is not None and timeline in recorded and recorded[timeline].target == noted.isoformat()
        kept = pitr_compose.Live(settings, rt).shell(
            'for f in PG_VERSION global/pg_control base pg_wal; do [ -e "$1/$f" ] && echo "$f"; done; true',
            f"{live.work}/{state['kept']}")
        assert kept.split() == ["PG_VERSION", "global/pg_control", "base", "pg_wal"]  # the old cluster, whole
        with connect(rt) as conn:
            conn.execute("INSERT INTO it_pitr_swap VALUES (1000)")  # serving and writable
    finally:
        (settings.env.backups_dir / pitr_compose.JOURNAL).unlink(missing_ok=True)
        rt.wait_healthy(NullReporter(), timeout=180)
        with connect(rt) as conn:
            conn.execute("DROP TABLE IF EXISTS it_pitr_swap")
