"""monitor.* (the guide's "Check Data Status" figures, --json parsed) and db.shell / db.url: read-only
in a protected environment unless --write is confirmed, the password never in any process's argv."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stackops.errors import ProtectedEnvironment
from tests.conftest import IT_RUNTIME, ROOT, Fresh, cli_env, invoke_cli

pytestmark = pytest.mark.integration


def _users(fresh: Fresh, total: int = 10, active: int = 4) -> None:
    with fresh.connect() as conn:
        conn.execute("CREATE TABLE users (id bigserial PRIMARY KEY, email text, last_login_at timestamptz)")
        conn.execute("INSERT INTO users (email, last_login_at) SELECT 'u' || g || '@x', CASE WHEN g <= %s "
                     "THEN now() - interval '1 day' ELSE now() - interval '30 days' END "
                     "FROM generate_series(1, %s) g", (active, total))
        conn.execute("CREATE TABLE notes (id bigserial PRIMARY KEY, body text)")
        conn.execute("INSERT INTO notes (body) SELECT repeat('x', 200) FROM generate_series(1, 5000)")
        conn.execute("ANALYZE")


def test_monitor_tables_and_activity_print_the_guides_figures(fresh: Fresh) -> None:
    _users(fresh)
    env = cli_env(fresh.settings)
    made = invoke_cli("backup.db", "--env", "test", "--json", env=env)
    assert made.returncode == 0, made.stderr
    with fresh.connect() as conn:
        conn.execute("INSERT INTO notes (body) SELECT 'y' FROM generate_series(1, 700)")
        conn.execute("ANALYZE notes")

    t = invoke_cli("monitor.tables", "--env", "test", "--json", env=env)
    assert t.returncode == 0, t.stderr
    tables = json.loads(t.stdout)
    names = [x["table"] for x in tables["tables"]]
    assert names[0] == "notes" and "users" in names  # largest first
    notes = tables["tables"][0]
    assert notes["rows_at_backup"] == 5000 and notes["rows_estimate"] == 5700 and notes["growth_rows"] == 700
    assert notes["total_bytes"] > 5000 * 200 and tables["backup_id"] == json.loads(made.stdout)["id"]

    a = invoke_cli("monitor.activity", "--env", "test", "--json", env=env)
    assert a.returncode == 0, a.stderr
    activity = json.loads(a.stdout)
    assert activity["total_users"] == 10 and activity["active_users_7d"] == 4
    assert isinstance(activity["redis_keys"], int) and isinstance(activity["redis_sessions"], int)

    v = invoke_cli("monitor.volumes", "--env", "test", "--json", env=env)
    assert v.returncode == 0, v.stderr
    vols = json.loads(v.stdout)["volumes"]
    assert any(x["service"] == "uploads" and x["exists"] for x in vols)
    if IT_RUNTIME == "compose":  # the guide's `docker volume ls` names
        assert any(x["kind"] == "volume" and x["name"].startswith("postgres_") for x in vols)
    else:
        assert any(x["service"] == "postgres" and x["size_bytes"] > 0 for x in vols)

    table = invoke_cli("monitor", "--env", "test", env=env)
    assert table.returncode == 0, table.stderr
    for figure in ("notes", "+700", "total users", "active users (last 7 days)", "Redis sessions", "uploads"):
        assert figure in table.stdout, table.stdout


def _prod(fresh: Fresh) -> dict[str, str]:
    with fresh.connect() as conn:
        conn.execute("CREATE TABLE notes (id bigserial PRIMARY KEY, body text)")
    return cli_env(fresh.settings, "prod")


def _count(fresh: Fresh) -> int:
    with fresh.connect() as conn:
        row = conn.execute("SELECT count(*) FROM notes").fetchone()
    assert row is not None
    return int(row[0])


def test_shell_in_prod_is_read_only_without_write(fresh: Fresh) -> None:
    env = _prod(fresh)
    sql = "INSERT INTO notes (body) VALUES ('edited directly');\n"
    ro = subprocess.run([sys.executable, "-m", "invoke", "db.shell", "--env", "prod"], cwd=ROOT, env=env,
                        input=sql, capture_output=True, text=True, timeout=120)
    assert ro.returncode != 0 and "read-only transaction" in ro.stderr, ro.stderr
    assert _count(fresh) == 0
    # --write without a terminal and without --yes: refused by the one flow, nothing run
    refused = subprocess.run([sys.executable, "-m", "invoke", "db.shell", "--write", "--env", "prod"], cwd=ROOT,
                             env=env, input=sql, capture_output=True, text=True, timeout=120)
    assert refused.returncode == ProtectedEnvironment.exit_code and "--yes" in refused.stderr
    assert _count(fresh) == 0
    # reading works, and a non-protected environment's shell writes
    read = subprocess.run([sys.executable, "-m", "invoke", "db.shell", "--env", "prod"], cwd=ROOT, env=env,
                          input="SELECT count(*) AS n FROM notes;\n", capture_output=True, text=True, timeout=120)
    assert read.returncode == 0 and " 0" in read.stdout, read.stderr


def _cmdlines() -> list[str]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                out.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
    return out


def test_shell_with_write_on_a_terminal_and_the_typed_name_writes_and_ps_never_shows_the_password(
        fresh: Fresh) -> None:
    import pty

    env = _prod(fresh)
    password = str(fresh.runtime.conninfo()["password"])
    assert len(password) >= 8
    primary, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "db.shell", "--write", "--env", "prod"], cwd=ROOT,
                            env=env, stdin=secondary, stdout=secondary, stderr=secondary)
    os.close(secondary)
    seen = bytearray()

    def read_until(marker: bytes, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while marker not in seen:
            assert time.monotonic() < deadline, seen.decode(errors="replace")
            try:
                seen.extend(os.read(primary, 4096))
            except OSError:
                break

    try:
        read_until(b"Type the environment's name")
        os.write(primary, b"prod\n")
        read_until(b"=#")  # psql's prompt: the shell is open now
        shown = _cmdlines()
        assert not any(password in line for line in shown), "the password is in a process's argv"
        assert any("psql" in line for line in shown)
        os.write(primary, b"INSERT INTO notes (body) VALUES ('confirmed write');\n")
        read_until(b"INSERT 0 1")
        os.write(primary, b"\\q\n")
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(primary)
    assert _count(fresh) == 1


def test_url_hides_the_password_unless_asked(fresh: Fresh) -> None:
    env = cli_env(fresh.settings)
    info = fresh.runtime.conninfo()
    plain = invoke_cli("db.url", "--env", "test", env=env)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.strip() == f"postgresql://{info['user']}@{info['host']}:{info['port']}/{info['dbname']}"
    shown = invoke_cli("db.url", "--env", "test", "--show-password", env=env)
    url = shown.stdout.strip()
    import psycopg

    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (info["dbname"],)
