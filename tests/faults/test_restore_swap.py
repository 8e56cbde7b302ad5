"""Items 4, 5, 8: rows and files change together (a mount-point uploads folder, a failing uploads swap),
a kill -9 around the swap is completed or undone by the next command, a kill -9 during the load leaves a
scratch copy that is listed and cleaned with one command (and no pg_restore outlives stackops), two
restores never run at once, and side names never collide."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from stackops.errors import RestoreError
from stackops.report import NullReporter
from stackops.restore import restore_database, side_name
from tests.conftest import ROOT
from tests.faults.conftest import (
    Fresh,
    accepts_connections,
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


def change(fresh: Fresh) -> None:
    with fresh.connect() as conn:
        conn.execute("DELETE FROM messages WHERE id % 2 = 0")
        conn.execute("INSERT INTO users (email) VALUES ('late@example.org')")
    up = fresh.settings.env.uploads_dir
    (up / "notes.txt").write_text("changed after the backup\n")
    (up / "new.bin").write_bytes(b"new")


def side_db(fresh: Fresh, tag: str = "restore") -> str | None:
    names = [n for n in databases(fresh) if n.startswith(f"{fresh.settings.env.db_name}_{tag}_")]
    return names[0] if names else None


def test_mount_point_uploads_folder_is_swapped_by_its_contents(fresh: Fresh) -> None:
    up = fresh.settings.env.uploads_dir
    populate(fresh)
    add_uploads(up)
    subprocess.run(["mount", "--bind", str(up), str(up)], check=True)  # renaming it now fails with EBUSY
    try:
        backup_id = backup(fresh)
        expected = fingerprint(fresh)
        change(fresh)
        result = restore_database(fresh.settings, fresh.runtime, backup_id, report=NullReporter(), uploads=True)
        got = fingerprint(fresh)
        assert got.rows == expected.rows
        assert {k: v for k, v in got.uploads.items() if not k.startswith(".stackops")} == expected.uploads
        assert result.previous_uploads and Path(result.previous_uploads).parent == up  # kept inside the mount
        assert (Path(result.previous_uploads) / "new.bin").read_bytes() == b"new"
    finally:
        subprocess.run(["umount", str(up)], check=True)


def test_failing_uploads_swap_undoes_the_database_swap_mocked_rename(fresh: Fresh,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A rename that fails after the database swap (a mock: the EBUSY of a mount point is now preflighted)."""
    populate(fresh)
    add_uploads(fresh.settings.env.uploads_dir)
    backup_id = backup(fresh)
    change(fresh)
    before = fingerprint(fresh)

    def busy(u: dict[str, object], mark: object = None) -> None:
        raise OSError(errno.EBUSY, "Device or resource busy")

    monkeypatch.setattr("stackops.restore.uploads_forward", busy)
    with pytest.raises(RestoreError, match="the database swap was undone"):
        restore_database(fresh.settings, fresh.runtime, backup_id, report=NullReporter(), uploads=True)
    assert fingerprint(fresh) == before and accepts_connections(fresh)
    assert databases(fresh) == [fresh.settings.env.db_name]
    assert not list(fresh.settings.env.uploads_dir.parent.glob("uploads*restoring*"))


def start_restore(fresh: Fresh, backup_id: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "invoke", "restore.db", backup_id, "--env", "dev", "--yes"],
                            cwd=ROOT, env=cli_env(fresh.settings, "dev"), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_kill9_in_the_swap_leaves_nothing_the_next_command_does_not_undo(fresh: Fresh) -> None:
    populate(fresh)
    backup_id = backup(fresh, "db")
    change(fresh)
    before = fingerprint(fresh)
    proc = start_restore(fresh, backup_id)
    target = wait_for(lambda: side_db(fresh))
    # a session on the loaded copy makes its rename wait, with the live database refusing connections
    holder = wait_for(lambda: _connect(fresh, target))
    wait_for(lambda: not accepts_connections(fresh))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    holder.close()
    assert not accepts_connections(fresh)  # what a kill -9 at this point used to leave for good
    status = invoke_cli("env.status", "--env", "dev", env=cli_env(fresh.settings, "dev"))
    assert "interrupted restore" in status.stderr and "was undone" in status.stderr, status.stderr
    assert "interrupted restore: none" in status.stdout
    assert accepts_connections(fresh) and fingerprint(fresh) == before
    assert databases(fresh) == [fresh.settings.env.db_name]


def _connect(fresh: Fresh, name: str) -> psycopg.Connection[object] | None:
    try:
        return psycopg.connect(**fresh.runtime.conninfo(name))
    except psycopg.OperationalError:
        return None


def _processes_naming(text: str) -> list[int]:
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(int(pid))
        except OSError:
            pass
    return out


def test_kill9_during_the_load_is_listed_and_cleaned_and_pg_restore_dies_too(fresh: Fresh) -> None:
    populate(fresh)
    with fresh.connect() as conn:  # enough rows that the load is still running when it is killed
        conn.execute("CREATE TABLE filler AS SELECT i, md5(i::text) AS h FROM generate_series(1, 400000) i")
    backup_id = backup(fresh, "db")
    before = fingerprint(fresh)
    proc = start_restore(fresh, backup_id)
    target = wait_for(lambda: side_db(fresh))
    wait_for(lambda: _processes_naming(target))  # pg_restore --dbname <target> is running
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    wait_for(lambda: not _processes_naming(target), timeout=10)  # it died with its parent
    env = cli_env(fresh.settings, "dev")
    listed = json.loads(invoke_cli("restore.previous", "--env", "dev", "--json", env=env).stdout)
    assert {"kind": "interrupted", "name": target} in [{k: c[k] for k in ("kind", "name")} for c in listed]
    cleaned = invoke_cli("restore.clean", "--env", "dev", "--yes", env=env)
    assert cleaned.returncode == 0, cleaned.stderr
    assert databases(fresh) == [fresh.settings.env.db_name] and fingerprint(fresh) == before


def test_two_restores_at_once_one_is_refused_and_side_names_never_collide(fresh: Fresh) -> None:
    populate(fresh)
    backup_id = backup(fresh, "db")
    before = fingerprint(fresh)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from stackops.lock import env_lock\n"
                               "with env_lock(Path(sys.argv[1]), 'restore'):\n print('held', flush=True); "
                               "time.sleep(60)", str(fresh.settings.env.backups_dir)],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "lib")})
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        second = invoke_cli("restore.db", backup_id, "--env", "dev", "--yes", env=cli_env(fresh.settings, "dev"))
        assert "cannot start restore" in one_line(second, code=5)
    finally:
        holder.kill()
        holder.wait()
    assert fingerprint(fresh) == before


def test_two_restores_in_the_same_second_with_the_same_random_suffix_mocked(fresh: Fresh,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The random suffix of side names is forced to repeat (a mock): the names still never collide."""
    populate(fresh)
    backup_id = backup(fresh, "db")
    before = fingerprint(fresh)
    monkeypatch.setattr("stackops.restore.secrets.token_hex", lambda n: "beef")
    monkeypatch.setattr("stackops.restore._stamp", lambda: "20260101000000")
    first = restore_database(fresh.settings, fresh.runtime, backup_id, report=NullReporter())
    second = restore_database(fresh.settings, fresh.runtime, backup_id, report=NullReporter())
    assert first.previous_database != second.previous_database
    assert fingerprint(fresh) == before and accepts_connections(fresh)
    assert side_name("x", "restore") == "x_restore_20260101000000_beef"
