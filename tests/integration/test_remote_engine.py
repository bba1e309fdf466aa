"""A remote engine over SSH (`DOCKER_HOST=ssh://host`), the way CI runners reach a build host.

A real sshd of the test's own, on loopback, stands for the build host: it runs
`docker system dial-stdio` against this machine's engine. rolebake (its engine
client, the Ansible relay, the verification shell) and testinfra all go
through the `ssh` client, which finds the host, port, user and key in an ssh
config, as a user's `~/.ssh/config` would give them (here a wrapper on PATH
adds `-F`). paramiko is not installed: nothing may need it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from tests.conftest import run_cli
from tests.integration.conftest import TestProject
from tests.integration.tinyproject import (
    add_role,
    add_spec,
    iter_build_containers,
    new_project,
    remove_project_images,
)

pytestmark = pytest.mark.integration

SSHD = "/usr/sbin/sshd"
ALIAS = "rolebake-build-host"


@dataclass(frozen=True)
class SSHEngine:
    """How to reach the engine over SSH, and what sshd saw."""

    env: dict[str, str]
    log: Path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def ssh_engine(tmp_path_factory: pytest.TempPathFactory,
               engine: docker.DockerClient) -> Iterator[SSHEngine]:
    """An sshd on loopback in front of this machine's engine, and the client's config."""
    del engine  # the engine must answer first: the remote side is this one
    if not os.path.exists(SSHD):
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs {SSHD}: run `make engine` (it installs openssh-server)")
        pytest.skip(f"no {SSHD}: run `make engine`")
    folder = tmp_path_factory.mktemp("ssh-engine")
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                        str(folder / key)], check=True)
    (folder / "authorized_keys").write_text((folder / "client_key.pub").read_text())
    port = _free_port()
    # The build host's engine is the one this run uses (a private DOCKER_HOST included).
    local = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    (folder / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {folder / 'host_key'}\n"
        f"AuthorizedKeysFile {folder / 'authorized_keys'}\nPidFile {folder / 'sshd.pid'}\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        f"SetEnv DOCKER_HOST={local}\nMaxSessions 100\nMaxStartups 100\n")
    (folder / "ssh_config").write_text(
        f"Host {ALIAS}\n  HostName 127.0.0.1\n  User root\n"
        f"  IdentityFile {folder / 'client_key'}\n  IdentitiesOnly yes\n  BatchMode yes\n"
        "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n")
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "ssh"
    wrapper.write_text(f"#!/bin/sh\nexec {shutil.which('ssh')} -F {folder / 'ssh_config'} "
                       '"$@"\n')
    wrapper.chmod(0o755)
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation folder
    log = folder / "sshd.log"
    with log.open("wb") as out:
        sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", str(folder / "sshd_config")],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            assert sshd.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "sshd did not listen within 15 s"
            time.sleep(0.1)
        # The port goes in DOCKER_HOST: the docker SDK always passes one to ssh (22 when
        # none is given), so an ssh config's Port does not apply.
        yield SSHEngine(env={"DOCKER_HOST": f"ssh://{ALIAS}:{port}",
                             "PATH": f"{bin_dir}:{os.environ['PATH']}"}, log=log)
    finally:
        sshd.terminate()
        sshd.wait(timeout=10)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory,
            engine: docker.DockerClient) -> Iterator[TestProject]:
    made = new_project(tmp_path_factory.mktemp("remote") / "project", engine)
    add_role(made, "remote", {
        "tasks/main.yml": (
            "---\n"
            "- name: Install a small package\n"
            "  ansible.builtin.apt: {name: [less], install_recommends: false}\n"
            "- name: Write the build host's file\n"
            "  ansible.builtin.copy:\n"
            "    dest: /etc/remote.conf\n"
            "    content: \"built over ssh {{ remote_nonce }}\\n\"\n"
            "    mode: \"0644\"\n"),
    })
    yield made
    remove_project_images(engine, made)


def test_build_plan_and_clean_through_an_ssh_engine(project: TestProject,
                                                    ssh_engine: SSHEngine) -> None:
    spec = add_spec(project, f"remote{project.token}", roles=("remote",),
                    vars={"remote_nonce": project.token},
                    suite="def test_remote_file(host):\n"
                          "    assert host.file('/etc/remote.conf').contains('over ssh')\n"
                          "    assert host.package('less').is_installed\n")
    # --debug: a failure over ssh shows its traceback.
    built = run_cli("--debug", "build", spec, "--json", cwd=project.root, env=ssh_engine.env,
                    timeout=900)
    assert built.rc == 0, built.output
    # It went through sshd, not around it.
    assert "Accepted publickey for root" in ssh_engine.log.read_text(), \
        ssh_engine.log.read_text()[-2000:]
    image = project.client.images.get(project.tag(spec))
    assert image.labels["rolebake.role"] == "image"
    # The suite ran against the image through the same engine: one passing check at least.
    assert '"outcome": "passed"' in built.stdout, built.stdout[-3000:]
    assert list(iter_build_containers(project.client, project.token)) == []

    planned = run_cli("plan", spec, cwd=project.root, env=ssh_engine.env, timeout=300)
    assert planned.rc == 0, planned.output
    assert "HIT" in planned.stdout, planned.output
    cleaned = run_cli("clean", cwd=project.root, env=ssh_engine.env, timeout=300)
    assert cleaned.rc == 0, cleaned.output
