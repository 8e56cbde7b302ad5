"""What an adversarial operator found and what now holds: a truncated newest backup never makes
retention delete the good ones; a link out of the uploads never makes a backup that verifies but
cannot be restored; a killed restore's staging folder is listed and cleaned; odd names beside the
uploads are never offered for deletion; a full backups disk does not stop prune; a re-sealed,
malformed manifest marks one backup damaged instead of breaking every command; bad flags are one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stackops.backup import create_backup
from stackops.backupset import MANIFEST, list_backups, read_manifest, scan, seal
from stackops.errors import BackupNotFound, UsageError
from stackops.report import NullReporter
from stackops.restore import clean, clean_plan, drop_previous_plan, previous_copies, restore_database
from stackops.retention import prune
from stackops.verify import verify_backup
from tests.conftest import ROOT, Fresh, cli_env
from tests.faults.backup_helpers import one_line, run_cli, tmpfs
from tests.faults.conftest import add_uploads, fingerprint, populate

pytestmark = pytest.mark.integration


def test_a_truncated_newest_backup_never_makes_prune_delete_the_good_ones(fresh: Fresh) -> None:
    populate(fresh)
    add_uploads(fresh.settings.env.uploads_dir)
    older, good, broken = (create_backup(fresh.settings, fresh.runtime, kind="full", report=NullReporter())
                           for _ in range(3))
    dump = broken.file("database")
    assert dump is not None
    with dump.open("r+b") as f:
        f.truncate(100)
    sets, damaged = scan(fresh.settings)
    assert [d.id for d in damaged] == [broken.id] and "truncated" in damaged[0].reason
    assert broken.id not in {b.id for b in sets}
    decisions = prune(fresh.settings, report=NullReporter())
    assert {d.backup.id for d in decisions if not d.keep} == {older.id}
    assert {b.id for b in list_backups(fresh.settings)} == {good.id}  # the newest intact full backup is kept
    assert broken.path.is_dir()  # a damaged set is shown, never judged nor deleted by retention
    before = fingerprint(fresh)
    with fresh.connect() as conn:
        conn.execute("TRUNCATE users CASCADE")
    restore_database(fresh.settings, fresh.runtime, "latest", report=NullReporter(), uploads=True)
    assert fingerprint(fresh).rows == before.rows  # `latest` is the intact one


def test_a_bit_flip_in_the_newest_backup_never_makes_prune_delete_the_intact_one_it_supersedes(fresh: Fresh) -> None:
    """Same size, one byte flipped: the listing (sizes only) calls it whole, and it holds the day's slot. Before,
    prune deleted the older, intact set of that day, leaving only the damaged one (whose verification.json
    still said "verified"). Now each set that stands in for a deleted one is hashed first."""
    populate(fresh)
    older, newer = (create_backup(fresh.settings, fresh.runtime, kind="db", report=NullReporter()) for _ in range(2))
    verify_backup(fresh.settings, fresh.runtime, newer.id, report=NullReporter())
    dump = newer.file("database")
    assert dump is not None
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0x01
    dump.write_bytes(bytes(data))
    assert {b.id for b in list_backups(fresh.settings)} == {older.id, newer.id}  # sizes match: listed as whole
    proc = run_cli(fresh.settings, "backup.prune", "--yes")
    assert proc.returncode == 0, proc.stderr
    assert f"{newer.id} is damaged" in proc.stderr, proc.stderr
    assert older.path.is_dir() and newer.path.is_dir()  # the intact one kept; the damaged one shown, not judged
    before = fingerprint(fresh)
    with fresh.connect() as conn:
        conn.execute("TRUNCATE users CASCADE")
    restore_database(fresh.settings, fresh.runtime, older.id, report=NullReporter())
    assert fingerprint(fresh).rows == before.rows


def test_a_link_out_of_the_uploads_is_left_out_so_a_verified_backup_restores(fresh: Fresh, tmp_path: Path) -> None:
    populate(fresh)
    up = fresh.settings.env.uploads_dir
    add_uploads(up)
    (tmp_path / "outside").mkdir()
    (up / "abs_link").symlink_to("/etc/hostname")
    (up / "org 1" / "climb").symlink_to("../../../outside")
    (up / "inside").symlink_to("org 1/report.pdf")  # a link that stays inside is kept
    report = NullReporter()
    made = create_backup(fresh.settings, fresh.runtime, kind="full", report=report)
    assert sum("outside the uploads folder" in line for line in report.lines) == 2
    assert verify_backup(fresh.settings, fresh.runtime, made.id, report=NullReporter()).ok
    result = restore_database(fresh.settings, fresh.runtime, made.id, report=NullReporter(), uploads=True)
    assert result.previous_uploads is not None
    assert (up / "inside").is_symlink() and not (up / "abs_link").exists() and not (up / "org 1" / "climb").exists()


def test_a_killed_restores_staging_folder_is_listed_and_cleaned_and_odd_names_are_never_offered(
        fresh: Fresh) -> None:
    up = fresh.settings.env.uploads_dir
    staging = up.with_name(f"{up.name}.restoring-20260101000000")
    staging.mkdir()
    (staging / "half.bin").write_bytes(b"x" * 1000)
    odd_link = up.with_name(f"{up.name}_pre_restore_20260101000000")
    odd_link.symlink_to("/etc")
    odd_file = up.with_name(f"{up.name}_pre_restore_20260101000001")
    odd_file.write_text("not ours")
    copies = {c["name"]: c["kind"] for c in previous_copies(fresh.settings, fresh.runtime)}
    assert copies == {str(staging): "interrupted uploads"}
    for odd in (odd_link, odd_file):
        with pytest.raises(BackupNotFound):
            drop_previous_plan(fresh.settings, fresh.runtime, str(odd))
    plan, names = clean_plan(fresh.settings, fresh.runtime)
    assert names == [str(staging)] and not plan.nothing_to_do
    clean(fresh.settings, fresh.runtime, names, NullReporter())
    assert not staging.exists() and odd_link.is_symlink() and odd_file.is_file()
    assert Path("/etc/hostname").exists()


def test_a_full_backups_disk_does_not_stop_prune_or_list(fresh: Fresh, tmp_path: Path) -> None:
    populate(fresh)
    with tmpfs(fresh.settings.env.backups_dir, "4m") as folder:
        for _ in range(2):
            create_backup(fresh.settings, fresh.runtime, kind="db", report=NullReporter())
        filler = folder / ".filler"
        with filler.open("wb") as f, pytest.raises(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        (folder / ".lock").unlink(missing_ok=True)  # its holder line needs a block, now there is none
        listed = run_cli(fresh.settings, "backup.list", "--json")
        assert listed.returncode == 0, listed.stderr
        pruned = run_cli(fresh.settings, "backup.prune", "--yes")
        assert pruned.returncode == 0, pruned.stderr
        assert len(list_backups(fresh.settings)) == 1


@pytest.mark.parametrize("edit", ["drop started_at", "started_at not a date", "started_at without zone",
                                  "unknown kind", "file entry without size"])
def test_a_resealed_malformed_manifest_marks_only_that_backup_damaged(fresh: Fresh, edit: str) -> None:
    populate(fresh)
    good = create_backup(fresh.settings, fresh.runtime, kind="db", report=NullReporter())
    bad = create_backup(fresh.settings, fresh.runtime, kind="db", report=NullReporter())
    manifest = read_manifest(bad.path)
    if edit == "drop started_at":
        del manifest["started_at"]
    elif edit == "started_at not a date":
        manifest["started_at"] = "not a date"
    elif edit == "started_at without zone":
        manifest["started_at"] = "2026-11-30T00:00:00"
    elif edit == "unknown kind":
        manifest["kind"] = "weird"
    else:
        next(iter(manifest["files"].values())).pop("size")
    (bad.path / MANIFEST).write_text(json.dumps(seal(manifest)))  # anyone can re-seal: the checksum has no key
    sets, damaged = scan(fresh.settings)
    assert [b.id for b in sets] == [good.id] and [d.id for d in damaged] == [bad.id]
    assert "malformed" in damaged[0].reason
    listed = run_cli(fresh.settings, "backup.list")
    assert listed.returncode == 0 and "DAMAGED" in listed.stdout, listed.stderr
    assert prune(fresh.settings, report=NullReporter())  # judges the good one, ignores the damaged one


def test_bad_flags_are_one_line_with_the_usage_exit_code(fresh: Fresh) -> None:
    for args in (["db.seed", "--scale", "abc"], ["db.seed", "--scale", "0"], ["db.seed", "--scale", "-1"]):
        one_line(run_cli(fresh.settings, *args), UsageError.exit_code)


def test_an_empty_env_name_is_refused_not_taken_for_dev(fresh: Fresh) -> None:
    proc = subprocess.run([sys.executable, "-m", "invoke", "env.status", "--env", ""], cwd=ROOT,
                          env=cli_env(fresh.settings), capture_output=True, text=True, timeout=120)
    line = one_line(proc, UsageError.exit_code)
    assert "--env is empty" in line


def test_a_closed_pipe_ends_a_listing_quietly(fresh: Fresh) -> None:
    populate(fresh)
    for _ in range(3):
        create_backup(fresh.settings, fresh.runtime, kind="db", report=NullReporter())
    shell = subprocess.run(["bash", "-c", "set -o pipefail; python3 -m invoke backup.list --env test | head -1"],
                           cwd=ROOT, env=cli_env(fresh.settings), capture_output=True, text=True, timeout=120)
    assert "Traceback" not in shell.stderr and "BrokenPipe" not in shell.stderr, shell.stderr
