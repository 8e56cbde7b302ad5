"""Item 3: a hostile uploads archive is refused whole before anything is swapped, and db.seed never
writes or deletes through a symbolic link in the uploads folder."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from stackops.errors import BackupCorrupt, SeedError
from stackops.report import NullReporter
from stackops.restore import restore_database
from stackops.seed import REQUIRED_TABLES, seed_sample_data
from tests.faults.conftest import (
    Fresh,
    add_uploads,
    backup,
    databases,
    files,
    fingerprint,
    populate,
    replace_uploads_archive,
)

pytestmark = pytest.mark.integration


def regular(tar: tarfile.TarFile, name: str, data: bytes = b"x") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def special(name: str, kind: bytes, target: str = "") -> Callable[[tarfile.TarFile], None]:
    def build(tar: tarfile.TarFile) -> None:
        regular(tar, "./ok.txt")
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, target
        tar.addfile(info)
    return build


def hostile(outside: Path) -> dict[str, Callable[[tarfile.TarFile], None]]:
    return {
        "dot-dot": lambda tar: regular(tar, f"../{outside.name}/planted"),
        "absolute path": lambda tar: regular(tar, str(outside / "planted")),
        "symlink out": special("./sample", tarfile.SYMTYPE, str(outside)),
        "relative symlink out": special("./sample", tarfile.SYMTYPE, "../../../.."),
        "hard link out": special("./passwd", tarfile.LNKTYPE, str(outside / "victim")),
        "device": special("./null", tarfile.CHRTYPE),
        "fifo": special("./pipe", tarfile.FIFOTYPE),
    }


@pytest.mark.parametrize("fault", ["dot-dot", "absolute path", "symlink out", "relative symlink out",
                                   "hard link out", "device", "fifo"])
def test_hostile_uploads_archive_is_refused_and_nothing_changes(fresh: Fresh, tmp_path: Path, fault: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("precious\n")
    populate(fresh)
    add_uploads(fresh.settings.env.uploads_dir)
    backup_id = backup(fresh)
    replace_uploads_archive(fresh.settings.env.backups_dir / backup_id, hostile(outside)[fault])
    before, outside_before = fingerprint(fresh), files(outside)
    with pytest.raises(BackupCorrupt, match="hostile entry"):
        restore_database(fresh.settings, fresh.runtime, backup_id, report=NullReporter(), uploads=True)
    assert fingerprint(fresh) == before and files(outside) == outside_before
    assert databases(fresh) == [fresh.settings.env.db_name]
    up = fresh.settings.env.uploads_dir
    assert sorted(p.name for p in up.parent.iterdir()) == ["backups", "uploads"]  # no staging left


def seed_schema(fresh: Fresh) -> None:
    with fresh.connect() as conn:
        for t in REQUIRED_TABLES:
            conn.execute(f"CREATE TABLE {t} (id bigint)")


@pytest.mark.parametrize("link", ["sample", "sample/seed-0-scale-1"])
def test_seed_refuses_to_write_or_delete_through_a_link(fresh: Fresh, tmp_path: Path, link: str) -> None:
    outside = tmp_path / "outside"
    (outside / "seed-0-scale-1").mkdir(parents=True)
    (outside / "old-sample").mkdir()
    (outside / "old-sample" / "keep.txt").write_text("not stackops' file\n")
    seed_schema(fresh)
    up = fresh.settings.env.uploads_dir
    (up / "sample").mkdir(exist_ok=True) if link != "sample" else None
    (up / link).symlink_to(outside if link == "sample" else outside / "seed-0-scale-1")
    before_outside, before = files(outside), fingerprint(fresh)
    with pytest.raises(SeedError, match="symbolic link inside the uploads folder"):
        seed_sample_data(fresh.settings, fresh.runtime, report=NullReporter())
    assert files(outside) == before_outside and fingerprint(fresh) == before
