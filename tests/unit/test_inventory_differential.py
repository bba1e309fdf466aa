"""rolebake's answers about inventories against Ansible's own command-line tools.

Each case of the corpus is a small project: an inventory (INI with ranges and
`:children`, YAML with nested children, a folder mixing both with group_vars
inside it, a script), a site playbook whose plays use `&`, `!`, `~regex`,
`[n:m]` and globs, and an image spec. rolebake's plan-time answers (the
image's groups, its variables, the plays that apply to it) must equal what
`ansible-inventory --list` and `ansible-playbook --list-hosts` say when given
the inventories the build's run gets (the project's, then rolebake's generated
one) with `--limit <host>`. The tools run as subprocesses here, in the test
only; rolebake asks ansible-core in its own process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from rolebake.load import plan_build
from rolebake.provision import ansible_inventory as inv
from rolebake.provision.ansible_config import read_config, settings
from rolebake.spec import Project

PATTERNS = [
    "all", "web", "db", "web:&prod", "web:!db", "prod:&db", "dc1:!web", "web:db",
    "~^web0[12]", "~^rolebake", "web[0:2]", "web[-1]", "web[0]", "*.example.com",
    "web,!web01.example.com", "&prod", "nowhere", "all:!ungrouped",
]
PLAYBOOK = "".join(
    f"- name: play {index}\n  hosts: {json.dumps(pattern)}\n  gather_facts: false\n"
    "  tasks: []\n" for index, pattern in enumerate(PATTERNS))


@dataclass(frozen=True)
class Case:
    """One project of the corpus."""

    name: str
    files: dict[str, str]
    groups: tuple[str, ...]
    host: str | None = None
    inventory: str | None = None  # the spec's `inventory:`; else ansible.cfg's or a default
    executable: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


SCRIPT = """\
#!/usr/bin/env python3
import json, sys
if "--host" in sys.argv:
    print("{}")
else:
    print(json.dumps({
        "web": {"hosts": ["web01.example.com", "web02.example.com"], "vars": {"tier": "front"}},
        "db": {"hosts": ["db1"]},
        "prod": {"children": ["web", "db"]},
        "_meta": {"hostvars": {"db1": {"ansible_host": "10.0.0.9"}}},
    }))
"""

CORPUS = [
    Case("ini-ranges-children", {
        "inventory.ini": textwrap.dedent("""\
            bastion
            [web]
            web[01:03].example.com http_port=8080
            [db]
            db-[a:c]
            [dc1:children]
            web
            db
            [prod:children]
            dc1
            [web:vars]
            tier=front
            [all:vars]
            ntp=ntp.example.com
            """),
        "playbooks/group_vars/web.yml": "site_title: from the playbook's group_vars\n",
    }, groups=("web",)),
    Case("yaml-nested-named-host", {
        "hosts.yml": yaml.safe_dump({"all": {"vars": {"ntp": "pool"}, "children": {
            "prod": {"vars": {"env": "prod"}, "children": {
                "dc1": {"children": {
                    "web": {"hosts": {"web01.example.com": {"ansible_host": "10.0.0.1"},
                                      "web02.example.com": {"ansible_host": "10.0.0.2"}}},
                    "db": {"hosts": {"db1": None}}}}}}}}}),
        "host_vars/web02.example.com.yml": "ansible_host: 10.0.0.22\nrole_of_host: second\n",
        "playbooks/host_vars/web02.example.com.yml": "from_playbook_side: true\n",
    }, groups=("web", "canary"), host="web02.example.com"),
    Case("folder-ini-and-yaml", {
        "ansible.cfg": "[defaults]\ninventory = inventory/\n",
        "inventory/10-hosts.yml": yaml.safe_dump({"all": {"children": {
            "web": {"hosts": {"web01.example.com": None, "web02.example.com": None}},
            "db": {"hosts": {"db1": None}}}}}),
        "inventory/20-groups.ini": "[dc1:children]\nweb\ndb\n[prod:children]\ndc1\n",
        "inventory/group_vars/web.yml": "tier: front\n",
        "inventory/group_vars/all/ntp.yml": "ntp: inside the folder\n",
        "inventory/host_vars/rolebake-web.yml": "own: the image's host_vars\n",
        "inventory/README.md": "ignored, as Ansible ignores it [\n",
    }, groups=("web",)),
    Case("script", {
        "ansible.cfg": "[inventory]\nenable_plugins = script, ini\n",
        "inventory.py": SCRIPT,
        "group_vars/prod.yml": "env: prod\n",
    }, groups=("web",), inventory="inventory.py", executable=("inventory.py",)),
    Case("host-of-no-group", {
        "inventory.ini": "[web]\nweb01.example.com\n[prod:children]\nweb\n[all:vars]\nntp=x\n",
    }, groups=("all",)),
]


def make(root: Path, case: Case) -> tuple[Project, Any]:
    for rel, text in {**case.files, "playbooks/site.yml": PLAYBOOK}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for rel in case.executable:
        (root / rel).chmod(0o755)
    (root / "roles").mkdir()
    spec: dict[str, Any] = {"from": "rolebake/debian:bookworm", "playbook": "playbooks/site.yml",
                            "groups": list(case.groups), "tags": [f"corpus/{case.name}:x"]}
    if case.host:
        spec["host"] = case.host
    if case.inventory:
        spec["inventory"] = case.inventory
    (root / "images").mkdir()
    (root / "images" / "web.yml").write_text(yaml.safe_dump(spec))
    project = Project(root)
    return project, plan_build(project, ["web"]).layer("web").spec


def ansible(project: Project, tmp: Path, *argv: str) -> str:
    """An Ansible tool with the environment the build's run gets (no host settings)."""
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp), "LANG": "C.UTF-8",
           "ANSIBLE_LOCAL_TEMP": str(tmp / "tmp"),
           **settings(read_config(project), tmp / "home")}
    program = Path(sys.executable).parent / argv[0]
    done = subprocess.run([str(program), *argv[1:]], cwd=project.root, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def groups_of(listed: dict[str, Any], host: str) -> set[str]:
    """The groups `ansible-inventory --list` puts a host in, parents included."""
    def holds(group: str) -> bool:
        body = listed.get(group) or {}
        return host in body.get("hosts", ()) or any(holds(c) for c in body.get("children", ()))
    return {g for g in listed if g != "_meta" and holds(g)} | {"all"}


def listed_plays(output: str, host: str) -> list[bool]:
    """For each play of `ansible-playbook --list-hosts`, whether the host is in it."""
    found: list[bool] = []
    for block in re.split(r"\n\s*play #\d+ ", output)[1:]:
        hosts = block.partition("hosts (")[2].partition("\n")[2]
        found.append(host in {line.strip() for line in hosts.splitlines()})
    return found


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_rolebake_answers_as_ansible_does(tmp_path: Path, case: Case) -> None:
    project, spec = make(tmp_path / "project", case)
    member = inv.membership(project, spec)
    assert member is not None
    run = inv.prepare(project, spec, spec.settings.playbook, {})
    generated = tmp_path / "generated.yml"
    generated.write_text(yaml.safe_dump(dict(run.generated)))
    sources = [a for s in run.sources for a in ("-i", str(s))] + ["-i", str(generated)]
    assert spec.settings.playbook is not None

    # Groups and variables: ansible-inventory --list, with the playbook's vars folders.
    listed = json.loads(ansible(project, tmp_path, "ansible-inventory", *sources, "--list",
                                "--playbook-dir", str(spec.settings.playbook.parent)))
    assert set(member.groups) == groups_of(listed, member.host)
    ours = inv.target_variables(project, member, spec.settings.playbook)
    ours.pop("ansible_facts", None)
    assert ours == listed["_meta"]["hostvars"].get(member.host, {})
    assert ours, "the corpus case gives the image no variable to compare"

    # Plays: ansible-playbook --list-hosts --limit <host>, as the build's run.
    output = ansible(project, tmp_path, "ansible-playbook", *sources, "--list-hosts",
                     "--limit", member.host, str(spec.settings.playbook))
    theirs = listed_plays(output, member.host)
    assert len(theirs) == len(PATTERNS), output
    mine = inv.verdicts(PATTERNS, member)
    assert dict(zip(PATTERNS, mine, strict=True)) == dict(zip(PATTERNS, theirs, strict=True))
    applied = inv.select_plays(spec.settings.playbook, member, []).applied
    assert [p.name for p in applied] == [f"play {i}" for i, v in enumerate(theirs) if v]
