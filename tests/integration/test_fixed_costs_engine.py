"""What a layer's fixed cost was cut by, on a real engine, still doing what it did.

- A container whose block ends without an error is removed on a thread:
  `settle` waits for it; a block that fails removes its container before the
  error goes on.
- A commit pauses the container unless only its init and keep-alive run.
- Verification's pytest, started before its container, is told the container
  and runs the suite on it (test names as before).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from rolebake import verify
from rolebake.engine import BUILD_ID_LABEL, ROLE_LABEL, DockerEngine
from tests.integration.conftest import BASE_IMAGE

pytestmark = pytest.mark.integration


@pytest.fixture
def token(engine: docker.DockerClient) -> Iterator[str]:
    """A build id of this test's own; every container carrying it is gone at the end."""
    value = f"rbt-fixed-{uuid.uuid4().hex[:8]}"
    yield value
    for container in engine.containers.list(all=True,
                                            filters={"label": f"{BUILD_ID_LABEL}={value}"}):
        container.remove(force=True)


def _ours(client: docker.DockerClient, token: str) -> list[str]:
    return [c.name for c in client.containers.list(
        all=True, filters={"label": f"{BUILD_ID_LABEL}={token}"})]


def test_a_removal_left_to_the_background_is_done_when_settled(
        engine: docker.DockerClient, token: str) -> None:
    rolebake_engine = DockerEngine.connect(timeout=120)
    labels = {ROLE_LABEL: "build", BUILD_ID_LABEL: token}
    with rolebake_engine.container(BASE_IMAGE, name=f"{token}-ok", labels=labels,
                                   remove_in_background=True) as container:
        # a writable layer worth deleting: the removal takes a while
        assert rolebake_engine.exec(container, ["cp", "-a", "/usr/share", "/copy"]).rc == 0
    assert rolebake_engine.settle() == []
    assert _ours(engine, token) == []
    # A block that fails: its container is gone before the error reaches the caller.
    with pytest.raises(RuntimeError, match="step failed"), rolebake_engine.container(
            BASE_IMAGE, name=f"{token}-failed", labels=labels, remove_in_background=True):
        raise RuntimeError("step failed")
    assert _ours(engine, token) == []


def test_a_commit_pauses_only_a_container_where_something_runs(
        engine: docker.DockerClient, token: str) -> None:
    rolebake_engine = DockerEngine.connect(timeout=120)
    labels = {ROLE_LABEL: "build", BUILD_ID_LABEL: token}
    with rolebake_engine.container(BASE_IMAGE, name=f"{token}-commit",
                                   labels=labels) as container:
        assert rolebake_engine._idle(container)
        rolebake_engine.exec(container, ["sh", "-c", "sleep 300 >/dev/null 2>&1 &"])
        assert not rolebake_engine._idle(container)


def test_the_suite_started_before_its_container_runs_on_it(
        engine: docker.DockerClient, token: str, tmp_path: Path) -> None:
    del engine
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_box.py").write_text(
        "def test_box(host):\n"
        "    assert host.file('/etc/debian_version').exists\n"
        "    assert host.run('hostname').rc == 0\n", encoding="utf-8")
    rolebake_engine = DockerEngine.connect(timeout=120)
    image = rolebake_engine.image(BASE_IMAGE)
    assert image is not None
    cases = verify.run_suite(rolebake_engine, image.id, tests, ready=None,
                             project_root=tmp_path, name="fixed", build_id=token)
    assert [(c.name, c.outcome) for c in cases] == [("test_box", "passed")], cases
    assert rolebake_engine.settle() == []
