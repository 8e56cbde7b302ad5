"""Every destructive task in a protected environment, through the real `invoke` CLI: without --yes and
without a terminal it is refused in one line and changes nothing; with the environment's name typed
on a real terminal it goes on. What the guide forbids in prod stays refused either way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from stackops.errors import ProtectedEnvironment
from tests.conftest import ROOT, Fresh, cli_env, invoke_cli, table_hashes
from tests.integration.conftest import write_migration

pytestmark = pytest.mark.integration


def on_terminal(args: list[str], env: dict[str, str], typed: str) -> tuple[int, str, str]:
    """Run `invoke ARGS` with a real terminal on stdin and type ``typed`` at its prompt."""
    import pty

    primary, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "invoke", *args], cwd=ROOT, env=env, stdin=secondary,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    os.close(secondary)
    os.write(primary, f"{typed}\n".encode())
    out, err = proc.communicate(timeout=300)
    os.close(primary)
    return proc.returncode, out, err


def state(fresh: Fresh) -> dict[str, Any]:
    """Everything a destructive task could change: every table's rows, the databases beside it,
    the backups and the uploads folder."""
    with fresh.connect() as conn:
        rows = table_hashes(conn)
    with psycopg.connect(**fresh.runtime.conninfo("postgres")) as conn:
        dbs = [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1",
                                          (fresh.settings.env.db_name + "%",))]
    backups = sorted(p.name for p in fresh.settings.env.backups_dir.glob("*")) \
        if fresh.settings.env.backups_dir.is_dir() else []
    return {"rows": rows, "databases": dbs, "backups": backups}


@dataclass
class Case:
    args: list[str]
    env: dict[str, str]
    forbidden: bool = False  # the guide forbids it in prod: refused even when confirmed


def _schema(fresh: Fresh) -> None:
    with fresh.connect() as conn:
        conn.execute("CREATE TABLE notes (id bigserial PRIMARY KEY, body text)")
        conn.execute("INSERT INTO notes (body) SELECT 'note ' || g FROM generate_series(1, 20) g")


def _backup(env: dict[str, str], kind: str = "backup.db") -> str:
    made = invoke_cli(kind, "--env", "prod", "--json", env=env)
    assert made.returncode == 0, made.stderr
    return str(json.loads(made.stdout)["id"])


def restore_db(fresh: Fresh, tmp: Path) -> Case:
    _schema(fresh)
    env = cli_env(fresh.settings, "prod")
    backup_id = _backup(env)
    with fresh.connect() as conn:
        conn.execute("DELETE FROM notes WHERE id > 10")
    return Case(["restore.db", backup_id, "--env", "prod"], env)


def restore_full(fresh: Fresh, tmp: Path) -> Case:
    _schema(fresh)
    (fresh.settings.env.uploads_dir / "a.txt").write_text("upload")
    env = cli_env(fresh.settings, "prod")
    backup_id = _backup(env, "backup")
    with fresh.connect() as conn:
        conn.execute("DELETE FROM notes")
    return Case(["restore", backup_id, "--env", "prod"], env)


def drop_previous(fresh: Fresh, tmp: Path) -> Case:
    _schema(fresh)
    env = cli_env(fresh.settings, "prod")
    backup_id = _backup(env)
    done = invoke_cli("restore.db", backup_id, "--env", "prod", "--yes", "--json", env=env)
    assert done.returncode == 0, done.stderr
    kept = json.loads(done.stdout)["previous_database"]
    return Case(["restore.drop-previous", kept, "--env", "prod"], env)


def prune(fresh: Fresh, tmp: Path) -> Case:
    _schema(fresh)
    env = cli_env(fresh.settings, "prod")
    _backup(env)
    _backup(env)  # the same day's older db backup loses its daily slot
    return Case(["backup.prune", "--env", "prod"], env)


def _migrations(fresh: Fresh, tmp: Path) -> dict[str, str]:
    folder = tmp / "migrations"
    write_migration(folder, "20240101000000_notes.sql", "CREATE TABLE notes (id bigint);", "DROP TABLE notes;")
    return cli_env(fresh.settings, "prod", migrations=folder)


def migrate_apply(fresh: Fresh, tmp: Path) -> Case:
    return Case(["migrate.apply", "--env", "prod"], _migrations(fresh, tmp))


def migrate_rollback(fresh: Fresh, tmp: Path) -> Case:
    env = _migrations(fresh, tmp)
    applied = invoke_cli("migrate.apply", "--env", "prod", "--yes", env=env)
    assert applied.returncode == 0, applied.stderr
    return Case(["migrate.rollback", "--env", "prod"], env)


def down_remove_data(fresh: Fresh, tmp: Path) -> Case:
    # a cluster of its own that does not exist: even a broken refusal could not touch the harness
    env = cli_env(fresh.settings, "prod") | {"INVOKE_STACKOPS_ENVS_PROD_STATE_DIR": str(tmp / "state"),
                                              "INVOKE_STACKOPS_ENVS_PROD_RUNTIME": "local"}
    return Case(["env.down", "--remove-data", "--env", "prod"], env, forbidden=True)


def demo(fresh: Fresh, tmp: Path) -> Case:
    return Case(["demo", "--env", "prod"], _migrations(fresh, tmp), forbidden=True)


CASES: dict[str, Callable[[Fresh, Path], Case]] = {
    "restore.db": restore_db, "restore": restore_full, "restore.drop-previous": drop_previous,
    "backup.prune": prune, "migrate.apply": migrate_apply, "migrate.rollback": migrate_rollback,
    "env.down --remove-data": down_remove_data, "demo": demo,
}


@pytest.mark.parametrize("name", list(CASES))
def test_destructive_task_in_prod_needs_yes_or_the_typed_name(name: str, fresh: Fresh, tmp_path: Path) -> None:
    case = CASES[name](fresh, tmp_path)
    before = state(fresh)

    refused = invoke_cli(*case.args, env=case.env)
    assert refused.returncode == ProtectedEnvironment.exit_code, refused.stderr
    last = refused.stderr.strip().splitlines()
    assert len(last) >= 1 and last[-1].startswith("stackops: ") and "Traceback" not in refused.stderr
    assert "--yes" in last[-1] or case.forbidden
    assert state(fresh) == before, "a refused task changed something"

    wrong_code, _, wrong_err = on_terminal(case.args, case.env, "prdo")
    assert wrong_code == ProtectedEnvironment.exit_code, wrong_err
    assert state(fresh) == before

    code, out, err = on_terminal(case.args, case.env, "prod")
    if case.forbidden:
        assert code == ProtectedEnvironment.exit_code and ("forbids" in err or "does not run" in err)
        assert state(fresh) == before
    else:
        assert code == 0, err
        assert "Type the environment's name" in out
        assert state(fresh) != before, "the confirmed task did nothing"


def test_end_of_input_at_the_prompt_refuses_in_one_line(fresh: Fresh, tmp_path: Path) -> None:
    import pty

    case = restore_db(fresh, tmp_path)
    before = state(fresh)
    primary, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "invoke", *case.args], cwd=ROOT, env=case.env, stdin=secondary,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    os.close(secondary)
    os.write(primary, b"\x04")  # Ctrl-D at the prompt
    _, err = proc.communicate(timeout=300)
    os.close(primary)
    assert proc.returncode == ProtectedEnvironment.exit_code, err
    assert err.strip().splitlines()[-1].startswith("stackops: ") and "end of input" in err
    assert "Traceback" not in err
    assert state(fresh) == before


def test_pitr_enable_in_prod_asks_first_because_it_restarts_the_database(fresh: Fresh) -> None:
    """pitr.enable restarts the database server (archive_mode takes effect only at a start): in prod it is
    refused unasked, and its dry run names the restart; the server was not restarted, archiving not touched."""
    env = cli_env(fresh.settings, "prod")
    probe = "SELECT pg_postmaster_start_time()::text, current_setting('archive_mode')"
    with fresh.connect() as conn:
        before = conn.execute(probe).fetchone()
    refused = invoke_cli("pitr.enable", "--env", "prod", env=env)
    assert refused.returncode == ProtectedEnvironment.exit_code, refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith("stackops: ") and "--yes" in refused.stderr
    dry = invoke_cli("pitr.enable", "--env", "prod", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "would restart the database server" in dry.stdout, dry.stdout
    with fresh.connect() as conn:
        assert conn.execute(probe).fetchone() == before
