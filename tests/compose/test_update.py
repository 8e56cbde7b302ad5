"""`invoke update` on real compose (stand-in images): v1 -> healthy v2 with a pending migration, v2
`:broken` -> automatic rollback, a failing migration -> database and images back, kill -9 between stop
and start -> the rerun recovers; and check's "backend unhealthy" row. Harness projects only.

Images: the backend runs ``stackops-it-backend:current`` (BACKEND_IMAGE; ``stackops-it-<slot>/backend``
in a harness slot), which the tests point at ``:v1`` (the stand-in backend), ``:v2`` (v1 plus a label, a
new digest) or ``:broken`` — the moves a registry push of a new tag would make. The shared stand-in tags
are never moved. In a slot every service runs the slot's own tags, so the pins these tests look for are
the slot's own (other sessions on the engine pin theirs meanwhile).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stackops.report import NullReporter
from tests.compose.conftest import cli, connect, table_hashes, tree
from tests.compose.harness import BACKEND_IMAGE, ROOT, SLOT, SLOT_REPOS
from tests.compose.harness import runtime_for as _runtime_for

pytestmark = pytest.mark.compose

REPO = f"{SLOT_REPOS}backend" if SLOT else "stackops-it-backend"
CURRENT = f"{REPO}:current"
STANDIN_BACKEND = BACKEND_IMAGE  # the harness's own build of compose/backend
STANDIN_BROKEN = os.environ.get("STACKOPS_IT_BROKEN_IMAGE", "stackops-standin/impactbot-v2-backend:broken")


def docker(*args: str, stdin: str | None = None) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True, input=stdin).stdout.strip()


def image_id(ref: str) -> str:
    return docker("image", "inspect", "--format", "{{.Id}}", ref)


def point(tag: str) -> None:
    docker("tag", f"{REPO}:{tag}", CURRENT)


def repo_tags() -> list[str]:
    """Every tag of this module's repository (v1, v2, broken, current, rejected-*, stackops-rollback-*)."""
    out = docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}", REPO)
    return [t for t in out.splitlines() if t.startswith(REPO + ":")]


def all_pins() -> list[str]:
    """Every rollback pin on the engine (updates pin the images of all the harness's services); in a slot,
    every pin under the slot's repositories, which are all its services' images."""
    out = docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}")
    return [t for t in out.splitlines() if ":stackops-rollback-" in t and t.startswith(SLOT_REPOS)]


@pytest.fixture(scope="module")
def images(compose_stack: str) -> Iterator[dict[str, str]]:
    """v1 (the harness's own backend build, which exists once the harness is up), v2 and broken; every
    tag of the repository but the harness's own build is removed at the end (the images stay the harness's)."""
    docker("tag", STANDIN_BACKEND, f"{REPO}:v1")
    docker("tag", STANDIN_BROKEN, f"{REPO}:broken")
    docker("build", "-q", "-t", f"{REPO}:v2", "-", stdin=f"FROM {REPO}:v1\nLABEL stackops.it.version=2\n"
                                                         "ENV IMPACTBOT_BACKEND_VERSION=2.0.0-it\n")
    yield {t: image_id(f"{REPO}:{t}") for t in ("v1", "v2", "broken")}
    point("v1")
    cli("env.up", "--env", compose_stack)  # the harness's own BACKEND_IMAGE again, so the tags are unused
    # in a slot the harness's own BACKEND_IMAGE (<slot>/backend:local) is a tag of this repository too: it
    # stays (removing it left the next `update` in the slot, which recreates with --no-build, without an image)
    tags = [t for t in repo_tags() if t != BACKEND_IMAGE]
    if tags:
        subprocess.run(["docker", "image", "rm", *tags], check=False, capture_output=True)


@pytest.fixture(scope="module")
def migrations(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("migrations")
    for f in (ROOT / "migrations").glob("*.sql"):
        shutil.copy(f, folder / f.name)
    return folder


@pytest.fixture
def v1(it_env: str, images: dict[str, str], migrations: Path) -> Iterator[dict[str, str]]:
    """The environment under test running backend v1 on every applied migration, with data and uploads."""
    extra = {"BACKEND_IMAGE": CURRENT, "INVOKE_STACKOPS_MIGRATIONS_DIR": str(migrations)}
    point("v1")
    cli("env.up", "--env", it_env, extra_env=extra)
    cli("migrate.apply", "--env", it_env, "--yes", extra_env=extra)
    rt = _runtime_for(it_env)
    with connect(rt) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS it_update (id bigint PRIMARY KEY, v text)")
        conn.execute("INSERT INTO it_update SELECT g, md5(g::text) FROM generate_series(1, 2000) g "
                     "ON CONFLICT DO NOTHING")
    uploads = rt.settings.env.uploads_dir
    (uploads / "it-update").mkdir(parents=True, exist_ok=True)
    for i in range(5):
        (uploads / "it-update" / f"f{i}.bin").write_bytes(os.urandom(4096))
    yield extra
    point("v1")  # leave the harness on v1 and healthy
    cli("env.up", "--env", it_env, extra_env=extra)


def update(it_env: str, extra: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return cli("update", "--env", it_env, "--yes", "--json", *args, check=False, extra_env=extra)


def backend_digest(rt: Any) -> str:
    return str(rt.image_digests()["backend"]).rpartition("@")[2]


def state(rt: Any) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    # a volume's identity: the birth time of its folder on the engine's host (a recreated volume gets a new
    # folder; the inode number alone is reused at once). Not CreatedAt: for local volumes Docker reports the
    # folder's ctime, which moves whenever a file is created in it (Redis writing its RDB/AOF)
    volumes = {name: subprocess.run(["stat", "-c", "%w", docker("volume", "inspect", "--format", "{{.Mountpoint}}",
                                                                  v).strip()],
                                    check=True, capture_output=True, text=True).stdout.strip()
               for name, v in rt.volumes().items()}
    return table_hashes(rt), tree(rt.settings.env.uploads_dir), volumes


def untouched_by_the_migration(rows: dict[str, str]) -> dict[str, str]:
    """Every table's rows and every sequence except what applying it_note changes: it_update's rows (a new
    column), the history table and its sequence."""
    out = {k: v for k, v in rows.items() if k not in ("public.it_update", "public.schema_migrations")}
    out["_sequences"] = ",".join(x for x in rows.get("_sequences", "").split(",")
                                 if not x.startswith("public.schema_migrations_"))
    return out


def test_update_v1_to_v2_with_a_pending_migration(it_env: str, v1: dict[str, str], images: dict[str, str],
                                                  migrations: Path) -> None:
    rt = _runtime_for(it_env)
    rows, files, volumes = state(rt)
    (migrations / "20990101000000_it_note.sql").write_text(
        "-- migrate:up\nALTER TABLE it_update ADD COLUMN note text;\n\n-- migrate:down\n"
        "ALTER TABLE it_update DROP COLUMN note;\n")
    point("v2")
    proc = update(it_env, v1)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert out["outcome"] == "updated" and out["images_changed"] == ["backend"]
    assert out["migrations_applied"] == ["20990101000000_it_note"]
    assert out["downtime_s"] > 0 and {s["step"] for s in out["steps"]} >= {"pull", "stop and recreate, wait healthy"}
    assert backend_digest(rt) == images["v2"]
    assert not all_pins()  # the pins of the rollback point went with the update's end
    after_rows, after_files, after_volumes = state(rt)
    assert after_files == files and after_volumes == volumes  # the same volumes, not new ones
    assert untouched_by_the_migration(after_rows) == untouched_by_the_migration(rows)
    with connect(rt) as conn:
        assert conn.execute("SELECT count(*) FROM it_update WHERE note IS NULL").fetchone() == (2000,)


def test_update_to_broken_rolls_back_to_the_v1_digests(it_env: str, v1: dict[str, str],
                                                       images: dict[str, str]) -> None:
    rt = _runtime_for(it_env)
    before = state(rt)
    point("broken")
    proc = update(it_env, v1)
    assert proc.returncode == 41, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert out["outcome"] == "rolled-back" and "unhealthy" in out["failure"]
    assert all(c["ok"] for c in out["data_checks"]), out["data_checks"]
    assert backend_digest(rt) == images["v1"] and image_id(CURRENT) == images["v1"]
    assert state(rt) == before  # rows, uploads and volumes byte-identical
    assert not all_pins()
    assert "nothing lost" in proc.stderr.strip().splitlines()[-1]


def test_failing_migration_puts_database_and_images_back(it_env: str, v1: dict[str, str], images: dict[str, str],
                                                        migrations: Path) -> None:
    rt = _runtime_for(it_env)
    before = state(rt)
    bad = migrations / "20990201000000_it_bad.sql"
    bad.write_text("-- migrate:up\nALTER TABLE it_update ADD COLUMN y int;\nSELECT 1/0;\n\n-- migrate:down\n"
                   "ALTER TABLE it_update DROP COLUMN y;\n")
    try:
        point("v2")
        proc = update(it_env, v1)
        assert proc.returncode == 41, proc.stdout + proc.stderr
        assert backend_digest(rt) == images["v1"] and state(rt) == before
    finally:
        bad.unlink()


def test_kill_9_between_stop_and_start_is_recovered_by_the_rerun(it_env: str, v1: dict[str, str],
                                                                 images: dict[str, str]) -> None:
    rt = _runtime_for(it_env)
    before = state(rt)
    point("v2")
    env = {**os.environ, **v1, "STACKOPS_FAULT_PAUSE_AT": "stopped"}
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "update", "--env", it_env, "--yes"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    journal = rt.settings.env.backups_dir / ".update-journal.json"
    deadline = time.monotonic() + 300
    while not (journal.exists() and json.loads(journal.read_text()).get("phase") == "stopped"):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    # the rollback point is pinned while the update runs: a tag per recorded image, named in the journal
    pins = json.loads(journal.read_text())["pins"]
    assert f"{REPO}:stackops-rollback-" in " ".join(pins) and set(pins) <= set(all_pins())
    assert image_id(next(p for p in pins if p.startswith(REPO + ":"))) == images["v1"]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert {s.name: s.state for s in rt.status()}["backend"] != "running"  # killed with the backend stopped
    status = cli("env.status", "--env", it_env, check=False, extra_env=v1)
    assert status.returncode == 1 and "update: INTERRUPTED in phase stopped" in status.stdout
    # the rerun first rolls back to what the journal recorded (v1; v2 is kept as :rejected-<time>), so
    # there is nothing left to update
    rerun = update(it_env, v1)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "was rolled back" in rerun.stderr and json.loads(rerun.stdout)["outcome"] == "nothing-changed"
    assert backend_digest(rt) == images["v1"] and image_id(CURRENT) == images["v1"]
    assert not journal.exists() and not set(pins) & set(all_pins())  # the recovery removed the pins
    assert state(rt) == before  # rows, uploads and volumes as before the killed update
    # and the update itself goes through once asked again
    point("v2")
    again = update(it_env, v1)
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads(again.stdout)["outcome"] == "updated" and backend_digest(rt) == images["v2"]


def test_check_shows_an_unhealthy_backend_and_passes_once_repaired(it_env: str, v1: dict[str, str]) -> None:
    if it_env != "test":  # the check's rows do not depend on the environment: one slot shows it (50 s each)
        pytest.skip("one environment shows it: the test slot")
    rt = _runtime_for(it_env)
    point("broken")
    subprocess.run(rt.compose_cmd("up", "-d", "--no-build", "--pull", "never").argv, cwd=rt.project_dir,
                   env={**os.environ, **rt.compose_env(), **v1}, check=True, capture_output=True)
    deadline = time.monotonic() + 120
    while {s.name: s.healthy for s in rt.status()}["backend"] is not False:
        assert time.monotonic() < deadline
        time.sleep(1)
    out = json.loads(cli("check", "--env", it_env, "--json", check=False, extra_env=v1).stdout)
    rows = {c["name"]: c["ok"] for c in out["checks"]}
    assert rows["services running and healthy"] is False and rows["backend health endpoint"] is False
    point("v1")
    cli("env.up", "--env", it_env, extra_env=v1)
    rt.wait_healthy(NullReporter(), timeout=120)
    rows = {c["name"]: c["ok"] for c in json.loads(
        cli("check", "--env", it_env, "--json", check=False, extra_env=v1).stdout)["checks"]}
    assert rows["services running and healthy"] and rows["backend health endpoint"]
