"""kill -9 of a local-runtime ``pitr.restore`` between its two swap renames (``os.rename(pg_data, kept)``,
then ``os.rename(side, pg_data)``): the data folder is missing, the live cluster sits in
``data_pre_pitr_<time>`` and the checked restored one in ``pitr-side-<time>``. The next command must not
serve an empty cluster in their place (``env.up`` initdb's a missing data folder) nor delete the
restored cluster as a leftover."""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg
import pytest

from stackops.pitr import KEPT_PREFIX, SIDE_PREFIX
from stackops.report import NullReporter
from stackops.runtime.local import LocalRuntime
from tests.conftest import cli_env, free_port, invoke_cli, make_settings

pytestmark = pytest.mark.local_runtime


@pytest.mark.xfail(strict=True, reason="the local PITR swap is two renames without a journal: a kill between "
                   "them leaves no data folder, and env.up initdb's an empty cluster in its place")
def test_kill_9_between_the_local_swap_renames_never_serves_an_empty_cluster(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    settings = make_settings(
        "test", runtime="local", state_dir=str(tmp_path / "state"), uploads_dir=str(tmp_path / "uploads"),
        backups_dir=str(tmp_path / "backups"),
        ports={"postgres": str(free_port()), "redis": str(free_port()), "backend": str(free_port())})
    rt = LocalRuntime(settings)
    rt.up(NullReporter())
    try:
        with psycopg.connect(**rt.conninfo(), autocommit=True) as conn:
            conn.execute("CREATE TABLE precious AS SELECT g AS id FROM generate_series(1, 500) g")
        # what pitr.restore leaves when killed after its first rename: the live cluster stopped and moved
        # aside, the restored (checked) cluster beside it, no data folder
        rt.stop_postgres(NullReporter())
        stamp = "20261130120000"
        shutil.copytree(rt.pg_data, rt.pg_home / f"{SIDE_PREFIX}{stamp}", symlinks=True)
        rt.pg_data.rename(rt.pg_home / f"{KEPT_PREFIX}{stamp}")

        proc = invoke_cli("env.up", "--env", "test", env=cli_env(settings))  # the operator's next command

        rows = None
        if proc.returncode == 0:
            with psycopg.connect(**rt.conninfo(), autocommit=True) as conn:
                try:
                    rows = conn.execute("SELECT count(*) FROM precious").fetchone()
                except psycopg.errors.UndefinedTable:
                    rows = None  # a fresh, empty cluster serves in the data folder's place
        assert rows == (500,), proc.stderr  # the restored (or the kept) cluster serves, not an empty one
    finally:
        rt.down(NullReporter())
        shutil.rmtree(rt.pg_home, ignore_errors=True)  # the cluster lives outside tmp_path (state hash)
