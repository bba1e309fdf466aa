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

from tests.conftest import Run, run_cli
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


# Observed inputs: what Ansible itself read, checked against the key ---------------------
#
# `ob` applies a playbook whose plays read files the way a new user would write them
# (the first list). Where the static walk sees the file, the key moves before
# any build; after one build every file Ansible read is recorded and moves the key,
# including one the static walk cannot see (`beside.txt`, found by a play-level
# lookup beside the playbook), which is a cache hole until --record-inputs keys it.

OBSERVED_FILES = {
    "playbooks/ob.yml": """
        - name: The ob layer
          hosts: all
          gather_facts: false
          roles: [obrole]
          tasks:
            - name: A play-level file lookup
              ansible.builtin.copy:
                dest: /etc/ob-motd
                content: "{{ lookup('file', 'motd.txt') }}\\n"
                mode: "0644"
            - name: A play-level template
              ansible.builtin.template: {src: page.j2, dest: /etc/ob-page, mode: "0644"}
            - name: A play-level template lookup
              ansible.builtin.copy:
                dest: /etc/ob-look
                content: "{{ lookup('template', 'look.j2') }}"
                mode: "0644"
            - name: Files beside the playbook by a glob
              ansible.builtin.copy: {src: "{{ item }}", dest: /etc/, mode: "0644"}
              with_fileglob: ["confs/*"]
            - name: A file only Ansible's search finds
              ansible.builtin.copy:
                dest: /etc/ob-beside
                content: "{{ lookup('file', 'beside.txt') }}\\n"
                mode: "0644"
        """,
    "playbooks/files/motd.txt": "motd\n",
    "playbooks/templates/page.j2": "page {{ 1 + 1 }}\n",
    "playbooks/templates/look.j2": "look {{ 2 + 2 }}\n",
    "playbooks/confs/one.conf": "one\n",
    "playbooks/beside.txt": "beside\n",
    "roles/obrole/tasks/main.yml": """
        - name: Vars from a folder shared by roles
          ansible.builtin.include_vars: "{{ role_path }}/../../shared/x.yml"
        - ansible.builtin.copy: {dest: /etc/ob-x, content: "{{ ob_x }}\\n", mode: "0644"}
        """,
    "shared/x.yml": "ob_x: one\n",
}
# Files the static walk keys (so plan moves before any build), and the one it cannot see.
SEEN_STATICALLY = ["playbooks/files/motd.txt", "playbooks/templates/page.j2",
                   "playbooks/templates/look.j2", "playbooks/confs/one.conf", "shared/x.yml"]
SEEN_BY_ANSIBLE_ONLY = "playbooks/beside.txt"


@dataclass
class Observed:
    project: TestProject
    ob: str
    moved_before: dict[str, bool]  # file -> did a change move the key before any build
    hole: Run  # the first build, without --record-inputs
    tagged_after_hole: str | None  # what the image's tag named after it
    left_after_hole: list[str]  # build containers left after it
    recorded: Run  # the build with --record-inputs


def touch_and_plan(project: TestProject, spec: str, path: str) -> dict:
    """Plan `spec` with `path` changed (a comment line), then put the file back."""
    target = project.root / path
    original = target.read_text()
    target.write_text(original + f"# {uuid.uuid4().hex}\n")
    try:
        return plan_row(project, spec)
    finally:
        target.write_text(original)


def plan_row(project: TestProject, spec: str) -> dict:
    result = run_cli("plan", spec, "--json", cwd=project.root)
    assert result.rc == 0, result.output
    return next(r for r in json.loads(result.stdout)["layers"] if r["layer"] == spec)


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory,
             engine: docker.DockerClient) -> Iterator[Observed]:
    project = new_project(tmp_path_factory.mktemp("observed") / "project", engine)
    try:
        for rel, text in OBSERVED_FILES.items():
            path = project.root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(dedent(text))
        ob = add_spec(project, f"ob{project.token}", roles=(), suite=None,
                      playbook="playbooks/ob.yml")
        key = plan_row(project, ob)["cache_key"]
        moved = {path: touch_and_plan(project, ob, path)["cache_key"] != key
                 for path in [*SEEN_STATICALLY, SEEN_BY_ANSIBLE_ONLY]}
        hole = run_cli("build", ob, cwd=project.root)
        tagged, left = project.image_id(project.tag(ob)), project.build_containers()
        recorded = run_cli("build", ob, "--record-inputs", cwd=project.root)
        yield Observed(project, ob, moved, hole, tagged, left, recorded)
    finally:
        remove_project_images(engine, project)


def test_the_static_walk_keys_the_constructs_it_can_see_before_any_build(
        observed: Observed) -> None:
    assert observed.moved_before == {**dict.fromkeys(SEEN_STATICALLY, True),
                                     SEEN_BY_ANSIBLE_ONLY: False}


def test_a_cache_hole_fails_the_build_naming_the_file_and_the_task(observed: Observed) -> None:
    hole = observed.hole
    assert hole.rc == 2, hole.output
    errors = [line for line in hole.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: playbooks/ob.yml:21: cache hole: {SEEN_BY_ANSIBLE_ONLY} is read "
                      "by this task but is not in the cache key"], hole.stderr
    assert "--record-inputs" in hole.stderr
    assert observed.tagged_after_hole is None
    assert observed.left_after_hole == []


def test_record_inputs_keys_what_ansible_read_and_plan_shows_both_answers(
        observed: Observed) -> None:
    assert observed.recorded.rc == 0, observed.recorded.output
    row = plan_row(observed.project, observed.ob)
    assert row["status"] == "HIT", row
    assert set(SEEN_STATICALLY) <= set(row["static_inputs"])
    assert SEEN_BY_ANSIBLE_ONLY not in row["static_inputs"]
    assert {*SEEN_STATICALLY, SEEN_BY_ANSIBLE_ONLY, "playbooks/confs/"} <= \
        set(row["recorded_inputs"]), row["recorded_inputs"]


@pytest.mark.parametrize("path", [*SEEN_STATICALLY, SEEN_BY_ANSIBLE_ONLY])
def test_after_one_build_every_file_ansible_read_moves_the_key(observed: Observed,
                                                               path: str) -> None:
    assert observed.recorded.rc == 0, observed.recorded.output
    row = touch_and_plan(observed.project, observed.ob, path)
    assert row["status"] == "MISS", row
    assert any(path in reason for reason in row["reasons"]), row["reasons"]
    assert plan_row(observed.project, observed.ob)["status"] == "HIT"


def test_a_file_added_where_a_fileglob_looks_moves_the_key(observed: Observed) -> None:
    assert observed.recorded.rc == 0, observed.recorded.output
    added = observed.project.root / "playbooks/confs/two.conf"
    added.write_text("two\n")
    try:
        row = plan_row(observed.project, observed.ob)
        assert row["status"] == "MISS" and "playbooks/confs/two.conf added" in row["reasons"]
    finally:
        added.unlink()
    assert plan_row(observed.project, observed.ob)["status"] == "HIT"


HOST_READ = """
    - name: The outside layer
      hosts: all
      gather_facts: false
      tasks:
        - name: Copy the controller's own file
          ansible.builtin.copy: {src: /etc/hostname, dest: /etc/from-host, mode: "0644"}
    """


def test_a_read_outside_the_project_is_refused_with_its_task_and_allowed_when_declared(
        project: TestProject, tmp_path: Path) -> None:
    (project.root / "playbooks/host.yml").write_text(dedent(HOST_READ))
    spec = add_spec(project, f"out{project.token}", roles=(), suite=None,
                    playbook="playbooks/host.yml")
    try:
        refused = run_cli("build", spec, cwd=project.root)
        assert refused.rc == 2, refused.output
        assert "error: playbooks/host.yml:5: /etc/hostname is read from outside the project " \
               "by this task" in refused.stderr, refused.stderr
        assert "`inputs: [/etc/hostname]`" in refused.stderr
        assert project.image_id(project.tag(spec)) is None
        # Declared: built, and keyed by the file's content.
        outside = tmp_path / "outside.txt"
        outside.write_text("one\n")
        project.edit_spec(spec, inputs=["/etc/hostname", str(outside)])
        allowed = run_cli("build", spec, cwd=project.root)
        assert allowed.rc == 0, allowed.output
        assert plan_row(project, spec)["status"] == "HIT"
        outside.write_text("two\n")
        row = plan_row(project, spec)
        assert row["status"] == "MISS", row
        assert any(f"outside input {outside} changed" in r for r in row["reasons"]), row
    finally:
        remove_project_images(project.client, project)


COLLECTION_USE = """
    - name: The collection layer
      hosts: all
      gather_facts: false
      tasks:
        - name: Use a filter of a collection found on PYTHONPATH
          ansible.builtin.copy:
            dest: /etc/shouted
            content: "{{ 'hello' | acme.tools.shout }}\\n"
            mode: "0644"
    """
SHOUT = """
def shout(text):
    return str(text).upper()


class FilterModule:
    def filters(self):
        return {"shout": shout}
"""


def test_a_collection_on_pythonpath_is_refused_unless_declared(project: TestProject,
                                                               tmp_path: Path) -> None:
    site = tmp_path / "pythonpath"
    collection = site / "ansible_collections" / "acme" / "tools"
    (collection / "plugins" / "filter").mkdir(parents=True)
    (collection / "plugins" / "filter" / "shout.py").write_text(SHOUT)
    (project.root / "playbooks/shout.yml").write_text(dedent(COLLECTION_USE))
    spec = add_spec(project, f"col{project.token}", roles=(), suite=None,
                    playbook="playbooks/shout.yml")
    env = {"PYTHONPATH": str(site)}
    try:
        refused = run_cli("build", spec, cwd=project.root, env=env)
        assert refused.rc == 2, refused.output
        assert f"error: playbooks/shout.yml:5: {collection}/" in refused.stderr, refused.stderr
        assert "is read from outside the project by this task" in refused.stderr
        project.edit_spec(spec, inputs=[str(site)])
        allowed = run_cli("build", spec, cwd=project.root, env=env)
        assert allowed.rc == 0, allowed.output
        assert read_image_file(project, project.tag(spec), "/etc/shouted") == "HELLO\n"
        # The collection's module changed, same version: the key moves.
        (collection / "plugins" / "filter" / "shout.py").write_text(SHOUT + "# changed\n")
        row = plan_row(project, spec)
        assert row["status"] == "MISS" and any(str(site) in r for r in row["reasons"]), row
    finally:
        remove_project_images(project.client, project)


def read_image_file(project: TestProject, ref: str, path: str) -> str:
    return read(Stack(project, "", "", "", ""), ref, path)
