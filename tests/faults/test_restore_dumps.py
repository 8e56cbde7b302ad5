"""Item 2: guide-format ``database_backup_*.sql.gz`` dumps are checked whole before anything is swapped,
and their row counts (no manifest to check them against) are shown and confirmed in every environment."""

from __future__ import annotations

import gzip
import os
import subprocess
from pathlib import Path

import pytest

from stackops.errors import BackupCorrupt
from stackops.report import NullReporter
from stackops.restore import restore_database
from tests.faults.conftest import Fresh, cli_env, databases, fingerprint, invoke_cli, one_line, populate

pytestmark = pytest.mark.integration


def plain_dump(fresh: Fresh, *args: str) -> bytes:
    cmd = fresh.runtime.pg_cmd("pg_dump")
    return subprocess.run([*cmd.argv, *args, "-d", fresh.settings.env.db_name], env={**os.environ, **cmd.env},
                          capture_output=True, check=True).stdout


@pytest.mark.parametrize("fault", ["empty stream", "cut mid-dump", "schema without tables"])
def test_incomplete_old_format_dump_is_refused_before_the_swap(fresh: Fresh, tmp_path: Path, fault: str) -> None:
    populate(fresh)
    whole = plain_dump(fresh)
    body = {"empty stream": b"",
            "cut mid-dump": whole[: whole.index(b"COPY public.messages")],  # what `pg_dump | gzip` leaves
            "schema without tables": plain_dump(fresh, "-T", "*.*")}[fault]
    old = tmp_path / "database_backup_20240618_120000.sql.gz"
    old.write_bytes(gzip.compress(body))  # a perfectly valid gzip stream
    before = fingerprint(fresh)
    with pytest.raises(BackupCorrupt, match=r"empty SQL stream|incomplete dump|no user tables"):
        restore_database(fresh.settings, fresh.runtime, str(old), report=NullReporter())
    assert fingerprint(fresh) == before
    assert databases(fresh) == [fresh.settings.env.db_name]  # no loaded copy left behind


def test_old_format_dump_needs_confirmation_of_its_row_counts_even_unprotected(fresh: Fresh, tmp_path: Path) -> None:
    populate(fresh)
    old = tmp_path / "database_backup_20240618_120000.sql.gz"
    old.write_bytes(gzip.compress(plain_dump(fresh)))
    with fresh.connect() as conn:
        conn.execute("DELETE FROM messages WHERE id > 10")
    before = fingerprint(fresh)
    env = cli_env(fresh.settings, "dev")
    refused = invoke_cli("restore.db", str(old), "--env", "dev", env=env)
    assert "needs confirmation" in one_line(refused, code=6)
    assert "public.messages 50, public.users 50" in refused.stderr  # the counts it would swap in
    assert fingerprint(fresh) == before and databases(fresh) == [fresh.settings.env.db_name]
    done = invoke_cli("restore.db", str(old), "--env", "dev", "--yes", env=env)
    assert done.returncode == 0, done.stderr
    with fresh.connect() as conn:
        assert conn.execute("SELECT count(*) FROM messages").fetchone() == (50,)
