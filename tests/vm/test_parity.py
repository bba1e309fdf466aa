"""`rolebake parity` end to end: a real image, a real qemu VM, the same roles on both.

Both tests run the CLI as a user would, in a copy of the example project with its
own tag namespace, and check that no qemu process and no rolebake container is
left afterwards.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from vm_support import qemu_processes, require_tools

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
""".replace("TOKEN", project.token))  # unique: a layer no other test built
    # Built first, so parity takes the layer from the cache: no task runs in a container
    # during the parity run, and the branch's file is still named (the image records it).
    built = run_cli("build", "base", cwd=project.root, timeout=600)
    assert built.rc == 0, built.output
    result = run_cli("parity", "base", "--vm", "qemu", cwd=project.root, timeout=2400)
    assert "cache cached: HIT" in result.stderr, result.stderr[-3000:]
    assert result.rc == 5, result.output
    assert "/etc/profile.d/container-only.sh" in result.stdout
    assert "error: base and the VM differ" in result.stderr
    assert "/etc/profile.d/container-only.sh" in result.stderr
    assert project.build_containers() == []


def test_system_user_ids_shifted_by_the_vms_boot_packages(project: TestProject) -> None:
    # A role that makes system users both ways a server role does: Ansible's group and
    # user modules (useradd -r: ids from the top of the range) and a package's postinst
    # (adduser --system: from the bottom). The VM's boot packages made theirs first.
    tasks = project.root / "roles" / "common" / "tasks" / "main.yml"
    tasks.write_text(tasks.read_text().rstrip() + """

- name: System group for a service (TOKEN)
  ansible.builtin.group:
    name: rbsvc
    system: true

- name: System user for a service
  ansible.builtin.user:
    name: rbsvc
    group: rbsvc
    system: true
    create_home: false
    home: /var/lib/rbsvc
    shell: /usr/sbin/nologin

- name: The service's state directory
  ansible.builtin.file:
    path: /var/lib/rbsvc
    state: directory
    owner: rbsvc
    group: rbsvc
    mode: "0750"

- name: A user the way a package's maintainer script makes one
  ansible.builtin.shell: getent passwd rbpkg || adduser --system --group --no-create-home rbpkg
  changed_when: false

- name: Its log directory
  ansible.builtin.file:
    path: /var/log/rbpkg
    state: directory
    owner: rbpkg
    group: rbpkg
    mode: "0755"
""".replace("TOKEN", project.token))
    # An image invariant a VM cannot share: it needs python3 to be managed at all.
    (project.root / "tests" / "images" / "base" / "test_sides.py").write_text(
        "import pytest\n\n\n"
        "@pytest.mark.rolebake_only(\"container\")\n"
        "def test_no_python_in_the_image(host):\n"
        "    assert not host.exists(\"python3\")\n")
    result = run_cli("parity", "base", "--vm", "qemu", "--json", cwd=project.root, timeout=2400)
    assert result.rc == 0, result.output
    report = json.loads(result.stdout)
    items = report["state"]["items"]
    shifted = {(i["category"], i["key"]) for i in items if i["status"] == "ids-shifted"}
    assert {("user", "rbpkg"), ("group", "rbpkg"), ("group", "rbsvc"),
            ("path", "/var/log/rbpkg"), ("path", "/var/lib/rbsvc")} <= shifted, shifted
    assert report["state"]["summary"]["ids_shifted"] == len(shifted)
    assert "ids-shifted" in report["state"]["hints"]
    assert not [i for i in items if i["status"] == "different"]
    # The image suite's container-only test was skipped on the VM, and said so.
    # By name: a VM's test ids keep testinfra's host (test_x[ssh://127.0.0.1]).
    vm_tests = {c["name"].split("[")[0]: c for c in report["tests"]["vm"]}
    assert vm_tests["test_no_python_in_the_image"]["outcome"] == "skipped"
    assert "only meaningful on the container" in vm_tests["test_no_python_in_the_image"]["message"]
    container_tests = {c["name"].split("[")[0]: c for c in report["tests"]["container"]}
    assert container_tests["test_no_python_in_the_image"]["outcome"] == "passed"
    assert report["tests"]["differ"] == []

    strict = run_cli("parity", "base", "--vm", "qemu", "--strict-ids", cwd=project.root,
                     timeout=2400)
    assert strict.rc == 5, strict.output
    assert "ids-shifted: " in strict.stdout and "(--strict-ids)" in strict.stdout
    assert "user rbpkg" in strict.stderr  # the error names the rows that differ
    assert project.build_containers() == []


def test_recommends_of_a_vm_boot_package_are_their_own_class(project: TestProject) -> None:
    # The base role installs procps (a VM boot package, installed there without Recommends)
    # with apt's Recommends: the container gets psmisc (procps Recommends it), the VM,
    # whose procps is already there, gets nothing.
    tasks = project.root / "roles" / "common" / "tasks" / "main.yml"
    text = tasks.read_text()
    assert "    install_recommends: false\n" in text
    tasks.write_text(text.replace("    install_recommends: false\n",
                                  "    install_recommends: true\n", 1))
    page = project.root / "parity.html"
    result = run_cli("parity", "base", "--vm", "qemu", "--json", "--html", str(page),
                     cwd=project.root, timeout=2400)
    assert result.rc == 5, result.output
    report = json.loads(result.stdout)
    assert report["status"] == "recommends", json.dumps(report["state"]["summary"])
    items = {i["key"]: i for i in report["state"]["items"] if i["category"] == "package"}
    psmisc = items["psmisc"]
    assert psmisc["status"] == "recommends", psmisc
    chain = [link["package"] for link in psmisc["why"]["chain"]]
    assert chain[:2] == ["psmisc", "procps"], psmisc["why"]
    assert psmisc["why"]["chain"][0]["pulled_in_by"] == "Recommends"
    assert psmisc["why"]["head"] == "procps"
    assert psmisc["why"]["head_there"].startswith("VM boot package"), psmisc["why"]
    assert report["state"]["summary"]["recommends"] >= 1
    assert "install_recommends: false" in report["state"]["hints"]["recommends"]
    # Every package on one side only that no boot package explains says why.
    for item in items.values():
        if item["status"] in ("recommends", "different") and None in (item["container"],
                                                                     item["vm"]):
            assert item["why"] is not None, item
    assert "only packages apt installed as Recommends" in result.stderr
    assert "package psmisc" in result.stderr and "install_recommends: false" in result.stderr
    # The page: the verdict and the chain, escaped and self-contained.
    html = page.read_text(encoding="utf-8")
    assert "parity FAILED: only Recommends differ" in html
    assert "package psmisc" in html and "← (Recommends)" in html
    assert "<script" not in html and "https://" not in html

    # One VM run only (each is minutes under TCG): --accept-recommends's exit 0 and the
    # text table with the chain are checked on this report's shape by
    # tests/unit/parity/test_parity_why.py.
    assert project.build_containers() == []
