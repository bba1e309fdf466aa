"""The environment Ansible runs with is built, not inherited (no engine needed).

A stray ANSIBLE_* variable, a user's ~/.ansible.cfg or a host ANSIBLE_CONFIG
must not change what a build does; the project's ansible.cfg must, and the
settings rolebake parses or depends on win over it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from rolebake.provision import ansible_api
from rolebake.provision.ansible import _runner_async
from rolebake.provision.ansible_config import (
    CONTROLLED,
    environment,
    read_config,
    runner_environment,
)
from rolebake.spec import Project

HOST = {
    "ANSIBLE_TIMEOUT": "77",
    "ANSIBLE_STDOUT_CALLBACK": "json",
    "ANSIBLE_CALLBACK_PLUGINS": "/somewhere/else",
    "ANSIBLE_ROLES_PATH": "/etc/ansible/roles",
    "ROLEBAKE_VAULT_PASSWORD": "hunter2",
    "SOME_TOKEN": "t0ken",
}


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A host whose environment, home and ANSIBLE_CONFIG all try to change Ansible."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".ansible.cfg").write_text("[defaults]\nansible_managed = from the user's home\n")
    (tmp_path / "host.cfg").write_text("[defaults]\nansible_managed = from ANSIBLE_CONFIG\n")
    for name, value in HOST.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("ANSIBLE_CONFIG", str(tmp_path / "host.cfg"))
    return home


def project_at(tmp_path: Path, cfg: str | None = None) -> Project:
    root = tmp_path / "project"
    (root / "roles").mkdir(parents=True)
    if cfg is not None:
        (root / "ansible.cfg").write_text(cfg)
    return Project(root)


def build_env(project: Project, data_dir: Path) -> dict[str, str]:
    (data_dir / "tmp").mkdir(parents=True, exist_ok=True)
    return environment(read_config(project), data_dir, roles_path=[project.roles_dir],
                       remote_tmp="/tmp/.rb", programs=Path(sys.executable).parent)


def test_no_host_ansible_variable_or_secret_gets_through(host: Path, tmp_path: Path) -> None:
    env = build_env(project_at(tmp_path), tmp_path / "data")
    assert "ANSIBLE_TIMEOUT" not in env
    assert "ROLEBAKE_VAULT_PASSWORD" not in env and "SOME_TOKEN" not in env
    assert env["HOME"] == str(host)  # ssh and python still find the user's home
    for name, value in CONTROLLED.items():
        assert env[name] == value
    assert env["ANSIBLE_ROLES_PATH"] == str(tmp_path / "project" / "roles")


def test_without_a_project_cfg_ansible_reads_an_empty_one_and_no_home(host: Path,
                                                                     tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = build_env(project_at(tmp_path), data)
    # rolebake's own empty cfg: not the host's ANSIBLE_CONFIG, not ~/.ansible.cfg.
    assert env["ANSIBLE_CONFIG"] == str(ansible_api.EMPTY_CFG)
    assert all(line.startswith("#") for line in ansible_api.EMPTY_CFG.read_text().splitlines())
    assert env["ANSIBLE_HOME"] == str(data / "home")
    # Plugins and collections are looked for in the run's private home only.
    assert env["ANSIBLE_LIBRARY"] == str(data / "home" / "library")
    assert env["ANSIBLE_COLLECTIONS_PATH"] == str(data / "home" / "collections")


def test_the_project_cfg_applies_with_the_folders_it_names(host: Path, tmp_path: Path) -> None:
    project = project_at(tmp_path, "[defaults]\nlibrary = plugins/modules\nforks = 3\n")
    env = build_env(project, tmp_path / "data")
    assert env["ANSIBLE_CONFIG"] == str(project.root / "ansible.cfg")
    assert "ANSIBLE_LIBRARY" not in env  # the cfg's own setting applies
    assert env["ANSIBLE_FILTER_PLUGINS"].startswith(str(tmp_path / "data"))


def test_the_runner_keeps_its_own_settings_and_drops_the_hosts(host: Path,
                                                               tmp_path: Path) -> None:
    from ansible_runner.interface import init_runner

    data = tmp_path / "data"
    (data / "project").mkdir(parents=True)
    (data / "project" / "play.yml").write_text("- hosts: all\n  tasks: []\n")
    ours = build_env(project_at(tmp_path), data)
    runner = init_runner(private_data_dir=str(data), playbook="play.yml", envvars=ours,
                         quiet=True)
    assert runner.config.env["ANSIBLE_TIMEOUT"] == "77"  # what the runner alone would pass
    env = runner_environment(runner.config.env, ours)
    assert "ANSIBLE_TIMEOUT" not in env and "ROLEBAKE_VAULT_PASSWORD" not in env
    assert "/somewhere/else" not in env["ANSIBLE_CALLBACK_PLUGINS"]
    assert env["ANSIBLE_STDOUT_CALLBACK"] == "awx_display"  # the runner's event callback
    assert env["ORIGINAL_STDOUT_CALLBACK"] == "default"
    assert env["ANSIBLE_CONFIG"] == ours["ANSIBLE_CONFIG"]


PROBE = """\
- hosts: all
  gather_facts: false
  tasks:
    - ansible.builtin.copy:
        dest: "{{ out }}"
        content: >-
          {{ lookup('ansible.builtin.config', 'DEFAULT_TIMEOUT') }}|{{
          lookup('ansible.builtin.config', 'DEFAULT_MANAGED_STR') }}
"""


@pytest.mark.parametrize("cfg", [None, "[defaults]\nansible_managed = from the project\n"],
                         ids=["no-project-cfg", "project-cfg"])
def test_a_real_run_sees_only_the_project_cfg(host: Path, tmp_path: Path,
                                              cfg: str | None) -> None:
    data = tmp_path / "data"
    (data / "project").mkdir(parents=True)
    (data / "project" / "probe.yml").write_text(PROBE)
    (data / "inventory").mkdir()
    (data / "inventory" / "hosts.yml").write_text(
        f"all:\n  hosts:\n    probe:\n      ansible_connection: local\n"
        f"      ansible_python_interpreter: {sys.executable}\n")
    out = tmp_path / "out.txt"
    envvars = build_env(project_at(tmp_path, cfg), data)
    thread, runner = _runner_async(
        envvars, private_data_dir=str(data), playbook="probe.yml",
        inventory=str(data / "inventory" / "hosts.yml"), extravars={"out": str(out)},
        quiet=True, settings={"suppress_ansible_output": True})
    thread.join(120)
    stdout = (data / "artifacts").glob("*/stdout")
    assert runner.status == "successful", "".join(p.read_text() for p in stdout)
    timeout, managed = out.read_text().split("|")
    assert timeout == "10"  # Ansible's default: the host's ANSIBLE_TIMEOUT=77 did not reach it
    assert managed == ("from the project" if cfg else "Ansible managed")


def test_the_cfg_roles_path_is_searched_after_the_playbooks_and_before_roles(
        host: Path, tmp_path: Path) -> None:
    from rolebake.errors import InputError
    from rolebake.provision.ansible_config import roles_path

    project = project_at(tmp_path, "[defaults]\nroles_path = galaxy_roles:vendor/roles\n")
    playbook = project.root / "playbooks" / "site.yml"
    assert roles_path(project, read_config(project), playbook) == [
        project.root / "playbooks" / "roles", project.root / "galaxy_roles",
        project.root / "vendor" / "roles", project.roles_dir]
    (project.root / "ansible.cfg").write_text("[defaults]\nroles_path = /etc/ansible/roles\n")
    with pytest.raises(InputError, match="outside the project") as caught:
        roles_path(project, read_config(project), None)
    assert caught.value.line == 2


def test_settings_rolebake_controls_win_over_the_project_cfg(host: Path, tmp_path: Path) -> None:
    # What the brief's "connection, interpreter, remote tmp" become: the cfg says
    # them, the environment (and the target's host vars) say otherwise.
    project = project_at(tmp_path, "[defaults]\nremote_tmp = /var/tmp/x\n"
                                   "stdout_callback = json\ncallbacks_enabled = profile_tasks\n"
                                   "transport = paramiko\n"
                                   "interpreter_python = /usr/bin/python2\n"
                                   "[inventory]\nenable_plugins = script\n")
    env = build_env(project, tmp_path / "data")
    assert env["ANSIBLE_REMOTE_TMP"] == "/tmp/.rb"
    assert env["ANSIBLE_STDOUT_CALLBACK"] == "default"
    # The cfg decides which inventory plugins run (a script only when it says so);
    # rolebake's generated inventory needs yaml.
    assert env["ANSIBLE_INVENTORY_ENABLED"] == "script,yaml"
    assert build_env(project_at(tmp_path / "other", ""), tmp_path / "d2")[
        "ANSIBLE_INVENTORY_ENABLED"] == "yaml,ini"
    assert "ANSIBLE_CALLBACKS_ENABLED" not in env  # the cfg's callbacks apply
    assert env["ANSIBLE_CONFIG"] == str(project.root / "ansible.cfg")
