"""Pushing verified images and sharing layers through a cache repo, against a real registry
(Debian's docker-registry on loopback, started by `make registry`).

A verified build's tags all reach the registry with the image id the engine has; a build
whose tests fail pushes nothing, to its tags or the cache repo; a push the registry refuses
is exit 1 with the registry's words and leaves the local tags; and a layer pushed to the
cache repo comes back from it, as a hit with the same id, once the engine lost it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass

import docker
import pytest

from tests.conftest import run_cli
from tests.integration.conftest import TestProject
from tests.integration.engines import registry_config_digest, registry_tags
from tests.integration.tinyproject import (
    new_project,
    remove_project_images,
    set_vars,
    spec_images,
    tiny_spec,
)

pytestmark = pytest.mark.integration

FAILING_SUITE = """\
def test_tiny_file_says_something_else(host):
    assert host.file("/etc/tiny.conf").contains("not what the role wrote")
"""


@dataclass
class Pushed:
    project: TestProject
    spec: str
    repo: str  # the repository path on the registry, e.g. rbt-ab12cd34/pab12cd34
    tags: list[str]
    report: dict


def remove_registry_tags(client: docker.DockerClient, registry: str, token: str) -> None:
    """Local names of this test's registry images (the project fixture knows only rbt-*)."""
    for image in client.images.list():
        for tag in image.tags:
            if tag.startswith((f"{registry}/rbt-{token}", "127.0.0.1:9/")):
                with contextlib.suppress(docker.errors.APIError):
                    client.images.remove(tag, force=True)


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory, engine: docker.DockerClient,
           registry: str) -> Iterator[Pushed]:
    """A tiny image built with --push to two tags on the loopback registry."""
    project = new_project(tmp_path_factory.mktemp("push") / "project", engine)
    try:
        spec = tiny_spec(project, "p")
        repo = f"rbt-{project.token}/{spec}"
        tags = [f"{registry}/{repo}:1.0", f"{registry}/{repo}:latest"]
        project.edit_spec(spec, tags=tags)
        set_vars(project, spec)  # content of its own: this build is never a cache hit
        result = run_cli("build", spec, "--push", "--json", cwd=project.root)
        assert result.rc == 0, result.output
        yield Pushed(project, spec, repo, tags, json.loads(result.stdout))
    finally:
        remove_registry_tags(engine, registry, project.token)
        remove_project_images(engine, project)


def test_a_verified_build_pushes_every_tag(pushed: Pushed) -> None:
    tags = registry_tags(pushed.repo) or []
    # Each tag, and the image's SBOM and attestation beside it under cosign's tags.
    assert [t for t in tags if not t.startswith("sha256-")] == ["1.0", "latest"]
    assert sorted(t.rsplit(".", 1)[1] for t in tags if t.startswith("sha256-")) == ["att", "sbom"]
    local = pushed.project.image_id(pushed.tags[0])
    assert local is not None and local == pushed.project.image_id(pushed.tags[1])
    # The registry holds the very image the engine verified: its config digest is the id.
    assert registry_config_digest(pushed.repo, "1.0") == local
    assert registry_config_digest(pushed.repo, "latest") == local
    (layer,) = [x for x in pushed.report["layers"] if x["layer"] == pushed.spec]
    assert layer["pushed"] == pushed.tags
    # Pushed last, after verification, the SBOM and provenance, and the tag step.
    assert list(layer["steps"])[-4:] == ["verify", "attest", "tag", "push"], layer["steps"]
    assert layer["steps"]["verify"] == "ok" and layer["steps"]["push"] == "ok"


def test_a_push_the_registry_refuses_is_exit_1_and_keeps_the_local_tags(
        pushed: Pushed) -> None:
    project, spec = pushed.project, pushed.spec
    before = project.image_id(pushed.tags[0])
    # Port 9 (discard) answers nothing: the engine cannot push there.
    dead = "127.0.0.1:9/rbt-nowhere/tiny:1"
    project.edit_spec(spec, tags=[*pushed.tags, dead])
    try:
        result = run_cli("build", spec, "--push", cwd=project.root)
    finally:
        project.edit_spec(spec, tags=pushed.tags)
    assert result.rc == 1, result.output
    errors = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: pushing {dead} failed: "), errors
    assert "127.0.0.1:9" in errors[0] and "Traceback" not in result.output
    # The layer was a cache hit, tagged before the push: every tag stays where it is.
    for tag in [*pushed.tags, dead]:
        assert project.image_id(tag) == before, tag
    assert project.build_containers() == []


def test_push_needs_verification(pushed: Pushed) -> None:
    result = run_cli("build", pushed.spec, "--push", "--no-verify", cwd=pushed.project.root)
    assert result.rc == 2, result.output
    assert "error: --push publishes verified images only; drop --no-verify" in result.stderr


def test_a_build_whose_tests_fail_pushes_nothing(project: TestProject, registry: str,
                                                  engine: docker.DockerClient) -> None:
    spec = tiny_spec(project, "x", suite=FAILING_SUITE)
    repo = f"rbt-{project.token}/{spec}"
    cache_repo = f"rbt-{project.token}/cache"
    project.edit_spec(spec, tags=[f"{registry}/{repo}:latest"])
    set_vars(project, spec)
    try:
        result = run_cli("build", spec, "--push", "--cache-repo", f"{registry}/{cache_repo}",
                         cwd=project.root)
        assert result.rc == 3, result.output
        assert "push ..." not in result.stderr, result.stderr
        assert registry_tags(repo) is None  # the registry never heard of it
        assert registry_tags(cache_repo) is None  # nor of anything in the cache repo
        assert project.image_id(f"{registry}/{repo}:latest") is None
        assert spec_images(engine, spec) == set()
    finally:
        remove_registry_tags(engine, registry, project.token)
        remove_project_images(engine, project)


def test_a_layer_comes_back_from_the_cache_repo_with_its_id(
        project: TestProject, registry: str, engine: docker.DockerClient) -> None:
    spec = tiny_spec(project, "c")
    set_vars(project, spec)
    cache_repo = f"{registry}/rbt-{project.token}/cache"
    try:
        first = run_cli("build", spec, "--cache-repo", cache_repo, "--json", cwd=project.root)
        assert first.rc == 0, first.output
        (built,) = json.loads(first.stdout)["layers"]
        assert not built["cached"] and built["steps"]["push"] == "ok"
        tags = registry_tags(f"rbt-{project.token}/cache") or []
        key = built["cache_key"].split(":")[-1][:40]
        assert f"{spec}-{key}" in tags, tags
        assert "from-rolebake-debian-bookworm" in tags, tags  # the base it starts on
        # The engine forgets the layer: the next build must find it in the cache repo.
        engine.images.remove(built["image_id"], force=True)
        plan = run_cli("plan", spec, "--cache-repo", cache_repo, "--json", cwd=project.root)
        assert plan.rc == 0, plan.output
        (row,) = json.loads(plan.stdout)["layers"]
        assert (row["status"], row["source"], row["image"]) == (
            "HIT", "cache repo", built["image_id"])
        shown = run_cli("plan", spec, "--cache-repo", cache_repo, cwd=project.root)
        assert "HIT, from the cache repo" in shown.stdout, shown.output
        again = run_cli("build", spec, "--cache-repo", cache_repo, "--json", cwd=project.root)
        assert again.rc == 0, again.output
        assert "cache cached: HIT, from the cache repo" in again.stderr, again.stderr
        (hit,) = json.loads(again.stdout)["layers"]
        assert hit["cached"] and hit["source"] == "cache repo"
        assert hit["image_id"] == built["image_id"] == project.image_id(project.tag(spec))
        # Now a local hit: the pulled image carries the local cache tag.
        third = run_cli("plan", spec, "--cache-repo", cache_repo, "--json", cwd=project.root)
        assert json.loads(third.stdout)["layers"][0]["source"] == "local"
    finally:
        remove_project_images(engine, project)


def test_a_bad_cache_repo_is_exit_2(project: TestProject) -> None:
    result = run_cli("plan", "web", "--cache-repo", "no-registry-part", cwd=project.root)
    assert result.rc == 2, result.output
    assert "expected REGISTRY/PATH" in result.stderr
    result = run_cli("build", "web", cwd=project.root,
                     env={"ROLEBAKE_CACHE_REPO": "Bad.Registry:5000/UPPER:tag"})
    assert result.rc == 2, result.output
    assert project.build_containers() == []
