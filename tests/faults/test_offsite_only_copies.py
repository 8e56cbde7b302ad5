"""Never lose the only copy: with an offsite remote configured, local `backup.prune` keeps every obsolete
set that is not complete on the remote (never pushed, a remote copy that lies, a remote that cannot be
read) unless `--include-unpushed` is given and confirmed; `backup.prune-remote` keeps every set that
is not intact locally unless `--delete-only-copies` is given and confirmed. Real rclone, local-path
remote; the sets are sealed sets with real files (retention and transfers need no database)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from stackops import offsite, retention
from stackops.backupset import MANIFEST, seal
from stackops.config import Offsite, Settings
from stackops.errors import LockBusy, ProtectedEnvironment
from stackops.report import NullReporter
from tests.conftest import ROOT, make_settings
from tests.faults.backup_helpers import one_line
from tests.offsite_support import fake_set, offsite_env


def _setup(tmp_path: Path) -> tuple[Settings, dict[str, str], str, str]:
    """Two sets of today: the older loses its daily slot to the newer (retention deletes it)."""
    backups, nas = tmp_path / "backups", tmp_path / "nas"
    now = datetime.now(UTC)
    older, newer = "db_older", "db_newer"
    fake_set(backups, older, now - timedelta(minutes=20))
    fake_set(backups, newer, now - timedelta(minutes=10))
    s = make_settings("test", backups_dir=str(backups), runtime="local", state_dir=str(tmp_path / "stack"))
    s = replace(s, offsite=Offsite(remote=":local:", path=str(nas)))
    return s, offsite_env(backups, tmp_path / "stack", ":local:", nas), older, newer


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", *args, "--env", "test"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def _local(s: Settings) -> list[str]:
    return sorted(p.name for p in s.env.backups_dir.iterdir() if not p.name.startswith("."))


def test_local_prune_keeps_a_set_never_pushed_offsite_unless_included_and_confirmed(tmp_path: Path) -> None:
    s, env, older, newer = _setup(tmp_path)

    dry = _cli(env, "backup.prune", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    row = next(line for line in dry.stdout.splitlines() if line.startswith(older))
    assert " keep " in row and "never pushed offsite" in row and "--include-unpushed" in row
    kept = _cli(env, "backup.prune")
    assert kept.returncode == 0, kept.stderr
    assert _local(s) == [newer, older]  # its only copy: kept, and the table says why

    # the newer one pushed does not change that: the older one is still only here
    offsite.push_set(s, newer, report=NullReporter())
    assert _cli(env, "backup.prune").returncode == 0 and _local(s) == [newer, older]

    # --include-unpushed: the plan names it as an only copy and always asks, even outside prod
    unconfirmed = _cli(env, "backup.prune", "--include-unpushed")
    one_line(unconfirmed, ProtectedEnvironment.exit_code)
    assert f"{older} was never pushed offsite: this is its only copy: deleting it deletes its last copy" \
        in unconfirmed.stderr
    assert _local(s) == [newer, older]
    deleted = _cli(env, "backup.prune", "--include-unpushed", "--yes")
    assert deleted.returncode == 0, deleted.stderr
    assert _local(s) == [newer]


def test_local_prune_deletes_a_pushed_set_and_keeps_one_whose_remote_copy_lies(tmp_path: Path) -> None:
    s, env, older, newer = _setup(tmp_path)
    offsite.push_missing(s, report=NullReporter())
    remote = Path(s.offsite.path) / "test" / older
    # the remote index still seals, but a file it lists is gone: the remote copy is not whole
    (remote / "database.dump.zst").unlink()
    assert _cli(env, "backup.prune").returncode == 0 and _local(s) == [newer, older]
    # same id on the remote, but another set (another manifest): not a copy of this one
    shutil.rmtree(remote)
    other = fake_set(tmp_path / "other", older, datetime.now(UTC) - timedelta(minutes=20))
    s_other = replace(s, env=replace(s.env, backups_dir=other.parent))
    offsite.push_set(s_other, older, report=NullReporter())
    assert _cli(env, "backup.prune").returncode == 0 and _local(s) == [newer, older]
    # the real copy pushed again (the lying one replaced by hand): now it may go
    shutil.rmtree(remote)
    offsite.push_set(s, older, report=NullReporter())
    pruned = _cli(env, "backup.prune")
    assert pruned.returncode == 0, pruned.stderr
    assert _local(s) == [newer]


def test_local_prune_keeps_everything_when_the_remote_cannot_be_read(tmp_path: Path) -> None:
    s, env, older, newer = _setup(tmp_path)
    offsite.push_missing(s, report=NullReporter())  # both were pushed ...
    broken = tmp_path / "not-a-folder"
    broken.write_text("the remote's mount went away\n")
    env = {**env, "INVOKE_STACKOPS_OFFSITE_PATH": str(broken / "nas")}  # ... but the remote is unreadable now
    pruned = _cli(env, "backup.prune")
    assert pruned.returncode == 0, pruned.stderr
    assert "warning: the offsite remote could not be read" in pruned.stderr
    assert _local(s) == [newer, older]


def test_remote_prune_never_counts_a_different_local_set_as_the_second_copy(tmp_path: Path) -> None:
    s, env, older, newer = _setup(tmp_path)
    s = replace(s, offsite=replace(s.offsite, daily=1, weekly=0))
    env = {**env, "INVOKE_STACKOPS_OFFSITE_DAILY": "1", "INVOKE_STACKOPS_OFFSITE_WEEKLY": "0"}
    offsite.push_missing(s, report=NullReporter())
    # the local folder of the older set now holds another set under the same name (re-sealed manifest)
    manifest = json.loads((s.env.backups_dir / older / MANIFEST).read_text())
    manifest["duration_s"] = 2.0
    (s.env.backups_dir / older / MANIFEST).write_text(json.dumps(seal(manifest)))
    later = datetime.now(UTC) + timedelta(days=3)
    plan, decisions, doomed = offsite.prune_remote_plan(s, now=later)
    assert doomed == set() and plan.nothing_to_do
    assert "only copy" in next(d for d in decisions if d.backup.id == older).reasons[-1]
    # --delete-only-copies: warned in the plan, and asked for even outside prod
    unconfirmed = _cli(env, "backup.prune-remote", "--delete-only-copies")
    one_line(unconfirmed, ProtectedEnvironment.exit_code)
    assert {r.id for r in offsite.remote_sets(s)[0]} == {older, newer}


def test_the_status_report_forecasts_the_prune_with_the_only_copy_rule(tmp_path: Path) -> None:
    """The report's "what the next prune keeps and drops" is what `backup.prune` does: before, it showed the
    never-pushed set as deleted (retention alone), so an operator reading it expected space that never came,
    or trusted a set to be offsite that was not."""
    from stackops.runtime.select import make_runtime
    from stackops.statusreport import gather

    s, _env, older, newer = _setup(tmp_path)
    rows = {r["id"]: r for r in gather(s, make_runtime(s)).retention}
    assert rows[older]["keep"] is True and "never pushed offsite" in rows[older]["reasons"]
    offsite.push_set(s, older, report=NullReporter())
    rows = {r["id"]: r for r in gather(s, make_runtime(s)).retention}
    assert rows[older]["keep"] is False and rows[newer]["keep"] is True


def _copies_left(s: Settings, backup_id: str) -> list[str]:
    """Where an intact copy of ``backup_id`` still is: "local" (complete in the backups folder) and/or
    "remote" (complete on the remote, and every file it lists there with its size)."""
    where = ["local"] if backup_id in {b.id for b in offsite.backupset.list_backups(s)} else []
    rs = next((r for r in offsite.remote_sets(s)[0] if r.id == backup_id), None)
    folder = Path(s.offsite.path) / s.env.name / backup_id
    if rs is not None and all((folder / n).is_file() and (folder / n).stat().st_size == e["size"]
                              for n, e in rs.index["files"].items()):
        where.append("remote")
    return where


def test_local_and_remote_prune_at_the_same_moment_never_delete_both_copies(tmp_path: Path) -> None:
    """The tester's race, made deterministic: `backup.prune --yes` and `backup.prune-remote --yes` both plan
    while the older set is in both places (each counts the other's copy as the second one); the remote
    prune then runs while the local prune holds the environment's lock, right after the local prune read
    the remote copies again and before it deletes. Before, prune-remote took no lock and deleted the remote
    copy while the local one was being deleted: the set was gone from both places."""
    s, env, older, newer = _setup(tmp_path)
    offsite.push_missing(s, report=NullReporter())
    _, _, remote_doomed = offsite.prune_remote_plan(s)
    local_plan, _ = retention.prune_plan(s, copies=lambda: offsite.copies(s))
    assert remote_doomed == {older} and local_plan.destroys == [f"backup {older}"]  # both would delete it

    during: list[subprocess.CompletedProcess[str]] = []

    def copies_then_the_other_prune() -> retention.Copies:
        seen = offsite.copies(s)  # what the local prune decides with, under its lock
        during.append(_cli(env, "backup.prune-remote", "--yes"))  # the other operator, at that very moment
        return seen

    retention.prune(s, report=NullReporter(), copies=copies_then_the_other_prune, confirmed={older})
    line = one_line(during[0], LockBusy.exit_code)
    assert "prune" in line and "holds" in line
    assert _copies_left(s, older) == ["remote"] and _copies_left(s, newer) == ["local", "remote"]

    # once the lock is free, prune-remote decides again: the remote copy is the only one now, kept
    again = _cli(env, "backup.prune-remote", "--yes")
    assert again.returncode == 0, again.stderr
    assert _copies_left(s, older) == ["remote"]


@pytest.mark.parametrize("only_copies", [False, True], ids=["default", "delete-only-copies"])
def test_remote_prune_keeps_a_set_whose_local_copy_went_since_its_plan_with_a_warning(
        tmp_path: Path, only_copies: bool) -> None:
    """The other order: prune-remote planned (the older set in both places), then a local prune deleted the
    local copy before prune-remote acted; under the lock it decides again and keeps what is now the only
    copy, saying so. Even --delete-only-copies deletes only the only copies its confirmed plan named."""
    s, env, older, newer = _setup(tmp_path)
    offsite.push_missing(s, report=NullReporter())
    _, decisions, doomed = offsite.prune_remote_plan(s, only_copies=only_copies)
    assert doomed == {older} and offsite.last_copies(decisions) == set()
    pruned = _cli(env, "backup.prune", "--yes")  # the other operator, between the plan and the deletion
    assert pruned.returncode == 0, pruned.stderr
    assert _copies_left(s, older) == ["remote"]
    report = NullReporter()
    deleted = offsite.prune_remote(s, doomed, report=report, only_copies=only_copies,
                                   confirmed_last=offsite.last_copies(decisions))
    assert deleted == [] and _copies_left(s, older) == ["remote"]
    assert any(line.startswith(f"!!  {older} has become the only copy since the plan") for line in report.lines)
    # a plan made now names it as an only copy; confirmed with --delete-only-copies, it goes
    _, decisions, doomed = offsite.prune_remote_plan(s, only_copies=True)
    assert doomed == {older} and offsite.last_copies(decisions) == {older}
    assert offsite.prune_remote(s, doomed, report=NullReporter(), only_copies=True,
                                confirmed_last=offsite.last_copies(decisions)) == [older]
    assert _copies_left(s, newer) == ["local", "remote"]
