"""`rolebake parity` end to end: a real image, a real qemu VM, the same roles on both.

Both tests run the CLI as a user would, in a copy of the example project with its
own tag namespace, and check that no qemu process and no rolebake container is
left afterwards.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from vm_support import require_tools

from tests.conftest import run_cli
from tests.integration.conftest import BASE_IMAGE, TestProject, copy_project

pytestmark = [pytest.mark.vm, pytest.mark.integration]


def qemu_processes() -> list[str]:
    out = subprocess.run(["pgrep", "-af", "qemu-system"], capture_output=True, text=True,
                         check=False).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


@pytest.fixture
def project(tmp_path: Path) -> Iterator[TestProject]:
    require_tools("qemu-system-x86_64", "qemu-img", "ssh")
    client = docker.from_env()
    client.images.get(BASE_IMAGE)
    token = uuid.uuid4().hex[:8]
    root = tmp_path / "project"
    root.mkdir()
    copy_project(root, token)
    before = qemu_processes()
    yield TestProject(root=root, token=token, client=client)
    assert qemu_processes() == before
    for image in client.images.list():
        for tag in image.tags:
            if tag.startswith(f"rbt-{token}/"):
                client.images.remove(tag, force=True)


def test_web_image_and_vm_agree(project: TestProject) -> None:
    result = run_cli("parity", "web", "--vm", "qemu", "--json", cwd=project.root, timeout=2400)
    assert result.rc == 0, result.output
    report = json.loads(result.stdout)
    items = report["state"]["items"]
    different = [i for i in items if i["status"] == "different"]
    assert report["ok"] and not different, json.dumps(different, indent=1)
    # Every managed file was compared and found equal, not skipped.
    paths = [i for i in items if i["category"] == "path"]
    assert any(i["key"] == "/etc/nginx/sites-available/site.conf" and i["status"] == "equal"
               for i in paths), paths
    # The same suite passed on both.
    assert report["tests"]["container"] and report["tests"]["vm"]
    assert all(c["outcome"] == "passed" for c in report["tests"]["container"])
    assert all(c["outcome"] == "passed" for c in report["tests"]["vm"])
    # Expected differences are shown, never dropped: the kernel at least.
    assert any(i["key"] == "kernel" and i["status"] == "expected" for i in items), items
    # The image was built while the VM booted and got the roles, not before: the
    # step timings (seconds since the run began) overlap.
    steps = report["steps"]
    assert steps["vm_boot"]["start"] < steps["build"]["end"], steps
    assert steps["build"]["start"] < steps["provision_vm"]["end"], steps
    assert steps["vm_boot"]["end"] <= steps["provision_vm"]["start"], steps
    # The VM's apt went through the shared cache's proxy (how much it found there
    # depends on what the build had fetched by then).
    assert "from the shared apt cache" in result.stderr, result.stderr[-3000:]
    assert "[vm] up (" in result.stderr  # kvm, or tcg with a notice saying why
    assert project.build_containers() == []


def test_container_only_branch_is_caught(project: TestProject) -> None:
    # On the small base image (the common role) to keep the VM tier quick; the
    # branch is the kind a team adds "just for containers" and forgets.
    tasks = project.root / "roles" / "common" / "tasks" / "main.yml"
    tasks.write_text(tasks.read_text().rstrip() + """

- name: Quieter shells in containers only
  ansible.builtin.copy:
    dest: /etc/profile.d/container-only.sh
    content: "export HISTFILE=/dev/null  # TOKEN\\n"
    mode: "0644"
  when: ansible_virtualization_type == 'docker'
""".replace("TOKEN", project.token))  # unique: the layer must be built in this run
    result = run_cli("parity", "base", "--vm", "qemu", cwd=project.root, timeout=2400)
    assert result.rc == 5, result.output
    assert "/etc/profile.d/container-only.sh" in result.stdout
    assert "error: base and the VM differ" in result.stderr
    assert "/etc/profile.d/container-only.sh" in result.stderr
    assert project.build_containers() == []
