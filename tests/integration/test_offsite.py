"""Offsite copies through a real SFTP server (sshd on loopback) and a local-path remote, with age
encryption: round trips byte-identical, damage and wrong keys refused, remote retention."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from stackops import offsite
from stackops.backup import create_backup
from stackops.backupset import list_backups
from stackops.config import Offsite, Settings
from stackops.errors import BackupCorrupt, IdentityError
from stackops.report import NullReporter
from tests.conftest import Fresh, cli_env, invoke_cli
from tests.integration.test_backup import add_uploads, content, populate, tree
from tests.offsite_support import Sftp, age_key, sftp_fixture  # noqa: F401  (the `sftp` fixture)

# offsite copies move backup sets, whatever runtime took them: the compose runtime's own paths (backup,
# restore through docker exec) are covered by the rest of the suite, so these run on the local runtime
pytestmark = [pytest.mark.integration, pytest.mark.local_runtime]


def with_remote(settings: Settings, remote: str, path: Path, **kw: object) -> Settings:
    return replace(settings, offsite=Offsite(remote=remote, path=str(path), **kw))  # type: ignore[arg-type]


def test_encrypted_round_trip_through_sftp_is_byte_identical(fresh: Fresh, sftp: Sftp, tmp_path: Path) -> None:
    key = age_key(tmp_path)
    up = fresh.settings.env.uploads_dir
    with fresh.connect() as conn:
        populate(conn, 300)
    add_uploads(up)
    before, files_before = content(fresh), tree(up)
    s = with_remote(fresh.settings, sftp.remote, sftp.folder, recipients=(key.recipient,))
    backup = create_backup(s, fresh.runtime, kind="full", report=NullReporter())

    started = time.monotonic()
    pushed = offsite.push_set(s, backup.id, report=NullReporter())
    push_s = time.monotonic() - started
    assert pushed.pushed and pushed.encrypted
    remote_dir = sftp.folder / s.env.name / backup.id
    names = sorted(p.name for p in remote_dir.iterdir())
    assert names == sorted([f"{n}.age" for n in backup.manifest["files"]] + ["manifest.json.age", "offsite.json"])
    for p in remote_dir.glob("*.age"):  # ciphertext: no plaintext of the set leaves the host
        assert p.read_bytes().startswith(b"age-encryption.org/v1")
    assert b"users" not in (remote_dir / "manifest.json.age").read_bytes()
    assert offsite.push_set(s, backup.id, report=NullReporter()).pushed is False  # idempotent

    env = {**cli_env(s), **sftp.env(), "INVOKE_STACKOPS_OFFSITE_RECIPIENTS": key.recipient,
           "INVOKE_STACKOPS_OFFSITE_IDENTITY_FILE": str(key.identity)}
    listed = invoke_cli("backup.list", "--env", "test", env=env)
    assert listed.returncode == 0, listed.stderr
    assert backup.id in listed.stdout and "both" in listed.stdout

    shutil.rmtree(backup.path)  # the host lost its copy
    with fresh.connect() as conn:
        conn.execute("DROP TABLE messages")
        conn.commit()
    shutil.rmtree(up / "org 1")
    listed = invoke_cli("backup.list", "--env", "test", env=env)
    assert [line.split()[-1] for line in listed.stdout.splitlines() if line.startswith(backup.id)] == ["remote"]

    started = time.monotonic()
    restored = invoke_cli("restore", backup.id, "--env", "test", env=env)
    restore_s = time.monotonic() - started
    assert restored.returncode == 0, restored.stderr
    assert content(fresh) == before
    assert tree(up) == files_before
    assert [b.id for b in list_backups(s)] == [backup.id]  # pulled back, checked, complete
    print(f"\noffsite over SFTP, age-encrypted: {pushed.bytes} bytes pushed (and read back) in {push_s:.1f}s; "
          f"pull + decrypt + restore in {restore_s:.1f}s")


def test_local_path_remote_round_trip_and_all_missing(fresh: Fresh, tmp_path: Path) -> None:
    with fresh.connect() as conn:
        populate(conn, 50)
    s = with_remote(fresh.settings, ":local:", tmp_path / "nas")
    first = create_backup(s, fresh.runtime, kind="db", report=NullReporter())
    second = create_backup(s, fresh.runtime, kind="db", report=NullReporter())
    results = offsite.push_missing(s, report=NullReporter())
    assert [r.id for r in results] == [first.id, second.id] and not any(r.encrypted for r in results)
    assert offsite.push_missing(s, report=NullReporter()) == []
    where, only_remote = offsite.locations(s)
    assert where == {first.id: "both", second.id: "both"} and only_remote == []
    manifest = (first.path / "manifest.json").read_bytes()
    shutil.rmtree(first.path)
    pulled = offsite.pull_set(s, first.id, report=NullReporter())
    assert pulled.pulled and (first.path / "manifest.json").read_bytes() == manifest
    assert {b.id for b in list_backups(s)} == {first.id, second.id}


@pytest.mark.parametrize("encrypted", [True, False])
def test_a_flipped_byte_on_the_remote_is_refused(fresh: Fresh, sftp: Sftp, tmp_path: Path, encrypted: bool) -> None:
    key = age_key(tmp_path)
    with fresh.connect() as conn:
        populate(conn, 50)
    s = with_remote(fresh.settings, sftp.remote, sftp.folder, recipients=(key.recipient,) if encrypted else (),
                    identity_file=key.identity)
    backup = create_backup(s, fresh.runtime, kind="db", report=NullReporter())
    offsite.push_set(s, backup.id, report=NullReporter())
    shutil.rmtree(backup.path)
    dump = next((sftp.folder / s.env.name / backup.id).glob("database.dump*"))
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0x01
    dump.write_bytes(bytes(data))
    with pytest.raises(BackupCorrupt, match="damaged"):
        offsite.pull_set(s, backup.id, report=NullReporter())
    assert sorted(os.listdir(s.env.backups_dir)) == [".lock"]  # nothing local was touched or left

    env = {**cli_env(s), **sftp.env(), "INVOKE_STACKOPS_OFFSITE_IDENTITY_FILE": str(key.identity)}
    refused = invoke_cli("restore", backup.id, "--env", "test", env=env)
    assert refused.returncode == BackupCorrupt.exit_code
    errors = [line for line in refused.stderr.splitlines() if line.startswith("stackops: ")]
    assert len(errors) == 1 and refused.stderr.splitlines()[-1] == errors[0] and "damaged" in errors[0]


def test_wrong_or_missing_identity_is_refused_in_one_line(fresh: Fresh, sftp: Sftp, tmp_path: Path) -> None:
    key, other = age_key(tmp_path, "right"), age_key(tmp_path, "wrong")
    with fresh.connect() as conn:
        populate(conn, 20)
    s = with_remote(fresh.settings, sftp.remote, sftp.folder, recipients=(key.recipient,))
    backup = create_backup(s, fresh.runtime, kind="db", report=NullReporter())
    offsite.push_set(s, backup.id, report=NullReporter())
    shutil.rmtree(backup.path)
    env = {**cli_env(s), **sftp.env()}
    for extra in ({}, {"INVOKE_STACKOPS_OFFSITE_IDENTITY_FILE": str(other.identity)},
                  {"INVOKE_STACKOPS_OFFSITE_IDENTITY_FILE": str(tmp_path / "absent.txt")}):
        refused = invoke_cli("backup.pull", backup.id, "--env", "test", env={**env, **extra})
        assert refused.returncode == IdentityError.exit_code, refused.stderr
        assert refused.stderr.count("\n") == 1 and "nothing was touched" in refused.stderr
        assert sorted(os.listdir(s.env.backups_dir)) == [".lock"]
    # an ssh-style or unreadable identity is only found wrong by age itself: still refused, nothing left
    (tmp_path / "garbage.txt").write_text("AGE-SECRET-KEY-1NOTAKEY\n")
    with pytest.raises(IdentityError):
        offsite.pull_set(s, backup.id, report=NullReporter(), identity=other.identity)
    ok = invoke_cli("backup.pull", backup.id, "--env", "test", "--identity", str(key.identity), env=env)
    assert ok.returncode == 0, ok.stderr
    assert [b.id for b in list_backups(s)] == [backup.id]


def test_remote_retention_has_its_own_plan_and_keeps_only_copies(fresh: Fresh, tmp_path: Path) -> None:
    with fresh.connect() as conn:
        populate(conn, 10)
    s = with_remote(fresh.settings, ":local:", tmp_path / "nas", daily=1, weekly=0)
    sets = [create_backup(s, fresh.runtime, kind="db", report=NullReporter()) for _ in range(3)]
    offsite.push_missing(s, report=NullReporter())
    oldest, middle, newest = sets
    shutil.rmtree(oldest.path)  # only the remote holds the oldest now
    later = datetime.now(UTC) + timedelta(days=3)
    plan, decisions, doomed = offsite.prune_remote_plan(s, now=later)
    assert doomed == {middle.id}  # newest is kept (newest complete), oldest is an only copy
    keep = {d.backup.id: d for d in decisions}
    assert keep[oldest.id].keep and "only copy" in keep[oldest.id].reasons[-1]
    assert plan.destroys == [f"offsite backup {middle.id}"] and not plan.warnings
    plan, _, doomed = offsite.prune_remote_plan(s, now=later, only_copies=True)
    assert doomed == {middle.id, oldest.id} and plan.warnings == [
        f"{oldest.id} exists only on the remote: deleting it deletes its last copy"]

    env = {**cli_env(s), "INVOKE_STACKOPS_OFFSITE_REMOTE": ":local:",
           "INVOKE_STACKOPS_OFFSITE_PATH": str(tmp_path / "nas"), "INVOKE_STACKOPS_OFFSITE_DAILY": "1",
           "INVOKE_STACKOPS_OFFSITE_WEEKLY": "0"}
    dry = invoke_cli("backup.prune-remote", "--env", "test", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert f"would delete {middle.id} " in dry.stdout and f"would delete {oldest.id} " not in dry.stdout  # plan first
    assert {r.id for r in offsite.remote_sets(s)[0]} == {oldest.id, middle.id, newest.id}
    done = invoke_cli("backup.prune-remote", "--env", "test", env=env)
    assert done.returncode == 0, done.stderr
    assert {r.id for r in offsite.remote_sets(s)[0]} == {oldest.id, newest.id}
    assert not (tmp_path / "nas" / s.env.name / middle.id).exists()
    dry = invoke_cli("backup.prune-remote", "--env", "test", "--dry-run", "--delete-only-copies", env=env)
    assert f"would delete {oldest.id}" in dry.stdout and "its last copy" in dry.stdout
    assert offsite.prune_remote(s, {newest.id}, report=NullReporter(), only_copies=True) == []  # not in the plan


def test_check_reports_the_newest_offsite_copy_age(fresh: Fresh, tmp_path: Path) -> None:
    from stackops.deploycheck import check_deployment

    s = with_remote(fresh.settings, ":local:", tmp_path / "nas")

    def offsite_row(now: datetime | None = None) -> tuple[bool, str]:
        rows = [c for c in check_deployment(s, fresh.runtime, report=NullReporter(), now=now).checks
                if c.name == "newest offsite copy"]
        assert len(rows) == 1
        return rows[0].ok, rows[0].detail

    ok, detail = offsite_row()
    assert not ok and "no complete set" in detail
    create_backup(s, fresh.runtime, kind="db", report=NullReporter())
    offsite.push_missing(s, report=NullReporter())
    assert offsite_row()[0]
    stale, detail = offsite_row(datetime.now(UTC) + timedelta(hours=30))
    assert not stale and "policy" in detail
