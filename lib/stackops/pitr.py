"""Point-in-time recovery through pgBackRest (Debian's ``pgbackrest``), on the local runtime.

``enable`` writes the environment's pgBackRest configuration (stanza = the environment's name, the
repository in ``stackops.pitr.repo_dir``), turns WAL archiving on with ALTER SYSTEM (``archive_mode``,
``archive_command`` = ``pgbackrest archive-push``, ``archive_timeout`` = the RPO bound, and a unix
socket in /var/run/postgresql, which pgBackRest connects through), restarts PostgreSQL, creates the
stanza, checks archiving and takes the first full backup.

``restore`` never touches the live cluster before the end: it restores into a new data folder beside
it (``<pg home>/pitr-side-<time>``), starts it on its own port with archiving off, waits until recovery
has reached the target and promoted, checks it (connect, row counts, migrate.check's checks compared
with the live cluster's), and only then stops the live cluster, keeps its data folder aside as
``data_pre_pitr_<time>`` and starts the restored one in its place. A failure or a kill at any point
before the swap leaves the live cluster serving; leftovers of an interrupted restore are removed by
the next one.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from stackops import pg
from stackops.config import Settings
from stackops.errors import CommandFailed, LockBusy, PitrError, RuntimeRefused, StackopsError
from stackops.files import atomic_write
from stackops.lock import env_lock
from stackops.proc import Cmd, run, which
from stackops.report import Check, Plan, Reporter
from stackops.runtime.base import Runtime
from stackops.runtime.local import LocalRuntime

INSTALL = "apt-get install -y pgbackrest"
SOCKET_DIR = Path("/var/run/postgresql")
SIDE_PREFIX = "pitr-side-"
KEPT_PREFIX = "data_pre_pitr_"
BACKUP_TYPES = ("full", "diff", "incr")
RECOVERY_WAIT = 600  # seconds a restore may replay WAL before it is given up (the live cluster is untouched)


@dataclass(frozen=True)
class PitrBackup:
    label: str
    type: str
    started_at: datetime
    stopped_at: datetime
    size: int            # database size
    repo_size: int       # bytes in the repository
    wal_start: str
    wal_stop: str
    lsn_start: str = ""  # "0/5000028"; empty when pgBackRest did not say
    lsn_stop: str = ""

    @property
    def timeline(self) -> int:
        return wal_timeline(self.wal_start)


@dataclass(frozen=True)
class PitrInfo:
    stanza: str
    status: str
    backups: list[PitrBackup]
    wal_min: str | None
    wal_max: str | None
    repo: str
    archive_id: str | None = None  # the current database's archive folder in the repository, e.g. "15-1"
    system_id: str | None = None   # the current database's system identifier

    @property
    def earliest(self) -> datetime | None:
        """The earliest moment a restore can reach: the end of the oldest backup."""
        return min((b.stopped_at for b in self.backups), default=None)


@dataclass(frozen=True)
class PitrRestoreResult:
    target: str
    backup: str
    kept_as: str
    row_counts: dict[str, int]
    seconds: float
    side_port: int
    followed: int = 0   # the timeline recovery followed (the one live at the target)
    timeline: int = 0   # the restored cluster's new timeline


# ----- pgBackRest ----------------------------------------------------------------------------------
class Repo:
    """pgBackRest for one environment: its configuration file, repository and commands (as the server user)."""

    def __init__(self, settings: Settings, runtime: Runtime) -> None:
        if not isinstance(runtime, LocalRuntime):
            raise RuntimeRefused(
                f"point-in-time recovery needs the local or compose runtime; {settings.env.name} uses the "
                f"{runtime.kind} runtime (a managed database has its own PITR): use logical backups"
            )
        self.settings = settings
        self.rt = runtime
        self.stanza = settings.env.name
        self.home = runtime.pg_home / "pgbackrest"
        self.conf = self.home / "pgbackrest.conf"
        self.repo = settings.pitr.repo_dir or runtime.pg_home.parent / "pgbackrest"

    def cmd(self, *args: str, options: dict[str, str] | None = None) -> Cmd:
        argv = [which("pgbackrest", INSTALL), f"--config={self.conf}", f"--stanza={self.stanza}"]
        argv += [f"--{k.replace('_', '-')}={v}" for k, v in (options or {}).items()]
        # pgBackRest connects through the unix socket with the environment's password (never in argv)
        return self.rt.server_cmd([*argv, *args], env={"PGPASSWORD": self.rt.conninfo()["password"]})

    def pgbackrest(self, *args: str, what: str, timeout: float | None = None, **options: str) -> str:
        """``pgbackrest ARGS --OPTION=VALUE...`` as the server user (an option's ``_`` is written ``-``)."""
        try:
            out = run(self.cmd(*args, options=options), timeout=timeout).stdout
            return out.decode(errors="replace")
        except CommandFailed as exc:
            raise pgbackrest_error(exc, what) from None

    @property
    def enabled(self) -> bool:
        return self.conf.is_file()

    def write_config(self) -> None:
        owner = self.rt.run_as
        for folder in (self.home, self.home / "log", self.home / "lock", self.home / "spool", self.repo):
            folder.mkdir(parents=True, exist_ok=True, mode=0o750)
            os.chmod(folder, 0o750)
            if owner is not None:
                pw = pwd.getpwnam(owner)
                os.chown(folder, pw.pw_uid, pw.pw_gid)
        p = self.settings.pitr
        text = "\n".join([
            "# written by stackops pitr.enable: rewritten by it, do not edit",
            "[global]",
            f"repo1-path={self.repo}",
            f"repo1-retention-full={p.retention_full}",
            f"log-path={self.home / 'log'}",
            f"lock-path={self.home / 'lock'}",
            f"spool-path={self.home / 'spool'}",
            "log-level-console=warn",
            "log-level-file=info",
            "start-fast=y",
            "archive-check=y",
            "",
            f"[{self.stanza}]",
            f"pg1-path={self.rt.pg_data}",
            f"pg1-port={self.settings.env.ports.postgres}",
            f"pg1-socket-path={SOCKET_DIR}",
            f"pg1-user={self.settings.env.db_user}",
            "",
        ])
        atomic_write(self.conf, text.encode(), mode=0o640, owner=owner)

    def info(self) -> PitrInfo:
        if not self.enabled:
            raise PitrError(f"point-in-time recovery is not enabled for {self.stanza}: run "
                            f"`invoke pitr.enable --env {self.stanza}`")
        data = json.loads(self.pgbackrest("info", what="pgbackrest info", output="json") or "[]")
        return parse_info(self.stanza, data, str(self.repo))


def parse_info(stanza_name: str, data: list[dict[str, Any]], repo: str) -> PitrInfo:
    """pgBackRest's ``info --output=json`` for one stanza (the same on every runtime)."""
    stanza = next((s for s in data if s.get("name") == stanza_name), None)
    if stanza is None:
        raise PitrError(f"pgBackRest has no stanza {stanza_name} in {repo}: run `invoke pitr.enable "
                        f"--env {stanza_name}`")
    backups = [PitrBackup(
        label=b["label"], type=b["type"],
        started_at=datetime.fromtimestamp(b["timestamp"]["start"], UTC),
        stopped_at=datetime.fromtimestamp(b["timestamp"]["stop"], UTC),
        size=int(b["info"]["size"]), repo_size=int(b["info"]["repository"]["delta"]),
        wal_start=b["archive"]["start"], wal_stop=b["archive"]["stop"],
        lsn_start=str((b.get("lsn") or {}).get("start") or ""), lsn_stop=str((b.get("lsn") or {}).get("stop") or ""),
    ) for b in stanza.get("backup", [])]
    archives = stanza.get("archive", [])
    dbs = sorted(stanza.get("db", []), key=lambda d: int(d.get("id", 0)))
    current = dbs[-1] if dbs else {}
    archive_id = next((str(a["id"]) for a in archives if (a.get("database") or {}).get("id") == current.get("id")),
                      str(archives[-1]["id"]) if archives else None)
    return PitrInfo(stanza_name, stanza.get("status", {}).get("message", "?"), backups,
                    min((a["min"] for a in archives if a.get("min")), default=None),
                    max((a["max"] for a in archives if a.get("max")), default=None), repo, archive_id,
                    str(current["system-id"]) if "system-id" in current else None)


def last_error_line(stderr: str) -> str | None:
    """pgBackRest's last ERROR line in ``stderr``, if any."""
    lines = [ln for ln in stderr.splitlines() if "ERROR" in ln]
    return lines[-1].strip() if lines else None


def pgbackrest_error(exc: CommandFailed, what: str) -> PitrError:
    """pgBackRest's last ERROR line as one PitrError."""
    return PitrError(f"{what} failed: {last_error_line(exc.stderr) or str(exc)}")


# ----- enable / backup / info ----------------------------------------------------------------------
def enable(settings: Settings, runtime: Runtime, *, report: Reporter) -> PitrInfo:
    """Archive WAL to pgBackRest, create the stanza, check archiving, take the first full backup."""
    repo = Repo(settings, runtime)
    rt = repo.rt
    if rt.postgres_pid() is None:
        raise PitrError(f"the {settings.env.name} cluster is not running: start it with "
                        f"`invoke env.up --env {settings.env.name}`")
    if not SOCKET_DIR.is_dir():
        SOCKET_DIR.mkdir(parents=True, mode=0o2775)
        if rt.run_as is not None:
            pw = pwd.getpwnam(rt.run_as)
            os.chown(SOCKET_DIR, pw.pw_uid, pw.pw_gid)
    with env_lock(settings.env.backups_dir, "pitr.enable"):
        report.step(f"writing pgBackRest's configuration {repo.conf} (repository {repo.repo})")
        repo.write_config()
        command = f"{which('pgbackrest', INSTALL)} --config={repo.conf} --stanza={repo.stanza} archive-push %p"
        report.step(f"turning WAL archiving on (archive_timeout {settings.pitr.archive_timeout}s) and restarting "
                    "PostgreSQL")
        pg.alter_system(rt, {"archive_mode": "on", "archive_command": command, "wal_level": "replica",
                             "archive_timeout": str(settings.pitr.archive_timeout),
                             "unix_socket_directories": str(SOCKET_DIR)})
        rt.restart_postgres(report)
        pg.reload_config(rt)  # archive_timeout holds from now on (see pg.reload_config)
        try:
            create_stanza(repo, report)
        except StackopsError:
            archiving_off(rt, lambda: rt.restart_postgres(report), report)
            raise
    return repo.info()


def backup(settings: Settings, runtime: Runtime, kind: str, *, report: Reporter) -> PitrBackup:
    check_backup_type(kind)
    return take_backup(settings, Repo(settings, runtime), kind, report)


class PgBackRest(Protocol):
    """pgBackRest as enable and backup use it on any runtime: the local ``Repo``, compose's ``Live``."""

    stanza: str

    def pgbackrest(self, *args: str, what: str, timeout: float | None = None, **options: str) -> str: ...

    def info(self) -> PitrInfo: ...


def create_stanza(tool: PgBackRest, report: Reporter) -> None:
    """Once archiving is on (enable's last step, under its lock): the stanza, a check that WAL reaches the
    repository, and the first full backup unless there is one."""
    report.step(f"creating stanza {tool.stanza} and checking that WAL reaches the repository")
    tool.pgbackrest("stanza-create", what="pgbackrest stanza-create", timeout=300)
    tool.pgbackrest("check", what="pgbackrest check (WAL archiving)", timeout=300)
    if not tool.info().backups:
        report.step("taking the first full pgBackRest backup")
        tool.pgbackrest("backup", what="pgbackrest backup", type="full")


def archiving_off(runtime: Runtime, restart: Callable[[], object], report: Reporter) -> None:
    """After ``enable`` failed past turning archiving on (the stanza, its check or the first backup): archive_mode
    off again and the restart that applies it. Left on, every WAL segment waits in pg_wal for an archive that
    refuses it (archive-push fails), until the disk is full and the database stops."""
    report.warn("point-in-time recovery was not enabled: turning WAL archiving off again and restarting PostgreSQL, "
                "so pg_wal does not keep every segment for an archive that refuses it")
    pg.alter_system(runtime, {"archive_mode": "off"})
    restart()


def check_backup_type(kind: str) -> None:
    if kind not in BACKUP_TYPES:
        raise PitrError(f"unknown pgBackRest backup type {kind!r}: accepted values are {', '.join(BACKUP_TYPES)}")


def take_backup(settings: Settings, tool: PgBackRest, kind: str, report: Reporter) -> PitrBackup:
    """``pgbackrest backup --type=kind`` under the environment's lock (PITR must be enabled); the new backup."""
    tool.info()
    with env_lock(settings.env.backups_dir, f"pitr.backup ({kind})"):
        report.step(f"pgbackrest backup --type={kind}")
        tool.pgbackrest("backup", what=f"pgbackrest backup --type={kind}", type=kind)
    return tool.info().backups[-1]


def info(settings: Settings, runtime: Runtime) -> PitrInfo:
    return Repo(settings, runtime).info()


# ----- restore -------------------------------------------------------------------------------------
def parse_target(text: str) -> datetime:
    """A target time: ISO 8601 or "YYYY-MM-DD HH:MM:SS", with a zone or in UTC."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise PitrError(f"--to {text!r} is not a time: give e.g. \"2026-11-30 14:03:00\" (UTC) or an ISO 8601 "
                        "time with its zone") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _side_runtime(rt: LocalRuntime, port: int) -> LocalRuntime:
    s = rt.settings
    return LocalRuntime(replace(s, env=replace(s.env, ports=replace(s.env.ports, postgres=port))))


def _pg_ctl(rt: LocalRuntime, *args: str) -> Cmd:
    return rt.server_cmd([str(rt.bindir / "pg_ctl"), *args])


def clean_leftovers(rt: LocalRuntime, report: Reporter) -> None:
    """Side clusters of restores that never finished (killed, failed): stopped and removed."""
    if not rt.pg_home.is_dir():
        return
    for side in rt.pg_home.glob(f"{SIDE_PREFIX}*"):
        if not side.is_dir():
            continue
        if (side / "postmaster.pid").exists():
            run(_pg_ctl(rt, "stop", "-m", "immediate", "-w", "-t", "60", "-D", str(side)), check=False)
        report.warn(f"removing {side.name}, left by an interrupted point-in-time restore")
        shutil.rmtree(side, ignore_errors=True)


def check_target(found: PitrInfo, target: datetime | None, env_name: str) -> None:
    """The target lies in the recoverable window (or is None: the end of the archive)."""
    if not found.backups:
        raise PitrError(f"no pgBackRest backup of {env_name} yet: take one with `invoke pitr.backup --env {env_name}`")
    if target is not None:
        earliest = found.earliest
        assert earliest is not None
        if target < earliest:
            raise PitrError(f"--to {target.isoformat()} is before the oldest pgBackRest backup ended "
                            f"({earliest.isoformat(timespec='seconds')}): the earliest recoverable moment; "
                            "use a logical backup (`invoke restore`) for older data")
        if target > datetime.now(UTC):
            raise PitrError(f"--to {target.isoformat()} is in the future")


# ----- timelines -----------------------------------------------------------------------------------
# Each point-in-time restore promotes a new timeline. Recovery to a time must follow the timeline that was
# live at that wall-clock moment: PostgreSQL's default (the newest timeline) replays a restored timeline whose
# commits all carry times after that restore, so a target before it silently stops at its branch point.
# When a timeline went live is not in PostgreSQL's history files, so pitr.restore records it (TIMELINES, in
# the environment's state folder) when it swaps the restored cluster in.
TIMELINES = "pitr-timelines.json"
HISTORY = r"^[0-9A-F]{8}\.history$"


def wal_timeline(wal: str) -> int:
    """The timeline of a WAL segment name (its first 8 hex digits)."""
    return int(wal[:8], 16)


def parse_lsn(text: str) -> int:
    high, _, low = text.strip().partition("/")
    return (int(high, 16) << 32) | int(low, 16)


@dataclass(frozen=True)
class Branch:
    """One line of a timeline history file: the timeline left ``parent`` at ``lsn``, for ``reason``."""

    parent: int
    lsn: int
    reason: str

    @property
    def stop_time(self) -> datetime | None:
        """The time of the commit recovery stopped at ("before 2026-11-30 14:03:00.1+00"), if a time target."""
        word, _, rest = self.reason.strip().partition(" ")
        if word not in ("before", "after"):
            return None
        try:
            return datetime.fromisoformat(rest.strip())
        except ValueError:
            return None


def parse_history(text: str) -> list[Branch]:
    """A ``0000000N.history`` file: its branches, oldest first (the last one is the timeline's own)."""
    out = []
    for line in text.splitlines():
        fields = line.strip().split(None, 2)
        if len(fields) < 2 or line.lstrip().startswith("#"):
            continue
        try:
            out.append(Branch(int(fields[0]), parse_lsn(fields[1]), fields[2] if len(fields) > 2 else ""))
        except ValueError:
            continue
    return out


def repo_histories(tool: PgBackRest, found: PitrInfo) -> dict[int, list[Branch]]:
    """Every timeline history file in the repository's archive (the current database's), by timeline."""
    if found.archive_id is None:
        return {}
    folder = f"archive/{tool.stanza}/{found.archive_id}"
    listing = json.loads(tool.pgbackrest("repo-ls", folder, what="pgbackrest repo-ls (timeline history files)",
                                         timeout=120, output="json", filter=HISTORY) or "{}")
    return {int(name[:8], 16): parse_history(tool.pgbackrest("repo-get", f"{folder}/{name}", timeout=120,
                                                             what=f"pgbackrest repo-get {name}"))
            for name in sorted(listing)}


@dataclass(frozen=True)
class TimelineRecord:
    """A timeline a point-in-time restore promoted and swapped in: from ``parent``, restored to ``target``,
    live (serving) from ``live_from``, of the cluster ``system_id``."""

    timeline: int
    parent: int
    live_from: datetime
    target: str
    system_id: str


def _timelines_file(settings: Settings) -> Path:
    return settings.env.state_dir / TIMELINES


def _read_timeline_entries(settings: Settings) -> list[dict[str, Any]] | None:
    """The recorded entries; None when the file is unreadable (damaged)."""
    try:
        data = json.loads(_timelines_file(settings).read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError):
        return None
    entries = data.get("timelines") if isinstance(data, dict) else None
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else None


def timeline_records(settings: Settings, system_id: str | None) -> dict[int, TimelineRecord] | None:
    """The recorded timelines of the cluster ``system_id``; None when the record is damaged."""
    entries = _read_timeline_entries(settings)
    if entries is None:
        return None
    out = {}
    for e in entries:
        try:
            rec = TimelineRecord(int(e["timeline"]), int(e["parent"]), datetime.fromisoformat(str(e["live_from"])),
                                 str(e.get("target", "")), str(e["system_id"]))
        except (KeyError, TypeError, ValueError):
            return None
        if rec.live_from.tzinfo is None:
            return None
        if system_id is None or rec.system_id == system_id:
            out[rec.timeline] = rec
    return out


def record_timeline(settings: Settings, rec: TimelineRecord) -> None:
    """Add (or replace) ``rec`` in the record, atomically."""
    entries = [e for e in _read_timeline_entries(settings) or []
               if not (str(e.get("system_id")) == rec.system_id and e.get("timeline") == rec.timeline)]
    entries.append({"timeline": rec.timeline, "parent": rec.parent, "live_from": rec.live_from.isoformat(),
                    "target": rec.target, "system_id": rec.system_id})
    settings.env.state_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(_timelines_file(settings), json.dumps({"timelines": entries}, indent=1).encode() + b"\n",
                 mode=0o644)


def forget_timeline(settings: Settings, system_id: str, timeline: int) -> None:
    """Remove a timeline that was recorded but never went live (its restored cluster was swapped back out)."""
    entries = _read_timeline_entries(settings)
    if entries is None:
        return
    kept = [e for e in entries if not (str(e.get("system_id")) == system_id and e.get("timeline") == timeline)]
    if kept != entries:
        atomic_write(_timelines_file(settings), json.dumps({"timelines": kept}, indent=1).encode() + b"\n",
                     mode=0o644)


def journal_timeline(state: dict[str, Any]) -> TimelineRecord | None:
    """The timeline a swap journal says its restored cluster is on (live from its ``live_from``, else now)."""
    try:
        live_from = datetime.fromisoformat(str(state["live_from"])) if state.get("live_from") else datetime.now(UTC)
        return TimelineRecord(int(state["timeline"]), int(state["parent"]), live_from, str(state.get("target", "")),
                              str(state["system_id"]))
    except (KeyError, TypeError, ValueError):
        return None


@dataclass(frozen=True)
class TimelineChoice:
    """What a restore to ``target`` follows: ``timeline`` (live at the target), from ``backup``."""

    timeline: int
    explicit: bool             # pass it as --target-timeline (False: no target, pgBackRest's newest)
    backup: PitrBackup
    live: str                  # when it was live, for the plan
    until: datetime | None     # when the next timeline replaced it (None: it is the live one)
    branch_lsn: int | None     # where it left its parent (None: the first timeline, or not known)


def _span(tl: int, records: dict[int, TimelineRecord], until: datetime | None) -> str:
    rec = records.get(tl)
    start = ("live from the start" if rec is None else
             f"live from {rec.live_from.isoformat(timespec='seconds')}, restored from timeline {rec.parent} "
             f"to {rec.target}")
    return start + (f", until {until.isoformat(timespec='seconds')}" if until is not None else ", still live")


def choose_timeline(found: PitrInfo, histories: dict[int, list[Branch]], records: dict[int, TimelineRecord] | None,
                    target: datetime | None, env_name: str, records_file: Path | str = TIMELINES) -> TimelineChoice:
    """The timeline live at ``target`` (the newest whose recorded start is at or before it; the first one when
    none is) and the newest backup on its line of descent that ended by then, or a one-line refusal. Without a
    target: the newest timeline and backup (everything archived)."""
    check_target(found, None, env_name)
    if target is not None and target > datetime.now(UTC):
        raise PitrError(f"--to {target.isoformat()} is in the future")
    recs = records or {}
    known = {b.timeline for b in found.backups} | set(histories) | set(recs)
    known |= {br.parent for branches in histories.values() for br in branches}
    known |= {wal_timeline(w) for w in (found.wal_min, found.wal_max) if w}
    root = min(known)
    newer = sorted(known - {root})
    if target is None:
        return TimelineChoice(max(known), False, found.backups[-1], "the newest", None, None)
    if not newer:  # one timeline: nothing to choose (clusters from before timelines were recorded too)
        check_target(found, target, env_name)
        return TimelineChoice(root, True, [b for b in found.backups if b.stopped_at <= target][-1],
                              _span(root, {}, None), None, None)
    # Timeline ids grow in the order restores made them, and each went live right after it was made: the one
    # live at the target is the newest recorded as live by then. An unrecorded timeline older than it went live
    # before it (no matter); a newer one is ambiguous unless its branch target, before which it cannot have
    # gone live, is at or after the target.
    started = [tl for tl in newer if tl in recs and recs[tl].live_from <= target]
    chosen = max(started, default=root)

    def branched_after(tl: int) -> bool:
        stop = histories[tl][-1].stop_time if histories.get(tl) else None
        return stop is not None and stop >= target

    missing = [tl for tl in newer if tl > chosen and tl not in recs and not branched_after(tl)]
    if missing:
        many = len(missing) > 1
        what = (f"{records_file} is damaged" if records is None else
                f"timeline{'s' if many else ''} {', '.join(map(str, missing))} of {env_name} "
                f"{'have' if many else 'has'} no record in {records_file} of when {'they' if many else 'it'} went "
                "live (made before stackops recorded timelines, or not by pitr.restore)")
        raise PitrError(f"{what}: which timeline was live at --to {target.isoformat()} cannot be told, so none is "
                        "guessed; restore without --to (everything archived, the newest timeline) or from a logical "
                        "backup (`invoke restore`)")
    until = min((recs[tl].live_from for tl in newer if tl > chosen and tl in recs), default=None)

    def line(tl: int) -> list[tuple[int, int | None]]:
        """The timelines ``tl`` descends from, oldest first, each with the LSN where the line leaves it."""
        if tl in histories:
            branches = histories[tl]
            return [(br.parent, br.lsn) for br in branches] + [(tl, None)]
        if tl in recs and recs[tl].parent < tl:  # a child is always newer: a damaged record never loops
            up: list[tuple[int, int | None]] = [(p, None) for p, _ in line(recs[tl].parent)]
            return [*up, (tl, None)]
        return [(tl, None)]

    descent = line(chosen)
    ends = dict(descent)
    usable = [b for b in found.backups if b.timeline in ends and b.stopped_at <= target
              and (ends[b.timeline] is None or not b.lsn_stop or parse_lsn(b.lsn_stop) <= (ends[b.timeline] or 0))]
    live = _span(chosen, recs, until)
    if not usable:
        raise PitrError(f"--to {target.isoformat()} falls on timeline {chosen} ({live}), and no pgBackRest backup of "
                        f"it that ended by then is left (older backups and their WAL expired under retention_full): "
                        "that moment cannot be recovered; use a logical backup (`invoke restore`)")
    return TimelineChoice(chosen, True, usable[-1], live, until, descent[-2][1] if len(descent) > 1 else None)


def choose_for(settings: Settings, tool: PgBackRest, target: datetime | None) -> TimelineChoice:
    """``choose_timeline`` with the repository's state and the environment's record."""
    found = tool.info()
    check_target(found, None, settings.env.name)
    histories = repo_histories(tool, found) if target is not None else {}
    return choose_timeline(found, histories, timeline_records(settings, found.system_id), target,
                           settings.env.name, _timelines_file(settings))


def side_branch(conn: Any) -> tuple[int, str, Branch | None]:
    """A promoted cluster's timeline, system identifier and the branch that made its timeline."""
    row = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn()), "
                       "(SELECT system_identifier FROM pg_control_system())").fetchone()
    timeline = wal_timeline(str(row[0]))
    if timeline == 1:
        return timeline, str(row[1]), None
    text = conn.execute("SELECT pg_read_file(%s)", (f"pg_wal/{timeline:08X}.history",)).fetchone()[0]
    branches = parse_history(str(text))
    return timeline, str(row[1]), branches[-1] if branches else None


def verify_recovery(conn: Any, choice: TimelineChoice, target: datetime | None) -> tuple[int, str, Branch | None]:
    """The promoted cluster really is the target on the chosen timeline: its new timeline left the chosen one,
    after the backup's end and (when the chosen one had a parent) after the point where it left that parent, at
    a commit after the target that the chosen timeline made while it was live. Raises PitrError otherwise."""
    timeline, system_id, branch = side_branch(conn)
    problem = None
    if target is None:
        pass
    elif branch is None:
        problem = f"the restored cluster is on timeline {timeline} with no history: it did not recover to a target"
    elif branch.parent != choice.timeline:
        problem = (f"recovery followed timeline {branch.parent}, not timeline {choice.timeline} that was live at "
                   f"{target.isoformat()}")
    elif choice.backup.lsn_stop and branch.lsn < parse_lsn(choice.backup.lsn_stop):
        problem = f"recovery stopped before backup {choice.backup.label} ended"
    elif choice.branch_lsn is not None and branch.lsn < choice.branch_lsn:
        problem = f"recovery stopped before timeline {choice.timeline} began (on one of its parents)"
    elif (stop := branch.stop_time) is None:
        problem = f"recovery ended without stopping at a commit after the target ({branch.reason.strip()})"
    elif stop < target:
        problem = f"recovery stopped at a commit of {stop.isoformat()}, before the target"
    elif choice.until is not None and stop > choice.until:
        problem = (f"recovery stopped at a commit of {stop.isoformat()}, after timeline {choice.timeline} stopped "
                   f"being live ({choice.until.isoformat(timespec='seconds')}): it replayed another timeline")
    if problem is not None:
        raise PitrError(f"the restored cluster is not the state at {target.isoformat() if target else 'the end'}: "
                        f"{problem}; it is not swapped in and the live cluster was not touched: restore from a "
                        "logical backup (`invoke restore`) and report this")
    return timeline, system_id, branch


def follow_text(choice: TimelineChoice, target: datetime | None) -> str:
    """The plan's words for what recovery follows."""
    if target is None:
        return f"along the newest timeline ({choice.timeline}), to the end of the archived WAL"
    return (f"to {target.isoformat()} along timeline {choice.timeline}, the one live then ({choice.live}), "
            f"from backup {choice.backup.label}")


def restore_plan(settings: Settings, runtime: Runtime, target: datetime | None) -> Plan:
    """What ``restore`` will do, after every check that can run first (stanza, backups, window)."""
    repo = Repo(settings, runtime)
    choice = choose_for(settings, repo, target)
    env = settings.env
    where = "the end of the archived WAL" if target is None else target.isoformat()
    stopped = repo.rt.postgres_pid() is None
    warnings = [] if target is not None else \
        ["no --to: everything archived is replayed (recovery after losing the host)"]
    if stopped:  # a crash: what the cluster committed after its last archived segment is only in its own pg_wal
        warnings.append(f"the live {env.name} cluster is not running: WAL it did not archive before it stopped is not "
                        "in the repository, so transactions committed after it are not restored (they stay in the "
                        f"kept folder); if its data folder is intact, `invoke env.up --env {env.name}` recovers "
                        "every committed transaction instead")
    return Plan(
        f"point-in-time restore of {env.name} to {where}", env.name, env.protected,
        ["the live cluster is stopped: nothing to archive" if stopped else
         "archive the live cluster's current WAL (pgbackrest check)",
         f"restore into a new data folder beside the live one ({repo.rt.pg_home}/{SIDE_PREFIX}<time>) and replay "
         f"WAL on its own port {follow_text(choice, target)}",
         "check that recovery stopped on that timeline, after the backup, at the first commit after the target",
         "check it: connect, row counts, migrate.check's checks (none may fail that pass on the live cluster)",
         f"stop the live cluster and keep its data folder as {repo.rt.pg_home}/{KEPT_PREFIX}<time>",
         "start the restored cluster in its place (same port), archiving on; take a new full pgBackRest backup"],
        [f"the live {env.name} cluster's current state (kept aside as {KEPT_PREFIX}<time>)"],
        warnings,
    )


def _wait_promoted(side: LocalRuntime, data: Path, log: Path, deadline: float) -> None:
    while True:
        alive = (data / "postmaster.pid").exists()
        if alive:
            try:
                with pg.connect(side, "postgres", autocommit=True, timeout=3) as conn:
                    if not pg.in_recovery(conn):
                        return
            except StackopsError:
                pass
        else:
            tail = [ln for ln in (log.read_text(errors="replace") if log.exists() else "").splitlines()
                    if "FATAL" in ln or "PANIC" in ln][-1:]
            raise PitrError(f"the restored cluster stopped during recovery: {tail[0] if tail else 'see ' + str(log)}"
                            "; the live cluster was not touched")
        if time.monotonic() > deadline:
            raise PitrError(f"recovery did not reach the target within {RECOVERY_WAIT}s (see {log}); the live "
                            "cluster was not touched")
        time.sleep(0.3)


def _checks(settings: Settings, runtime: Runtime, report: Reporter) -> list[Check]:
    from stackops.integrity import check_integrity

    return check_integrity(settings, runtime, report=report).checks


def restore_beside(settings: Settings, runtime: Runtime, target: datetime | None, *,
                   report: Reporter) -> tuple[Path, LocalRuntime, str, tuple[int, str, Branch | None]]:
    """Restore into a new data folder and start it on its own port, promoted at ``target`` (None: the
    end of the archive). Returns (data folder, a runtime for it, the backup label used, its timeline,
    system identifier and branch as ``verify_recovery`` checked them). The live cluster is not touched."""
    repo = Repo(settings, runtime)
    rt = repo.rt
    if swap_pending(settings) is not None:  # never remove the side folder a pending swap still needs
        raise PitrError(f"an interrupted point-in-time restore's swap is pending ({SWAP_JOURNAL} in "
                        f"{settings.env.backups_dir}); any other invoke command on {settings.env.name} "
                        "finishes it first")
    clean_leftovers(rt, report)
    if rt.postgres_pid() is not None:
        report.step("archiving the live cluster's current WAL (pgbackrest check)")
        repo.pgbackrest("check", what="pgbackrest check", timeout=300)
    choice = choose_for(settings, repo, target)  # before anything is made: a refusal leaves nothing behind
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    side_dir = rt.pg_home / f"{SIDE_PREFIX}{stamp}"
    side_dir.mkdir(mode=0o700)
    if rt.run_as is not None:
        pw = pwd.getpwnam(rt.run_as)
        os.chown(side_dir, pw.pw_uid, pw.pw_gid)
    report.step(f"restoring into {side_dir} (pgbackrest restore {follow_text(choice, target)})")
    if target is None:
        repo.pgbackrest("restore", what="pgbackrest restore", pg1_path=str(side_dir))
    else:
        repo.pgbackrest("restore", what="pgbackrest restore", pg1_path=str(side_dir), type="time",
                        target=target.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00"), target_action="promote",
                        target_timeline=str(choice.timeline), set=choice.backup.label)
    label = choice.backup.label
    port = _free_port()
    log = repo.home / "log" / f"{side_dir.name}.log"  # kept with pgBackRest's own logs
    report.step(f"starting the restored cluster on 127.0.0.1:{port} (archiving off) and replaying WAL")
    proc = run(_pg_ctl(rt, "start", "-w", "-t", "120", "-D", str(side_dir), "-l", str(log),
                       "-o", f"-p {port} -k {SOCKET_DIR} -c archive_mode=off -c listen_addresses=127.0.0.1"),
               check=False)
    side = _side_runtime(rt, port)
    if proc.returncode != 0 and not (side_dir / "postmaster.pid").exists():
        _wait_promoted(side, side_dir, log, time.monotonic())  # raises with the log's FATAL line
    _wait_promoted(side, side_dir, log, time.monotonic() + RECOVERY_WAIT)
    try:
        with pg.connect(side, "postgres", autocommit=True) as conn:
            branched = verify_recovery(conn, choice, target)
    except BaseException:
        stop_side(rt, side_dir)
        shutil.rmtree(side_dir, ignore_errors=True)
        raise
    return side_dir, side, label, branched


def stop_side(rt: LocalRuntime, side_dir: Path) -> None:
    run(_pg_ctl(rt, "stop", "-m", "fast", "-w", "-t", "120", "-D", str(side_dir)), check=False)


def restore(settings: Settings, runtime: Runtime, target: datetime | None, *, report: Reporter) -> PitrRestoreResult:
    """Restore beside, check, swap in (the plan was confirmed by the caller). Any failure before the swap
    leaves the live cluster serving; a failed start after it puts the old data folder back."""
    started = time.monotonic()
    repo = Repo(settings, runtime)
    rt = repo.rt
    with env_lock(settings.env.backups_dir, "pitr.restore"):
        side_dir, side, label, (timeline, system_id, branch) = restore_beside(settings, runtime, target,
                                                                              report=report)
        try:
            report.step("checking the restored cluster")
            with pg.connect(side, autocommit=True) as conn:
                counts = pg.table_counts(conn)
            report.info(f"{len(counts)} tables, {sum(counts.values())} rows")
            side_checks = _checks(settings, side, report)
            live_ok = {c.name for c in _checks(settings, rt, report) if c.ok} if rt.postgres_pid() else set()
            worse = [c for c in side_checks if not c.ok and (c.name in live_ok or c.name == "database reachable")]
            if worse:
                failed = "; ".join(f"{c.name}: {c.detail}" for c in worse)
                raise PitrError(f"the restored cluster fails checks the live one passes: {failed}; "
                                "the live cluster was not touched")
            stop_side(rt, side_dir)
        except BaseException:
            stop_side(rt, side_dir)
            shutil.rmtree(side_dir, ignore_errors=True)
            raise
        report.step("swapping the restored cluster in")
        stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
        kept = rt.pg_home / f"{KEPT_PREFIX}{stamp}"
        # the journal first: a kill between the two renames leaves no data folder, and the next command must
        # finish the swap (the restored cluster was checked and the swap confirmed) instead of an `env.up`
        # initdb-ing an empty cluster in its place or a `pitr.*` removing the side folder as a leftover
        state = {"timeline": str(timeline), "parent": str(branch.parent if branch else timeline),
                 "system_id": system_id, "target": target.isoformat() if target else "end of archive"}
        write_swap_journal(settings, rt, side_dir, kept, timeline=state)
        rt.stop_postgres(report)
        # the moment the previous timeline stopped committing: the restored one is live from here on
        state["live_from"] = datetime.now(UTC).isoformat()
        write_swap_journal(settings, rt, side_dir, kept, timeline=state)
        _record_swap(settings, state)
        _swap_in(rt, side_dir, kept)
        try:
            rt.start_postgres(report)
        except BaseException:
            report.warn("the restored cluster did not start: putting the previous data folder back")
            write_swap_journal(settings, rt, side_dir, kept, phase="rolling-back", timeline=state)
            _forget_swap(settings, state)
            _swap_back(rt, side_dir, kept)
            rt.start_postgres(report)
            _clear_swap_journal(settings)
            raise
        _clear_swap_journal(settings)
        report.step("taking a new full pgBackRest backup of the new timeline")
        repo.pgbackrest("backup", what="pgbackrest backup after the restore", type="full")
    return PitrRestoreResult(target.isoformat() if target else "end of archive", label, str(kept), counts,
                             round(time.monotonic() - started, 2), side.env.ports.postgres,
                             branch.parent if branch else timeline, timeline)


SWAP_JOURNAL = ".pitr-local-journal.json"  # in the environment's backups folder, while the data folder is swapped


def write_swap_journal(settings: Settings, rt: LocalRuntime, side: Path, kept: Path, *,
                       phase: str = "swapping", timeline: dict[str, str] | None = None) -> None:
    """Record a swap about to happen (or to be undone): the data folder, the restored one and the name the
    live one is kept under, and the restored cluster's timeline (``timeline``, ``parent``, ``system_id``,
    ``target``, then ``live_from``). ``recover_swap`` finishes it after a kill."""
    record = {**(timeline or {}), "phase": phase, "data": str(rt.pg_data), "side": str(side), "kept": str(kept)}
    atomic_write(settings.env.backups_dir / SWAP_JOURNAL, json.dumps(record).encode())


def _record_swap(settings: Settings, state: dict[str, Any]) -> None:
    """Record the timeline a swap puts live (nothing when the journal does not name it: then a later restore to
    a time refuses rather than guesses)."""
    rec = journal_timeline(state)
    if rec is not None:
        record_timeline(settings, rec)


def _forget_swap(settings: Settings, state: dict[str, Any]) -> None:
    rec = journal_timeline(state)
    if rec is not None:
        forget_timeline(settings, rec.system_id, rec.timeline)


def _clear_swap_journal(settings: Settings) -> None:
    (settings.env.backups_dir / SWAP_JOURNAL).unlink(missing_ok=True)


def _swap_in(rt: LocalRuntime, side: Path, kept: Path) -> None:
    """The live data folder to ``kept``, the restored one in its place; each step done at most once."""
    if rt.pg_data.exists() and side.exists() and not kept.exists():
        os.rename(rt.pg_data, kept)
    if not rt.pg_data.exists() and side.exists():
        os.rename(side, rt.pg_data)
    _mark_history_ready(rt)


def _swap_back(rt: LocalRuntime, side: Path, kept: Path) -> None:
    """Undo ``_swap_in`` (the restored cluster would not start); each step done at most once."""
    if rt.pg_data.exists() and kept.exists() and not side.exists():
        os.rename(rt.pg_data, side)
    if not rt.pg_data.exists() and kept.exists():
        os.rename(kept, rt.pg_data)


def swap_pending(settings: Settings) -> dict[str, str] | None:
    """The local swap journal, if a killed ``pitr.restore`` left one."""
    try:
        found = json.loads((settings.env.backups_dir / SWAP_JOURNAL).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"phase": "damaged"}
    return found if isinstance(found, dict) else {"phase": "damaged"}


def recover_swap(settings: Settings, runtime: Runtime, report: Reporter) -> str | None:
    """Finish the data-folder swap a killed local ``pitr.restore`` left: forward (the restored cluster was
    checked and the swap confirmed) or, when it was being undone, back; then start PostgreSQL."""
    if not isinstance(runtime, LocalRuntime) or swap_pending(settings) is None:
        return None
    rt = runtime
    try:
        with env_lock(settings.env.backups_dir, "finishing an interrupted point-in-time restore"):
            state = swap_pending(settings)
            if state is None:
                return None
            paths = {k: Path(str(state.get(k, ""))) for k in ("data", "side", "kept")}
            ours = (paths["data"] == rt.pg_data and all(p.parent == rt.pg_home for p in paths.values())
                    and paths["side"].name.startswith(SIDE_PREFIX) and paths["kept"].name.startswith(KEPT_PREFIX))
            if state.get("phase") not in ("swapping", "rolling-back") or not ours:
                raise PitrError(f"{settings.env.backups_dir / SWAP_JOURNAL} is damaged or names folders outside "
                                f"{rt.pg_home}: look at {rt.pg_home} by hand (the live cluster may be kept as "
                                f"{KEPT_PREFIX}<time>) and remove the journal")
            if rt.postgres_pid():
                rt.stop_postgres(report)
            message = "an interrupted point-in-time restore was rolled back: the previous cluster serves"
            timeline = {k: str(v) for k, v in state.items() if k in ("timeline", "parent", "system_id", "target",
                                                                        "live_from")}
            if state["phase"] == "swapping":
                if timeline and not timeline.get("live_from"):  # killed before it stopped the live cluster
                    timeline["live_from"] = datetime.now(UTC).isoformat()
                    write_swap_journal(settings, rt, paths["side"], paths["kept"], timeline=timeline)
                _record_swap(settings, timeline)
                _swap_in(rt, paths["side"], paths["kept"])
                try:
                    rt.start_postgres(report)
                except StackopsError:  # the restored cluster does not start: the previous one goes back
                    report.warn("the restored cluster did not start: putting the previous data folder back")
                    write_swap_journal(settings, rt, paths["side"], paths["kept"], phase="rolling-back",
                                       timeline=timeline)
                    _forget_swap(settings, timeline)
                    _swap_back(rt, paths["side"], paths["kept"])
                else:
                    message = (f"an interrupted point-in-time restore was finished: the restored cluster serves, "
                               f"the previous one is kept as {paths['kept']}; take `invoke pitr.backup --type full`")
            else:
                _forget_swap(settings, timeline)
                _swap_back(rt, paths["side"], paths["kept"])
            if not rt.postgres_pid():
                rt.start_postgres(report)
            _clear_swap_journal(settings)
    except LockBusy:
        return None
    report.warn(message)
    return message


def _mark_history_ready(rt: LocalRuntime) -> None:
    """The new timeline's history file was written while archiving was off: have the archiver push it."""
    status = rt.pg_data / "pg_wal" / "archive_status"
    for history in (rt.pg_data / "pg_wal").glob("*.history"):
        if not (status / f"{history.name}.done").exists():
            atomic_write(status / f"{history.name}.ready", b"", owner=rt.run_as)


def kept_clusters(settings: Settings, runtime: Runtime) -> list[Path]:
    repo = Repo(settings, runtime)
    return sorted(repo.rt.pg_home.glob(f"{KEPT_PREFIX}*"))

