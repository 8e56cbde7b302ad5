"""The offsite and pitr sections: defaults from invoke.yaml, overrides, one-line errors naming the key."""

from __future__ import annotations

from typing import Any

import pytest

from stackops.config import load
from stackops.errors import ConfigError
from tests.conftest import ROOT, raw_config

AGE = "age1" + "q" * 58


def settings_with(section: str, **values: Any) -> Any:
    raw = raw_config()
    raw[section] = {**raw.get(section, {}), **values}
    return load(raw, "dev", ROOT)


def test_defaults_are_off_and_sixty_seconds() -> None:
    s = load(raw_config(), "dev", ROOT)
    assert not s.offsite.enabled and s.offsite.recipients == () and s.offsite.identity_file is None
    assert (s.offsite.daily, s.offsite.weekly) == (30, 104)
    assert s.pitr.archive_timeout == 60 and s.pitr.retention_full == 2 and s.pitr.repo_dir is None


def test_offsite_values_are_typed() -> None:
    s = settings_with("offsite", remote=":sftp,host=127.0.0.1,port=2222,user=root:", path="/srv/backups",
                      recipients=f"{AGE}:ssh-ed25519 AAAAC3NzaC1lZDI1NTE5", identity_file="keys/id.txt", daily="7")
    assert s.offsite.enabled and s.offsite.path == "/srv/backups" and s.offsite.daily == 7
    assert s.offsite.recipients == (AGE, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5")
    assert s.offsite.identity_file == ROOT / "keys/id.txt"


@pytest.mark.parametrize(("section", "values", "key"), [
    ("offsite", {"remote": "no-colon"}, "stackops.offsite.remote"),
    ("offsite", {"path": "../escape"}, "stackops.offsite.path"),
    ("offsite", {"recipients": "AGE-SECRET-KEY-1ABC"}, "stackops.offsite.recipients"),
    ("offsite", {"weekly": "many"}, "stackops.offsite.weekly"),
    ("offsite", {"bucket": "x"}, "stackops.offsite.bucket"),
    ("pitr", {"archive_timeout": "0"}, "stackops.pitr.archive_timeout"),
    ("pitr", {"retention_full": "-1"}, "stackops.pitr.retention_full"),
])
def test_a_bad_value_is_one_line_naming_the_key(section: str, values: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        settings_with(section, **values)
    assert key in str(err.value) and "\n" not in str(err.value)
    assert "AGE-SECRET-KEY-1ABC" not in str(err.value)  # a private key given by mistake is never echoed whole
