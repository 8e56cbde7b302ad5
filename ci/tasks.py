"""images.build / images.list / images.env: stand-in images for machines without an image registry.

CI and offline developer machines only: where `docker pull` works, the compose files' defaults (the
real postgres:15, redis:7 and python:3.11-slim) are used and none of these tasks is needed.

``ci.images`` (the builder) is imported inside the task bodies: every `invoke` command loads this
collection, and only these three tasks need the builder.
"""

from __future__ import annotations

from pathlib import Path

from invoke import Collection, task

from stackops.cli import JSON_HELP, guarded, print_json, reporter, table


@task(help={
    "force": "rebuild every selected image even when its inputs did not change",
    "only": "comma-separated image names to build (the names `invoke images.list` shows)",
    "mirror": "Debian mirror for debootstrap (empty: the builder's default, deb.debian.org)",
    "json": JSON_HELP,
})
@guarded
def build(c, force=False, only="", mirror="", json=False):
    """For machines without an image registry: build the stand-in images (cached by input hash).

    A Debian rootfs via debootstrap, then docker builds, all under stackops-standin/ (never a real
    image's name); tags an older build put on real names are removed. Select them with `invoke images.env`.
    """
    from ci import images
    from stackops.report import human_bytes

    names = [n.strip() for n in only.split(",") if n.strip()] or None
    results = images.build(Path(c.config.stackops_root), reporter(json), force=force, only=names,
                           mirror=mirror or images.DEFAULT_MIRROR)
    if json:
        print_json(results)
        return
    print(table(["image", "tag", "action", "seconds", "size"],
                [[r.name, r.tag, r.action, r.seconds, human_bytes(r.size_bytes)] for r in results]))


@task(name="list", help={"json": JSON_HELP})
@guarded
def list_(c, json=False):
    """For machines without an image registry: each stand-in, present and up to date, and anything stale."""
    from ci import images
    from stackops.report import human_bytes

    infos = images.list_images(Path(c.config.stackops_root))
    if json:
        print_json(infos)
        return
    rows = []
    for i in infos:
        kind = "-" if i.standin is None else ("stand-in" if i.standin else "project image")
        fresh = {True: "yes", False: "STALE (run images.build)", None: "-"}[i.up_to_date]
        rows.append([i.name, i.tag, "present" if i.present else "MISSING", kind, fresh, i.image_id or "-",
                     human_bytes(i.size_bytes) if i.size_bytes is not None else "-"])
    print(table(["image", "tag", "state", "kind", "up to date", "id", "size"], rows))


@task(name="env")
@guarded
def env(c):
    """For machines without an image registry: the compose variables that select the stand-ins.

    Append them to compose/.env (`invoke images.env >> compose/.env`), or export them
    (`export $(invoke images.env)`); plain `docker compose` and `invoke env.up` then use the stand-ins.
    """
    from ci import images

    for name, tag in images.standin_environ(Path(c.config.stackops_root)).items():
        print(f"{name}={tag}")


ns = Collection("images")
ns.add_task(build)
ns.add_task(list_)
ns.add_task(env)
