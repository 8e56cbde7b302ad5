"""The restore's swap journal: what a swap is about to do, so that a crash (kill -9, a server gone) in
the middle never leaves the environment half-swapped.

Before the first live change a restore writes ``<backups>/.restore-journal.json`` (atomically): the
live database, the loaded copy, the name the live one will be kept under, and for a full restore the
uploads folder, its staging folder, its kept name and how it is swapped (``rename`` the folder, or
move its ``contents`` when the folder is a mount point). Each phase rewrites it; success removes it.

``recover`` is called by every cli task (through ``stackops.cli.runtime``) and by the restore itself.
Holding the environment's lock (a running restore holds it, so its own journal is never touched), it
reads what the database server says and completes the swap when the rename committed, or undoes it
when it did not: the live database accepts connections again, and rows and files agree.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from stackops import pg
from stackops.config import Settings
from stackops.errors import LockBusy, ServiceError
from stackops.files import atomic_write, fsync_dir, private_dir
from stackops.lock import env_lock
from stackops.report import Reporter
from stackops.runtime.base import Runtime

JOURNAL = ".restore-journal.json"
OURS = ".stackops"  # entries of a mount-point uploads folder that a contents swap never moves


def journal_path(settings: Settings) -> Path:
    return settings.env.backups_dir / JOURNAL


def write(settings: Settings, state: dict[str, Any]) -> None:
    private_dir(settings.env.backups_dir)
    atomic_write(journal_path(settings), json.dumps(state, sort_keys=True).encode())


def read(settings: Settings) -> dict[str, Any] | None:
    try:
        data = json.loads(journal_path(settings).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"damaged": True}
    return data if isinstance(data, dict) else {"damaged": True}


def clear(settings: Settings) -> None:
    path = journal_path(settings)
    if path.exists():
        path.unlink()
        fsync_dir(path.parent)


# ----- the database swap -------------------------------------------------------------------------
def db_swapped(conn: pg.Connection[Any], state: dict[str, Any]) -> bool:
    """Whether the swap's rename transaction committed (the server's catalog is the truth)."""
    if state.get("previous"):
        return pg.database_exists(conn, state["previous"])
    return not pg.database_exists(conn, state["new"])


def db_undo(conn: pg.Connection[Any], state: dict[str, Any]) -> None:
    """Put the kept database back as live (the restored copy back under its side name), one transaction."""
    live, new, previous = state["live"], state["new"], state["previous"]
    pg.terminate_sessions(conn, live)
    with conn.transaction():
        pg.rename_database(conn, live, new)
        if previous:
            pg.rename_database(conn, previous, live)
    if previous:
        pg.allow_connections(conn, live, True)


# ----- the uploads swap --------------------------------------------------------------------------
def _movable(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith(OURS))


def uploads_forward(u: dict[str, Any], mark: Any = None) -> None:
    """Swap the staged uploads in; idempotent, so recovery can run it again after a crash."""
    live, staging = Path(u["live"]), Path(u["staging"])
    previous = Path(u["previous"]) if u.get("previous") else None
    if u["mode"] == "rename":
        if not staging.exists():
            return  # already renamed into place
        if previous is not None and (live.exists() or live.is_symlink()):
            live.rename(previous)
        staging.rename(live)
        return
    assert previous is not None
    if u.get("step") != "in":  # move the live contents aside into the kept folder (inside the mount)
        previous.mkdir(mode=0o700, exist_ok=True)
        for entry in _movable(live):
            entry.rename(previous / entry.name)
        u["step"] = "in"
        if mark is not None:
            mark()
    if staging.exists():
        for entry in sorted(staging.iterdir()):
            entry.rename(live / entry.name)
        staging.rmdir()


def uploads_undo(u: dict[str, Any]) -> None:
    """Put the previous uploads back where a (partial) ``uploads_forward`` moved them; drop the staging."""
    live, staging = Path(u["live"]), Path(u["staging"])
    previous = Path(u["previous"]) if u.get("previous") else None
    if u["mode"] == "rename":
        if previous is not None and previous.exists():
            if live.exists() and not staging.exists():
                live.rename(staging)
            if not live.exists():
                previous.rename(live)
    elif previous is not None and previous.exists():
        staging.mkdir(mode=0o700, exist_ok=True)
        if u.get("step") == "in":
            for entry in _movable(live):
                entry.rename(staging / entry.name)
        for entry in sorted(previous.iterdir()):
            entry.rename(live / entry.name)
        previous.rmdir()
    if staging.exists():
        shutil.rmtree(staging)


# ----- recovery ----------------------------------------------------------------------------------
def _finish(settings: Settings, runtime: Runtime, state: dict[str, Any]) -> str:
    """Complete (the rename committed) or undo (it did not) the swap ``state`` describes."""
    live, new, previous = state["live"], state["new"], state.get("previous")
    u = state.get("uploads")
    with pg.admin(runtime) as conn:
        if state.get("phase") == "undo" or not db_swapped(conn, state):
            if state.get("phase") == "undo" and db_swapped(conn, state):
                db_undo(conn, state)
            if pg.database_exists(conn, live):
                pg.allow_connections(conn, live, True)
            if u:
                uploads_undo(u)
            conn.execute(pg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pg.sql.Identifier(new)))
            return (f"an interrupted restore of {live} was undone: {live} is the database it was before "
                    f"(accepting connections again), the loaded copy {new} was dropped"
                    f"{', and the uploads folder is unchanged' if u else ''}")
        for name in (live, previous):
            if name and pg.database_exists(conn, name):
                pg.allow_connections(conn, name, True)
    if u:
        uploads_forward(u)
    kept = f"; the previous database is kept as {previous}" if previous else ""
    return (f"an interrupted restore of {live} was completed: the restored database is live"
            f"{' with its uploads' if u else ''}{kept}")


def recover(settings: Settings, runtime: Runtime, report: Reporter | None) -> str | None:
    """Complete or undo a swap a killed restore left behind; the line saying what was done, or None
    (no journal, its restore still running, or the server not answering: then it stays for later)."""
    if not journal_path(settings).exists():
        return None
    try:
        with env_lock(settings.env.backups_dir, "finishing an interrupted restore"):
            state = read(settings)
            if state is None:
                return None
            if state.get("damaged"):
                message = f"{journal_path(settings)} is damaged: check `invoke restore.previous` by hand"
            else:
                message = _finish(settings, runtime, state)
                clear(settings)
    except LockBusy:
        return None  # the restore that wrote it is still running
    except (ServiceError, pg.OperationalError) as exc:
        if report is not None:
            report.warn(f"an interrupted restore of {settings.env.db_name} is pending; it will be completed or "
                        f"undone once the database answers ({pg.first_line(exc)})")
        return None
    if report is not None:
        report.warn(message)
    return message


def status(settings: Settings, runtime: Runtime) -> dict[str, Any]:
    """Which database is live and whether it accepts connections, and any interrupted swap."""
    state = read(settings)
    out: dict[str, Any] = {"live_database": settings.env.db_name, "accepts_connections": None,
                           "interrupted_restore": None}
    if state is not None:
        out["interrupted_restore"] = ("damaged journal" if state.get("damaged") else
                                      f"swap of {state['new']} into {state['live']} ({state.get('phase')})")
    try:
        rows = pg.databases_like(runtime, settings.env.db_name)
    except ServiceError:
        return out
    for name, _size, allowed in rows:
        if name == settings.env.db_name:
            out["accepts_connections"] = allowed
    return out
