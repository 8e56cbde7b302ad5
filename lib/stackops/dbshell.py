"""db.shell and db.url: a psql session through the environment's runtime, and a connection string.

In a protected environment the session is read-only (PGOPTIONS default_transaction_read_only=on,
set by the server for every transaction of the session) unless ``--write`` was confirmed through the
one flow: the guide's "Never edit production data directly". The password goes through the
environment or a password file, never argv, so `ps` never shows it."""

from __future__ import annotations

from urllib.parse import quote

from stackops.config import Settings
from stackops.proc import Cmd
from stackops.report import Plan
from stackops.runtime.base import Runtime

READ_ONLY = "-c default_transaction_read_only=on"


def write_plan(settings: Settings) -> Plan:
    """What ``db.shell --write`` is about to open; the cli confirms it (protected: --yes or the name)."""
    env = settings.env
    return Plan(f"opening a WRITABLE database shell on {env.db_name} of {env.name}", env.name, env.protected,
                ["psql with writes allowed: every statement you type changes the live data"],
                [f"whatever the session changes in {env.db_name}"],
                ["the guide: \"Never edit production data directly\" — prefer a migration (invoke migrate.create)"]
                if env.protected else [])


def session(settings: Settings, runtime: Runtime, *, write: bool, terminal: bool) -> tuple[Cmd, bool]:
    """The psql command for an interactive shell and whether it is read-only (protected without write).
    Without a terminal (a script on stdin) psql stops at the first error."""
    read_only = settings.env.protected and not write
    extra = {"PGAPPNAME": "stackops-shell"}
    if read_only:
        extra["PGOPTIONS"] = READ_ONLY
    cmd = runtime.psql_session(extra, terminal=terminal)
    if not terminal:
        cmd = cmd.with_args("-v", "ON_ERROR_STOP=1")
    return cmd, read_only


def url(runtime: Runtime, *, show_password: bool) -> str:
    """``postgresql://user[:password]@host:port/dbname`` from the runtime's connection settings."""
    info = runtime.conninfo()
    user = quote(str(info["user"]), safe="")
    secret = f":{quote(str(info['password']), safe='')}" if show_password and info.get("password") else ""
    host = str(info["host"])
    host = f"[{host}]" if ":" in host else host
    return f"postgresql://{user}{secret}@{host}:{info['port']}/{quote(str(info['dbname']), safe='')}"
