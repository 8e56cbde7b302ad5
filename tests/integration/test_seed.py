"""db.seed: deterministic dev sample data with real upload files; refused where it must be."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from stackops.errors import ProtectedEnvironment
from stackops.integrity import check_integrity
from stackops.migrate.engine import apply
from stackops.report import NullReporter
from stackops.seed import SeedError, seed_sample_data
from tests.conftest import Fresh
from tests.integration.conftest import INVOKE, cli_env, row_hashes

pytestmark = pytest.mark.integration

ANCHOR = datetime(2024, 6, 18, 15, 30, tzinfo=UTC)


def tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def seeded(fresh: Fresh, seed: int, scale: int = 1) -> tuple[dict[str, str], dict[str, str]]:
    seed_sample_data(fresh.settings, fresh.runtime, seed=seed, scale=scale, anchor=ANCHOR, report=NullReporter())
    rows = {t: h for t, h in row_hashes(fresh).items() if t != "public.schema_migrations"}  # applied_at differs
    return rows, tree(fresh.settings.env.uploads_dir)


def test_same_seed_gives_the_same_data_and_files(fresh: Fresh, new_fresh: Callable[[], Fresh]) -> None:
    other, third = new_fresh(), new_fresh()
    for f in (fresh, other, third):
        apply(f.settings, f.runtime, report=NullReporter())
    rows_a, files_a = seeded(fresh, 7)
    rows_b, files_b = seeded(other, 7)
    rows_c, files_c = seeded(third, 8)
    assert rows_a == rows_b and files_a == files_b and len(rows_a) == 7 and len(files_a) > 0
    assert rows_a["public.users"] != rows_c["public.users"] and files_a != files_c


def test_seed_registers_real_files_and_check_is_clean(fresh: Fresh) -> None:
    apply(fresh.settings, fresh.runtime, report=NullReporter())
    result = seed_sample_data(fresh.settings, fresh.runtime, scale=2, seed=1, anchor=ANCHOR, report=NullReporter())
    assert (result.organizations, result.users, result.indicators) == (4, 16, 10)
    assert result.measurements == 4 * 10 * 12 and result.messages > result.conversations > 0
    with fresh.connect() as conn:
        uploads = conn.execute("SELECT storage_path, size_bytes, sha256 FROM file_uploads").fetchall()
        active = conn.execute("SELECT COUNT(*), COUNT(*) FILTER (WHERE last_login_at > %s::timestamptz - "
                              "INTERVAL '7 days') FROM users", (ANCHOR,)).fetchone()
    assert len(uploads) == result.uploads > 0
    for path, size, digest in uploads:
        data = (fresh.settings.env.uploads_dir / path).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (size, digest)
    assert active is not None and 0 < active[1] < active[0] == 16
    assert check_integrity(fresh.settings, fresh.runtime, report=NullReporter()).ok


def test_seeding_again_replaces_the_sample_data(fresh: Fresh) -> None:
    apply(fresh.settings, fresh.runtime, report=NullReporter())
    with fresh.connect() as conn:
        conn.execute("INSERT INTO users (email) VALUES ('real.person@example.org')")
    seeded(fresh, 1)
    second = seed_sample_data(fresh.settings, fresh.runtime, seed=2, anchor=ANCHOR, report=NullReporter())
    assert second.replaced["users"] == 8 and second.replaced["organizations"] == 2
    with fresh.connect() as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (9,)  # 8 sample + the real one
        assert conn.execute("SELECT count(*) FROM organizations").fetchone() == (2,)
    folders = sorted(p.name for p in (fresh.settings.env.uploads_dir / "sample").iterdir())
    assert folders == ["seed-2-scale-1"]  # the older sample files are gone with their rows
    assert check_integrity(fresh.settings, fresh.runtime, report=NullReporter()).ok


def test_seed_is_refused_in_a_protected_environment(fresh: Fresh) -> None:
    apply(fresh.settings, fresh.runtime, report=NullReporter())
    protected = replace(fresh.settings, env=replace(fresh.settings.env, protected=True))
    with pytest.raises(ProtectedEnvironment, match="no test data"):
        seed_sample_data(protected, fresh.runtime, report=NullReporter())
    with fresh.connect() as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (0,)
    assert not (fresh.settings.env.uploads_dir / "sample").exists()


def test_seed_without_schema_says_to_apply_first(fresh: Fresh) -> None:
    with pytest.raises(SeedError, match="no table organizations: apply the schema first"):
        seed_sample_data(fresh.settings, fresh.runtime, report=NullReporter())


def test_seed_task_through_the_cli(fresh: Fresh) -> None:
    import subprocess

    apply(fresh.settings, fresh.runtime, report=NullReporter())
    proc = subprocess.run([*INVOKE, "db.seed", "--env", "test", "--scale", "1", "--seed", "4"],
                          env=cli_env(fresh.settings), capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "users" in proc.stdout and "seed 4, scale 1" in proc.stdout
    env = cli_env(fresh.settings) | {"INVOKE_STACKOPS_ENVS_TEST_PROTECTED": "true"}
    refused = subprocess.run([*INVOKE, "db.seed", "--env", "test"], env=env, capture_output=True, text=True,
                             timeout=120, check=False)
    assert refused.returncode == 6 and len(refused.stderr.strip().splitlines()) == 1
