"""A task that only a machine can do fails with the reason and the usual way out, in a build
container only; the tool's own message stays."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from rolebake.engine import ContainerHandle
from rolebake.errors import BuildFailed
from rolebake.load import plan_build
from rolebake.provision.ansible_failure import explain
from rolebake.provision.base import ProvisionContext, TaskResult
from rolebake.provision.container_limits import advice
from rolebake.provision.target import ContainerTarget, SSHTarget, Target
from rolebake.spec import Project
from tests.unit.fakes import FakeEngine
from tests.unit.test_builder import make_project, spec_from

SYSCTL = ('Failed to reload sysctl: sysctl: permission denied on key "vm.overcommit_memory"',
          "")


@pytest.mark.parametrize(("action", "message", "output", "words"), [
    ("ansible.posix.sysctl", *SYSCTL, "kernel parameter"),
    ("sysctl", "Failed to reload sysctl", "sysctl: setting key \"net.core.somaxconn\": "
     "Read-only file system", "kernel parameter"),
    ("ansible.builtin.shell", "non-zero return code",
     "sh: 1: cannot create /proc/sys/vm/swappiness: Read-only file system", "kernel parameter"),
    ("ansible.posix.mount", "Error mounting /srv/data: mount: /srv/data: permission denied.",
     "", "cannot mount"),
    ("ansible.builtin.hostname", "Command failed rc=1, out=, err=hostname: you must be root "
     "to change the host name", "", "--hostname"),
    ("ansible.builtin.systemd", 'Failed to find required executable "systemctl" in paths: '
     "/usr/sbin:/usr/bin", "", "no systemctl here"),
    ("ansible.builtin.systemd_service", "systemctl: not found", "", "no systemctl here"),
    ("ansible.builtin.systemd", "Unable to start service x: systemctl isolate is not served "
     "in a build container (rolebake's systemctl)", "", "runs no systemd"),
])
def test_what_only_a_machine_can_do_gets_its_reason(action: str, message: str, output: str,
                                                    words: str) -> None:
    said = advice(action, message, output)
    assert said is not None and words in said


@pytest.mark.parametrize(("action", "message"), [
    ("ansible.builtin.apt", "E: Unable to locate package nginx"),
    ("ansible.builtin.copy", "Destination directory /etc/x does not exist"),
    # Another module that merely mentions sysctl is not a kernel parameter it set.
    ("ansible.builtin.template", "sysctl: permission denied on key \"vm.x\""),
])
def test_other_failures_get_no_advice(action: str, message: str) -> None:
    assert advice(action, message) is None


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return make_project(tmp_path / "project", base=spec_from("debian:bookworm", "common"))


def _explain(project: Project, target: Target) -> BuildFailed:
    ctx = ProvisionContext(project=project, layer=plan_build(project, ["base"]).layer("base"),
                           target=target, events=lambda _: None, cancel=threading.Event(),
                           log_path=project.state_dir / "logs" / "base-x.log")
    task = TaskResult(name="Set vm.overcommit_memory", role="redis",
                      action="ansible.posix.sysctl", status="failed", result={"msg": SYSCTL[0]})
    error = explain(ctx, [task], ["/srv/roles/redis/tasks/main.yml:12"], stdout="")
    assert isinstance(error, BuildFailed)
    # The tool's own words stay in the message.
    assert error.message == ("task 'Set vm.overcommit_memory' (role redis, module "
                             f"ansible.posix.sysctl) failed: {SYSCTL[0]}")
    return error


@pytest.mark.usefixtures("fake_provisioner")
def test_in_a_build_container_the_hint_says_why_and_where(project: Project) -> None:
    error = _explain(project, ContainerTarget(FakeEngine(), ContainerHandle("cid", "build")))
    assert error.hint.startswith("a kernel parameter belongs to the host")
    assert "(/srv/roles/redis/tasks/main.yml:12); full Ansible log: " in error.hint


@pytest.mark.usefixtures("fake_provisioner")
def test_on_a_machine_over_ssh_there_is_no_container_to_blame(project: Project) -> None:
    error = _explain(project, SSHTarget.parse("ssh://root@vm:22"))
    assert error.hint.startswith("full Ansible log: ")
