"""Point-in-time recovery through pgBackRest on the compose runtime (the local runtime's is ``stackops.pitr``).

pgBackRest runs inside the database container (its image must carry it: the stand-in does, the official
``postgres:15`` does not — ``compose/images/postgres-pitr`` adds Debian's package to it). Its repository,
configuration and logs live in a volume mounted at ``/var/lib/pgbackrest`` (``pgbackrest_prod_repo`` in
docker-compose.prod.yml only: PITR is a prod feature by default; an environment without that mount is
refused). The archive command, written with ALTER SYSTEM, lives in the data volume with the cluster.

**Why the restore works inside the data volume.** The official image's PGDATA is the volume root, and a
volume cannot be renamed. A second volume would make the swap a copy of the whole cluster (two mounts
inside one container are two filesystems) and would need the compose file to change which volume the
database mounts. So everything a restore makes lives in one folder inside PGDATA, ``.pitr/`` (PostgreSQL
ignores it, pgBackRest's ``exclude`` keeps it out of every backup): the restored cluster is built in
``.pitr/side-<time>`` by a separate side container (same image, same volumes, the project's network, no
published port), replays WAL to the target and promotes there, and is checked through its own address.
Until then the live cluster is not touched and keeps serving; a killed restore leaves a side container
and a side folder, which the next ``pitr.*`` command removes.

**The swap is renames under a journal.** After the confirmation, ``<backups>/.pitr-journal.json`` is
written (host), the live container is stopped, and a throwaway container of the same image runs
``SWAP_SCRIPT``: it writes ``.pitr/swap`` (the names involved and the phase) inside the volume, moves
every live entry into ``.pitr/kept-<time>`` (phase 1) and every restored entry to the root (phase 2),
fsyncing between phases. ``global/`` (pg_control) leaves first and arrives last, so at every instant
the volume root is either the whole live cluster, the whole restored one, or no startable cluster at
all (PostgreSQL refuses to start without pg_control; the entrypoint does not initdb into a non-empty
folder) — never a mix. Every step is an atomic rename and the script is idempotent: a kill -9 at any
point is finished by the next stackops command (``stackops.cli.runtime`` reads the journal; the
restored cluster was already checked and the swap confirmed, so it rolls forward), then the database is
started. If the restored cluster does not start after the swap, the same script moves it aside
(``.pitr/failed-<time>``) and puts the kept cluster back.

What a ``kill -9`` of stackops leaves, step by step:

- restoring / replaying / checking in the side container: the live cluster serving, untouched; a side
  container and ``.pitr/side-<time>`` (the next ``pitr.*`` command removes both);
- after the journal, before or while the live container stops: the live cluster stopped or serving,
  whole; the next stackops command stops it, swaps, starts the restored one (the swap was confirmed);
- inside the swap helper: the helper container is not stackops' child, so the daemon runs it to its end
  (the next command waits for it, then finds nothing left to do); if it dies too, the marker and
  ``global/`` decide: the root never starts as a mix, and the next command finishes the renames;
- after the swap, before the new full backup: the restored cluster serving; take ``pitr.backup --type full``.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from datetime import UTC, datetime
from typing import Any

from stackops import pg
from stackops.config import Settings
from stackops.errors import CommandFailed, LockBusy, PitrError, PrerequisiteError, RuntimeRefused, StackopsError
from stackops.files import atomic_write
from stackops.lock import env_lock
from stackops.pitr import (
    RECOVERY_WAIT,
    Branch,
    PitrBackup,
    PitrInfo,
    PitrRestoreResult,
    archiving_off,
    check_backup_type,
    choose_for,
    create_stanza,
    follow_text,
    forget_timeline,
    journal_timeline,
    last_error_line,
    parse_info,
    pgbackrest_error,
    record_timeline,
    take_backup,
    verify_recovery,
)
from stackops.proc import Cmd, run, which
from stackops.report import Check, NullReporter, Plan, Reporter
from stackops.runtime.base import Runtime
from stackops.runtime.compose import DATABASE, ComposeRuntime
from stackops.runtime.docker import DOCKER_INSTALL

NOT_ENABLED = "stackops: no pgBackRest configuration"  # what the info helper prints when PITR is off
REPO_MOUNT = "/var/lib/pgbackrest"      # the repository volume's mount point in the database container
CONF = f"{REPO_MOUNT}/conf/pgbackrest.conf"
WORK = ".pitr"                          # inside PGDATA: side, kept and failed clusters, the swap marker
SIDE_LABEL = "stackops.pitr-side"       # label (value: compose project) of side and helper containers
JOURNAL = ".pitr-journal.json"          # in the environment's backups folder (host)
IMAGE_HINT = ("build an image with it: `invoke pitr.image` (compose/images/postgres-pitr: the configured "
              "POSTGRES_IMAGE + Debian's pgbackrest), put POSTGRES_IMAGE=impactbot-v2-postgres-pitr:15 in "
              "compose/.env and run `invoke env.up`")

# The side container: restore into the side folder, then run the restored cluster there (archiving off).
SIDE_SCRIPT = r"""
set -euo pipefail
side=$1; stanza=$2; conf=$3; target=$4; timeline=$5; backup_set=$6
mkdir -p -m 0700 "${side%/*}"
rm -rf "$side"
mkdir -m 0700 "$side"
opts=(--config="$conf" --stanza="$stanza" --pg1-path="$side" --log-level-console=warn)
if [ -n "$target" ]; then
  opts+=(--type=time --target="$target" --target-action=promote --target-timeline="$timeline" --set="$backup_set")
fi
pgbackrest "${opts[@]}" restore
echo "stackops: restored into $side, replaying WAL" >&2
exec postgres -D "$side" -c archive_mode=off -c port=5432 -c listen_addresses='*' \
  -c unix_socket_directories=/tmp
"""

# The swap (see the module's docstring). $1 PGDATA, $2 the folder (in .pitr) the root's entries go to,
# $3 the folder whose entries come to the root. An existing marker wins over the arguments (resume).
SWAP_SCRIPT = r"""
set -euo pipefail
shopt -s nullglob dotglob
pgdata=$1; away=$2; in=$3
w="$pgdata/.pitr"; m="$w/swap"
mark() { printf '%s\n%s\n%s\n' "$away" "$in" "$1" > "$m.tmp"; sync "$m.tmp"; mv -T "$m.tmp" "$m"; sync "$w"; }
if [ -e "$m" ]; then
  away=$(sed -n 1p "$m"); in=$(sed -n 2p "$m"); phase=$(sed -n 3p "$m")
else
  # no marker and nothing to bring in: this swap already finished (a killed stackops's helper went on)
  [ -d "$w/$in" ] || { echo "stackops: $w/$in was already swapped in" >&2; exit 0; }
  phase=1; mark 1
fi
mkdir -p -m 0700 "$w/$away"
if [ "$phase" = 1 ]; then
  if [ -e "$pgdata/global" ]; then mv -T "$pgdata/global" "$w/$away/global"; sync "$w/$away"; fi
  for p in "$pgdata"/*; do
    name=${p##*/}
    case "$name" in .pitr|lost+found) continue ;; esac
    mv -T "$p" "$w/$away/$name"
  done
  sync
  mark 2
fi
for p in "$w/$in"/*; do
  name=${p##*/}
  [ "$name" = global ] && continue
  mv -T "$p" "$pgdata/$name"
done
sync
if [ -e "$w/$in/global" ]; then mv -T "$w/$in/global" "$pgdata/global"; fi
rmdir "$w/$in"
for h in "$pgdata"/pg_wal/*.history; do
  b=${h##*/}
  [ -e "$pgdata/pg_wal/archive_status/$b.done" ] || : > "$pgdata/pg_wal/archive_status/$b.ready"
done
sync
rm -f "$m"
sync "$w"
echo "stackops: swapped $in in, the previous cluster is in $w/$away" >&2
"""


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S")


class Live:
    """The environment's database container as PITR needs it: PGDATA, its volume, the repository volume."""

    def __init__(self, settings: Settings, runtime: Runtime, *, running: bool = True) -> None:
        if not isinstance(runtime, ComposeRuntime):
            raise RuntimeRefused(f"{settings.env.name} uses the {runtime.kind} runtime, not compose")
        self.settings = settings
        self.rt = runtime
        self.stanza = settings.env.name
        c = runtime.containers().get(DATABASE) if not running else runtime.container(DATABASE)
        if c is None:
            raise PitrError(f"{settings.env.name} has no database container: start it with "
                            f"`invoke env.up --env {settings.env.name}`")
        self.c = c
        env = dict(item.partition("=")[::2] for item in c.attrs.get("Config", {}).get("Env") or [])
        self.env = env
        self.pgdata = env.get("PGDATA") or "/var/lib/postgresql/data"
        mounts = c.attrs.get("Mounts") or []
        self.data_volume = next((str(m["Name"]) for m in mounts if m.get("Type") == "volume"
                                 and str(m.get("Destination", "")).rstrip("/") == self.pgdata.rstrip("/")), None)
        self.repo_volume = next((str(m["Name"]) for m in mounts if m.get("Type") == "volume"
                                 and str(m.get("Destination", "")).rstrip("/") == REPO_MOUNT), None)
        self.image = str(c.attrs.get("Image"))
        nets = c.attrs.get("NetworkSettings", {}).get("Networks") or {}
        self.network = sorted(nets, key=lambda n: not n.endswith("_default"))[0] if nets else None
        if self.repo_volume is None:
            raise RuntimeRefused(
                f"the {settings.env.name} database container mounts no pgBackRest repository volume at "
                f"{REPO_MOUNT} (PITR is prod only by default: docker-compose.prod.yml mounts "
                "pgbackrest_prod_repo there); add such a volume to this environment's compose overlay to use it")
        if self.data_volume is None:
            raise RuntimeRefused(f"the {settings.env.name} database keeps PGDATA ({self.pgdata}) outside a named "
                                 "volume: point-in-time restore needs the cluster in a volume")

    @property
    def work(self) -> str:
        return f"{self.pgdata.rstrip('/')}/{WORK}"

    def exec_cmd(self, argv: list[str], *, user: str = "postgres") -> Cmd:
        return Cmd([which("docker", DOCKER_INSTALL), "exec", "-i", "-u", user, str(self.c.id), *argv])

    @property
    def running(self) -> bool:
        self.c.reload()
        return bool(self.c.status == "running")

    def pgbackrest(self, *args: str, what: str, timeout: float | None = None, **options: str) -> str:
        """pgBackRest in the database container; with the database stopped (crashed) in a helper container
        with the same volumes (only for what needs no running server: info, restore)."""
        argv = self._argv(*args, **options)
        if not self.running:
            return self.helper('exec "$@"', *argv, timeout=timeout or 600, what=what)
        try:
            return run(self.exec_cmd(argv), timeout=timeout).stdout.decode(errors="replace")
        except CommandFailed as exc:
            raise pgbackrest_error(exc, what) from None

    def _argv(self, *args: str, **options: str) -> list[str]:
        return ["pgbackrest", f"--config={CONF}", f"--stanza={self.stanza}",
                *[f"--{k.replace('_', '-')}={v}" for k, v in options.items()], *args]

    def has_pgbackrest(self) -> bool:
        return run(self.exec_cmd(["pgbackrest", "version"]), check=False).returncode == 0

    def enabled(self) -> bool:
        if not self.running:
            return bool(self.helper('if test -s "$1"; then echo yes; fi', CONF,
                                    what="reading the pgBackRest configuration").strip() == "yes")
        return run(self.exec_cmd(["test", "-s", CONF]), check=False).returncode == 0

    def info(self) -> PitrInfo:
        off = PitrError(f"point-in-time recovery is not enabled for {self.stanza}: run "
                        f"`invoke pitr.enable --env {self.stanza}`")
        if self.running:
            if not self.enabled():
                raise off
            out = self.pgbackrest("info", what="pgbackrest info", output="json")
        else:  # one helper container reads both: is the configuration there, and pgBackRest's info
            out = self.helper('if ! test -s "$1"; then echo "$2"; exit 0; fi; shift 2; exec "$@"', CONF, NOT_ENABLED,
                              *self._argv("info", output="json"), what="pgbackrest info")
            if out.strip() == NOT_ENABLED:
                raise off
        data = json.loads(out or "[]")
        return parse_info(self.stanza, data, f"volume {self.repo_volume} ({REPO_MOUNT}/repo)")

    def shell(self, script: str, *args: str) -> str:
        """``script`` (a constant) as postgres beside the data: in the database container when it runs,
        else in a helper container; its stdout (best effort: cleanup and listing only)."""
        self.c.reload()
        if self.c.status == "running":
            out = run(self.exec_cmd(["bash", "-c", script, "stackops-pitr", *args]), check=False).stdout
            return out.decode(errors="replace")
        return self.helper(script, *args)

    def helper(self, script: str, *args: str, timeout: float = 600, what: str = "the swap helper") -> str:
        """Run ``script`` (a constant; arguments are positional) in a throwaway container of the database's
        image with the data volume at PGDATA and the repository volume at its mount point, as postgres,
        without network. Returns its stdout; a failure raises with the last line of its stderr."""
        client = self.rt.client
        name = f"{self.rt.project}-pitr-helper"  # one name: two helpers never run at once
        for old in client.containers.list(all=True, filters={"name": name}):
            if old.name == name:  # a killed stackops's helper: the daemon ran it on; let it finish
                old.wait(timeout=timeout)
                old.remove(force=True)
        c = client.containers.run(self.image, entrypoint=["bash", "-c", script, "stackops-pitr", *args],
                                  name=name, user="postgres", network_mode="none", detach=True,
                                  labels={SIDE_LABEL: self.rt.project},
                                  volumes={self.data_volume: {"bind": self.pgdata, "mode": "rw"},
                                           str(self.repo_volume): {"bind": REPO_MOUNT, "mode": "rw"}})
        try:
            code = int(c.wait(timeout=timeout).get("StatusCode", 1))
            out = str(c.logs(stdout=True, stderr=False).decode(errors="replace"))
            err = str(c.logs(stdout=False, stderr=True).decode(errors="replace"))
        finally:
            c.remove(force=True)
        if code != 0:
            # pgBackRest's last ERROR line, as pgbackrest_error reads it when the database runs; else the last line
            last = last_error_line(err) or (err.strip().splitlines() or out.strip().splitlines() or ["no output"])[-1]
            raise PitrError(f"{what} failed (exit {code}): {last}")
        return out


# ----- enable / backup / info ----------------------------------------------------------------------
def _config_text(settings: Settings, live: Live) -> str:
    return "\n".join([
        "# written by stackops pitr.enable: rewritten by it, do not edit",
        "[global]",
        f"repo1-path={REPO_MOUNT}/repo",
        f"repo1-retention-full={settings.pitr.retention_full}",
        f"log-path={REPO_MOUNT}/log",
        "lock-path=/tmp/pgbackrest",
        "log-level-console=warn",
        "log-level-file=info",
        "start-fast=y",
        "archive-check=y",
        "",
        f"[{live.stanza}]",
        f"pg1-path={live.pgdata}",
        "pg1-port=5432",
        "pg1-socket-path=/var/run/postgresql",
        f"pg1-user={settings.env.db_user}",
        f"exclude={WORK}",  # restores in progress and kept clusters are never part of a backup
        "",
    ])


def _restart(rt: ComposeRuntime, live: Live, report: Reporter) -> None:
    report.step("restarting the database container")
    live.c.restart(timeout=60)
    rt.wait_healthy(report, timeout=300, services=[DATABASE])
    pg.reload_config(rt)  # archive_timeout holds from now on, not only after the first checkpoint_timeout


def enable(settings: Settings, runtime: Runtime, *, report: Reporter) -> PitrInfo:
    """Archive WAL into the repository volume, create the stanza, check archiving, take the first full backup."""
    live = Live(settings, runtime)
    if not live.has_pgbackrest():
        raise PrerequisiteError(f"the {settings.env.name} database image has no pgBackRest: {IMAGE_HINT}")
    with env_lock(settings.env.backups_dir, "pitr.enable"):
        report.step(f"writing pgBackRest's configuration {CONF} (repository: volume {live.repo_volume})")
        run(live.exec_cmd(["bash", "-c", 'mkdir -p "$1/conf" "$1/log" "$1/repo" && chown -R postgres:postgres "$1" '
                           '&& chmod 0750 "$1" "$1/conf" "$1/log" "$1/repo"', "mkdir", REPO_MOUNT], user="root"))
        write = 'cat > "$1.tmp" && chmod 0640 "$1.tmp" && sync "$1.tmp" && mv -T "$1.tmp" "$1"'
        run(live.exec_cmd(["bash", "-c", write, "write", CONF]), input=_config_text(settings, live).encode())
        command = f"pgbackrest --config={CONF} --stanza={live.stanza} archive-push %p"
        report.step(f"turning WAL archiving on (archive_timeout {settings.pitr.archive_timeout}s)")
        pg.alter_system(live.rt, {"archive_mode": "on", "archive_command": command, "wal_level": "replica",
                                  "archive_timeout": str(settings.pitr.archive_timeout)})
        _restart(live.rt, live, report)
        live = Live(settings, runtime)
        try:
            create_stanza(live, report)
        except StackopsError:
            archiving_off(live.rt, lambda: _restart(live.rt, live, report), report)
            raise
    return live.info()


def backup(settings: Settings, runtime: Runtime, kind: str, *, report: Reporter) -> PitrBackup:
    check_backup_type(kind)
    return take_backup(settings, Live(settings, runtime), kind, report)


def info(settings: Settings, runtime: Runtime) -> PitrInfo:
    return Live(settings, runtime, running=False).info()


# ----- restore -------------------------------------------------------------------------------------
def _side_containers(rt: ComposeRuntime) -> list[Any]:
    return list(rt.client.containers.list(all=True, filters={"label": f"{SIDE_LABEL}={rt.project}"}))


def clean_leftovers(settings: Settings, runtime: Runtime, report: Reporter) -> None:
    """Side containers and side folders of restores that never reached the swap (killed, failed)."""
    live = Live(settings, runtime, running=False)
    for c in _side_containers(live.rt):
        if c.name == f"{live.rt.project}-pitr-helper":
            continue  # a swap's helper finishes on its own (Live.helper waits for it)
        report.warn(f"removing {c.name}, left by an interrupted point-in-time restore")
        c.remove(force=True)
    if _journal(settings) is not None:
        return  # a swap is pending: its side folder is the restored cluster
    out = live.shell('shopt -s nullglob; for d in "$1"/side-*; do echo "${d##*/}"; rm -rf "$d"; done', live.work)
    for name in out.split():
        report.warn(f"removed {WORK}/{name}, left by an interrupted point-in-time restore")


def restore_plan(settings: Settings, runtime: Runtime, target: datetime | None) -> Plan:
    live = Live(settings, runtime, running=False)  # a stopped (crashed) database is what PITR is for
    choice = choose_for(settings, live, target)
    stopped = not live.running
    env = settings.env
    where = "the end of the archived WAL" if target is None else target.isoformat()
    work = live.work
    return Plan(
        f"point-in-time restore of {env.name} to {where}", env.name, env.protected,
        [("the live database is stopped: WAL it did not archive before it stopped is not in the repository"
          if stopped else "archive the live cluster's current WAL (pgbackrest check)"),
         f"restore into {work}/side-<time> (inside the data volume {live.data_volume}, beside the live cluster) in "
         f"a side container without a published port, and replay WAL {follow_text(choice, target)}",
         "check that recovery stopped on that timeline, after the backup, at the first commit after the target",
         "check it: connect, row counts, migrate.check's checks (none may fail that pass on the live cluster"
         + ("; the live one is stopped, so it must answer)" if stopped else ")"),
         f"{'keep' if stopped else 'stop'} the live cluster {'' if stopped else 'and keep it '}as {work}/kept-<time> "
         "(renames under a journal)",
         "start the restored cluster in its place, archiving on; take a new full pgBackRest backup"],
        [f"the live {env.name} cluster's current state (kept aside in {work}/kept-<time>)"],
        ([] if target is not None else ["no --to: everything archived is replayed (recovery after losing the host)"])
        + [f"the data volume {live.data_volume} must hold a second copy of the cluster while this runs"],
    )


class SideRuntime(ComposeRuntime):
    """The environment's runtime with the side container as its database (own address, no published port)."""

    def __init__(self, settings: Settings, side: Any) -> None:
        super().__init__(settings)
        self.side = side

    def container(self, service: str) -> Any:
        if service != DATABASE:
            return super().container(service)
        self.side.reload()
        return self.side


def _log_tail(c: Any) -> str:
    try:
        lines = c.logs(stdout=True, stderr=True, tail=40).decode(errors="replace").splitlines()
    except Exception:  # the container is gone
        return "no log"
    useful = [ln for ln in lines if any(w in ln for w in ("FATAL", "PANIC", "ERROR"))] or lines or ["no log"]
    return str(useful[-1]).strip()[:300]


def _wait_promoted(side_rt: SideRuntime, deadline: float) -> None:
    c = side_rt.side
    while True:
        c.reload()
        if c.status in ("exited", "dead"):
            raise PitrError(f"the restored cluster stopped during recovery: {_log_tail(c)}; the live cluster "
                            "was not touched")
        if c.status == "running":
            try:
                with pg.connect(side_rt, "postgres", autocommit=True, timeout=3) as conn:
                    if not pg.in_recovery(conn):
                        return
            except StackopsError:
                pass
        if time.monotonic() > deadline:
            raise PitrError(f"recovery did not reach the target within {RECOVERY_WAIT}s ({_log_tail(c)}); the live "
                            "cluster was not touched")
        time.sleep(0.3)


def restore_beside(settings: Settings, runtime: Runtime, target: datetime | None, *,
                   report: Reporter) -> tuple[str, SideRuntime, str, tuple[int, str, Branch | None]]:
    """Restore into ``.pitr/side-<time>`` in a side container and wait until it has promoted at ``target``
    (None: the end of the archive). Returns (side folder name, a runtime for it, the backup label used, its
    timeline, system identifier and branch as ``verify_recovery`` checked them).
    The live cluster is not touched (it may be stopped: after a crash)."""
    live = Live(settings, runtime, running=False)
    clean_leftovers(settings, runtime, report)
    if live.c.status == "running":
        report.step("archiving the live cluster's current WAL (pgbackrest check)")
        live.pgbackrest("check", what="pgbackrest check", timeout=300)
    choice = choose_for(settings, live, target)
    name = f"side-{_stamp()}"
    side_path = f"{live.work}/{name}"
    when = "" if target is None else target.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")
    report.step(f"restoring into {side_path} in a side container and replaying WAL {follow_text(choice, target)}")
    side = live.rt.client.containers.run(
        live.image, entrypoint=["bash", "-c", SIDE_SCRIPT, "stackops-pitr-side", side_path, live.stanza, CONF, when,
                                str(choice.timeline), choice.backup.label],
        name=f"{live.rt.project}-pitr-{name}", user="postgres", detach=True, environment=live.env,
        labels={SIDE_LABEL: live.rt.project}, network=live.network,
        volumes={live.data_volume: {"bind": live.pgdata, "mode": "rw"},
                 str(live.repo_volume): {"bind": REPO_MOUNT, "mode": "rw"}})
    side_rt = SideRuntime(settings, side)
    try:
        _wait_promoted(side_rt, time.monotonic() + RECOVERY_WAIT)
        with pg.connect(side_rt, "postgres", autocommit=True) as conn:
            branched = verify_recovery(conn, choice, target)
    except BaseException:
        side.remove(force=True)
        raise
    return name, side_rt, choice.backup.label, branched


def stop_side(side_rt: SideRuntime) -> None:
    """Stop the side cluster cleanly (SIGINT: fast shutdown) and remove its container; the folder stays."""
    try:
        side_rt.side.stop(timeout=120)
    finally:
        side_rt.side.remove(force=True)


def _checks(settings: Settings, runtime: Runtime, report: Reporter) -> list[Check]:
    from stackops.integrity import check_integrity

    return check_integrity(settings, runtime, report=report).checks


# ----- the journal and the swap --------------------------------------------------------------------
def _journal(settings: Settings) -> dict[str, str] | None:
    """The journal, or ``{"phase": "damaged"}`` when it is unreadable or not what ``restore`` writes: the
    folder names go to the swap script as paths inside ``.pitr/``, so each must be exactly
    ``<side|kept|failed>-<14 digits>`` (a hand-edited ``../..`` would move the cluster out of the volume)."""
    path = settings.env.backups_dir / JOURNAL
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"phase": "damaged"}
    if not isinstance(state, dict) or not all(
            isinstance(state.get(key), str) and re.fullmatch(f"{key}-[0-9]{{14}}", state[key])
            for key in ("side", "kept", "failed")):
        return {"phase": "damaged"}
    return {str(k): str(v) for k, v in state.items()}


def _write_journal(settings: Settings, state: dict[str, str]) -> None:
    atomic_write(settings.env.backups_dir / JOURNAL, json.dumps(state, sort_keys=True).encode())


def _clear_journal(settings: Settings) -> None:
    (settings.env.backups_dir / JOURNAL).unlink(missing_ok=True)


def swap_state(name: str, timeline: int, system_id: str, branch: Branch | None,
               target: datetime | None) -> dict[str, str]:
    """The swap journal's first state for the restored cluster in side folder ``name``: the folders, and the
    timeline it puts live (recorded by ``_swap``, so that a later restore to a time can follow it)."""
    stamp = name.removeprefix("side-")
    return {"phase": "swapping", "side": name, "kept": f"kept-{stamp}", "failed": f"failed-{stamp}",
            "timeline": str(timeline), "parent": str(branch.parent if branch else timeline),
            "system_id": system_id, "target": target.isoformat() if target else "end of archive"}


def _swap(live: Live, state: dict[str, str], report: Reporter) -> None:
    """Stop the live database, run the swap the journal describes (resumable), start the database. The
    restored cluster's timeline is recorded as live from the moment the previous one stopped (forgotten again
    when it is swapped back out)."""
    live.c.reload()
    if live.c.status in ("running", "restarting"):  # restarting: someone started the half-swapped volume
        report.step("stopping the live database")
        live.c.stop(timeout=60)
    rec = journal_timeline(state)
    if rec is not None and state["phase"] == "swapping":
        if not state.get("live_from"):
            state["live_from"] = rec.live_from.isoformat()
            _write_journal(live.settings, state)
        record_timeline(live.settings, rec)
    elif rec is not None:
        forget_timeline(live.settings, rec.system_id, rec.timeline)
    if state["phase"] == "swapping":
        report.step(f"swapping: the live cluster to {WORK}/{state['kept']}, the restored one in")
        live.helper(SWAP_SCRIPT, live.pgdata, state["kept"], state["side"])
    else:  # rolling-back: the restored cluster did not start
        report.step(f"putting the previous cluster back ({WORK}/{state['kept']}); the restored one goes to "
                    f"{WORK}/{state['failed']}")
        live.helper(SWAP_SCRIPT, live.pgdata, state["failed"], state["kept"])
    live.c.start()


def recover(settings: Settings, runtime: Runtime, report: Reporter | None) -> str | None:
    """Finish a swap a killed ``pitr.restore`` left (journal in the backups folder): the restored cluster was
    checked and the swap confirmed, so it goes on (or a started rollback finishes); then the database starts."""
    state = _journal(settings)
    if state is None or not isinstance(runtime, ComposeRuntime):
        return None
    try:
        with env_lock(settings.env.backups_dir, "finishing an interrupted point-in-time restore"):
            state = _journal(settings)
            if state is None:
                return None
            if state.get("phase") not in ("swapping", "rolling-back"):
                message = (f"{settings.env.backups_dir / JOURNAL} is damaged: look at {WORK}/ in the data volume "
                           "by hand")
            else:
                if runtime.containers().get(DATABASE) is None:  # removed (`down`) since: recreate, not start
                    runtime.compose("create", DATABASE)
                live = Live(settings, runtime, running=False)
                _swap(live, state, report or NullReporter())
                runtime.wait_healthy(report or NullReporter(), timeout=300, services=[DATABASE])
                pg.reload_config(runtime)
                _clear_journal(settings)
                done = "finished" if state["phase"] == "swapping" else "rolled back"
                message = (f"an interrupted point-in-time restore was {done}: the previous cluster is kept in "
                           f"{WORK}/{state['kept'] if state['phase'] == 'swapping' else state['failed']}")
    except LockBusy:
        return None
    if report is not None:
        report.warn(message)
    return message


def restore(settings: Settings, runtime: Runtime, target: datetime | None, *, report: Reporter) -> PitrRestoreResult:
    """Restore beside, check, swap in (the plan was confirmed by the caller). Any failure before the swap
    leaves the live cluster serving; a restored cluster that does not start is swapped back out."""
    started = time.monotonic()
    live = Live(settings, runtime, running=False)
    with env_lock(settings.env.backups_dir, "pitr.restore"):
        live_up = live.running
        name, side_rt, label, (timeline, system_id, branch) = restore_beside(settings, runtime, target, report=report)
        try:
            report.step("checking the restored cluster")
            with pg.connect(side_rt, autocommit=True) as conn:
                counts = pg.table_counts(conn)
            report.info(f"{len(counts)} tables, {sum(counts.values())} rows")
            side_checks = _checks(settings, side_rt, report)
            live_ok = {c.name for c in _checks(settings, live.rt, report) if c.ok} if live_up else set()
            worse = [c for c in side_checks if not c.ok and (c.name in live_ok or c.name == "database reachable")]
            if worse:
                failed = "; ".join(f"{c.name}: {c.detail}" for c in worse)
                raise PitrError(f"the restored cluster fails checks the live one passes: {failed}; "
                                "the live cluster was not touched")
            stop_side(side_rt)
        except BaseException:
            stop_side(side_rt)
            with contextlib.suppress(StackopsError):  # best effort: the next restore removes it (clean_leftovers)
                live.shell('rm -rf "$1"', f"{live.work}/{name}")
            raise
        state = swap_state(name, timeline, system_id, branch, target)
        _write_journal(settings, state)
        _swap(live, state, report)
        try:
            live.rt.wait_healthy(report, timeout=300, services=[DATABASE])
        except StackopsError:
            report.warn("the restored cluster did not start: putting the previous cluster back")
            state["phase"] = "rolling-back"
            _write_journal(settings, state)
            _swap(live, state, report)
            live.rt.wait_healthy(report, timeout=300, services=[DATABASE])
            _clear_journal(settings)
            raise PitrError(f"the restored cluster did not start ({_log_tail(live.c)}); the previous cluster is "
                            f"back and serving, the restored one is in {WORK}/{state['failed']}") from None
        _clear_journal(settings)
        pg.reload_config(live.rt)
        live = Live(settings, runtime)
        report.step("taking a new full pgBackRest backup of the new timeline")
        live.pgbackrest("backup", what="pgbackrest backup after the restore", type="full")
    return PitrRestoreResult(target.isoformat() if target else "end of archive", label,
                             f"{live.work}/{state['kept']} (volume {live.data_volume})", counts,
                             round(time.monotonic() - started, 2), 5432, branch.parent if branch else timeline,
                             timeline)


def kept_clusters(settings: Settings, runtime: Runtime) -> list[str]:
    live = Live(settings, runtime)
    return sorted(live.shell('shopt -s nullglob; for d in "$1"/kept-*; do echo "${d##*/}"; done', live.work).split())


# ----- the image -----------------------------------------------------------------------------------
PITR_IMAGE = "impactbot-v2-postgres-pitr:15"


def build_image(settings: Settings, runtime: Runtime, base: str | None, tag: str, *, report: Reporter) -> str:
    """``docker build`` of compose/images/postgres-pitr FROM ``base`` (default: the database image the compose
    files name) as ``tag``. Where the base has no pgBackRest, the build installs Debian's package (network)."""
    if not isinstance(runtime, ComposeRuntime):
        raise RuntimeRefused(f"{settings.env.name} uses the {runtime.kind} runtime: images apply to compose only "
                             "(the local runtime uses the host's pgbackrest: `apt-get install -y pgbackrest`)")
    context = settings.root / "compose" / "images" / "postgres-pitr"
    if base is None:
        base = str(runtime.config().get("services", {}).get(DATABASE, {}).get("image") or "postgres:15")
    if base == tag:
        raise PitrError(f"the database image already is {tag}: give the image to add pgBackRest to with --base")
    report.step(f"building {tag} from {base} (adds pgBackRest when it is missing)")
    proc = run(Cmd([which("docker", DOCKER_INSTALL), "build", "--pull=false", "--build-arg", f"POSTGRES_IMAGE={base}",
                    "--tag", tag, str(context)]), check=False, timeout=1800)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines() or ["no output"]
        raise PitrError(f"docker build of {tag} failed: {lines[-1][:300]} (without a registry, build the stand-ins "
                        "with `invoke images.build` and give --base stackops-standin/postgres:15)")
    return tag
