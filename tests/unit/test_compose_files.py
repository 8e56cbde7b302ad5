"""Static checks of the compose files, the stand-in image plan (ci/) and the compose runtime's refusals:
no Docker engine needed, so they run in the default `nox -s tests` session."""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from ci import images
from stackops.errors import ProtectedEnvironment
from stackops.report import NullReporter
from stackops.runtime.compose import ComposeRuntime
from tests.conftest import make_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"
FILES = ["docker-compose.yml", "docker-compose.override.yml", "docker-compose.test.yml", "docker-compose.prod.yml"]


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((COMPOSE / name).read_text())
    return data


def test_every_image_is_a_variable_defaulting_to_a_public_or_local_name() -> None:
    wanted = {"database": "POSTGRES_IMAGE", "redis": "REDIS_IMAGE", "backend": "BACKEND_IMAGE"}
    base = load("docker-compose.yml")["services"]
    for service, var in wanted.items():
        assert re.fullmatch(rf"\$\{{{var}:-[^}}]+\}}", base[service]["image"]), base[service]["image"]
    assert base["database"]["image"] == "${POSTGRES_IMAGE:-postgres:15}"
    assert base["redis"]["image"] == "${REDIS_IMAGE:-redis:7}"
    assert load("docker-compose.prod.yml")["services"]["backup"]["image"].startswith("${OPS_IMAGE:-")


def test_each_environment_has_its_project_volumes_and_loopback_ports() -> None:
    for name, env in (("docker-compose.override.yml", "dev"), ("docker-compose.test.yml", "test"),
                      ("docker-compose.prod.yml", "prod")):
        data = load(name)
        assert data["name"] == f"impactbot-v2-{env}"
        assert {f"postgres_{env}_data", f"redis_{env}_data"} <= set(data["volumes"])
        for service in data["services"].values():
            for port in service.get("ports", []):
                assert str(port).startswith("127.0.0.1:"), port
    prod = load("docker-compose.prod.yml")["services"]
    assert "ports" not in prod["database"] and "ports" not in prod["redis"]
    for service in ("database", "redis", "backend", "backup"):
        assert prod[service]["restart"] == "unless-stopped"
        assert prod[service]["logging"]["options"]["max-size"]
    assert "--appendonly" in prod["redis"]["command"]
    assert prod["database"]["env_file"][0]["required"] is True
    assert load("docker-compose.override.yml")["services"]["database"]["container_name"].endswith(
        ":-impactbot-v2-database}")


def test_env_example_documents_every_variable_and_holds_no_real_secret() -> None:
    used = set()
    for name in FILES:
        used |= set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", (COMPOSE / name).read_text()))
    example = (COMPOSE / ".env.example").read_text()
    documented = set(re.findall(r"^#?([A-Z_][A-Z0-9_]*)=", example, re.M))
    assert used - documented == set()
    assert "POSTGRES_PASSWORD=change-me" in example


def test_standins_never_take_a_real_images_name_and_compose_selects_them_by_variable() -> None:
    plan = images.plan(ROOT)
    standins = [s for s in plan if s.standin]
    assert {s.replaces for s in standins if s.replaces} == {"postgres:15", "redis:7", "python:3.11-slim"}
    for spec in standins:
        assert spec.tag.startswith(images.STANDIN + "/"), spec.tag
    own = {s.tag for s in plan if not s.standin}
    assert own == {"impactbot-v2-ops:local"}  # the project's own image: nothing else has that name
    # nothing images.build makes sits on a name the compose files default to (or compose builds itself)
    compose_text = "".join((COMPOSE / name).read_text() for name in FILES)
    defaults = set(re.findall(r"\$\{[A-Z_]+_IMAGE:-([^}]+)\}", compose_text))
    assert defaults == {"postgres:15", "redis:7", "python:3.11-slim", "impactbot-v2-backend:local",
                        "impactbot-v2-ops:local"}
    assert {s.tag for s in standins} & defaults == set()
    environ = images.standin_environ(ROOT)
    assert environ == {"POSTGRES_IMAGE": "stackops-standin/postgres:15", "REDIS_IMAGE": "stackops-standin/redis:7",
                       "PYTHON_IMAGE": "stackops-standin/python:3.11-slim"}
    base = load("docker-compose.yml")
    assert base["services"]["backend"]["build"]["args"]["PYTHON_IMAGE"] == "${PYTHON_IMAGE:-python:3.11-slim}"
    # the retired real-name tags are exactly the names older builds used, each under its own role
    assert set(images.RETIRED_TAGS.values()) >= {"postgres:15", "redis:7", "python:3.11-slim"}
    assert set(images.RETIRED_TAGS.values()) & {s.tag for s in plan} == set()


def test_image_plan_builds_parents_first_and_hashes_change_with_inputs(tmp_path: Path) -> None:
    plan = images.plan(ROOT)
    order = [s.name for s in plan]
    for spec in plan:
        if spec.parent:
            assert order.index(spec.parent) < order.index(spec.name)
    assert not any(s.tag.endswith(":latest") for s in plan)  # compose always pulls :latest, even offline
    spec = next(s for s in plan if s.name == "postgres")
    assert spec.context is not None
    copy = tmp_path / "postgres"
    shutil.copytree(spec.context, copy)
    moved = replace(spec, context=copy)
    first = images.input_hash(moved, ROOT, "sha256:parent", images.DEFAULT_MIRROR)
    assert images.input_hash(moved, ROOT, "sha256:parent", images.DEFAULT_MIRROR) == first
    assert images.input_hash(moved, ROOT, "sha256:other", images.DEFAULT_MIRROR) != first
    (copy / "docker-entrypoint.sh").write_text((copy / "docker-entrypoint.sh").read_text() + "\n# changed\n")
    assert images.input_hash(moved, ROOT, "sha256:parent", images.DEFAULT_MIRROR) != first


def test_ops_context_skips_a_stray_pycache_beside_the_scripts(tmp_path: Path) -> None:
    """A test run that imported a script of compose/images/ops leaves __pycache__ there: the ops build
    context is assembled without it (it used to fail copying the folder) and the input hash ignores it."""
    root = tmp_path / "repo"
    for rel in ("pyproject.toml", "tasks.py", "invoke.yaml"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, root / rel)
    shutil.copytree(ROOT / "lib" / "stackops", root / "lib" / "stackops",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "compose" / "images" / "ops", root / "compose" / "images" / "ops",
                    ignore=shutil.ignore_patterns("__pycache__"))
    spec = next(s for s in images.plan(root) if s.name == "ops")
    before = images.input_hash(spec, root, "sha256:base", images.DEFAULT_MIRROR)
    stray = root / "compose" / "images" / "ops" / "__pycache__"
    stray.mkdir()
    (stray / "stackops-backup-health.cpython-311.pyc").write_bytes(b"\0" * 16)
    assert images.input_hash(spec, root, "sha256:base", images.DEFAULT_MIRROR) == before
    # the wheels of this requirements set already downloaded: no Docker or network needed to assemble
    wheels = images.wheels_cache(root, "base:tag")
    wheels.mkdir(parents=True)
    (wheels / "requirements.txt").write_text("invoke\n")
    work = tmp_path / "work"
    work.mkdir()
    ctx = images._ops_context(root, None, "base:tag", spec, NullReporter(), work)
    names = sorted(p.name for p in ctx.iterdir())
    scripts = [p.name for p in spec.context.iterdir() if p.name != "__pycache__"]
    assert names == sorted([*scripts, "debs", "src", "wheels"])  # debs: rclone and age, fetched on the host
    assert not list(ctx.rglob("__pycache__")) and (ctx / "src" / "lib" / "stackops" / "backup.py").is_file()


def test_prod_refuses_down_with_volume_removal_before_touching_docker() -> None:
    rt = ComposeRuntime(make_settings("prod", compose_project="stackops-it-refusal"))
    with pytest.raises(ProtectedEnvironment, match="DON'T USE THIS") as err:
        rt.down(NullReporter(), remove_data=True)
    assert "removes volumes and all data" in str(err.value) and "\n" not in str(err.value)


def test_pg_cmd_keeps_the_password_out_of_argv_fake_container(monkeypatch: pytest.MonkeyPatch) -> None:
    rt = ComposeRuntime(make_settings("dev", compose_project="stackops-it-argv"))
    fake = SimpleNamespace(id="c0ffee", name="db", attrs={"Config": {"Env": ["POSTGRES_PASSWORD=s3cret-value"]}})
    monkeypatch.setattr(rt, "container", lambda service: fake)
    cmd = rt.pg_cmd("pg_dump").with_args("--format=custom")
    assert not any("s3cret-value" in a for a in cmd.argv)
    assert cmd.env["PGPASSWORD"] == "s3cret-value"
    i = cmd.argv.index("PGPASSWORD")
    assert cmd.argv[i - 1] == "-e" and cmd.argv[-3:] == ["c0ffee", "pg_dump", "--format=custom"]
    assert cmd.argv[1:3] == ["exec", "-i"]


def test_the_pgbackrest_repository_volume_is_prods_alone_and_the_images_can_carry_pgbackrest() -> None:
    from stackops.pitr_compose import REPO_MOUNT

    prod = load("docker-compose.prod.yml")
    assert "pgbackrest_prod_repo" in prod["volumes"]
    assert f"pgbackrest_prod_repo:{REPO_MOUNT}" in prod["services"]["database"]["volumes"]
    for name in ("docker-compose.yml", "docker-compose.override.yml", "docker-compose.test.yml"):
        text = (COMPOSE / name).read_text()
        assert "pgbackrest" not in text and REPO_MOUNT not in text, name  # PITR is prod only by default
    assert "pgbackrest" in images.BASE_PACKAGES  # the offline stand-in: baked in, containers have no network
    dockerfile = (COMPOSE / "images" / "postgres-pitr" / "Dockerfile").read_text()
    assert "FROM ${POSTGRES_IMAGE}" in dockerfile
    assert "apt-get install -y --no-install-recommends pgbackrest" in dockerfile
