"""Credentials come from the docker client's config, as for every Docker tool, and go nowhere.

A second loopback registry that wants a login (htpasswd) takes a push and serves the cache
repo when DOCKER_CONFIG holds the login; without one, or with a wrong one, the build or plan
is exit 1 with the registry's words. The password never shows in any output or file
rolebake leaves.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.conftest import run_cli
from tests.integration.conftest import TestProject
from tests.integration.engines import docker_config, registry_with_login
from tests.integration.tinyproject import remove_project_images, set_vars, tiny_spec

pytestmark = pytest.mark.integration

USER = "rolebake-ci"


@pytest.fixture(scope="module")
def password() -> str:
    return f"pw-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def locked(registry: str, password: str) -> Iterator[str]:
    del registry  # the docker-registry package `make registry` installs
    with registry_with_login(USER, password) as address:
        yield address


def test_the_login_comes_from_the_docker_config_and_is_never_shown(
        project: TestProject, engine: docker.DockerClient, locked: str, password: str,
        tmp_path: Path) -> None:
    spec = tiny_spec(project, "l")
    set_vars(project, spec)
    tag = f"{locked}/rbt-{project.token}/{spec}:1"
    project.edit_spec(spec, tags=[tag])
    cache_repo = f"{locked}/rbt-{project.token}/cache"
    logged_in = docker_config(tmp_path / "in", locked, USER, password)
    nobody = docker_config(tmp_path / "out", None)
    wrong = docker_config(tmp_path / "wrong", locked, USER, "not-the-password")
    outputs = []
    try:
        built = run_cli("build", spec, "--push", "--cache-repo", cache_repo, "--json",
                        cwd=project.root, env=logged_in)
        outputs.append(built.output)
        assert built.rc == 0, built.output
        (layer,) = json.loads(built.stdout)["layers"]
        assert layer["pushed"] == [tag], layer
        engine.images.remove(layer["image_id"], force=True)  # only the cache repo has it now

        # Reading the cache repo needs the login too: plan reads manifests itself.
        seen = run_cli("plan", spec, "--cache-repo", cache_repo, "--json", cwd=project.root,
                       env=logged_in)
        outputs.append(seen.output)
        assert seen.rc == 0, seen.output
        (row,) = json.loads(seen.stdout)["layers"]
        assert (row["status"], row["source"], row["image"]) == (
            "HIT", "cache repo", layer["image_id"])

        refused = run_cli("plan", spec, "--cache-repo", cache_repo, cwd=project.root, env=nobody)
        outputs.append(refused.output)
        assert refused.rc == 1, refused.output
        assert f"error: {locked} asks for credentials and the docker client has none for it" \
            in refused.stderr
        assert f"hint: docker login {locked}" in refused.stderr

        denied = run_cli("build", spec, "--cache-repo", cache_repo, cwd=project.root, env=wrong)
        outputs.append(denied.output)
        assert denied.rc == 1, denied.output
        assert f"error: {locked} refused the docker client's credentials" in denied.stderr
        assert project.build_containers() == []
    finally:
        remove_project_images(engine, project)
        for image in engine.images.list():
            for name in image.tags:
                if name.startswith(f"{locked}/"):
                    engine.images.remove(name, force=True)
    for text in outputs:
        assert password not in text
    for path in project.root.rglob("*"):
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path
