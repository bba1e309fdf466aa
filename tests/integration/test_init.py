"""`rolebake init` on a copy of the example repository without images/: the specs it
writes build and pass their suites."""

from __future__ import annotations

import shutil

import pytest
import yaml

from tests.conftest import run_cli
from tests.integration.conftest import TestProject

pytestmark = pytest.mark.integration


def test_init_writes_specs_that_build(project: TestProject) -> None:
    shutil.rmtree(project.root / "images")
    shutil.rmtree(project.root / "tests" / "images")

    result = run_cli("init", cwd=project.root)
    assert result.rc == 0, result.output
    for name in ("base", "web", "app", "dev"):
        assert f"wrote images/{name}.yml" in result.stdout
        assert f"wrote tests/images/{name}/test_{name}.py" in result.stdout
    assert "ready" in result.stderr and "config.cmd" in result.stderr
    web = yaml.safe_load((project.root / "images" / "web.yml").read_text())
    assert web["from"] == "base" and web["groups"] == ["web"]
    assert web["playbook"] == "playbooks/site.yml"
    # Named after its folder, its tags carry the name; its state is kept out of git.
    assert "wrote rolebake.yml (project: project)" in result.stdout
    assert web["tags"] == ["project/web:latest"]
    assert ".rolebake/" in (project.root / ".gitignore").read_text().splitlines()

    # Nothing is overwritten: a second run names what exists and writes nothing.
    again = run_cli("init", cwd=project.root)
    assert again.rc == 2 and "images/web.yml" in again.stderr, again.output

    # The tags go into the test's namespace, so no real tag moves.
    for spec in (project.root / "images").glob("*.yml"):
        data = yaml.safe_load(spec.read_text())
        data["tags"] = [project.tag(spec.stem)]
        spec.write_text(yaml.safe_dump(data, sort_keys=False))
    built = run_cli("build", "web", cwd=project.root)
    assert built.rc == 0, built.output
    assert project.image_id(project.tag("web")) is not None
    assert project.image_id(project.tag("base")) is not None
    out = project.client.containers.run(project.tag("web"), ["cat", "/var/www/site/index.html"],
                                        entrypoint=[], remove=True, user="root").decode()
    assert "rolebake example site (group web)" in out
    assert project.build_containers() == []
