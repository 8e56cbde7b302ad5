"""A hostile operator, remote or machine against the offsite copies: a re-sealed remote index naming a
path outside the set, credentials in a connection string, an identity file others can read, a disk
that fills during a pull, two pushes at once, a remote that is down while the backups are listed.
Real rclone (local-path remote, or sshd on loopback), real age; the sets are sealed sets with real
files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from stackops import offsite
from stackops.config import Offsite, Settings
from stackops.errors import BackupCorrupt, IdentityError, LockBusy, OffsiteError, StorageFull
from stackops.lock import env_lock
from stackops.report import NullReporter
from tests.conftest import ROOT, make_settings
from tests.faults.backup_helpers import one_line, tmpfs
from tests.faults.conftest import wait_for
from tests.offsite_support import Sftp, age_key, fake_set, offsite_env, sftp_fixture  # noqa: F401

BACKUP = "db_20261130T000000Z"


def _settings(backups: Path, remote: str, remote_path: Path, **kw: object) -> Settings:
    s = make_settings("test", backups_dir=str(backups), runtime="local", state_dir=str(backups.parent / "stack"))
    return replace(s, offsite=Offsite(remote=remote, path=str(remote_path), **kw))  # type: ignore[arg-type]


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", *args, "--env", "test"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def _pushed(tmp_path: Path, payload: bytes = b"", **kw: object) -> tuple[Settings, Path]:
    """A set pushed to a local-path remote from a host that then lost it; settings of the host that pulls."""
    src = tmp_path / "src"
    fake_set(src, BACKUP, datetime.now(UTC) - timedelta(hours=1), payload=payload)
    offsite.push_set(_settings(src, ":local:", tmp_path / "nas", **kw), BACKUP, report=NullReporter())
    shutil.rmtree(src)
    return _settings(tmp_path / "backups", ":local:", tmp_path / "nas", **kw), tmp_path / "nas" / "test" / BACKUP


def _local(s: Settings) -> list[str]:
    return sorted(os.listdir(s.env.backups_dir)) if s.env.backups_dir.exists() else []


def test_a_resealed_remote_index_naming_a_path_outside_the_set_is_refused(tmp_path: Path) -> None:
    s, remote = _pushed(tmp_path)
    index = json.loads((remote / "offsite.json").read_text())
    index["files"]["database.dump.zst"]["source"] = "../../../escaped"  # would land in tmp_path
    (remote / "offsite.json").write_text(json.dumps(offsite.seal_index(index)))
    refused = _cli(offsite_env(s.env.backups_dir, tmp_path / "stack", ":local:", tmp_path / "nas"),
                   "backup.pull", BACKUP)
    line = one_line(refused, BackupCorrupt.exit_code)
    assert "damaged index" in line
    with pytest.raises(BackupCorrupt, match="not a plain name inside the set"):
        offsite.parse_index((remote / "offsite.json").read_bytes(), "offsite.json")
    assert not (tmp_path / "escaped").exists()
    assert [p for p in _local(s) if p != ".lock"] == []
    assert offsite.remote_sets(s) == ([], [BACKUP])  # never listed as a complete set


def test_a_connection_strings_credentials_never_reach_argv_output_or_the_index(tmp_path: Path, sftp: Sftp) -> None:
    obscured = subprocess.run(["rclone", "obscure", "hunter2-offsite-password"], capture_output=True, text=True,
                              check=True).stdout.strip()
    remote = sftp.remote[:-1] + f",pass={obscured}:"
    # every rclone stackops starts writes its argv here first (then it is the real rclone)
    bin_dir, argv_log = tmp_path / "bin", tmp_path / "rclone-argv.log"
    bin_dir.mkdir()
    real = shutil.which("rclone")
    (bin_dir / "rclone").write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {argv_log}\nexec {real} "$@"\n')
    (bin_dir / "rclone").chmod(0o755)
    src = tmp_path / "backups"
    fake_set(src, BACKUP, datetime.now(UTC) - timedelta(hours=1))
    env = {**offsite_env(src, tmp_path / "stack", remote, sftp.folder), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    pushed = _cli(env, "backup.push", "--backup", BACKUP)
    assert pushed.returncode == 0, pushed.stderr
    listed = _cli(env, "backup.list")
    assert listed.returncode == 0 and "both" in listed.stdout
    down = _cli({**env, "INVOKE_STACKOPS_OFFSITE_REMOTE": remote.replace(f"port={sftp.port}", "port=1")},
                "backup.push", "--backup", BACKUP)
    one_line(down, OffsiteError.exit_code)
    seen = [argv_log.read_text(), pushed.stdout, pushed.stderr, listed.stdout, listed.stderr, down.stderr,
            *(p.read_text(errors="replace") for p in (sftp.folder / "test" / BACKUP).iterdir())]
    assert argv_log.read_text().count("\n") >= 4  # rclone did run, through the wrapper
    for text in seen:
        assert obscured not in text and "hunter2" not in text and "key_file" not in text


def test_a_world_readable_identity_is_warned_about_and_still_opens_the_set(tmp_path: Path) -> None:
    key = age_key(tmp_path)
    s, _ = _pushed(tmp_path, recipients=(key.recipient,))
    os.chmod(key.identity, 0o644)
    env = offsite_env(s.env.backups_dir, tmp_path / "stack", ":local:", tmp_path / "nas",
                      identity_file=str(key.identity))
    pulled = _cli(env, "backup.pull", BACKUP)
    assert pulled.returncode == 0, pulled.stderr
    assert f"the age identity {key.identity} can be read by other users (mode 644)" in pulled.stderr
    assert f"chmod 600 {key.identity}" in pulled.stderr
    assert BACKUP in _local(s)


@pytest.mark.parametrize("encrypted", [False, True])
def test_disk_full_during_a_pull_keeps_nothing_and_says_so(tmp_path: Path, encrypted: bool) -> None:
    key = age_key(tmp_path)
    kw = {"recipients": (key.recipient,)} if encrypted else {}
    # plain: the download itself does not fit; encrypted: the download fits, its decryption does not
    s, _ = _pushed(tmp_path, payload=os.urandom((1200 if encrypted else 3000) << 10), **kw)
    env = offsite_env(s.env.backups_dir, tmp_path / "stack", ":local:", tmp_path / "nas",
                      identity_file=str(key.identity))
    with tmpfs(s.env.backups_dir, "2m"):
        full = _cli(env, "backup.pull", BACKUP)
        line = one_line(full, StorageFull.exit_code)
        assert "filesystem is full" in line and "nothing else was touched" in line
        assert _local(s) == [".lock"]  # the partial download and staging are gone
    pulled = _cli(env, "backup.pull", BACKUP)  # room again: the same pull works
    assert pulled.returncode == 0, pulled.stderr


def test_two_pushes_at_once_one_is_refused_and_the_remote_is_untouched(tmp_path: Path) -> None:
    src = tmp_path / "backups"
    fake_set(src, BACKUP, datetime.now(UTC) - timedelta(hours=1))
    env = offsite_env(src, tmp_path / "stack", ":local:", tmp_path / "nas")
    with env_lock(src, "push of another set (pid of a test)"):
        busy = _cli(env, "backup.push", "--backup", BACKUP)
        one_line(busy, LockBusy.exit_code)
        assert not (tmp_path / "nas" / "test").exists() or not os.listdir(tmp_path / "nas" / "test")
    again = _cli(env, "backup.push", "--all-missing")
    assert again.returncode == 0, again.stderr
    assert [r.id for r in offsite.remote_sets(_settings(src, ":local:", tmp_path / "nas"))[0]] == [BACKUP]


def test_backup_list_still_lists_the_local_sets_when_the_remote_is_down(tmp_path: Path) -> None:
    src = tmp_path / "backups"
    fake_set(src, BACKUP, datetime.now(UTC) - timedelta(hours=1))
    env = offsite_env(src, tmp_path / "stack", ":sftp,host=127.0.0.1,port=1,user=nobody:", tmp_path / "nas")
    listed = _cli(env, "backup.list")  # nothing listens on port 1: the remote is down
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[0] for line in listed.stdout.splitlines()[2:] if line.strip()] == [BACKUP]
    warnings = [line for line in listed.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "local backups folder only" in warnings[0]


def test_the_sftp_server_going_down_mid_push_leaves_no_complete_set_and_the_next_push_completes(
        tmp_path: Path, sftp: Sftp) -> None:
    src = tmp_path / "backups"
    fake_set(src, BACKUP, datetime.now(UTC) - timedelta(hours=1), payload=os.urandom(6 << 20))
    s = _settings(src, sftp.remote, sftp.folder)
    env = {**offsite_env(src, tmp_path / "stack", sftp.remote, sftp.folder), "RCLONE_BWLIMIT": "1M"}
    push = subprocess.Popen([sys.executable, "-m", "invoke", "backup.push", "--backup", BACKUP, "--env", "test"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    upload = sftp.folder / "test" / f".tmp-{BACKUP}"
    wait_for(lambda: push.poll() is None and upload.is_dir()
             and sum(p.stat().st_size for p in upload.iterdir()) > 0)  # some bytes are on the remote
    sftp.stop()  # the server dies with the transfer open
    _, err = push.communicate(timeout=120)
    assert push.returncode == OffsiteError.exit_code and err.strip().splitlines()[-1].startswith("stackops: "), err
    assert "Traceback" not in err
    listed = _cli(env, "backup.list")  # the remote down: the local set is still listed
    assert listed.returncode == 0 and listed.stdout.count(BACKUP) == 1, listed.stderr
    assert not (sftp.folder / "test" / BACKUP).exists()  # nothing under the set's own name

    sftp.start()
    assert offsite.remote_sets(s) == ([], [])  # the upload folder is never listed as a set
    again = _cli({k: v for k, v in env.items() if k != "RCLONE_BWLIMIT"}, "backup.push", "--all-missing")
    assert again.returncode == 0, again.stderr
    assert [r.id for r in offsite.remote_sets(s)[0]] == [BACKUP]
    assert sorted(os.listdir(sftp.folder / "test")) == [BACKUP]  # the stale upload is gone


def test_another_hosts_set_of_the_same_id_on_the_remote_is_never_overwritten_nor_taken_for_this_one(
        tmp_path: Path) -> None:
    started = datetime.now(UTC) - timedelta(hours=1)
    fake_set(tmp_path / "host-a", BACKUP, started)
    offsite.push_set(_settings(tmp_path / "host-a", ":local:", tmp_path / "nas"), BACKUP, report=NullReporter())
    index = (tmp_path / "nas" / "test" / BACKUP / "offsite.json").read_bytes()
    fake_set(tmp_path / "backups", BACKUP, started)  # host b: same name, other bytes, same remote folder
    env = offsite_env(tmp_path / "backups", tmp_path / "stack", ":local:", tmp_path / "nas")
    for args in (("--backup", BACKUP), ("--all-missing",)):
        refused = _cli(env, "backup.push", *args)
        line = one_line(refused, OffsiteError.exit_code)
        assert "is not this one" in line and "this set is not offsite" in line
    assert (tmp_path / "nas" / "test" / BACKUP / "offsite.json").read_bytes() == index  # host a's copy intact


def test_pull_over_a_damaged_local_copy_refuses_then_replace_keeps_it_aside(tmp_path: Path) -> None:
    """The tester's `truncate -s -10 backups/<env>/<id>/database.dump.zst`: `backup.pull <id>` said "already
    local" (exit 0) and the intact remote copy could not be brought back. Now it refuses in one line saying
    how; `--replace` checks the remote copy first and keeps the damaged folder under another name."""
    backups, nas = tmp_path / "backups", tmp_path / "nas"
    s = _settings(backups, ":local:", nas)
    fake_set(backups, BACKUP, datetime.now(UTC) - timedelta(hours=1))
    offsite.push_set(s, BACKUP, report=NullReporter())
    dump = backups / BACKUP / "database.dump.zst"
    whole = dump.read_bytes()
    os.truncate(dump, len(whole) - 10)
    env = offsite_env(backups, tmp_path / "stack", ":local:", nas)

    def names() -> list[str]:
        return [p for p in _local(s) if not p.startswith(".")]

    refused = _cli(env, "backup.pull", BACKUP)
    line = one_line(refused, BackupCorrupt.exit_code)
    assert f"the local copy of {BACKUP} is damaged" in line and "truncated" in line
    assert f"backup.pull {BACKUP} --replace" in line
    assert names() == [BACKUP] and dump.read_bytes() == whole[:-10]  # nothing touched

    # --replace with a remote copy that is damaged too: refused, the local folder stays where it was
    remote_dump = nas / "test" / BACKUP / "database.dump.zst"
    remote_whole = remote_dump.read_bytes()
    remote_dump.write_bytes(bytes([remote_whole[0] ^ 1]) + remote_whole[1:])
    one_line(_cli(env, "backup.pull", BACKUP, "--replace"), BackupCorrupt.exit_code)
    assert names() == [BACKUP] and dump.read_bytes() == whole[:-10]

    remote_dump.write_bytes(remote_whole)
    replaced = _cli(env, "backup.pull", BACKUP, "--replace")
    assert replaced.returncode == 0, replaced.stderr
    assert f"{BACKUP}: pulled" in replaced.stdout
    kept = [p for p in names() if p != BACKUP]
    assert len(kept) == 1 and kept[0].startswith(f"{BACKUP}.damaged-") and kept[0] in replaced.stderr
    assert (backups / kept[0] / "database.dump.zst").read_bytes() == whole[:-10]  # kept, never deleted
    assert dump.read_bytes() == whole
    assert [b.id for b in offsite.backupset.list_backups(s)] == [BACKUP]
    again = _cli(env, "backup.pull", BACKUP)
    assert again.returncode == 0 and f"{BACKUP}: already local" in again.stdout


def test_an_encrypted_push_on_a_nearly_full_disk_is_storage_full_in_one_line(tmp_path: Path) -> None:
    """The tester's `backup.push` with recipients and the backups filesystem nearly full: age's last line
    (a link to its issue tracker) came out as `stackops: /usr/bin/age exited with 1: ...` (exit 1). Now it is
    StorageFull naming the filesystem, with the staging removed and nothing on the remote."""
    backups, nas = tmp_path / "backups", tmp_path / "nas"
    key = age_key(tmp_path)
    env = offsite_env(backups, tmp_path / "stack", ":local:", nas, recipients=key.recipient)
    s = _settings(backups, ":local:", nas, recipients=(key.recipient,))
    with tmpfs(backups, "2m"):
        fake_set(backups, BACKUP, datetime.now(UTC) - timedelta(hours=1), payload=os.urandom(600_000))
        filler = backups / ".filler"
        filler.write_bytes(os.urandom(1_000_000))  # the encrypted copy (as big as the set) does not fit beside
        refused = _cli(env, "backup.push")
        line = one_line(refused, StorageFull.exit_code)
        assert f"filesystem ({backups}," in line and "is full while staging" in line
        assert "the staging was removed and nothing was pushed" in line and "exited with" not in line
        assert [p for p in _local(s) if p not in (".lock", ".filler")] == [BACKUP]  # no staging left
        offsite.backupset.check_files(offsite.backupset.find_backup(s, BACKUP))  # the set untouched
        assert offsite.remote_sets(s) == ([], [])
        filler.unlink()  # space given back: the same push goes through
        pushed = _cli(env, "backup.push")
        assert pushed.returncode == 0, pushed.stderr
        assert [r.id for r in offsite.remote_sets(s)[0]] == [BACKUP]


def test_restore_dry_run_of_a_remote_only_encrypted_set_without_identity_fails_as_the_real_run(tmp_path: Path) -> None:
    """The tester's `restore.db <remote-only encrypted id> --dry-run` with no identity configured said the set
    "would be pulled ... and then restored" (exit 0) while the real run fails with exit 21: the dry run now
    checks the identity first, the same way."""
    key = age_key(tmp_path)
    s, _ = _pushed(tmp_path, recipients=(key.recipient,))
    env = offsite_env(s.env.backups_dir, tmp_path / "stack", ":local:", tmp_path / "nas")
    dry = _cli(env, "restore.db", BACKUP, "--dry-run")
    real = _cli(env, "restore.db", BACKUP, "--yes")
    assert dry.returncode == IdentityError.exit_code, dry.stdout  # before: 0 and "it would be pulled ..."
    line = one_line(dry, IdentityError.exit_code)
    assert line == one_line(real, IdentityError.exit_code)
    assert "no identity file is configured" in line and "would be pulled" not in dry.stdout
    assert [p for p in _local(s) if p != ".lock"] == []  # nothing pulled, nothing touched
    # another host's identity: refused by the dry run too; the right one: the plan as before
    other = age_key(tmp_path, "other")
    wrong = _cli({**env, "INVOKE_STACKOPS_OFFSITE_IDENTITY_FILE": str(other.identity)}, "restore.db", BACKUP,
                 "--dry-run")
    assert "is not one of them" in one_line(wrong, IdentityError.exit_code)
    ok = _cli({**env, "INVOKE_STACKOPS_OFFSITE_IDENTITY_FILE": str(key.identity)}, "restore.db", BACKUP, "--dry-run")
    assert ok.returncode == 0, ok.stderr
    assert f"dry run: {BACKUP} exists only offsite: it would be pulled" in ok.stdout
