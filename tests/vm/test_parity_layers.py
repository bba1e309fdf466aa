"""VM layers end to end: a second parity after a change in the top layer starts from the snapshot
of the layer below and applies only the top layer; a change in the base layer invalidates it.

Two parity runs of one small two-layer image (`base` and a one-template layer on it) in a
copy of the example project; the second applies one template (seconds) instead of the base
role (minutes). The invalidation is shown through the lookup every run makes (the cache keys
`rolebake plan` computes, then the store), without a third boot.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from vm_support import IMAGE_DIR, qemu_processes, require_tools

from rolebake.engine import DockerEngine
from rolebake.load import plan_build
from rolebake.parity.vmlayers_run import chain_keys
from rolebake.rootfs import VMImage
from rolebake.spec import Project
from rolebake.vmlayers import store_for
from tests.conftest import run_cli
from tests.integration.conftest import BASE_IMAGE, TestProject, copy_project

pytestmark = [pytest.mark.vm, pytest.mark.integration]


@pytest.fixture
def project(tmp_path: Path) -> Iterator[TestProject]:
    require_tools("qemu-system-x86_64", "qemu-img", "ssh")
    client = docker.from_env()
    client.images.get(BASE_IMAGE)
    token = uuid.uuid4().hex[:8]
    root = tmp_path / "project"
    root.mkdir()
    copy_project(root, token)
    role = root / "roles" / "tiny"
    (role / "tasks").mkdir(parents=True)
    (role / "templates").mkdir()
    (role / "tasks" / "main.yml").write_text(
        "---\n- name: The tiny layer's file\n  ansible.builtin.template:\n"
        "    src: tiny.j2\n    dest: /etc/rolebake-tiny\n    mode: \"0644\"\n")
    (role / "templates" / "tiny.j2").write_text(f"tiny v1 {token}\n")
    (root / "images" / "tiny.yml").write_text(
        f"from: base\nroles: [tiny]\ntags: [\"rbt-{token}/tiny:latest\"]\n")
    suite = root / "tests" / "images" / "tiny"
    suite.mkdir()
    (suite / "test_tiny.py").write_text(
        "def test_tiny_file(host):\n    assert host.file('/etc/rolebake-tiny').contains('tiny')\n")
    before = qemu_processes()
    yield TestProject(root=root, token=token, client=client)
    assert qemu_processes() == before
    for image in client.images.list():
        for tag in image.tags:
            if tag.startswith(f"rbt-{token}/"):
                client.images.remove(tag, force=True)


def test_second_parity_starts_from_the_layer_below(project: TestProject) -> None:
    first = run_cli("parity", "tiny", "--vm", "qemu", "--json", cwd=project.root, timeout=2400)
    assert first.rc == 0, first.output
    report = json.loads(first.stdout)
    rows = {row["layer"]: row for row in report["vm_layers"]}
    assert [row["layer"] for row in report["vm_layers"]] == ["base", "tiny"]
    assert rows["base"]["source"] == "applied" and rows["base"]["kept"], rows
    assert rows["tiny"]["source"] == "applied" and rows["tiny"]["kept"], rows
    assert {"vm_layer:base", "vm_layer:tiny"} <= set(report["steps"]), report["steps"]

    # One template changes in the top layer.
    template = project.root / "roles" / "tiny" / "templates" / "tiny.j2"
    template.write_text(template.read_text().replace("v1", "v2"))
    page = project.root / "parity.html"
    second = run_cli("parity", "tiny", "--vm", "qemu", "--json", "--html", str(page),
                     cwd=project.root, timeout=2400)
    assert second.rc == 0, second.output
    again = json.loads(second.stdout)
    rows2 = {row["layer"]: row for row in again["vm_layers"]}
    # The VM booted from base's snapshot and applied only tiny (the log and the timings).
    assert rows2["base"]["source"] == "snapshot", rows2
    assert rows2["base"]["snapshot"] == rows["base"]["snapshot"]
    assert rows2["tiny"]["source"] == "applied" and rows2["tiny"]["kept"], rows2
    assert rows2["tiny"]["snapshot"] != rows["tiny"]["snapshot"]
    assert "vm_layer:base" not in again["steps"] and "vm_layer:tiny" in again["steps"]
    err = second.stderr
    assert f"[base] the VM starts from VM layer snapshot {rows['base']['snapshot']}" in err, \
        err[-3000:]
    assert "[base] applying to the VM" not in err
    assert "[tiny] applying to the VM" in err
    assert ", from VM layer base" in err
    # The changed file was compared, and both sides have the new one.
    items = {i["key"]: i for i in again["state"]["items"] if i["category"] == "path"}
    assert items["/etc/rolebake-tiny"]["status"] == "equal", items.get("/etc/rolebake-tiny")
    # Base's managed paths still compared though its tasks did not run on the VM this time.
    assert any(i["status"] == "equal" for k, i in items.items() if k != "/etc/rolebake-tiny")
    html = page.read_text(encoding="utf-8")
    assert f"from snapshot {rows['base']['snapshot']}" in html
    assert f"applied, kept as {rows2['tiny']['snapshot']}" in html

    # The lookup a run makes (plan's cache keys, then the store), without booting.
    project_ = Project(project.root)
    engine = DockerEngine.connect(timeout=120)
    image = VMImage.load(IMAGE_DIR)
    assert image is not None
    store = store_for(project_)

    def found() -> list[str]:
        plan = plan_build(project_, ["tiny"])
        return [s.id for s in store.lookup(chain_keys(engine, project_, plan), image.identity)]

    assert found() == [rows["base"]["snapshot"], rows2["tiny"]["snapshot"]]
    # A change in the base layer: its key moves, no snapshot matches, the VM starts cold.
    tasks = project.root / "roles" / "common" / "tasks" / "main.yml"
    original = tasks.read_text()
    tasks.write_text(original.rstrip() + "\n\n- name: A change in base\n"
                     "  ansible.builtin.debug:\n    msg: changed\n")
    assert found() == []
    tasks.write_text(original)
    assert found() == [rows["base"]["snapshot"], rows2["tiny"]["snapshot"]]
    assert project.build_containers() == []
