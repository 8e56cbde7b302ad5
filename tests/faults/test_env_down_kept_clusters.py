"""`env.down --remove-data` on the local runtime deletes the whole cluster folder, and with it the clusters a
point-in-time restore keeps beside the live one (the only copy of the state before that restore) and the side
cluster of a killed restore, which ran on, unseen, on a port of its own. Before, the plan named only the live
data folder, the dry run did not print what it would delete, dev deleted them unasked, and `env.down` left
the side cluster running after its folder was gone. Real local runtime, real pg_ctl."""

from __future__ import annotations

import pytest

from stackops import pitr
from stackops.config import Settings
from stackops.proc import run
from stackops.runtime.local import LocalRuntime, _pid_alive, _read_pid
from tests.conftest import cli_env, free_port, invoke_cli
from tests.faults.backup_helpers import one_line
from tests.integration.test_pitr import cluster  # noqa: F401 (the fixture)

pytestmark = [pytest.mark.integration, pytest.mark.local_runtime]


def test_remove_data_names_kept_clusters_asks_first_and_down_stops_a_leftover_side_cluster(
        cluster: tuple[Settings, LocalRuntime]) -> None:  # noqa: F811 (the imported fixture)
    settings, rt = cluster  # tests/integration/test_pitr.py's: its own local cluster, removed afterwards
    kept = rt.pg_home / f"{pitr.KEPT_PREFIX}20261130120000"
    run(rt.server_cmd(["mkdir", "-m", "0700", str(kept)]))
    run(rt.server_cmd(["sh", "-c", 'echo the only copy > "$1/PG_VERSION"', "sh", str(kept)]))
    side = rt.pg_home / f"{pitr.SIDE_PREFIX}20261130120500"
    run(rt.server_cmd([str(rt.bindir / "initdb"), "-D", str(side), "-U", "postgres", "--no-sync"]))
    run(rt.server_cmd([str(rt.bindir / "pg_ctl"), "start", "-w", "-D", str(side), "-l", str(side / "log"),
                       "-o", f"-p {free_port()} -c listen_addresses='' -k {side}"]))
    side_pid = _read_pid(side / "postmaster.pid")
    assert side_pid is not None and _pid_alive(side_pid, "postgres")
    cli = cli_env(settings)

    dry = invoke_cli("env.down", "--remove-data", "--dry-run", "--env", "test", env=cli)
    assert dry.returncode == 0, dry.stderr
    assert f"would delete or replace: {kept}" in dry.stdout and f"would delete or replace: {side}" in dry.stdout
    assert "kept by point-in-time restores" in dry.stdout, dry.stdout
    assert kept.is_dir() and rt.postgres_pid() is not None  # the dry run changed nothing

    unasked = invoke_cli("env.down", "--remove-data", "--env", "test", env=cli)  # no terminal, no --yes
    assert "needs confirmation" in one_line(unasked, 6)  # the plan shown, then one line
    assert kept.is_dir() and rt.postgres_pid() is not None

    stopped = invoke_cli("env.down", "--env", "test", env=cli)  # data kept: every cluster of it stopped
    assert stopped.returncode == 0, stopped.stderr
    assert not _pid_alive(side_pid, "postgres") and kept.is_dir()
