"""The core build-and-verify path through Podman's Docker-compatible API.

A `podman system service` of the test's own (own storage root and socket) stands in for
the engine: `DOCKER_HOST` points rolebake, Ansible's docker_api connection and testinfra's
`docker` CLI at it. The base image comes through the cache repo from the shared Docker
engine (the same id on both), `web` is built and verified on Podman, a failing suite
leaves no tag there, and a Podman-built layer keeps its id through the registry.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator

import docker
import pytest

from tests.conftest import run_cli
from tests.integration.conftest import BASE_IMAGE, TestProject
from tests.integration.engines import OwnEngine, podman_service, registry_config_digest
from tests.integration.tinyproject import new_project, remove_project_images, set_vars, tiny_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FAILING_SUITE = """\
def test_tiny_file_says_something_else(host):
    assert host.file("/etc/tiny.conf").contains("not what the role wrote")
"""


@pytest.fixture(scope="module")
def podman() -> Iterator[OwnEngine]:
    if shutil.which("podman") is None:
        message = "podman is not installed: run `make podman`"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    with podman_service() as own:
        yield own


@pytest.fixture(scope="module")
def on_podman(tmp_path_factory: pytest.TempPathFactory, engine: docker.DockerClient,
              registry: str, podman: OwnEngine) -> Iterator[tuple[TestProject, str]]:
    """A project whose base image came to Podman through the cache repo."""
    project = new_project(tmp_path_factory.mktemp("podman") / "project", engine)
    cache_repo = f"{registry}/rbt-{project.token}/cache"
    try:
        shared = run_cli("base", "--cache-repo", cache_repo, cwd=project.root)
        assert shared.rc == 0, shared.output
        assert "pushed to the cache repo" in shared.stdout, shared.output
        pulled = run_cli("base", "--cache-repo", cache_repo, cwd=project.root, env=podman.env)
        assert pulled.rc == 0, pulled.output
        assert "pulled from the cache repo" in pulled.stdout, pulled.output
        assert podman.client.images.get(BASE_IMAGE).id == engine.images.get(BASE_IMAGE).id
        yield project, cache_repo
    finally:
        remove_project_images(engine, project)


def test_web_builds_and_verifies_on_podman(on_podman: tuple[TestProject, str],
                                           podman: OwnEngine) -> None:
    project, _ = on_podman
    result = run_cli("build", "web", "--json", cwd=project.root, env=podman.env)
    assert result.rc == 0, result.output
    report = {row["layer"]: row for row in json.loads(result.stdout)["layers"]}
    for name in ("base", "web"):
        row = report[name]
        assert not row["cached"] and row["steps"]["verify"] == "ok", row
        suite = [c for c in row["tests"]["cases"] if c["suite"] != "metadata"]
        assert suite and all(c["outcome"] == "passed" for c in suite), row["tests"]
    client = podman.client
    image = client.images.get(project.tag("web"))
    assert image.id == report["web"]["image_id"]
    config = image.attrs["Config"]
    assert config["Cmd"] == ["nginx", "-g", "daemon off;"] and config["Entrypoint"] in ([], None)
    assert image.labels["rolebake.role"] == "image" and image.labels["rolebake.spec"] == "web"
    assert json.loads(image.labels["rolebake.inputs"])["parent"] == report["base"]["image_id"]
    page = client.containers.run(image.id, ["/bin/sh", "-c", (
        "cat /var/www/site/index.html; test -e /usr/bin/python3 && echo PYTHON; "
        "ls -A /var/lib/apt/lists | grep -v '^partial$' || true")], entrypoint=[], remove=True)
    assert b"rolebake example site" in page and b"PYTHON" not in page
    left = [c.name for c in client.containers.list(all=True)
            if c.labels.get("rolebake.role") in ("build", "verify", "scan")]
    assert left == []


def test_a_failing_suite_on_podman_is_exit_3_and_no_tag(on_podman: tuple[TestProject, str],
                                                       podman: OwnEngine) -> None:
    project, _ = on_podman
    spec = tiny_spec(project, "x", suite=FAILING_SUITE)
    set_vars(project, spec)
    result = run_cli("build", spec, cwd=project.root, env=podman.env)
    assert result.rc == 3, result.output
    assert "test_tiny_file_says_something_else" in result.stderr
    with pytest.raises(docker.errors.ImageNotFound):
        podman.client.images.get(project.tag(spec))
    assert [c.name for c in podman.client.containers.list(all=True)] == []


def test_a_podman_layer_keeps_its_id_through_the_cache_repo(
        on_podman: tuple[TestProject, str], podman: OwnEngine, registry: str) -> None:
    project, cache_repo = on_podman
    result = run_cli("build", "web", "--cache-repo", cache_repo, "--json", cwd=project.root,
                     env=podman.env)
    assert result.rc == 0, result.output
    web = {row["layer"]: row for row in json.loads(result.stdout)["layers"]}["web"]
    assert web["cached"] and web["steps"]["push"] == "ok", web
    key = web["cache_key"].split(":")[-1][:40]
    path = cache_repo.removeprefix(f"{registry}/")
    assert registry_config_digest(path, f"web-{key}") == web["image_id"]
