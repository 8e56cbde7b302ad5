"""kill -9 of a local-runtime ``pitr.restore`` in its swap (the journal written, then ``os.rename(pg_data, kept)``,
then ``os.rename(side, pg_data)``). Between the two renames there is no data folder: the live cluster sits in
``data_pre_pitr_<time>`` and the checked, confirmed restored one in ``pitr-side-<time>``. The operator's next
command must finish the swap, never initdb an empty cluster in the data folder's place (what ``env.up`` does
with a missing data folder) nor remove the restored cluster as a leftover. Found by an adversarial review."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from stackops.config import Settings
from stackops.pitr import KEPT_PREFIX, SIDE_PREFIX, SWAP_JOURNAL, timeline_records, write_swap_journal
from stackops.report import NullReporter
from stackops.runtime.local import LocalRuntime
from tests.conftest import cli_env, free_port, invoke_cli, make_settings

pytestmark = pytest.mark.local_runtime


def _count(rt: LocalRuntime, table: str) -> int | None:
    with psycopg.connect(**rt.conninfo(), autocommit=True) as conn:
        try:
            row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
        except psycopg.errors.UndefinedTable:
            return None
    return None if row is None else int(row[0])


@contextmanager
def _stopped_cluster(tmp_path: Path) -> Iterator[tuple[Settings, LocalRuntime]]:
    """A local test cluster with 500 rows in ``precious``, stopped (as pitr.restore stops it to swap); removed
    at the end."""
    tmp_path.chmod(0o755)
    settings = make_settings(
        "test", runtime="local", state_dir=str(tmp_path / "state"), uploads_dir=str(tmp_path / "uploads"),
        backups_dir=str(tmp_path / "backups"),
        ports={"postgres": str(free_port()), "redis": str(free_port()), "backend": str(free_port())})
    settings.env.backups_dir.mkdir(parents=True, exist_ok=True)
    rt = LocalRuntime(settings)
    rt.up(NullReporter())
    try:
        with psycopg.connect(**rt.conninfo(), autocommit=True) as conn:
            conn.execute("CREATE TABLE precious AS SELECT g AS id FROM generate_series(1, 500) g")
        rt.stop_postgres(NullReporter())
        yield settings, rt
    finally:
        rt.down(NullReporter())
        shutil.rmtree(rt.pg_home, ignore_errors=True)  # the cluster lives outside tmp_path (state hash)


TIMELINE = {"timeline": "2", "parent": "1", "system_id": "7", "target": "2026-11-30T12:00:00+00:00"}


@pytest.mark.parametrize("killed_after", ["journal", "first rename"])
def test_kill_9_in_the_local_pitr_swap_is_finished_by_the_next_command_never_an_empty_cluster(
        tmp_path: Path, killed_after: str) -> None:
    with _stopped_cluster(tmp_path) as (settings, rt):
        # the restored (checked) cluster beside the live one: a copy, told apart by one more table
        stamp = "20261130120000"
        side, kept = rt.pg_home / f"{SIDE_PREFIX}{stamp}", rt.pg_home / f"{KEPT_PREFIX}{stamp}"
        subprocess.run(["cp", "-a", str(rt.pg_data), str(side)], check=True)  # owner and modes kept
        rt.start_postgres(NullReporter())
        with psycopg.connect(**rt.conninfo(), autocommit=True) as conn:
            conn.execute("CREATE TABLE written_after_target AS SELECT 1 AS id")  # only the live cluster has it
        rt.stop_postgres(NullReporter())
        # what pitr.restore leaves when killed: the journal first, then (maybe) the first rename
        write_swap_journal(settings, rt, side, kept, timeline=TIMELINE)
        if killed_after == "first rename":
            rt.pg_data.rename(kept)

        proc = invoke_cli("env.up", "--env", "test", env=cli_env(settings))  # the operator's next command

        assert proc.returncode == 0, proc.stderr
        assert "interrupted point-in-time restore was finished" in proc.stderr
        assert _count(rt, "precious") == 500  # the restored cluster serves, not an empty one
        assert _count(rt, "written_after_target") is None
        assert (kept / "PG_VERSION").is_file() and not side.exists()  # the live one kept aside, whole
        assert not (settings.env.backups_dir / SWAP_JOURNAL).exists()
        # the restored cluster's timeline is recorded as live (a later restore to a time follows it from then on)
        recorded = timeline_records(settings, "7")
        assert recorded is not None and recorded[2].parent == 1 and recorded[2].target == TIMELINE["target"]


def test_a_killed_local_swap_whose_restored_cluster_will_not_start_is_rolled_back_by_the_next_command(
        tmp_path: Path) -> None:
    with _stopped_cluster(tmp_path) as (settings, rt):
        stamp = "20261130120000"
        side, kept = rt.pg_home / f"{SIDE_PREFIX}{stamp}", rt.pg_home / f"{KEPT_PREFIX}{stamp}"
        subprocess.run(["cp", "-a", str(rt.pg_data), str(side)], check=True)
        (side / "global" / "pg_control").unlink()  # a restored cluster that cannot start
        write_swap_journal(settings, rt, side, kept, timeline=TIMELINE)
        rt.pg_data.rename(kept)

        first = invoke_cli("env.up", "--env", "test", env=cli_env(settings))
        again = invoke_cli("env.up", "--env", "test", env=cli_env(settings))  # nothing left pending

        assert first.returncode == 0, first.stderr
        assert "rolled back" in first.stderr
        assert _count(rt, "precious") == 500  # the previous cluster serves again, whole
        assert not kept.exists() and side.is_dir()  # the one that failed stays beside it for a look
        assert not (settings.env.backups_dir / SWAP_JOURNAL).exists()
        assert timeline_records(settings, "7") == {}  # never live: not recorded as a timeline to follow
        assert again.returncode == 0, again.stderr
