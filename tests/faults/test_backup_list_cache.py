"""Issue 12: `backup.list` keeps the listed fields of unchanged manifests in `.list-cache.json`. The cache
must never make a changed or damaged set look whole: a manifest edited in place with its mtime put back
is read again (its ctime moved), a data file truncated behind a cached manifest is still DAMAGED, and a
corrupt or hostile cache file is ignored and replaced, never followed through a link."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from stackops import backupset
from stackops.backup import create_backup
from stackops.backupset import LIST_CACHE, LIST_CACHE_FORMAT, MANIFEST, BackupSet, find_backup, scan
from stackops.cli.backup import print_list
from stackops.errors import BackupCorrupt
from stackops.report import NullReporter
from tests.conftest import Fresh
from tests.faults.backup_helpers import populate

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def no_racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cache manifests written a moment ago too (the 2 s "racily clean" window would otherwise keep a
    just-taken backup out of the cache and the test would prove nothing)."""
    monkeypatch.setattr(backupset, "RACY_NS", -(10**12))


def _shown(fresh: Fresh, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    print_list(fresh.settings)
    rows = capsys.readouterr().out.splitlines()[2:]
    return {row.split()[0]: row for row in rows}


def _cached(fresh: Fresh) -> dict[str, object]:
    data = json.loads((fresh.settings.env.backups_dir / LIST_CACHE).read_text())
    assert data["format"] == LIST_CACHE_FORMAT
    return dict(data["sets"])


def _edit_in_place_keeping_mtime(path: Path) -> None:
    """Change one digit of ``duration_s`` in place (same inode, same size) and put the mtime back."""
    before = path.stat()
    data = bytearray(path.read_bytes())
    at = data.index(b'"duration_s": ') + len(b'"duration_s": ')
    data[at] = ord("1") if data[at] != ord("1") else ord("2")
    time.sleep(0.02)  # let the clock pass a timestamp tick, so that the kernel's ctime moves
    with path.open("r+b") as f:
        f.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    assert after.st_ctime_ns != before.st_ctime_ns  # the one part of the key an edit cannot put back


def test_a_manifest_edited_in_place_with_its_mtime_put_back_is_read_again(
        fresh: Fresh, capsys: pytest.CaptureFixture[str]) -> None:
    populate(fresh)
    good = create_backup(fresh.settings, fresh.runtime, kind="db", report=NullReporter())
    edited = create_backup(fresh.settings, fresh.runtime, kind="db", report=NullReporter())
    shown = _shown(fresh, capsys)
    assert "DAMAGED" not in shown[good.id] and "DAMAGED" not in shown[edited.id]
    assert set(_cached(fresh)) == {good.id, edited.id}  # both listings now come from the cache

    _edit_in_place_keeping_mtime(edited.path / MANIFEST)

    shown = _shown(fresh, capsys)
    assert "DAMAGED" in shown[edited.id] and "was modified after the backup was written" in shown[edited.id]
    assert "DAMAGED" not in shown[good.id]
    sets, damaged = scan(fresh.settings, listing=True)
    assert [b.id for b in sets] == [good.id] and [d.id for d in damaged] == [edited.id]
    assert set(_cached(fresh)) == {good.id}  # the stale entry is gone, not kept beside the damage
    with pytest.raises(BackupCorrupt):
        find_backup(fresh.settings, edited.id)


def test_a_truncated_file_behind_a_cached_manifest_is_still_damaged(
        fresh: Fresh, capsys: pytest.CaptureFixture[str]) -> None:
    populate(fresh)
    b = create_backup(fresh.settings, fresh.runtime, kind="db", report=NullReporter())
    assert "DAMAGED" not in _shown(fresh, capsys)[b.id]
    assert b.id in _cached(fresh)
    dump = b.file("database")
    assert dump is not None
    os.truncate(dump, dump.stat().st_size // 2)

    row = _shown(fresh, capsys)[b.id]
    assert "DAMAGED" in row and "truncated or replaced" in row
    assert scan(fresh.settings, listing=True)[0] == []


def _hostile_caches(good: BackupSet, bad: BackupSet) -> list[bytes]:
    key = backupset._manifest_key(bad.path)  # the damaged set's real key: only well-formed content may use it
    whole = {k: good.manifest[k] for k in backupset.LISTED if k in good.manifest}
    return [
        b"\x00\xff not json at all",
        b"[" * 200_000,  # nesting deep enough to blow a recursive parser
        json.dumps({"format": "something else", "sets": {}}).encode(),
        json.dumps({"format": LIST_CACHE_FORMAT, "sets": []}).encode(),
        json.dumps({"format": LIST_CACHE_FORMAT, "sets": {bad.id: {"key": "x", "manifest": whole}}}).encode(),
        json.dumps({"format": LIST_CACHE_FORMAT, "sets": {
            bad.id: {"key": key, "manifest": {**whole, "kind": "anything"}}}}).encode(),
        json.dumps({"format": LIST_CACHE_FORMAT, "sets": {
            bad.id: {"key": key, "manifest": {**whole, "files": {"../../etc/passwd": {
                "role": "database", "size": 1, "sha256": "0" * 64}}}}}}).encode(),
        json.dumps({"format": LIST_CACHE_FORMAT, "sets": {
            bad.id: {"key": [True, 1, 2, 3, 4], "manifest": whole}}}).encode(),
    ]


def test_a_corrupt_or_hostile_list_cache_is_ignored_and_replaced(fresh: Fresh, tmp_path: Path) -> None:
    populate(fresh)
    good = create_backup(fresh.settings, fresh.runtime, kind="db", report=NullReporter())
    bad = create_backup(fresh.settings, fresh.runtime, kind="db", report=NullReporter())
    manifest = json.loads((bad.path / MANIFEST).read_text())
    manifest["row_counts"]["public.users"] = 0  # edited after sealing: damaged
    (bad.path / MANIFEST).write_text(json.dumps(manifest))
    cache = fresh.settings.env.backups_dir / LIST_CACHE

    for content in _hostile_caches(good, bad):
        cache.write_bytes(content)
        sets, damaged = scan(fresh.settings, listing=True)
        assert [b.id for b in sets] == [good.id], content[:80]
        assert [d.id for d in damaged] == [bad.id] and "checksum does not match" in damaged[0].reason
        assert set(_cached(fresh)) == {good.id}  # replaced by a well-formed cache

    outside = tmp_path / "not-the-cache.json"
    outside.write_text("precious")
    cache.unlink()
    cache.symlink_to(outside)  # a planted link: never read through, never written through
    sets, damaged = scan(fresh.settings, listing=True)
    assert [b.id for b in sets] == [good.id] and [d.id for d in damaged] == [bad.id]
    assert outside.read_text() == "precious"
    assert not cache.is_symlink() and set(_cached(fresh)) == {good.id}
