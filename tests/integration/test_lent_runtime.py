"""The lent python, the shared apt cache and the fallback to the apt bootstrap, on a real engine.

- The committed layer holds nothing of the toolchain: checked on the engine's
  diff of the build container while it is held at the commit step (a gate on
  the build's events, gate.py), and on the image.
- A second build finds the packages the first one downloaded in the apt cache
  volume (the log says how much each downloaded); none of it is in the image.
- A parent image of another release than the named toolchain gets python3 from
  the apt bootstrap, with a one-line notice.
(A role that installs python3 keeps it: test_build.test_roles_that_need_python_keep_it.)
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import docker
import pytest

from rolebake.provision import pytoolchain
from rolebake.release import RELEASE_LABEL, Release
from tests.conftest import run_cli
from tests.integration.conftest import BASE_IMAGE, TestProject
from tests.integration.gate import HELD
from tests.integration.tinyproject import (
    Build,
    add_role,
    add_spec,
    iter_build_containers,
    new_project,
    remove_project_images,
    set_vars,
)

pytestmark = pytest.mark.integration

APT_TASKS = """\
---
- name: Install a small package
  ansible.builtin.apt:
    name: [less]
    install_recommends: false
    update_cache: true
    cache_valid_time: 3600

- name: Write a file
  ansible.builtin.copy:
    dest: /etc/tiny.conf
    content: "tiny {{ tiny_nonce | default('') }}\\n"
    mode: "0644"

- name: Template a file
  ansible.builtin.template:
    src: motd.j2
    dest: /etc/tiny-motd
    mode: "0644"
"""
SUITE = """\
def test_less(host):
    assert host.package("less").is_installed
"""
IMAGE_PROBE = (
    "ls -A /mnt | sed 's/^/MNT /'; command -v python3 | sed 's/^/PYTHON /'; "
    "ls -A /var/lib/apt/lists | grep -v '^partial$' | sed 's/^/LIST /'; "
    "ls /var/cache/apt/archives | grep -v -e '^partial$' -e '^lock$' | sed 's/^/ARCHIVE /'; "
    "ls /etc/apt/apt.conf.d | grep rolebake | sed 's/^/CONF /'; "
    "dpkg-query -W -f '${Package}\\n' | grep -E '^python3' | sed 's/^/PKG /'; echo done")


def sh(client: docker.DockerClient, image: str, script: str) -> str:
    out = client.containers.run(image, ["/bin/sh", "-c", script], entrypoint=[], remove=True,
                                user="root")
    return out.decode()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory,
            engine: docker.DockerClient) -> Iterator[TestProject]:
    made = new_project(tmp_path_factory.mktemp("runtime") / "project", engine)
    add_role(made, "aptly", {"tasks/main.yml": APT_TASKS,
                             "templates/motd.j2": "{{ ansible_distribution }}\n"})
    yield made
    remove_project_images(engine, made)
    for volume in engine.volumes.list(filters={"name": f"rbt-{made.token}"}):
        with contextlib.suppress(docker.errors.APIError):
            volume.remove(force=True)


def apt_env(project: TestProject, name: str = "apt") -> dict[str, str]:
    """A cache of this test's own, so what it downloads is counted from zero."""
    return {"ROLEBAKE_APT_CACHE": f"rbt-{project.token}-{name}"}


def test_committed_layer_has_no_trace_of_the_toolchain(project: TestProject) -> None:
    spec = add_spec(project, f"lent{project.token}", roles=("aptly",), suite=SUITE)
    set_vars(project, spec)
    build = Build(project, spec, env=apt_env(project), gate="commit")
    try:
        build.wait_for(r"python lent: python 3\.\d+ for debian 12 \(bookworm\); tasks run "
                       r"through rolebake's agent")
        build.wait_for(rf"\[{spec}\] commit \.\.\.")
        build.wait_for(rf"{HELD} commit$")
        containers = list(iter_build_containers(project.client, project.token))
        assert len(containers) == 1
        changes = {c["Path"] for c in containers[0].diff() or []}
        build.release()
        result = build.finish()
    finally:
        build.kill()
    assert result.rc == 0, result.stderr
    assert "/etc/tiny.conf" in changes and "/etc/tiny-motd" in changes
    leaked = sorted(p for p in changes if p.startswith(("/mnt/", "/var/lib/apt/lists/",
                                                        "/var/cache/apt/archives/"))
                    or "python" in p or "rolebake" in p)
    assert leaked == [], leaked
    out = sh(project.client, project.tag(spec), IMAGE_PROBE)
    assert out.strip() == "done", out
    assert project.build_containers() == []


def test_apt_cache_is_used_by_the_next_build(project: TestProject) -> None:
    spec = add_spec(project, f"apt{project.token}", roles=("aptly",), suite=SUITE)
    downloads = []
    for _ in range(2):
        set_vars(project, spec)  # a new nonce: a cache miss, the roles run again
        result = run_cli("build", spec, cwd=project.root, env=apt_env(project, "second"))
        assert result.rc == 0, result.stderr
        found = re.search(r"apt cache debian-12#0: (\d+) packages downloaded", result.stderr)
        assert found, result.stderr
        downloads.append(int(found.group(1)))
    assert downloads[0] > 0 and downloads[1] == 0, downloads
    assert "apt cache debian-12#0: shared" in result.stderr
    out = sh(project.client, project.tag(spec), IMAGE_PROBE)
    assert out.strip() == "done", out


@pytest.mark.parametrize("label", ["unlabelled", "mislabelled"])
def test_other_release_falls_back_to_the_apt_bootstrap(project: TestProject, label: str) -> None:
    client = project.client
    # The toolchain of the base image's release, made by a build if it is not there yet.
    bookworm = add_spec(project, f"bw{project.token}", roles=("aptly",), suite=SUITE)
    assert run_cli("build", bookworm, cwd=project.root, env=apt_env(project)).rc == 0
    os_release = sh(client, BASE_IMAGE, "cat /etc/os-release")
    release = Release.parse(os_release)
    assert release is not None
    toolchain = pytoolchain.tag_for(release)
    assert client.images.get(toolchain)
    # A parent image of a release no toolchain is made for: the same rootfs, relabelled.
    other = project.tag(f"otherrelease-{label}", "1")
    container = client.containers.run(BASE_IMAGE, ["/bin/sh", "-c",
                                      "sed -i -e 's/^VERSION_ID=.*/VERSION_ID=\"99\"/' "
                                      "-e 's/^VERSION_CODENAME=.*/VERSION_CODENAME=rbtest/' "
                                      "/usr/lib/os-release"], detach=True)
    try:
        assert container.wait(timeout=60)["StatusCode"] == 0
        # Unlabelled: an image made without rolebake, its release read from os-release.
        # Mislabelled: the base's release label survived a change made by other means;
        # the lent python's own check in the build container catches it.
        changes = ['CMD ["bash"]'] + (
            [f'LABEL {RELEASE_LABEL}=""'] if label == "unlabelled" else [])
        container.commit(repository=other.split(":")[0], tag="1", changes=changes)
    finally:
        container.remove(force=True)
    spec = add_spec(project, f"other{label[:2]}{project.token}", parent=other, roles=("aptly",),
                    suite=SUITE)
    result = run_cli("build", spec, cwd=project.root,
                     env={"ROLEBAKE_PYTHON_TOOLCHAIN": toolchain, "ROLEBAKE_APT_CACHE": "off"})
    assert result.rc == 0, result.stderr
    notices = [line for line in result.stderr.splitlines() if "notice:" in line]
    assert len(notices) == 1, notices
    if label == "unlabelled":
        assert notices[0].endswith(f"notice: the python toolchain {toolchain} is for debian 12 "
                                   "(bookworm), the parent image is debian 99 (rbtest): python3 "
                                   "bootstrapped"), notices
    else:
        assert notices[0].endswith("notice: the lent python is for debian 12 (bookworm), the "
                                   "build container is debian 99 (rbtest): python3 "
                                   "bootstrapped"), notices
    assert "installed for the build:python3 python3-apt" in result.stderr
    out = sh(client, project.tag(spec), IMAGE_PROBE)
    assert out.strip() == "done", out
