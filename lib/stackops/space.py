"""Is there room for the next backup? The update's preflight and ``invoke check`` ask the same question.

The answer is in bytes, never a percentage: 10 % free of a 250 GB disk is 25 GB, room for hundreds of
backups of a small database, while 30 % free of a 2 GB volume may not hold one. A new backup is
estimated from the newest full one (or, before there is one, from the database's and the uploads
folder's size), times a margin for growth, plus a fixed slack.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from stackops import backupset, pg
from stackops.config import Settings
from stackops.errors import StackopsError
from stackops.files import dir_size
from stackops.report import human_bytes
from stackops.runtime.base import Runtime

DISK_MARGIN = 1.25             # a new backup is estimated at 1.25 x the newest full one
DISK_SLACK = 64 * 1024 * 1024  # plus 64 MiB; also what the uploads folder is asked to have free


def existing(folder: Path) -> Path:
    """``folder`` or its nearest existing parent (a folder not created yet is on its parent's filesystem)."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def free_bytes(folder: Path) -> int:
    return shutil.disk_usage(existing(folder)).free


def backup_need(settings: Settings, runtime: Runtime) -> tuple[int, str]:
    """(bytes a new full backup needs, why). Asks the database only when there is no full backup yet
    (and so raises what ``pg.connect`` raises when it does not answer)."""
    fulls = [b for b in backupset.list_backups(settings) if b.kind == "full"]
    if fulls:
        return (int(fulls[0].size * DISK_MARGIN) + DISK_SLACK,
                f"newest full backup {fulls[0].id} was {human_bytes(fulls[0].size)}")
    with pg.connect(runtime, timeout=5) as conn:
        size = pg.data_size(conn)
    uploads = dir_size(settings.env.uploads_dir) if settings.env.uploads_dir.is_dir() else 0
    return (int((size + uploads) * DISK_MARGIN) + DISK_SLACK,
            f"no full backup yet: data {human_bytes(size)} + uploads {human_bytes(uploads)}")


def room_for_backups(settings: Settings, runtime: Runtime) -> tuple[bool, str]:
    """(enough room, detail) for the backups folder (the next backup) and the uploads folder (64 MiB),
    summed where both are on one filesystem."""
    try:
        need, why = backup_need(settings, runtime)
    except (StackopsError, pg.Error, OSError) as exc:
        need, why = DISK_SLACK, f"no full backup yet, and the database's size is unknown ({pg.first_line(exc)})"
    wanted = {"backups": (settings.env.backups_dir, need, f"a backup needs about {human_bytes(need)}: {why}"),
              "uploads": (settings.env.uploads_dir, DISK_SLACK, f"{human_bytes(DISK_SLACK)} for new uploads")}
    by_fs: dict[int, list[str]] = {}
    for label, (folder, _, _) in wanted.items():
        by_fs.setdefault(os.stat(existing(folder)).st_dev, []).append(label)
    ok, parts = True, []
    for labels in by_fs.values():
        probe = existing(wanted[labels[0]][0])
        free = free_bytes(probe)
        total = sum(wanted[label][1] for label in labels)
        short = free < total
        ok = ok and not short
        parts.append(f"{' and '.join(labels)} ({probe}): {human_bytes(free)} free"
                     + (f", short of {human_bytes(total)}" if short else "")
                     + f" ({'; '.join(wanted[label][2] for label in labels)})")
    return ok, "; ".join(parts)
