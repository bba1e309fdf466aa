"""Two projects with the same group names build at once on one engine, apart.

Two Ansible repositories, each with a `webservers` group, in folders of their
own names: `rolebake init` names each project after its folder and tags its
images with that name. Both are built at the same time: neither waits for the
other's layer lock, and neither moves or reuses the other's tags.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import yaml

from tests.conftest import run_cli
from tests.integration.conftest import TestProject
from tests.integration.tinyproject import Build

pytestmark = pytest.mark.integration

SITE = """\
- name: Web servers
  hosts: webservers
  tasks:
    - name: Write the page
      ansible.builtin.copy:
        dest: /etc/shared-names.conf
        content: "{{ page_text }}\\n"
        mode: "0644"
    - name: Sleep when asked
      ansible.builtin.command: sleep 40
      changed_when: false
"""

WAITING = "another build of this layer is running; waiting"


def ansible_repo(root: Path, page: str, client: docker.DockerClient) -> TestProject:
    (root / "group_vars").mkdir(parents=True)
    (root / "site.yml").write_text(SITE)
    (root / "hosts").write_text("[webservers]\nweb1\n")
    (root / "group_vars" / "webservers.yml").write_text(f"page_text: {page}\n")
    return TestProject(root=root, token=root.name, client=client)


def remove_project(client: docker.DockerClient, name: str) -> None:
    for image in client.images.list():
        for tag in image.tags:
            if tag.startswith((f"{name}/", f"rolebake-cache/{name}/")):
                with contextlib.suppress(docker.errors.APIError):
                    client.images.remove(tag, force=True)


@pytest.fixture
def projects(tmp_path: Path, engine: docker.DockerClient) -> Iterator[list[TestProject]]:
    token = uuid.uuid4().hex[:8]
    made = [ansible_repo(tmp_path / f"{name}-{token}", name, engine) for name in ("shop", "blog")]
    try:
        yield made
    finally:
        for project in made:
            remove_project(engine, project.root.name)


def test_two_projects_with_the_same_groups_build_at_once_apart(
        projects: list[TestProject]) -> None:
    for project in projects:
        result = run_cli("init", "--inventory", "hosts", cwd=project.root)
        assert result.rc == 0, result.output
        name = project.root.name
        assert f"wrote rolebake.yml (project: {name})" in result.stdout
        assert "added .rolebake/ to .gitignore" in result.stdout
        spec = yaml.safe_load((project.root / "images" / "webservers.yml").read_text())
        assert spec["tags"] == [f"{name}/webservers:latest"]

    shop, blog = projects
    first = Build(shop, "webservers")
    second = None
    try:
        first.wait_for(r"task Sleep when asked")  # shop holds its webservers lock now
        second = Build(blog, "webservers")
        # blog's layer of the same name gets to the same task while shop's still sleeps
        # there: it did not wait for shop's lock.
        second.wait_for(r"task Sleep when asked")
        assert first.proc.poll() is None, first.text
        results = [first.finish(), second.finish()]
    finally:
        first.kill()
        if second is not None:
            second.kill()
    for result in results:
        assert result.rc == 0, result.output
        assert WAITING not in result.stderr, result.stderr
        assert "cache cached: HIT" not in result.stderr

    client = shop.client
    images = {}
    for project in projects:
        name = project.root.name
        image = client.images.get(f"{name}/webservers:latest")
        images[name] = image.id
        assert image.labels["rolebake.project"] == name
        page = client.containers.run(image.id, ["cat", "/etc/shared-names.conf"],
                                     entrypoint=[], remove=True).decode()
        assert page == f"{name.split('-')[0]}\n"
        cache = [i.id for i in client.images.list(f"rolebake-cache/{name}/webservers")]
        assert cache == [image.id]
        # Every container either build made is gone.
        for log in (project.root / ".rolebake" / "logs").glob("*.log"):
            build_id = log.stem.rsplit("-", 1)[-1]
            assert client.containers.list(
                all=True, filters={"label": f"rolebake.build-id={build_id}"}) == []
    assert len(set(images.values())) == 2
