"""Integration tests run against a real Docker engine and remove all they create.

Each test works in its own copy of the example project whose tags are renamed
into a namespace of its own, so no test moves the repository's real tags and
leftovers can be told apart from other builds running at the same time.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
import yaml

from rolebake.engine import BUILD_ID_LABEL
from tests.conftest import REPO

BASE_IMAGE = "rolebake/debian:bookworm"


def _engine() -> docker.DockerClient:
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs a Docker engine and none answers: {exc}")
        pytest.skip(f"no Docker engine: {exc}")
    return client


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[docker.DockerClient]:
    """The Docker engine; missing in CI is a failure, never a skip.

    Layers with the same inputs are cache hits across the tests of one session
    (that is what keeps the tier fast); the internal cache tags the session's
    own builds made are removed when it ends, so it leaves no `rolebake-cache/*`
    behind. Another session's tags stay, even when they appeared meanwhile: its
    builds are told apart by the build id each layer's log file is named with.
    The session also checks it left the host's `docker0` bridge in place (a
    dockerd started with `--bridge=none` in the host's namespace deletes it).
    """
    client = _engine()
    try:
        client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{BASE_IMAGE} is missing: run `make base` first")
    before = _cache_tags(client)
    had_bridge = _DOCKER0.exists()
    yield client
    ours = _session_build_ids(tmp_path_factory.getbasetemp())
    attested = _session_attested(tmp_path_factory.getbasetemp())
    for tag, (build_id, image_id) in sorted(_cache_tags(client).items()):
        # A normalised image carries no build id (normalise.py): its attest folder says
        # that this session built it.
        if tag not in before and (build_id in ours or image_id in attested):
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(tag, force=True)
    if had_bridge and not _DOCKER0.exists():
        pytest.fail("the host's docker0 bridge was deleted during the session")


_DOCKER0 = Path("/sys/class/net/docker0")


def _cache_tags(client: docker.DockerClient) -> dict[str, tuple[str, str]]:
    """Every `rolebake-cache/*` tag on the engine, with the build id and the id of its image."""
    return {tag: ((image.labels or {}).get(BUILD_ID_LABEL, ""), str(image.id))
            for image in client.images.list() for tag in image.tags
            if tag.startswith("rolebake-cache/")}


def _session_attested(basetemp: Path) -> set[str]:
    """Image ids this session's builds attested (`.rolebake/attest/<hex>`)."""
    return {f"sha256:{folder.name}" for folder in basetemp.glob("**/.rolebake/attest/*")}


def _session_build_ids(basetemp: Path) -> set[str]:
    """Build ids of this session's builds: each layer's log is `<layer>-<build id>.log`."""
    return {log.stem.rsplit("-", 1)[-1]
            for log in basetemp.glob("**/.rolebake/logs/*.log")}


@dataclass
class TestProject:
    """A throwaway copy of the example project with its own tag namespace."""

    __test__ = False

    root: Path
    token: str
    client: docker.DockerClient

    def tag(self, image: str, variant: str = "latest") -> str:
        """The renamed tag of an example image, e.g. tag('web') -> rbt-ab12/web:latest."""
        return f"rbt-{self.token}/{image}:{variant}"

    def spec(self, name: str) -> Path:
        return self.root / "images" / f"{name}.yml"

    def edit_spec(self, name: str, **changes: object) -> None:
        data = yaml.safe_load(self.spec(name).read_text())
        data.update(changes)
        self.spec(name).write_text(yaml.safe_dump(data, sort_keys=False))

    def image_id(self, ref: str) -> str | None:
        try:
            return str(self.client.images.get(ref).id)
        except docker.errors.ImageNotFound:
            return None

    def build_containers(self) -> list[str]:
        """Containers rolebake made for builds or checks of this project, still present.

        In CI the tests run one at a time, so every build, verify or scan
        container counts; on a shared development engine only those whose name
        or layer carries this project's token do.
        """
        strict = os.environ.get("CI") == "true"
        found = []
        for role in ("build", "verify", "scan"):
            for container in self.client.containers.list(
                    all=True, filters={"label": f"rolebake.role={role}"}):
                labels = container.labels
                if strict or self.token in container.name \
                        or self.token in labels.get("rolebake.layer", ""):
                    found.append(container.name)
        return found


def copy_project(dest: Path, token: str) -> None:
    """Copy the example project, renaming every tag into rbt-<token>/."""
    for part in ("roles", "images", "playbooks", "cookbooks"):
        if (REPO / part).exists():
            shutil.copytree(REPO / part, dest / part, symlinks=True)
    shutil.copytree(REPO / "tests" / "images", dest / "tests" / "images",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for spec in (dest / "images").glob("*.yml"):
        data = yaml.safe_load(spec.read_text())
        data["tags"] = [_rename(t, token) for t in data.get("tags") or
                        [f"rolebake/{spec.stem}:latest"]]
        for variant in (data.get("variants") or {}).values():
            variant["tags"] = [_rename(t, token) for t in variant.get("tags") or []]
        spec.write_text(yaml.safe_dump(data, sort_keys=False))


def _rename(tag: str, token: str) -> str:
    name = tag.split("/", 1)[-1]
    return f"rbt-{token}/{name}"


@pytest.fixture
def project(tmp_path: Path, engine: docker.DockerClient) -> Iterator[TestProject]:
    """A copy of the example project; every image tagged into its namespace is removed after."""
    token = uuid.uuid4().hex[:8]
    root = tmp_path / "project"
    root.mkdir()
    copy_project(root, token)
    yield TestProject(root=root, token=token, client=engine)
    for image in engine.images.list():
        for tag in image.tags:
            if tag.startswith(f"rbt-{token}/"):
                with contextlib.suppress(docker.errors.APIError):
                    engine.images.remove(tag, force=True)


@pytest.fixture(scope="session")
def registry() -> str:
    """The loopback registry `make registry` starts; missing in CI is a failure."""
    from tests.integration.engines import REGISTRY, registry_answers

    if not registry_answers():
        message = f"no registry answers at {REGISTRY}: run `make registry`"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return REGISTRY
