"""Prerequisites: doctor names every missing program with the exact install command."""

from __future__ import annotations

import pytest

from stackops import prereq
from stackops.errors import PrerequisiteError
from stackops.report import NullReporter


def test_doctor_lists_every_prerequisite_with_an_install_command() -> None:
    checks = {c.name: c for c in prereq.doctor_checks()}
    for name in ("initdb", "pg_dump", "redis-server", "zstd", "squawk", "python: psycopg"):
        assert name in checks
        assert checks[name].hint
    assert checks["redis-server"].hint.endswith("apt-get install -y redis-server")
    assert checks["docker engine (compose runtime only)"].required is False
    for name in ("docker compose v2 (compose runtime only)", "debootstrap (invoke images.build only)"):
        assert checks[name].required is False and ".ci/setup-docker" in checks[name].hint


def test_missing_program_as_non_root_prints_the_command_mocked_euid(monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-root user cannot apt-get install: stackops says exactly what to run (euid is mocked)."""
    monkeypatch.setattr(prereq.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(prereq.shutil, "which", lambda name: None)
    with pytest.raises(PrerequisiteError) as info:
        prereq.ensure_programs(["redis-server"], NullReporter())
    assert str(info.value) == ("redis-server not installed and this user cannot install it: "
                               "run `sudo apt-get install -y redis-server`")


def test_present_programs_install_nothing() -> None:
    report = NullReporter()
    prereq.ensure_programs(["gzip", "tar"], report)
    assert report.lines == []
