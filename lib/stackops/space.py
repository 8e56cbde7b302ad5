"""Is there room? For the next backup (the update's preflight and ``invoke check``), and on the
database server's disk for the second database a restore or a verify loads (``server_room``).

The answer is in bytes, never a percentage: 10 % free of a 250 GB disk is 25 GB, room for hundreds of
backups of a small database, while 30 % free of a 2 GB volume may not hold one. A new backup is
estimated from the newest full one (or, before there is one, from the database's and the uploads
folder's size), times a margin for growth, plus a fixed slack.

A load beside the live database is estimated from the size the database had when the backup was taken
(``database_bytes`` in the manifest: ``pg_database_size``, indexes and all); a set written before that
field existed, or a guide-format dump, by the live database's size now, never less than the archive
itself. Times the same margin, plus the WAL the load writes before a checkpoint can recycle it (as much
as the copy, at most ``max_wal_size``), plus the same slack. A full server disk is not a failed
command: PostgreSQL PANICs when it cannot write WAL, and the live database goes down with it.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from stackops import backupset, pg
from stackops.config import Settings
from stackops.errors import StackopsError, StorageFull
from stackops.files import dir_size
from stackops.report import Reporter, human_bytes
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


@dataclass(frozen=True)
class ServerRoom:
    """Free bytes on the database server's data disk (None: the runtime cannot know) against what
    loading one backup beside the live database needs, and why it needs that much."""

    free: int | None
    need: int
    why: str

    @property
    def short(self) -> bool:
        return self.free is not None and self.free < self.need


def recorded_sizes(backup: backupset.BackupSet) -> tuple[int | None, int]:
    """(the database's size when ``backup`` was taken, or None for a set that does not record it; the
    bytes of its database archive)."""
    recorded = backup.manifest.get("database_bytes")
    archive = sum(int(e["size"]) for e in backup.manifest["files"].values() if e.get("role") == "database")
    return (recorded if isinstance(recorded, int) else None), archive


def server_room(runtime: Runtime, live: str, source: str, *, recorded: int | None, archive: int) -> ServerRoom:
    """What loading ``source`` into a new database beside ``live`` needs on the server's disk, and what
    it has. ``recorded``: the database's size when the backup was taken (None when not recorded);
    ``archive``: the bytes of its database archive or dump file. Raises what ``pg.admin`` raises."""
    free = runtime.server_free_bytes()
    with pg.admin(runtime) as conn:
        live_size = pg.database_size(conn, live) if pg.database_exists(conn, live) else 0
        wal_max = pg.max_wal_size(conn)
    if recorded is not None:
        copy, basis = recorded, f"the database was {human_bytes(recorded)} when {source} was taken"
    elif not archive:  # the backup not taken yet (the update's, for its rollback): the live database's size
        copy, basis = live_size, f"the live {live} is {human_bytes(live_size)}"
    else:
        copy = max(live_size, archive)
        basis = (f"{source} records no database size: the live {live} is {human_bytes(live_size)}, "
                 f"the archive {human_bytes(archive)}")
    wal = min(copy, wal_max)
    need = int(copy * DISK_MARGIN) + wal + DISK_SLACK
    return ServerRoom(free, need, f"{basis}; x{DISK_MARGIN}, + {human_bytes(wal)} of WAL + {human_bytes(DISK_SLACK)}")


def check_server_room(runtime: Runtime, live: str, source: str, *, recorded: int | None, archive: int,
                      what: str, retry: str, report: Reporter, skip: bool = False) -> tuple[str, int]:
    """Refuse (StorageFull, one line) a load that the server's disk has no room for, before anything is
    created; otherwise report the outcome and return it as one line (for a dry run's plan too) with the
    bytes the load needs (0: not estimated, with ``skip``). A
    runtime that cannot see the server's disk (external) is not checked, and says so; ``skip``: the
    operator's --skip-space-check. ``what``: the refused operation; ``retry``: its command with the flag."""
    if skip:
        line = "the database server's free disk space was not checked (--skip-space-check)"
        report.warn(line)
        return line, 0
    room = server_room(runtime, live, source, recorded=recorded, archive=archive)
    if room.free is None:
        line = (f"the database server's free disk space is unknown to the {runtime.kind} runtime: not checked "
                f"(loading {source} needs about {human_bytes(room.need)}: {room.why})")
        report.info(line)
        return line, room.need
    if room.short:
        raise StorageFull(f"{what} refused: the database server's disk has {human_bytes(room.free)} free, loading "
                          f"{source} beside {live} needs about {human_bytes(room.need)} ({room.why}); nothing was "
                          f"created; free space on that disk or grow it, or run `{retry}` if you know the load "
                          "is smaller")
    line = (f"the database server's disk has {human_bytes(room.free)} free, loading {source} needs about "
            f"{human_bytes(room.need)} ({room.why})")
    report.info(line)
    return line, room.need
