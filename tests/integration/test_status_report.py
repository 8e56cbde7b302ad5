"""`invoke report`: a self-contained HTML page with real figures from the run, rendered by headless
Chromium (Debian's `chromium`): every section and every plot is in the rendered page and the screenshot
is not blank."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from stackops.statusreport import PLOTS, SECTIONS
from tests.conftest import Fresh, cli_env, invoke_cli
from tests.integration.conftest import write_migration

pytestmark = pytest.mark.integration

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"]


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs it (apt-get install -y chromium)")
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    return found


def _browser(args: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    profile = tmp / "chromium-profile"
    return subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)


def _environment(fresh: Fresh, tmp: Path) -> tuple[dict[str, str], list[str]]:
    folder = tmp / "migrations"
    write_migration(folder, "20240101000000_notes.sql",
                    "CREATE TABLE notes (id bigserial PRIMARY KEY, body text);", "DROP TABLE notes;")
    write_migration(folder, "20240102000000_users.sql",
                    "CREATE TABLE users (id bigserial PRIMARY KEY, last_login_at timestamptz);", "DROP TABLE users;")
    env = cli_env(fresh.settings, migrations=folder)
    applied = invoke_cli("migrate.apply", "--env", "test", env=env)
    assert applied.returncode == 0, applied.stderr
    with fresh.connect() as conn:
        conn.execute("INSERT INTO notes (body) SELECT repeat('n', 300) FROM generate_series(1, 20000)")
        conn.execute("INSERT INTO users (last_login_at) SELECT now() FROM generate_series(1, 50)")
    ids = []
    for kind in ("backup", "backup.db"):
        made = invoke_cli(kind, "--env", "test", "--json", env=env)
        assert made.returncode == 0, made.stderr
        ids.append(json.loads(made.stdout)["id"])
    verified = invoke_cli("backup.verify", "--backup", ids[0], "--env", "test", env=env)
    assert verified.returncode == 0, verified.stderr
    with fresh.connect() as conn:
        conn.execute("INSERT INTO notes (body) SELECT 'later' FROM generate_series(1, 1234)")
        conn.execute("ANALYZE")
    return env, ids


def test_report_renders_in_headless_chromium_with_every_section_and_plot(fresh: Fresh, tmp_path: Path) -> None:
    env, ids = _environment(fresh, tmp_path)
    started = time.monotonic()
    made = invoke_cli("report", "--env", "test", env=env)
    seconds = time.monotonic() - started
    assert made.returncode == 0, made.stderr
    page = Path(made.stdout.strip())
    assert page == fresh.settings.env.backups_dir / "report.html" and page.is_file()
    text = page.read_text()
    # no network, no CDN: nothing is loaded from anywhere (SVG namespace names are not fetched)
    assert not re.search(r"""(src|href|url)\s*[=(]\s*["']?(https?:)?//""", text)
    assert "<script" not in text and "<link" not in text and "<img" not in text
    for backup_id in ids:
        assert backup_id in text
    assert "public.notes" in text and "20240102000000" in text and "+1234" in text

    dom = _browser(["--dump-dom", page.as_uri()], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for section in SECTIONS:
        assert re.search(f'<section id="{section}">', dom.stdout), section
    for plot in PLOTS:
        assert re.search(f'<svg [^>]*id="{plot}"', dom.stdout), plot
    assert dom.stdout.count("<svg") == len(PLOTS)

    shot = tmp_path / "report.png"
    taken = _browser(["--hide-scrollbars", "--window-size=1100,4200", f"--screenshot={shot}", page.as_uri()],
                     tmp_path)
    assert taken.returncode == 0 and shot.is_file(), taken.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as img:
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, "the screenshot is blank"
    keep = os.environ.get("STACKOPS_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
        shutil.copy(page, Path(keep).with_suffix(".html"))
    print(f"report written in {seconds:.1f}s (invoke included)")
