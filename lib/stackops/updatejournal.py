"""The update's journal: what an update is about to do, so a kill in the middle is finished by the next
``update`` or ``env.up`` (``stackops.update.recover``) and shown by ``env.status`` and ``check``.

``<backups>/.update-journal.json`` (written atomically): the phase, the backup id, the recorded image
digests and the update's pid. Phases in order are ``PHASES``; from ``stopping`` on, the stack differs
from what the journal recorded.

Fault injection for the tests: ``STACKOPS_FAULT_PAUSE_AT=<phase>`` makes the update sleep right after
writing that phase (so a test can ``kill -9`` it at a known point); unset, nothing waits.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stackops.config import Settings
from stackops.files import atomic_write, fsync_dir, private_dir
from stackops.report import Check

JOURNAL = ".update-journal.json"
PHASES = ("recorded", "pulled", "stopping", "stopped", "recreated", "migrating", "checking", "rolling-back")
CHANGED_FROM = PHASES.index("stopping")


def journal_path(settings: Settings) -> Path:
    return settings.env.backups_dir / JOURNAL


def read_journal(settings: Settings) -> dict[str, Any] | None:
    try:
        data = json.loads(journal_path(settings).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"damaged": True, "phase": "unknown"}
    return data if isinstance(data, dict) else {"damaged": True, "phase": "unknown"}


def write(settings: Settings, state: dict[str, Any], phase: str) -> None:
    state["phase"] = phase
    state["updated_at"] = datetime.now(UTC).isoformat()
    private_dir(settings.env.backups_dir)
    atomic_write(journal_path(settings), json.dumps(state, sort_keys=True).encode())
    pause = os.environ.get("STACKOPS_FAULT_PAUSE_AT")
    if pause == phase:
        time.sleep(3600)


def clear(settings: Settings) -> None:
    path = journal_path(settings)
    if path.exists():
        path.unlink()
        fsync_dir(path.parent)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def journal_status(settings: Settings) -> dict[str, Any] | None:
    """None, or what a journal says: ``state`` is ``running`` (its process is alive; ``own`` when it is
    this one) or ``interrupted`` (killed: the next update or env.up finishes it)."""
    state = read_journal(settings)
    if state is None:
        return None
    pid = int(state.get("pid") or 0)
    own = pid == os.getpid()
    running = own or (pid > 0 and _pid_alive(pid))
    changed = state.get("phase") in PHASES[CHANGED_FROM:] or bool(state.get("damaged"))
    return {"state": "running" if running else "interrupted", "own": own, "phase": state.get("phase"),
            "backup_id": state.get("backup_id"), "started_at": state.get("started_at"), "pid": pid,
            "stack_changed": changed}


def journal_check(settings: Settings) -> Check:
    """``check``'s "update interrupted" row."""
    js = journal_status(settings)
    name = "no update interrupted"
    hint = f"`invoke update --env {settings.env.name}` (or `invoke env.up`) rolls it back to what it recorded"
    if js is None or js["own"]:
        return Check(name, True, "no update journal" if js is None else "this update is running")
    if js["state"] == "running":
        return Check(name, False, f"an update (pid {js['pid']}) is running, phase {js['phase']}",
                     "wait for it to finish, then check again")
    return Check(name, False, f"an update was interrupted in phase {js['phase']} (backup {js['backup_id']}, "
                              f"started {js['started_at']})", hint)
