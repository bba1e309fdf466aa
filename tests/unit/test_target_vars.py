"""The target's connection settings reach the target alone (a real ansible-playbook, no engine).

The image may be a real host of the inventory (`host:`) whose host_vars/ name
its address, its connection and its python. The build must still reach the
build container, and a template that lists the other hosts' `ansible_host`
must print their inventory addresses, not the container's id.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from rolebake.load import plan_build
from rolebake.provision import ansible_inventory as inv
from rolebake.provision.ansible import TARGET_VARS_ENV
from rolebake.provision.ansible_config import environment, read_config
from rolebake.spec import Project

PROBE = """\
- hosts: web
  gather_facts: false
  tasks:
    - name: Write what the target sees
      ansible.builtin.copy:
        dest: "{{ out }}"
        content: |
          {{ ansible_connection }}
          {% for h in groups['web'] | sort %}{{ h }}={{ hostvars[h].ansible_host | default('-') }}
          {% endfor %}
"""


def test_connection_vars_win_for_the_target_and_no_other_host(tmp_path: Path) -> None:
    root = tmp_path / "project"
    (root / "images").mkdir(parents=True)
    (root / "roles").mkdir()
    (root / "playbooks" / "host_vars").mkdir(parents=True)
    (root / "inventory.ini").write_text(
        "[web]\nweb1 ansible_host=10.0.0.1\nweb2 ansible_host=10.0.0.2\n")
    # A real server's host_vars: another address, ssh, another python. They lose for the
    # build target only.
    (root / "playbooks" / "host_vars" / "web2.yml").write_text(
        "ansible_host: 10.0.0.22\nansible_connection: ssh\n"
        "ansible_python_interpreter: /usr/bin/python2\n")
    (root / "playbooks" / "site.yml").write_text(PROBE)
    (root / "images" / "web.yml").write_text(yaml.safe_dump({
        "from": "rolebake/debian:bookworm", "playbook": "playbooks/site.yml",
        "groups": ["web"], "host": "web2", "tags": ["t/web:x"]}))
    project = Project(root)
    spec = plan_build(project, ["web"]).layer("web").spec
    connection = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    run = inv.prepare(project, spec, spec.settings.playbook, connection)
    assert not any(k.startswith("ansible_") for k in run.extravars)

    data = tmp_path / "data"
    (data / "tmp").mkdir(parents=True)
    (data / "hosts.yml").write_text(yaml.safe_dump(dict(run.generated)))
    (data / "target.json").write_text(json.dumps({"host": run.host,
                                                  "vars": dict(run.target_vars)}))
    env = environment(read_config(project), data, roles_path=[project.roles_dir],
                      remote_tmp=str(tmp_path / "remote"), programs=Path(sys.executable).parent)
    env[TARGET_VARS_ENV] = str(data / "target.json")
    out = tmp_path / "out.txt"
    done = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"),
         *(a for s in run.sources for a in ("-i", str(s))), "-i", str(data / "hosts.yml"),
         "--limit", run.host, "-e", json.dumps({"out": str(out)}), str(spec.settings.playbook)],
        env=env, cwd=data, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = out.read_text().split()
    # rolebake's connection reached the target over its host_vars (else: ssh to 10.0.0.22);
    # the other host keeps its inventory address, the target its own.
    assert lines == ["local", "web1=10.0.0.1", "web2=10.0.0.22"]
