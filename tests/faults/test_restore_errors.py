"""Item 7 and hostile references: every failure of a restore, verify or restore.previous is one line,
with nothing lost: the server down or terminating the load, a full disk while staging the uploads,
DuplicateDatabase, references outside the backups folder, end of input at the protected prompt."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from stackops.errors import RestoreError, StorageFull
from stackops.report import NullReporter
from stackops.restore import restore_database
from tests.conftest import ROOT, free_port
from tests.faults.conftest import (
    Fresh,
    add_uploads,
    backup,
    cli_env,
    databases,
    fingerprint,
    invoke_cli,
    one_line,
    populate,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("task", [["restore.db", "BACKUP", "--yes"], ["restore", "BACKUP", "--yes"],
                                  ["backup.verify", "--backup", "BACKUP"], ["restore.previous"]])
def test_server_down_is_one_line(fresh: Fresh, task: list[str]) -> None:
    populate(fresh)
    backup_id = backup(fresh)
    env = cli_env(fresh.settings, "dev")
    env["INVOKE_STACKOPS_ENVS_DEV_PORTS_POSTGRES"] = str(free_port())  # nothing listens there: the server is down
    proc = invoke_cli(*[backup_id if a == "BACKUP" else a for a in task], "--env", "dev", env=env)
    assert "cannot connect" in one_line(proc, code=13)
    assert not (fresh.settings.env.backups_dir / backup_id / "verification.json").exists()


def test_server_terminating_the_load_is_one_line_and_nothing_changes(fresh: Fresh) -> None:
    populate(fresh)
    with fresh.connect() as conn:
        conn.execute("CREATE TABLE filler AS SELECT i, md5(i::text) AS h FROM generate_series(1, 400000) i")
    backup_id = backup(fresh, "db")
    before = fingerprint(fresh)
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "restore.db", backup_id, "--env", "dev", "--yes"],
                            cwd=ROOT, env=cli_env(fresh.settings, "dev"), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    prefix = f"{fresh.settings.env.db_name}_restore_"
    import psycopg

    with psycopg.connect(**fresh.runtime.conninfo("postgres"), autocommit=True) as conn:
        wait_for(lambda: conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname LIKE "
                                      "%s", (prefix + "%",)).fetchall())
    out, err = proc.communicate(timeout=120)
    last = one_line(subprocess.CompletedProcess([], proc.returncode, out, err), code=16)
    assert "is unchanged" in last
    assert fingerprint(fresh) == before and databases(fresh) == [fresh.settings.env.db_name]


def test_full_disk_while_staging_the_uploads_is_one_line(fresh: Fresh, tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        settings = replace(fresh.settings, env=replace(fresh.settings.env, uploads_dir=small / "uploads"))
        fresh = Fresh(settings, fresh.runtime)
        populate(fresh)
        (small / "uploads").mkdir()
        add_uploads(small / "uploads")
        big = Fresh(replace(settings, env=replace(settings.env, uploads_dir=tmp_path / "big")), fresh.runtime)
        (tmp_path / "big").mkdir()
        (tmp_path / "big" / "large.bin").write_bytes(os.urandom(1_500_000))
        backup_id = backup(big)  # its uploads (1.5 MB) do not fit beside the live ones on 1 MiB
        before = fingerprint(fresh)
        with pytest.raises(StorageFull, match="filesystem is full"):
            restore_database(settings, fresh.runtime, backup_id, report=NullReporter(), uploads=True)
        assert fingerprint(fresh) == before and sorted(p.name for p in small.iterdir()) == ["uploads"]
        assert databases(fresh) == [fresh.settings.env.db_name]
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_duplicate_side_database_is_one_line_mocked_race(fresh: Fresh, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process creating the same side name between the check and CREATE (a mock of that race)."""
    from stackops import pg

    populate(fresh)
    backup_id = backup(fresh, "db")
    before = fingerprint(fresh)
    taken = f"{fresh.settings.env.db_name}_restore_taken"
    pg.create_database(fresh.runtime, taken)
    monkeypatch.setattr("stackops.restore._free_name", lambda conn, db, tag: taken)
    with pytest.raises(RestoreError, match="already exists"):
        restore_database(fresh.settings, fresh.runtime, backup_id, report=NullReporter())
    assert fingerprint(fresh) == before


@pytest.mark.parametrize("ref", ["../../elsewhere", "/tmp/stackops-fault-ref"])
@pytest.mark.parametrize("task", ["restore.db", "backup.verify"])
def test_hostile_backup_reference_is_refused(fresh: Fresh, ref: str, task: str) -> None:
    populate(fresh)
    ref += "-" + os.environ.get("PYTEST_XDIST_WORKER", "main")  # a folder of this process's own (xdist workers)
    target = Path(ref) if ref.startswith("/") else (ROOT / ref).resolve()
    made = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    try:
        before = fingerprint(fresh)
        args = [ref, "--yes"] if task == "restore.db" else ["--backup", ref]
        proc = invoke_cli(task, *args, "--env", "dev",
                          env=cli_env(fresh.settings, "dev"))
        assert "not a backup of" in one_line(proc, code=8) or "not found" in proc.stderr
        assert not (target / "verification.json").exists() and fingerprint(fresh) == before
    finally:
        if made:
            target.rmdir()


def test_end_of_input_at_the_protected_prompt_cancels(fresh: Fresh) -> None:
    import pty

    populate(fresh)
    backup_id = backup(fresh, "db")
    with fresh.connect() as conn:
        conn.execute("DELETE FROM messages")
    before = fingerprint(fresh)
    primary, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "restore.db", backup_id, "--env", "prod"], cwd=ROOT,
                            env=cli_env(fresh.settings, "prod"), stdin=secondary, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    os.close(secondary)
    os.write(primary, b"\x04")  # Ctrl-D
    out, err = proc.communicate(timeout=120)
    os.close(primary)
    assert "end of input" in one_line(subprocess.CompletedProcess([], proc.returncode, out, err), code=6)
    assert fingerprint(fresh) == before
