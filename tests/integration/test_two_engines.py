"""Two engines sharing one cache repo: `web` built on the shared engine is, on a second and
empty engine of the test's own, pulled layer by layer: no container, the same image ids.

The second engine is a dockerd with its own data root, socket, exec root and pidfile, no
bridge and no iptables rules; it reaches the loopback registry through the host's loopback,
as the daemon itself pulls. It is stopped and removed when the module ends.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import docker
import pytest

from tests.conftest import run_cli
from tests.integration.conftest import BASE_IMAGE, TestProject
from tests.integration.engines import OwnEngine, empty_dockerd, registry_tags
from tests.integration.tinyproject import new_project, remove_project_images

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def second() -> Iterator[OwnEngine]:
    try:
        with empty_dockerd() as own:
            yield own
    except FileNotFoundError as exc:  # no dockerd binary: not this machine's shape
        pytest.fail(f"cannot start a second dockerd: {exc}")


def layers(stdout: str) -> dict[str, dict]:
    return {row["layer"]: row for row in json.loads(stdout)["layers"]}


def test_web_built_on_one_engine_is_pulled_on_another(
        tmp_path_factory: pytest.TempPathFactory, engine: docker.DockerClient,
        registry: str, second: OwnEngine) -> None:
    project: TestProject = new_project(tmp_path_factory.mktemp("fleet") / "project", engine)
    cache_repo = f"{registry}/rbt-{project.token}/cache"
    try:
        first = run_cli("build", "web", "--cache-repo", cache_repo, "--json", cwd=project.root)
        assert first.rc == 0, first.output
        built = layers(first.stdout)
        ids = {name: row["image_id"] for name, row in built.items()}
        assert set(ids) == {"base", "web"} and all(ids.values()), built
        keys = {name: row["cache_key"].split(":")[-1][:40] for name, row in built.items()}
        assert set(registry_tags(f"rbt-{project.token}/cache") or []) == {
            f"base-{keys['base']}", f"web-{keys['web']}", "from-rolebake-debian-bookworm"}

        assert second.client.images.list() == []  # empty: no base, no layer
        plan = run_cli("plan", "web", "--cache-repo", cache_repo, "--json", cwd=project.root,
                       env=second.env)
        assert plan.rc == 0, plan.output
        planned = layers(plan.stdout)
        for name in ("base", "web"):
            assert (planned[name]["status"], planned[name]["source"]) == ("HIT", "cache repo")
            assert planned[name]["image"] == ids[name]
        assert second.client.images.list() == []  # `plan` pulled nothing

        since = int(time.time()) - 1
        result = run_cli("build", "web", "--cache-repo", cache_repo, "--json",
                         cwd=project.root, env=second.env)
        until = int(time.time()) + 1
        assert result.rc == 0, result.output
        pulled = layers(result.stdout)
        for name in ("base", "web"):
            assert pulled[name]["cached"] and pulled[name]["source"] == "cache repo", pulled
            assert pulled[name]["image_id"] == ids[name]
        assert "[base] rolebake/debian:bookworm pulled from the cache repo" in result.stderr
        created = list(second.client.events(since=since, until=until, decode=True,
                                            filters={"type": "container"}))
        assert created == [], created
        assert second.client.containers.list(all=True) == []
        # The same ids under the spec's tags, the base included.
        assert second.client.images.get(project.tag("web")).id == ids["web"]
        assert second.client.images.get(project.tag("base")).id == ids["base"]
        assert second.client.images.get(BASE_IMAGE).id == engine.images.get(BASE_IMAGE).id

        again = run_cli("plan", "web", "--cache-repo", cache_repo, "--json", cwd=project.root,
                        env=second.env)
        assert {r["source"] for r in layers(again.stdout).values()} == {"local"}
    finally:
        remove_project_images(engine, project)
