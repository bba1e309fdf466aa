"""Every input Ansible reads is keyed, on a real engine (invariant 5).

Three small layers on a base with python3: `ia` (a role whose file and
templates/ folder are links to shared/), `ib` on it (a playbook with
import_playbook, vars_files, group_vars beside it, a role that pulls another
in with include_role), `ic` on it too (a role whose include is templated, so
it is keyed on the whole roles/ tree). The project has its own ansible.cfg.
After one build, each input is changed in turn: exactly the layers that read
it miss, and `rolebake plan` names it. The first build runs with a host
environment that tries to change Ansible (ANSIBLE_*, ~/.ansible.cfg, a host
ANSIBLE_CONFIG): the image shows only the project's cfg applied.
"""

from __future__ import annotations

import io
import json
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from tests.conftest import run_cli
from tests.integration.conftest import TestProject
from tests.integration.tinyproject import (
    add_spec,
    dedent,
    new_project,
    python_base,
    remove_project_images,
)

pytestmark = pytest.mark.integration

FILES = {
    "ansible.cfg": "[defaults]\nansible_managed = managed by the test project\n",
    "shared/motd": "hello from a linked file\n",
    "shared/templates/banner.j2": "banner {{ ansible_managed }}\n",
    "roles/linked/tasks/main.yml": """
        - name: Copy the linked file
          ansible.builtin.copy: {src: motd, dest: /etc/ia-motd, mode: "0644"}
        - name: Render a template from the linked folder
          ansible.builtin.template: {src: banner.j2, dest: /etc/ia-banner, mode: "0644"}
        - name: Write what Ansible's settings are
          ansible.builtin.copy:
            dest: /etc/ia-probe
            mode: "0644"
            content: >-
              {{ lookup('ansible.builtin.config', 'DEFAULT_TIMEOUT') }}|{{
              lookup('ansible.builtin.config', 'DEFAULT_MANAGED_STR') }}
        """,
    "playbooks/ib.yml": """
        - import_playbook: ib-base.yml
        - name: The ib layer
          hosts: all
          gather_facts: false
          vars_files: [vars/ib.yml]
          roles: [pbrole]
        """,
    "playbooks/ib-base.yml": """
        - name: Imported first
          hosts: all
          gather_facts: false
          tasks:
            - ansible.builtin.copy: {dest: /etc/ib-base, content: "base\\n", mode: "0644"}
        """,
    "playbooks/vars/ib.yml": "ib_var: one\n",
    "playbooks/group_vars/all.yml": "ib_group: one\n",
    "roles/pbrole/tasks/main.yml": """
        - name: Write the vars
          ansible.builtin.copy:
            dest: /etc/ib
            content: "{{ ib_var }} {{ ib_group }}\\n"
            mode: "0644"
        - name: Pull another role in
          ansible.builtin.include_role: {name: included, tasks_from: extra}
        """,
    "roles/included/tasks/extra.yml": """
        - ansible.builtin.copy: {dest: /etc/ib-extra, content: "extra\\n", mode: "0644"}
        """,
    "roles/templated/tasks/main.yml": """
        - name: A file named at run time
          ansible.builtin.include_tasks: "{{ ic_flavour | default('plain') }}.yml"
        """,
    "roles/templated/tasks/plain.yml": """
        - ansible.builtin.copy: {dest: /etc/ic, content: "plain\\n", mode: "0644"}
        """,
    "roles/unused/tasks/main.yml": "- ansible.builtin.debug: {msg: nobody applies me}\n",
}


@dataclass
class Stack:
    project: TestProject
    ia: str
    ib: str
    ic: str
    first: str  # stderr of the first build


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory,
          engine: docker.DockerClient) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("inputs")
    project = new_project(tmp / "project", engine)
    try:
        for rel, text in FILES.items():
            path = project.root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(dedent(text))
        linked = project.root / "roles" / "linked"
        (linked / "files").mkdir()
        (linked / "files" / "motd").symlink_to("../../../shared/motd")
        (linked / "templates").symlink_to("../../shared/templates")
        base = python_base(engine, project)
        token = project.token
        ia = add_spec(project, f"ia{token}", parent=base, roles=("linked",), suite=None)
        ib = add_spec(project, f"ib{token}", parent=ia, roles=(), suite=None,
                      playbook="playbooks/ib.yml")
        ic = add_spec(project, f"ic{token}", parent=ia, roles=("templated",), suite=None)
        # A host that tries to change Ansible behind rolebake's back.
        home = tmp / "home"
        home.mkdir()
        (home / ".ansible.cfg").write_text("[defaults]\nansible_managed = from the home\n")
        (tmp / "host.cfg").write_text("[defaults]\nansible_managed = from ANSIBLE_CONFIG\n")
        result = run_cli("build", ia, ib, ic, cwd=project.root, env={
            "HOME": str(home), "ANSIBLE_CONFIG": str(tmp / "host.cfg"),
            "ANSIBLE_TIMEOUT": "77", "ANSIBLE_STDOUT_CALLBACK": "json"})
        assert result.rc == 0, result.output
        yield Stack(project, ia, ib, ic, result.stderr)
    finally:
        remove_project_images(engine, project)


def plan(stack: Stack) -> dict[str, dict]:
    result = run_cli("plan", stack.ib, stack.ic, "--json", cwd=stack.project.root)
    assert result.rc == 0, result.output
    return {row["layer"]: row for row in json.loads(result.stdout)["layers"]}


def misses(rows: dict[str, dict]) -> set[str]:
    return {layer for layer, row in rows.items() if row["status"] == "MISS"}


def read(stack: Stack, ref: str, path: str) -> str:
    """A file of an image, copied out of a created (never started) container."""
    container = stack.project.client.containers.create(ref, ["true"], entrypoint=[])
    try:
        stream, _ = container.get_archive(path)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.extractfile(Path(path).name)
            assert member is not None, path
            return member.read().decode()
    finally:
        container.remove(force=True)


def test_the_host_environment_does_not_reach_ansible_and_the_project_cfg_does(
        stack: Stack) -> None:
    probe = read(stack, stack.project.tag(stack.ia), "/etc/ia-probe")
    assert probe == "10|managed by the test project", probe
    banner = read(stack, stack.project.tag(stack.ia), "/etc/ia-banner")
    assert banner == "banner managed by the test project\n"
    # Built under that host environment, planned without it: the same key.
    rows = plan(stack)
    assert misses(rows) == set(), rows


def test_the_templated_include_is_named_in_plan(stack: Stack) -> None:
    rows = plan(stack)
    assert rows[stack.ic]["notes"] == [
        "keyed on the whole roles/ tree: roles/templated/tasks/main.yml:2 includes "
        "\"{{ ic_flavour | default('plain') }}.yml\", a name known only at run time"]
    assert rows[stack.ib]["notes"] == [] and rows[stack.ia]["notes"] == []
    result = run_cli("plan", stack.ic, cwd=stack.project.root)
    assert "note: keyed on the whole roles/ tree: roles/templated/tasks/main.yml:2" in \
        result.stdout, result.stdout


# (file to change, layers that must miss, the reason plan gives for the first of them)
CASES = [
    ("shared/motd", {"ia", "ib", "ic"}, "roles/linked/files/motd changed"),
    ("shared/templates/banner.j2", {"ia", "ib", "ic"},
     "roles/linked/templates/banner.j2 changed"),
    ("ansible.cfg", {"ia", "ib", "ic"}, "ansible.cfg changed"),
    ("playbooks/ib-base.yml", {"ib"}, "playbooks/ib-base.yml changed"),
    ("playbooks/vars/ib.yml", {"ib"}, "playbooks/vars/ib.yml changed"),
    ("playbooks/group_vars/all.yml", {"ib"}, "playbooks/group_vars/all.yml changed"),
    # ic is keyed on every role, so it misses too, for the same file.
    ("roles/included/tasks/extra.yml", {"ib", "ic"}, "roles/included/tasks/extra.yml changed"),
    ("roles/unused/tasks/main.yml", {"ic"}, "roles/unused/tasks/main.yml changed"),
]


@pytest.mark.parametrize(("path", "missing", "reason"), CASES,
                         ids=[c[0].replace("/", "-") for c in CASES])
def test_a_changed_input_misses_exactly_the_layers_that_read_it(
        stack: Stack, path: str, missing: set[str], reason: str) -> None:
    target = stack.project.root / path
    original = target.read_text()
    # A comment line: valid in YAML, cfg and templates alike, and new to this run.
    target.write_text(original + f"\n# {uuid.uuid4().hex}\n")
    try:
        rows = plan(stack)
        token = stack.project.token
        assert misses(rows) == {f"{name}{token}" for name in missing}, rows
        first = next(row for row in rows.values() if row["status"] == "MISS")
        assert reason in first["reasons"], first
    finally:
        target.write_text(original)
    assert misses(plan(stack)) == set()


def test_a_rebuild_after_a_group_var_changed_applies_it(stack: Stack) -> None:
    group_vars = stack.project.root / "playbooks/group_vars/all.yml"
    original = group_vars.read_text()
    mark = uuid.uuid4().hex
    group_vars.write_text(f"ib_group: {mark}\n")
    try:
        result = run_cli("build", stack.ib, "--json", cwd=stack.project.root)
        assert result.rc == 0, result.output
        layers = {x["layer"]: x for x in json.loads(result.stdout)["layers"]}
        assert layers[stack.ia]["cached"] is True and layers[stack.ib]["cached"] is False
        assert "playbooks/group_vars/all.yml changed" in layers[stack.ib]["reasons"]
        assert read(stack, stack.project.tag(stack.ib), "/etc/ib") == f"one {mark}\n"
    finally:
        group_vars.write_text(original)
