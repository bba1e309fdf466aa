"""`rolebake build` on a real engine: what the roles put in, what the build leaves out.

Invariants 1 (no container left, no tag moved on failure or interrupt) and 3
(no build tooling in the image).
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest

from tests.conftest import run_cli
from tests.integration.conftest import TestProject

pytestmark = pytest.mark.integration


def sh(client: docker.DockerClient, image: str, script: str) -> str:
    """Run a shell script in a throwaway container from `image` and return its output."""
    out = client.containers.run(image, ["/bin/sh", "-c", script], entrypoint=[], remove=True,
                                user="root")
    return out.decode()


def add_task(project: TestProject, role: str, task: str) -> None:
    tasks = project.root / "roles" / role / "tasks" / "main.yml"
    tasks.write_text(tasks.read_text().rstrip() + "\n\n" + task.strip() + "\n")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, engine: docker.DockerClient):
    """The web and app images, built once for the module's content checks."""
    import uuid

    from tests.integration.conftest import copy_project

    token = uuid.uuid4().hex[:8]
    root = tmp_path_factory.mktemp("built") / "project"
    root.mkdir()
    copy_project(root, token)
    project = TestProject(root=root, token=token, client=engine)
    result = run_cli("build", "web", "app", "--json", cwd=root)
    assert result.rc == 0, result.output
    yield project, json.loads(result.stdout)
    for tag in (project.tag("base"), project.tag("web"), project.tag("app")):
        with contextlib.suppress(docker.errors.APIError):
            engine.images.remove(tag)


def test_image_has_what_the_roles_put_there(built) -> None:
    project, report = built
    assert report["ok"] and report["exit_code"] == 0
    web = project.tag("web")
    out = sh(project.client, web, (
        "getent passwd ops | cut -d: -f1,6,7; "
        "dpkg-query -W -f '${Status}' nginx; echo; "
        "test -L /etc/nginx/sites-enabled/site.conf && echo site-enabled; "
        "test -e /etc/nginx/sites-enabled/default || echo default-removed; "
        "cat /etc/timezone; "
        "grep -c 8080 /etc/nginx/sites-available/site.conf"))
    assert "ops:/home/ops:/bin/bash" in out
    assert "install ok installed" in out
    assert "site-enabled" in out and "default-removed" in out
    assert "Europe/Amsterdam" in out


def test_image_holds_no_build_tooling(built) -> None:
    project, _ = built
    out = sh(project.client, project.tag("web"), (
        "for p in /usr/bin/python3 /usr/sbin/policy-rc.d /root/.ansible /tmp/.rolebake-ansible "
        "/run/rolebake-secrets; do test -e $p && echo PRESENT $p; done; "
        "ls -A /var/lib/apt/lists | grep -v '^partial$' | sed 's/^/LIST /'; "
        "ls -A /mnt | sed 's/^/MNT /'; ls /var/cache/apt/archives | grep '[.]deb$'; "
        "ls /home/*/.ansible 2>/dev/null | sed 's/^/ANSIBLE /'; "
        "dpkg-query -W -f '${Package}\\n' | grep -E '^(python3|python3-apt|ansible)$' "
        "| sed 's/^/PKG /'; "
        "find /run /var/run -name '*.pid' | sed 's/^/PID /'; echo done"))
    assert out.strip() == "done", out


def test_roles_that_need_python_keep_it(built) -> None:
    # The app role installs python3 (through its python_runtime dependency): the
    # bootstrap removal must leave it alone.
    project, _ = built
    out = sh(project.client, project.tag("app"), "python3 -c 'print(42)'; apt-mark showmanual")
    assert out.startswith("42")


def test_provenance_labels(built) -> None:
    project, report = built
    image = project.client.images.get(project.tag("web"))
    labels = image.labels
    assert labels["rolebake.spec"] == "web"
    assert labels["rolebake.cache-key"].startswith("sha256:")
    assert labels["rolebake.provisioner"].startswith("ansible (ansible-core 2.19")
    inputs = json.loads(labels["rolebake.inputs"])
    assert "roles/web/templates/index.html.j2" in inputs["files"]
    assert labels["org.opencontainers.image.title"] == "web"
    assert image.attrs["Config"]["Cmd"] == ["nginx", "-g", "daemon off;"]
    assert "8080/tcp" in image.attrs["Config"]["ExposedPorts"]
    web = next(x for x in report["layers"] if x["layer"] == "web")
    assert web["image_id"] == image.id
    if web["cached"]:  # verified when it was built; a cache hit only re-tags it
        assert set(web["steps"]) == {"cache", "tag"}
    else:
        assert web["steps"]["verify"] == "ok" and web["tests"]["ok"]
        assert Path(web["log"]).exists()


def test_failing_role_exits_1_names_the_task_and_moves_no_tag(project: TestProject) -> None:
    first = run_cli("build", "base", cwd=project.root)
    assert first.rc == 0, first.output
    before = project.image_id(project.tag("base"))
    add_task(project, "common", """
- name: Fail on purpose
  ansible.builtin.command: /bin/false
""")
    result = run_cli("build", "base", cwd=project.root)
    assert result.rc == 1, result.output
    assert "error: task 'Fail on purpose' (role common, module ansible.builtin.command) failed" \
        in result.stderr
    assert "Traceback" not in result.output
    assert project.image_id(project.tag("base")) == before
    assert project.build_containers() == []


def test_failed_layer_is_rebuilt_next_time_not_reused(project: TestProject) -> None:
    add_task(project, "common", """
- name: Fail unless fixed
  ansible.builtin.command: test -e /etc/hostname-fixed
  changed_when: false
""")
    assert run_cli("build", "base", cwd=project.root).rc == 1
    plan = json.loads(run_cli("plan", "base", "--json", cwd=project.root).stdout)
    assert plan["layers"][0]["status"] == "MISS"
    tasks = project.root / "roles/common/tasks/main.yml"
    # The fix is unique to this run: an engine that ran the suite before must not
    # already hold the fixed build in its cache.
    tasks.write_text(tasks.read_text().replace("test -e /etc/hostname-fixed",
                                               f"/bin/true {project.token}"))
    result = run_cli("build", "base", "--json", cwd=project.root)
    assert result.rc == 0, result.output
    assert json.loads(result.stdout)["layers"][0]["cached"] is False


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_interrupt_during_provisioning(project: TestProject, signame: str) -> None:
    assert run_cli("build", "base", cwd=project.root).rc == 0
    before = project.image_id(project.tag("base"))
    add_task(project, "common", """
- name: Take a long time
  ansible.builtin.command: sleep 60
  changed_when: false
""")
    proc = subprocess.Popen([sys.executable, "-m", "rolebake", "build", "base"],
                            cwd=project.root, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen = []
    deadline = time.monotonic() + 300
    for line in proc.stderr:
        seen.append(line)
        if "task common : Take a long time" in line:
            break
        assert time.monotonic() < deadline, "".join(seen)
    time.sleep(2)
    proc.send_signal(getattr(signal, signame))
    rest = proc.stderr.read()
    rc = proc.wait(timeout=120)
    assert rc == (130 if signame == "SIGINT" else 143), "".join(seen) + rest
    assert f"interrupted by {signame}" in rest
    assert "Traceback" not in rest
    assert project.build_containers() == []
    assert project.image_id(project.tag("base")) == before
