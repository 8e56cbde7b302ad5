"""A point-in-time restore's journal (``<backups>/.pitr-journal.json``) that is not what ``pitr.restore``
wrote: not an object, keys missing, or folder names edited by hand to leave ``.pitr/``. Every stackops
command reads it first, so it must never crash them, and its names must never reach the swap script."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stackops.pitr_compose import JOURNAL, recover
from stackops.report import NullReporter
from stackops.runtime.compose import ComposeRuntime
from tests.conftest import cli_env, invoke_cli, make_settings
from tests.faults.conftest import one_line

VALID = {"phase": "swapping", "side": "side-20261130120000", "kept": "kept-20261130120000",
         "failed": "failed-20261130120000"}
HOSTILE = [
    "null",
    "[1, 2]",
    '"swapping"',
    json.dumps({"phase": "swapping"}),
    json.dumps({**VALID, "kept": "../../../../tmp/gone"}),
    json.dumps({**VALID, "side": "side-1\nkept-2"}),
    json.dumps({**VALID, "failed": 7}),
]


def test_a_pending_journal_never_crashes_a_command_without_a_reporter(tmp_path: Path) -> None:
    """`pitr.info` (no progress reporter) with a journal present: one line, no traceback."""
    settings = make_settings("test", runtime="local", state_dir=str(tmp_path / "state"),
                             backups_dir=str(tmp_path / "backups"), uploads_dir=str(tmp_path / "uploads"))
    settings.env.backups_dir.mkdir(parents=True)
    (settings.env.backups_dir / JOURNAL).write_text(json.dumps(VALID))
    one_line(invoke_cli("pitr.info", "--env", "test", env=cli_env(settings)))


@pytest.mark.parametrize("text", HOSTILE)
def test_a_hostile_journal_is_reported_as_damaged_and_nothing_is_swapped(tmp_path: Path, text: str) -> None:
    settings = make_settings("prod", runtime="compose", backups_dir=str(tmp_path / "backups"),
                             compose_project="advpitr-never-started")
    settings.env.backups_dir.mkdir(parents=True)
    (settings.env.backups_dir / JOURNAL).write_text(text)
    rt = ComposeRuntime(settings)
    message = recover(settings, rt, NullReporter())  # the damaged branch never touches Docker
    assert message is not None and "is damaged" in message
    assert (settings.env.backups_dir / JOURNAL).read_text() == text  # kept for the operator to look at
