"""The cache on a real engine (invariant 5): same inputs hit, any changed input misses
in exactly the layers above it, and `rolebake plan` names the input that changed.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.conftest import run_cli
from tests.integration.conftest import BASE_IMAGE, TestProject, copy_project

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory,
          engine: docker.DockerClient) -> Iterator[TestProject]:
    """A project whose base, web, web:dev and app layers are all built."""
    token = uuid.uuid4().hex[:8]
    root = tmp_path_factory.mktemp("cache") / "project"
    root.mkdir()
    copy_project(root, token)
    project = TestProject(root=root, token=token, client=engine)
    result = run_cli("build", "web:dev", "app", cwd=root)
    assert result.rc == 0, result.output
    yield project
    for image in engine.images.list():
        for tag in image.tags:
            if tag.startswith(f"rbt-{token}/"):
                engine.images.remove(tag, force=True)


def plan(project: TestProject, *images: str) -> dict[str, dict]:
    result = run_cli("plan", *(images or ("web:dev", "app")), "--json", cwd=project.root)
    assert result.rc == 0, result.output
    return {row["layer"]: row for row in json.loads(result.stdout)["layers"]}


def statuses(rows: dict[str, dict]) -> dict[str, str]:
    return {layer: row["status"] for layer, row in rows.items()}


def edit(path: Path, old: str, new: str) -> str:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new))
    return text


def test_unchanged_build_creates_no_container(built: TestProject) -> None:
    assert set(statuses(plan(built)).values()) == {"HIT"}
    since = int(time.time()) - 1
    result = run_cli("build", "web:dev", "app", "--json", cwd=built.root)
    until = int(time.time()) + 1
    assert result.rc == 0, result.output
    layers = json.loads(result.stdout)["layers"]
    assert all(layer["cached"] for layer in layers), layers
    # Only this build's: the fixture's own build may have made its last verify
    # container within the window's first second.
    build_id = json.loads(result.stdout)["build_id"]
    created = [e for e in built.client.events(since=since, until=until, decode=True,
                                               filters={"type": "container", "event": "create"})
               if e["Actor"]["Attributes"].get("rolebake.build-id") in (build_id, None)]
    assert created == [], created


@pytest.mark.parametrize(
    ("path", "old", "new", "misses", "reason"),
    [
        ("roles/web/templates/index.html.j2", "</body>", "<!-- edited --></body>",
         {"web", "web:dev"}, "roles/web/templates/index.html.j2 changed"),
        ("images/web.yml", "web_port: 8080", "web_port: 8081",
         {"web", "web:dev"}, "var web_port changed"),
        ("images/app.yml", "user: app", "user: root",
         {"app"}, "config.user changed"),
        ("roles/python_runtime/tasks/main.yml", "---", "---\n# a comment changes the bytes",
         {"app"}, "roles/python_runtime/tasks/main.yml changed"),
        ("roles/common/defaults/main.yml", "Europe/Amsterdam", "Europe/Berlin",
         {"base", "web", "web:dev", "app"}, "roles/common/defaults/main.yml changed"),
    ],
    ids=["template-bytes", "var", "config", "role-dependency", "bottom-layer"],
)
def test_a_change_misses_exactly_the_layers_above_it(built: TestProject, path: str, old: str,
                                                    new: str, misses: set[str],
                                                    reason: str) -> None:
    target = built.root / path
    original = edit(target, old, new)
    try:
        rows = plan(built)
        assert {k for k, v in statuses(rows).items() if v == "MISS"} == misses, rows
        first = next(row for row in rows.values() if row["status"] == "MISS")
        assert reason in first["reasons"], first
    finally:
        target.write_text(original)
    assert set(statuses(plan(built)).values()) == {"HIT"}


def test_file_mode_is_an_input(built: TestProject) -> None:
    template = built.root / "roles/web/templates/index.html.j2"
    mode = template.stat().st_mode & 0o777
    template.chmod(0o600)
    try:
        rows = plan(built, "web")
        assert statuses(rows) == {"base": "HIT", "web": "MISS"}
        assert (f"roles/web/templates/index.html.j2 mode changed (0{mode:o} -> 0600)"
                in rows["web"]["reasons"])
    finally:
        template.chmod(mode)


def test_parent_image_is_an_input(built: TestProject, engine: docker.DockerClient) -> None:
    # A new base image (same files plus one) is a new parent id for the bottom layer.
    container = engine.containers.create(BASE_IMAGE, ["true"])
    try:
        new_base = container.commit(repository=f"rbt-{built.token}/debian", tag="touched",
                                    changes=['CMD ["bash"]'])
    finally:
        container.remove(force=True)
    spec = built.root / "images/base.yml"
    original = edit(spec, f"from: {BASE_IMAGE}", f"from: rbt-{built.token}/debian:touched")
    try:
        rows = plan(built, "web")
        assert statuses(rows) == {"base": "MISS", "web": "MISS"}
        assert any(r.startswith("parent image changed") for r in rows["base"]["reasons"])
        assert rows["web"]["reasons"] == ["parent base will be rebuilt first"]
    finally:
        spec.write_text(original)
        engine.images.remove(new_base.id, force=True)


def test_rebuild_after_a_change_reruns_only_the_layers_above(built: TestProject) -> None:
    template = built.root / "roles/web/templates/index.html.j2"
    # A mark no earlier run used, so the engine cannot already hold this build.
    mark = f"<!-- rebuilt {uuid.uuid4().hex} -->"
    original = edit(template, "</body>", mark + "</body>")
    try:
        result = run_cli("build", "web", "--json", cwd=built.root)
        assert result.rc == 0, result.output
        layers = {x["layer"]: x for x in json.loads(result.stdout)["layers"]}
        assert layers["base"]["cached"] is True
        assert layers["web"]["cached"] is False
        assert "roles/web/templates/index.html.j2 changed" in layers["web"]["reasons"]
        page = built.client.containers.run(built.tag("web"), ["cat", "/var/www/site/index.html"],
                                           entrypoint=[], remove=True).decode()
        assert mark in page
    finally:
        template.write_text(original)
