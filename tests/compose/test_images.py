"""The stand-in images on the real Docker engine: `images.build`'s clean-up removes the real-name tags
an older build left, and nothing that merely looks like one of its images."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from ci import images
from stackops.report import NullReporter
from stackops.runtime.compose import docker_client
from tests.compose.harness import ROOT, engine_lock

pytestmark = pytest.mark.compose

OLD_NAME = "redis:7"                          # what an older images.build tagged its Redis stand-in
LOOK_ALIKE = "impactbot-v2-backend:local"     # a retired name, here on an image whose role is "python"


def _tags(image_id: str) -> list[str]:
    out = subprocess.run(["docker", "image", "inspect", "--format", "{{join .RepoTags \" \"}}", image_id],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


@pytest.fixture
def scratch_tags() -> Iterator[list[str]]:
    """Tags this test puts on stand-ins, removed afterwards; a real image under either name is never touched.
    Under the engine lock "tags": the same test in another harness slot uses the same names."""
    with engine_lock("tags"):
        for tag in (OLD_NAME, LOOK_ALIKE):
            if subprocess.run(["docker", "image", "inspect", tag], capture_output=True, check=False).returncode == 0:
                pytest.skip(f"{tag} exists on this machine; this test only uses names that are free")
        made: list[str] = []
        yield made
        for tag in made:
            subprocess.run(["docker", "image", "rm", tag], capture_output=True, check=False)


def test_build_cleanup_removes_an_older_builds_real_name_and_keeps_look_alikes(scratch_tags: list[str]) -> None:
    client = docker_client()
    redis_standin = client.images.get(f"{images.STANDIN}/redis:7")
    python_standin = client.images.get(f"{images.STANDIN}/python:3.11-slim")
    # what an older build left: its Redis stand-in also tagged redis:7
    subprocess.run(["docker", "tag", redis_standin.id, OLD_NAME], check=True)
    scratch_tags.append(OLD_NAME)
    # an image that carries a stand-in's labels under a retired name of another role (like a backend that
    # compose built FROM the Python stand-in, which inherits its labels)
    subprocess.run(["docker", "tag", python_standin.id, LOOK_ALIKE], check=True)
    scratch_tags.append(LOOK_ALIKE)

    stale = [(i.name, i.tag) for i in images.list_images(ROOT) if i.up_to_date is False]
    assert ("retired", OLD_NAME) in stale and ("retired", LOOK_ALIKE) not in stale

    images.retire(client, NullReporter())

    assert OLD_NAME not in _tags(redis_standin.id)
    assert f"{images.STANDIN}/redis:7" in _tags(redis_standin.id)  # the stand-in itself stays
    assert LOOK_ALIKE in _tags(python_standin.id)
    assert not [i for i in images.list_images(ROOT) if i.name == "retired" and i.tag == OLD_NAME]
