"""images.build / images.list: the offline stand-in images for the compose environments."""

from __future__ import annotations

from pathlib import Path

from invoke import Collection, task

from stackops.cli import JSON_HELP, guarded, print_json, reporter, table

DEFAULT_MIRROR = "http://deb.debian.org/debian"  # same as stackops.images.DEFAULT_MIRROR (kept light here)


@task(help={
    "force": "rebuild every selected image even when its inputs did not change",
    "only": "comma-separated image names to build (base, postgres, redis, python, backend, backend-broken, ops)",
    "mirror": "Debian mirror for debootstrap",
    "json": JSON_HELP,
})
@guarded
def build(c, force=False, only="", mirror=DEFAULT_MIRROR, json=False):
    """Build the offline images (Debian rootfs via debootstrap, then docker builds); cached by input hash."""
    from stackops import images

    names = [n.strip() for n in only.split(",") if n.strip()] or None
    results = images.build(Path(c.config.stackops_root), reporter(json), force=force, only=names, mirror=mirror)
    if json:
        print_json(results)
        return
    from stackops.report import human_bytes

    print(table(["image", "tag", "action", "seconds", "size"],
                [[r.name, r.tag, r.action, r.seconds, human_bytes(r.size_bytes)] for r in results]))


@task(name="list", help={"json": JSON_HELP})
@guarded
def list_(c, json=False):
    """Show each image the compose files use: present, stand-in or real, up to date with its inputs."""
    from stackops import images
    from stackops.report import human_bytes

    infos = images.list_images(Path(c.config.stackops_root))
    if json:
        print_json(infos)
        return
    rows = []
    for i in infos:
        kind = "-" if i.standin is None else ("stand-in/built here" if i.standin else "real")
        fresh = {True: "yes", False: "STALE (run images.build)", None: "-"}[i.up_to_date]
        rows.append([i.name, i.tag, "present" if i.present else "MISSING", kind, fresh, i.image_id or "-",
                     human_bytes(i.size_bytes) if i.size_bytes is not None else "-"])
    print(table(["image", "tag", "state", "kind", "up to date", "id", "size"], rows))


ns = Collection("images")
ns.add_task(build)
ns.add_task(list_)
