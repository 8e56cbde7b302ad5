"""Offline stand-in images for the compose environments, for machines without an image registry (CI).

Not part of the operators' library: stackops itself never imports this package.

One Debian rootfs made by ``debootstrap --variant=minbase --include=...`` is imported with
``docker import`` as the base; small ``docker build`` steps put the PostgreSQL 15, Redis 7 and Python
stand-ins, a backend that fails its health check, and the ops image on top.

Stand-ins never take a real image's name: they live under ``stackops-standin/`` (e.g.
``stackops-standin/postgres:15``), and the compose files use them only when POSTGRES_IMAGE, REDIS_IMAGE
and PYTHON_IMAGE name them (``standin_environ()``, ``invoke images.env``); a later ``pull`` on a machine
with a registry therefore always gets the real images. An older build tagged stand-ins with the real
names (``postgres:15``, ...); ``build`` removes those tags. Every image is labelled with a hash of its
inputs (files, build args, parent image id): a step whose image exists with the same hash is skipped
(``force`` rebuilds), and a changed parent rebuilds its children.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stackops.errors import PrerequisiteError, ServiceError, StackopsError
from stackops.proc import Cmd, run, spawn, which
from stackops.report import Reporter, human_bytes

SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = (
    "postgresql-15", "postgresql-client-15", "redis-server", "python3", "python3-venv",
    "zstd", "gzip", "procps", "pgbackrest",
)
# Debian packages of the ops image beyond the base: the prod backup service's offsite push (rclone) and
# its encryption (age). Fetched on the host with `apt-get download` (containers have no network) and
# installed with dpkg in the image; both depend on libc6 only.
OPS_PACKAGES = ("rclone", "age")
# Trimmed from the rootfs before import: package caches, docs, translations, the Debian default cluster.
ROOTFS_PRUNE = (
    "var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/info",
    "usr/share/locale", "var/lib/postgresql/15", "etc/postgresql/15/main",
)
# What Python leaves beside sources (a test that runs a script of compose/images/ops writes __pycache__):
# never an input of an image, neither copied into a build context nor hashed.
BUILD_LEFTOVERS = ("__pycache__", "*.pyc")
STANDIN = "stackops-standin"  # the repository prefix of every stand-in: never a real image's name
LABEL_STANDIN = "stackops.standin"
LABEL_HASH = "stackops.input-hash"
LABEL_ROLE = "stackops.image"
# Tags that older builds gave their images (by role label); `build` removes them, `list_images` shows them.
RETIRED_TAGS = {
    "postgres": "postgres:15", "redis": "redis:7", "python": "python:3.11-slim",
    "backend": "impactbot-v2-backend:local", "backend-broken": "impactbot-v2-backend:broken",
}


class ImageBuildError(StackopsError):
    """An offline image could not be built."""


@dataclass(frozen=True)
class ImageSpec:
    """One image to build: ``name`` is the short name used by ``--only``."""

    name: str
    tag: str
    parent: str | None            # short name of the image it builds FROM (None: the rootfs import)
    context: Path | None          # folder holding the Dockerfile (None for the base and the ops image)
    buildargs: dict[str, str] = field(default_factory=dict)
    replaces: str | None = None   # the real image this stands in for (never tagged with its name)
    variable: str | None = None   # the compose variable that selects it instead of the real image
    standin: bool = True          # False: the project's own image (ops), not standing in for another
    description: str = ""


@dataclass(frozen=True)
class BuildResult:
    name: str
    tag: str
    action: str                   # built | cached
    seconds: float
    image_id: str
    size_bytes: int


@dataclass(frozen=True)
class ImageInfo:
    name: str
    tag: str
    present: bool
    standin: bool | None
    up_to_date: bool | None
    image_id: str
    size_bytes: int | None
    description: str


def plan(root: Path) -> list[ImageSpec]:
    """The images, in build order (each after its parent). The healthy backend is not among them:
    compose builds ``impactbot-v2-backend:local`` itself from compose/backend on PYTHON_IMAGE."""
    images = root / "compose" / "images"
    backend = root / "compose" / "backend"
    return [
        ImageSpec("base", f"{STANDIN}/debian:{SUITE}", None, None,
                  description=f"Debian {SUITE} minbase + {', '.join(BASE_PACKAGES)}"),
        ImageSpec("postgres", f"{STANDIN}/postgres:15", "base", images / "postgres", replaces="postgres:15",
                  variable="POSTGRES_IMAGE", description="PostgreSQL 15, entrypoint like the official image"),
        ImageSpec("redis", f"{STANDIN}/redis:7", "base", images / "redis", replaces="redis:7",
                  variable="REDIS_IMAGE", description="Redis 7 (Debian redis-server)"),
        ImageSpec("python", f"{STANDIN}/python:3.11-slim", "base", images / "python",
                  replaces="python:3.11-slim", variable="PYTHON_IMAGE",
                  description="Python 3.11, base of the backend image"),
        ImageSpec("backend-broken", f"{STANDIN}/impactbot-v2-backend:broken", "python", backend,
                  {"VARIANT": "broken"}, description="backend that fails its health check (update tests)"),
        ImageSpec("ops", "impactbot-v2-ops:local", "base", images / "ops", standin=False,
                  description="stackops + postgresql-client-15, rclone, age (the prod backup service)"),
    ]


# ----- docker access ----------------------------------------------------------------------------
def _client() -> Any:
    from stackops.runtime.compose import docker_client

    return docker_client(timeout=600)


def _image(client: Any, tag: str) -> Any | None:
    import docker.errors

    try:
        return client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None


def _short(image: Any) -> str:
    return str(image.short_id).removeprefix("sha256:")


def _labels(image: Any) -> dict[str, str]:
    return dict((image.attrs.get("Config") or {}).get("Labels") or {})


# ----- input hashes ------------------------------------------------------------------------------
def _hash_tree(h: Any, folder: Path, prefix: str) -> None:
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if "__pycache__" in rel.parts or path.suffix == ".pyc" or rel.parts[0].startswith("uploads"):
            continue
        if path.is_file():
            h.update(f"{prefix}/{rel.as_posix()}\0{path.stat().st_mode & 0o111}\0".encode())
            h.update(path.read_bytes())
            h.update(b"\0")


def _requirements(root: Path) -> list[str]:
    with (root / "pyproject.toml").open("rb") as f:
        deps: list[str] = tomllib.load(f)["project"]["dependencies"]
    return [dep.split("#")[0].strip() for dep in deps]


def _ops_sources(root: Path) -> Iterator[tuple[Path, str]]:
    """(file or folder, name inside /opt/stackops) for the ops image."""
    yield root / "lib" / "stackops", "lib/stackops"
    for name in ("tasks.py", "invoke.yaml", "pyproject.toml"):
        yield root / name, name
    if (root / "migrations").is_dir():
        yield root / "migrations", "migrations"


def input_hash(spec: ImageSpec, root: Path, parent_id: str | None, mirror: str) -> str:
    h = hashlib.sha256()
    h.update(f"{spec.name}\0{spec.tag}\0{json.dumps(spec.buildargs, sort_keys=True)}\0{parent_id}\0".encode())
    if spec.name == "base":
        h.update(f"{SUITE}\0{mirror}\0{' '.join(BASE_PACKAGES)}\0{' '.join(ROOTFS_PRUNE)}".encode())
    if spec.context is not None:
        _hash_tree(h, spec.context, "context")
    if spec.name == "ops":
        h.update("\n".join(_requirements(root)).encode())
        h.update(" ".join(OPS_PACKAGES).encode())
        for src, name in _ops_sources(root):
            if src.is_dir():
                _hash_tree(h, src, name)
            elif src.exists():
                h.update(f"{name}\0".encode() + src.read_bytes())
    return h.hexdigest()[:32]


# ----- steps ---------------------------------------------------------------------------------------
def _umount_below(folder: Path) -> None:
    """Unmount whatever a failed debootstrap left mounted inside ``folder`` (deepest first)."""
    prefix = str(folder.resolve()) + "/"
    with open("/proc/mounts") as f:
        points = [line.split()[1] for line in f if line.split()[1].startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):
        run(Cmd(["umount", "-l", point]), check=False)


def _stream(cmd: Cmd, report: Reporter, label: str, every: float = 10.0) -> None:
    """Run ``cmd``, showing its latest output line every ``every`` seconds; raise with its tail on failure."""
    started = time.monotonic()
    proc = spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    tail: list[str] = []
    shown = started
    for raw in proc.stdout:
        line = raw.decode(errors="replace").rstrip()
        if line:
            tail = [*tail[-19:], line]
        if time.monotonic() - shown >= every:
            shown = time.monotonic()
            report.info(f"{label}: {time.monotonic() - started:.0f}s, {line[:100]}")
    if proc.wait() != 0:
        detail = tail[-1] if tail else "no output"
        raise ImageBuildError(f"{label} failed with exit {proc.returncode}: {detail}")


def _build_base(client: Any, spec: ImageSpec, labels: dict[str, str], mirror: str, report: Reporter,
                workdir: Path) -> None:
    import os

    if os.geteuid() != 0:
        raise PrerequisiteError("debootstrap needs root: run `invoke images.build` as root (or with sudo)")
    debootstrap = which("debootstrap", "apt-get install -y debootstrap")
    docker = which("docker", "apt-get install -y docker.io")
    rootfs = Path(tempfile.mkdtemp(prefix="rootfs-", dir=workdir))
    try:
        report.info(f"debootstrap {SUITE} ({len(BASE_PACKAGES)} extra packages) into {rootfs}; about a minute")
        _stream(Cmd([debootstrap, "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE,
                     str(rootfs), mirror]), report, "debootstrap")
        _umount_below(rootfs)
        for rel in ROOTFS_PRUNE:
            shutil.rmtree(rootfs / rel, ignore_errors=True)
        for sub in ("proc", "sys", "dev", "tmp", "run"):
            (rootfs / sub).mkdir(exist_ok=True)
        report.info(f"docker import -> {spec.tag}")
        changes = [f"LABEL {k}={v}" for k, v in labels.items()]
        changes.append("ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        changes.append('CMD ["bash"]')
        tar = spawn(Cmd(["tar", "-C", str(rootfs), "--numeric-owner", "--one-file-system",
                         "--exclude=./proc/*", "--exclude=./sys/*", "--exclude=./dev/*", "-c", "."]),
                    stdout=subprocess.PIPE)
        argv = [docker, "import"]
        for change in changes:
            argv += ["--change", change]
        imp = spawn(Cmd([*argv, "-", spec.tag]), stdin=tar.stdout, stdout=subprocess.PIPE)
        assert tar.stdout is not None
        tar.stdout.close()
        _out, err = imp.communicate()
        tar_err = tar.stderr.read() if tar.stderr else b""
        if tar.wait() != 0 or imp.returncode != 0:
            why = (err or tar_err).decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise ImageBuildError(f"importing the rootfs as {spec.tag} failed: {why[0]}")
    finally:
        _umount_below(rootfs)
        shutil.rmtree(rootfs, ignore_errors=True)


def _missing_in_image(client: Any, base_tag: str, wheels: Path) -> list[str]:
    """Requirements that pip, resolving offline inside the base image, cannot find among ``wheels``.

    The host's Python may differ from the image's in patch level, and markers such as
    ``python_full_version < "3.11.3"`` then pull in dependencies the host did not download."""
    import docker.errors

    script = ("python3 -m venv /tmp/v && /tmp/v/bin/pip install --dry-run --quiet --no-index "
              "--find-links /w -r /w/requirements.txt")
    try:
        client.containers.run(base_tag, ["bash", "-c", script], remove=True, network_mode="none",
                              volumes={str(wheels): {"bind": "/w", "mode": "ro"}}, stdout=True, stderr=True)
    except docker.errors.ContainerError as exc:
        text = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else str(exc.stderr)
        missing = [line.split("No matching distribution found for ", 1)[1].strip()
                   for line in text.splitlines() if "No matching distribution found for " in line]
        if not missing:
            raise ImageBuildError(f"offline pip resolution in {base_tag} failed: {text.strip()[-300:]}") from exc
        return [m.split(";")[0].strip() for m in missing]
    return []


def wheels_cache(root: Path, base_tag: str) -> Path:
    """Where the ops image's wheels for this requirements set and base image are kept (.stack/images/)."""
    key = hashlib.sha256(f"{base_tag}\n".encode() + "\n".join(_requirements(root)).encode()).hexdigest()[:16]
    return root / ".stack" / "images" / f"wheels-{key}"


def _download_wheels(root: Path, client: Any, base_tag: str, report: Reporter) -> Path:
    """The wheels of the ops image's requirements, checked by an offline resolution inside the base
    image, cached per requirements set under .stack/images/."""
    import sys

    reqs = _requirements(root)
    cache = wheels_cache(root, base_tag)
    if (cache / "requirements.txt").exists():
        report.info(f"wheels cached in {cache}")
        return cache
    tmp = cache.with_name(cache.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "requirements.txt").write_text("\n".join(reqs) + "\n")
    wanted = reqs
    for _round in range(5):
        report.info(f"pip download {len(wanted)} requirement(s) (+ dependencies) into {cache.name}")
        _stream(Cmd([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--dest",
                     str(tmp), *wanted]), report, "pip download")
        wanted = _missing_in_image(client, base_tag, tmp)
        if not wanted:
            break
        report.info(f"the image's Python also needs: {', '.join(wanted)}")
    else:
        raise ImageBuildError(f"wheels for {', '.join(wanted)} still missing after 5 rounds of pip download")
    shutil.rmtree(cache, ignore_errors=True)
    tmp.rename(cache)
    return cache


def _ops_context(root: Path, client: Any, base_tag: str, spec: ImageSpec, report: Reporter,
                 workdir: Path) -> Path:
    assert spec.context is not None
    ctx = Path(tempfile.mkdtemp(prefix="ops-context-", dir=workdir))
    ignore = shutil.ignore_patterns(*BUILD_LEFTOVERS)
    for item in spec.context.iterdir():
        if ignore(str(spec.context), [item.name]):
            continue  # a __pycache__ a test run left beside the scripts: not an input (nor in the hash)
        if item.is_dir():
            shutil.copytree(item, ctx / item.name, ignore=ignore)
        else:
            shutil.copy2(item, ctx / item.name)
    shutil.copytree(_download_wheels(root, client, base_tag, report), ctx / "wheels")
    debs = ctx / "debs"
    debs.mkdir()
    report.info(f"apt-get download {' '.join(OPS_PACKAGES)} (installed in the image with dpkg)")
    _stream(Cmd([which("apt-get", "apt-get is part of Debian"), "download", *OPS_PACKAGES], cwd=debs), report,
            "apt-get download")
    for src, name in _ops_sources(root):
        dest = ctx / "src" / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dest, ignore=ignore)
        elif src.exists():
            shutil.copy2(src, dest)
    return ctx


def _docker_build(client: Any, context: Path, tag: str, buildargs: dict[str, str], labels: dict[str, str],
                  report: Reporter) -> None:
    last_error = ""
    tail: list[str] = []
    for chunk in client.api.build(path=str(context), tag=tag, buildargs=buildargs, labels=labels, rm=True,
                                  forcerm=True, pull=False, decode=True):
        if "error" in chunk:
            last_error = str(chunk.get("error", "")).strip()
        line = str(chunk.get("stream", "")).strip()
        if line.startswith("Step "):
            report.info(f"  {line[:110]}")
        elif line:
            tail = [*tail[-30:], *line.splitlines()]
    if last_error:
        errors = [t for t in tail if t.startswith(("ERROR", "E:", "Error"))]
        detail = errors[-1] if errors else last_error.splitlines()[-1]
        raise ImageBuildError(f"docker build of {tag} failed: {detail[:300]}")
    if _image(client, tag) is None:
        raise ImageBuildError(f"docker build of {tag} finished without producing the image")


# ----- the capability -------------------------------------------------------------------------------
def build(root: Path, report: Reporter, *, force: bool = False, only: list[str] | None = None,
          mirror: str = DEFAULT_MIRROR) -> list[BuildResult]:
    """Build (or reuse) every stand-in image in order; ``only`` limits it to some names (parents still
    count for the cache key but are not rebuilt unless missing)."""
    specs = plan(root)
    names = [s.name for s in specs]
    unknown = sorted(set(only or []) - set(names))
    if unknown:
        raise ImageBuildError(f"unknown image {unknown[0]!r}: accepted names are {', '.join(names)}")
    client = _client()
    workdir = root / ".stack" / "images"
    workdir.mkdir(parents=True, exist_ok=True)
    ids: dict[str, str] = {}
    results: list[BuildResult] = []
    total = time.monotonic()
    for spec in specs:
        wanted = only is None or spec.name in only
        parent_tag = next((s.tag for s in specs if s.name == spec.parent), None)
        parent_id = ids.get(spec.parent) if spec.parent else None
        if spec.parent and parent_id is None:
            parent = _image(client, parent_tag) if parent_tag else None
            if parent is None:
                raise ImageBuildError(
                    f"{spec.tag} needs {parent_tag}, which is missing: build it first (`invoke images.build`)"
                )
            parent_id = str(parent.id)
        digest = input_hash(spec, root, parent_id, mirror)
        existing = _image(client, spec.tag)
        started = time.monotonic()
        fresh = existing is not None and _labels(existing).get(LABEL_HASH) == digest
        if existing is not None and ((fresh and not force) or not wanted):
            report.step(f"{spec.tag}: up to date (cached)" if fresh else f"{spec.tag}: present (not selected)")
            ids[spec.name] = str(existing.id)
            results.append(BuildResult(spec.name, spec.tag, "cached", 0.0, str(existing.id),
                                       int(existing.attrs.get("Size", 0))))
            continue
        report.step(f"building {spec.tag} ({spec.description})")
        labels = {LABEL_STANDIN: "true" if spec.standin else "false", LABEL_HASH: digest, LABEL_ROLE: spec.name}
        if spec.name == "base":
            _build_base(client, spec, labels, mirror, report, workdir)
        else:
            buildargs = {**spec.buildargs, "BASE_IMAGE": str(parent_tag), "PYTHON_IMAGE": str(parent_tag)}
            if spec.name == "ops":
                ctx = _ops_context(root, client, str(parent_tag), spec, report, workdir)
                try:
                    _docker_build(client, ctx, spec.tag, buildargs, labels, report)
                finally:
                    shutil.rmtree(ctx, ignore_errors=True)
            else:
                assert spec.context is not None
                _docker_build(client, spec.context, spec.tag, buildargs, labels, report)
        image = _image(client, spec.tag)
        if image is None:
            raise ServiceError(f"{spec.tag} is missing right after its build: check `docker images`")
        seconds = time.monotonic() - started
        size = int(image.attrs.get("Size", 0))
        report.info(f"{spec.tag} built in {seconds:.1f}s ({human_bytes(size)})")
        ids[spec.name] = str(image.id)
        results.append(BuildResult(spec.name, spec.tag, "built", round(seconds, 1), str(image.id), size))
    retire(client, report)
    report.step(f"images ready in {time.monotonic() - total:.1f}s")
    return results


def _retired(client: Any) -> list[tuple[str, Any]]:
    """(tag, image) for every tag an older build gave one of its images and this plan no longer uses.

    Matched by the role label *and* the old tag together: an image that only inherits these labels
    from a stand-in parent (a backend compose built FROM the Python stand-in) is never matched."""
    found = []
    for role, tag in sorted(RETIRED_TAGS.items()):
        for image in client.images.list(filters={"label": [LABEL_HASH, f"{LABEL_ROLE}={role}"]}):
            if tag in image.tags:
                found.append((tag, image))
    return found


def _superseded(client: Any) -> list[Any]:
    """Untagged top-level images built here (carrying the input-hash label): what a rebuild left."""
    return list(client.images.list(filters={"dangling": True, "label": LABEL_HASH}))


def retire(client: Any, report: Reporter) -> None:
    """Remove the real-name tags of older builds (``postgres:15`` on a stand-in, ...) and the images
    that rebuilds superseded. A tag still used by a container is kept, with a warning."""
    import docker.errors

    for tag, image in _retired(client):
        try:
            client.images.remove(tag)
        except docker.errors.APIError as exc:
            report.warn(f"{tag} is an older build's stand-in but could not be removed "
                        f"({exc.explanation or exc}); remove its containers, then run `invoke images.build`")
            continue
        report.step(f"{tag}: removed the tag an older build put on stand-in {_short(image)}")
    for image in _superseded(client):
        try:
            client.images.remove(image.id)
        except docker.errors.APIError:
            continue  # still used by a container: listed by `invoke images.list` until it is gone
        report.step(f"removed superseded build {_short(image)}")


def list_images(root: Path, mirror: str = DEFAULT_MIRROR) -> list[ImageInfo]:
    """Each planned image: present, stand-in or real, and whether its inputs changed since it was built."""
    client = _client()
    specs = plan(root)
    tags = {s.name: s.tag for s in specs}
    infos = []
    for spec in specs:
        image = _image(client, spec.tag)
        if image is None:
            infos.append(ImageInfo(spec.name, spec.tag, False, None, None, "", None, spec.description))
            continue
        labels = _labels(image)
        parent = _image(client, tags[spec.parent]) if spec.parent else None
        standin = labels.get(LABEL_STANDIN) == "true"
        fresh = None
        if LABEL_HASH in labels and (spec.parent is None or parent is not None):
            fresh = labels[LABEL_HASH] == input_hash(spec, root, str(parent.id) if parent else None, mirror)
        infos.append(ImageInfo(spec.name, spec.tag, True, standin, fresh, _short(image),
                               int(image.attrs.get("Size", 0)), spec.description))
    for tag, image in _retired(client):
        infos.append(ImageInfo("retired", tag, True, True, False, _short(image), int(image.attrs.get("Size", 0)),
                               "an older build's stand-in on a real name: `invoke images.build` removes it"))
    for image in _superseded(client):
        infos.append(ImageInfo("superseded", "<none>", True, True, False, _short(image),
                               int(image.attrs.get("Size", 0)), "dangling: a rebuild replaced it"))
    return infos


def standin_environ(root: Path) -> dict[str, str]:
    """The compose variables that select the stand-ins instead of the real images
    (POSTGRES_IMAGE, REDIS_IMAGE, PYTHON_IMAGE)."""
    return {s.variable: s.tag for s in plan(root) if s.variable}
