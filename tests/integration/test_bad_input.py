"""Bad input beyond specs, on a real engine: one clear line naming the file (and the
line where there is one), exit 2, no traceback, nothing left behind (invariant 4).

Where rolebake can know it up front (a play without hosts, a vault password that
does not open the vault, a base image nobody has) it stops before any container.
What only Ansible finds (YAML it cannot parse, a template or variable a task
needs) it reports from inside the build, with Ansible's file and line, still
exit 2. Also: `rolebake clean` lists and removes a leftover.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from tests.conftest import Run, run_cli
from tests.integration.conftest import BASE_IMAGE, TestProject
from tests.integration.tinyproject import (
    add_role,
    add_spec,
    new_project,
    python_base,
    remove_project_images,
    set_vars,
    spec_images,
    tiny_spec,
)

pytestmark = pytest.mark.integration


@dataclass
class Bad:
    project: TestProject
    pybase: str
    tmp: Path


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory, engine: docker.DockerClient) -> Iterator[Bad]:
    tmp = tmp_path_factory.mktemp("bad")
    project = new_project(tmp / "project", engine)
    try:
        yield Bad(project, python_base(engine, project), tmp)
    finally:
        remove_project_images(engine, project)


def one_error(result: Run, code: int = 2) -> str:
    """The build's single error line; checks the exit code and that no traceback shows."""
    assert result.rc == code, result.output
    assert "Traceback" not in result.output, result.output
    errors = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def spec_with_role(bad: Bad, role: str, files: dict[str, str], **extra: object) -> str:
    add_role(bad.project, role, files)
    return add_spec(bad.project, f"{role}{bad.project.token}", parent=bad.pybase,
                    roles=(role,), suite=None, **extra)


def assert_nothing_left(bad: Bad, spec: str, result: Run, *, container: bool) -> None:
    """No container and no image remain; `container`: whether one was ever made."""
    assert bad.project.build_containers() == []
    assert spec_images(bad.project.client, spec) == set()
    assert ("] create ok" in result.stderr) is container, result.stderr


def test_role_with_a_yaml_syntax_error(bad: Bad) -> None:
    spec = spec_with_role(bad, "badyaml", {"tasks/main.yml": (
        "---\n- name: Fine\n  ansible.builtin.debug:\n    msg: ok\n"
        "- name: Broken\n  ansible.builtin.debug:\n    msg: [unclosed\n")})
    result = run_cli("build", spec, cwd=bad.project.root)
    error = one_error(result)
    assert re.search(r"roles/badyaml/tasks/main\.yml:\d+: ", error), error
    assert_nothing_left(bad, spec, result, container=True)


def test_missing_template(bad: Bad) -> None:
    spec = spec_with_role(bad, "notemplate", {"tasks/main.yml": (
        "---\n- name: Render a template that is not there\n  ansible.builtin.template:\n"
        "    src: missing.conf.j2\n    dest: /etc/missing.conf\n    mode: '0644'\n")})
    result = run_cli("build", spec, cwd=bad.project.root)
    error = one_error(result)
    assert "roles/notemplate/tasks/main.yml:2: " in error, error
    assert "missing.conf.j2" in error, error
    assert_nothing_left(bad, spec, result, container=True)


def test_undefined_variable(bad: Bad) -> None:
    spec = spec_with_role(bad, "undefvar", {"tasks/main.yml": (
        "---\n- name: Fine\n  ansible.builtin.debug:\n    msg: ok\n\n"
        "- name: Use a variable nobody set\n  ansible.builtin.copy:\n"
        "    dest: /etc/undef.conf\n    content: \"{{ undefvar_nobody_set }}\"\n"
        "    mode: '0644'\n")})
    result = run_cli("build", spec, cwd=bad.project.root)
    error = one_error(result)
    assert "roles/undefvar/tasks/main.yml:6: " in error, error
    assert "undefvar_nobody_set" in error, error
    assert_nothing_left(bad, spec, result, container=True)


def test_playbook_with_no_hosts(bad: Bad) -> None:
    project = bad.project
    playbook = project.root / "playbooks" / f"nohosts{project.token}.yml"
    playbook.parent.mkdir(exist_ok=True)
    playbook.write_text("---\n- name: Forgot the hosts\n  roles: [common]\n")
    spec = add_spec(project, f"nohosts{project.token}", parent=bad.pybase, roles=(),
                    suite=None)
    project.edit_spec(spec, playbook=f"playbooks/{playbook.name}")
    result = run_cli("build", spec, cwd=project.root)
    error = one_error(result)
    assert error == f"error: playbooks/{playbook.name}:2: play 1 has no `hosts:`", error
    assert_nothing_left(bad, spec, result, container=False)


def test_what_ansible_would_stop_at_is_refused_before_any_container(bad: Bad) -> None:
    # A task file that is a mapping, meta dependencies in a cycle, a playbook that imports
    # itself: each used to pass `plan` and fail only inside Ansible, in a container.
    token = bad.project.token
    cases: list[tuple[str, str]] = []
    cases.append((spec_with_role(bad, f"maptasks{token}", {
        "tasks/main.yml": "name: Say hello\nansible.builtin.debug: {msg: hello}\n"}),
        f"error: roles/maptasks{token}/tasks/main.yml:1: a task file must be a list of "
        "tasks, got a mapping"))
    add_role(bad.project, f"cycb{token}", {"meta/main.yml": f"dependencies: [cyca{token}]\n"})
    cases.append((spec_with_role(bad, f"cyca{token}", {
        "meta/main.yml": f"dependencies:\n  - role: cycb{token}\n"}),
        f"error: roles/cycb{token}/meta/main.yml:1: meta dependencies make a cycle: "
        f"cyca{token} -> cycb{token} -> cyca{token}"))
    playbook = bad.project.root / "playbooks" / f"itself{token}.yml"
    playbook.parent.mkdir(exist_ok=True)
    playbook.write_text(f"- hosts: all\n  roles: [common]\n- import_playbook: {playbook.name}\n")
    spec = add_spec(bad.project, f"itself{token}", parent=bad.pybase, roles=(), suite=None)
    bad.project.edit_spec(spec, playbook=f"playbooks/{playbook.name}")
    cases.append((spec, f"error: playbooks/{playbook.name}:3: import_playbook makes a cycle: "
                        f"playbooks/{playbook.name} -> playbooks/{playbook.name}"))
    for spec, expected in cases:
        result = run_cli("build", spec, cwd=bad.project.root)
        assert one_error(result) == expected, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
        assert_nothing_left(bad, spec, result, container=False)


def test_vault_with_the_wrong_password(bad: Bad) -> None:
    import subprocess

    from tests.integration.test_secrets import ANSIBLE_VAULT

    right, wrong = bad.tmp / "right-pass", bad.tmp / "wrong-pass"
    right.write_text("the-right-one\n")
    wrong.write_text("not-the-right-one\n")
    vaulted = subprocess.run([str(ANSIBLE_VAULT), "encrypt_string", "--vault-password-file",
                              str(right), "s3cret-value", "--name", "vaulty_value"],
                             capture_output=True, text=True, check=True).stdout
    spec = spec_with_role(bad, "vaulty", {
        "tasks/main.yml": "---\n- name: Use it\n  ansible.builtin.debug:\n"
                          "    msg: \"{{ vaulty_value | length }}\"\n",
        "vars/main.yml": "---\n# the vaulted value\n" + vaulted})
    result = run_cli("build", spec, "--vault-password-file", str(wrong), cwd=bad.project.root)
    error = one_error(result)
    assert error == ("error: roles/vaulty/vars/main.yml:3: could not be decrypted with the "
                     "vault password given (wrong password?)"), error
    assert_nothing_left(bad, spec, result, container=False)
    result = run_cli("build", spec, cwd=bad.project.root)
    error = one_error(result)
    assert error == ("error: roles/vaulty/vars/main.yml:3: is vault-encrypted and no vault "
                     "password was given"), error
    assert_nothing_left(bad, spec, result, container=False)


def test_base_image_that_does_not_exist(bad: Bad) -> None:
    project = bad.project
    missing = f"rbt-{project.token}/no-such-base:1"
    spec = tiny_spec(project, "nobase", **{"from": missing})
    result = run_cli("build", spec, cwd=project.root, timeout=300)
    error = one_error(result)
    assert error.startswith(f"error: images/{spec}.yml:1: base image {missing!r} is not on "
                            "this engine and could not be pulled"), error
    assert_nothing_left(bad, spec, result, container=False)


def test_tag_the_engine_refuses(bad: Bad) -> None:
    # The reference grammar allows a digest after a tag, but no engine moves a tag
    # to a digest reference: the spec refuses it before any container, and the
    # good tag next to it stays on its image.
    project = bad.project
    spec = tiny_spec(project, "badtag", **{"from": bad.pybase})
    assert run_cli("build", spec, cwd=project.root).rc == 0
    good = project.tag(spec)
    before = project.image_id(good)
    refused = f"rbt-{project.token}/{spec}:v1@sha256:{'a' * 64}"
    project.edit_spec(spec, tags=[good, refused])
    set_vars(project, spec)
    result = run_cli("build", spec, cwd=project.root)
    error = one_error(result)
    assert error.startswith(f"error: images/{spec}.yml:"), error
    assert f"{refused!r} is not a tag (name:tag, no digest)" in error, error
    assert "] create ok" not in result.stderr
    assert project.image_id(good) == before
    assert spec_images(project.client, spec) == {before}
    assert project.build_containers() == []


def test_clean_lists_then_removes_a_leftover(bad: Bad, engine: docker.DockerClient) -> None:
    # The engine is shared: list everything, but remove only what carries this
    # test's own build id (the --label filter), never anybody else's leftovers.
    build_id = uuid.uuid4().hex[:12]
    name = f"rolebake-build-rbt{bad.project.token}-{build_id}"
    container = engine.containers.run(
        BASE_IMAGE, [], entrypoint=["sleep", "infinity"], detach=True, name=name,
        labels={"rolebake.role": "build", "rolebake.build-id": build_id})
    try:
        # By default only leftovers older than an hour go (a running build is younger).
        default = run_cli("clean", "--dry-run", "--label", f"rolebake.build-id={build_id}",
                          cwd=bad.project.root)
        assert default.rc == 0 and name not in default.stdout, default.output
        listed = run_cli("clean", "--dry-run", "--older-than", "0s", cwd=bad.project.root)
        assert listed.rc == 0, listed.output
        assert re.search(rf"^would remove container {name} \(\d+s old\)$", listed.stdout,
                         re.M), listed.stdout
        assert engine.containers.get(name).status == "running"
        label = f"rolebake.build-id={build_id}"
        young = run_cli("clean", "--older-than", "1d", "--label", label, cwd=bad.project.root)
        assert young.rc == 0 and young.stdout.strip() == "0 leftover(s) removed", young.output
        removed = run_cli("clean", "--older-than", "0s", "--label", label, cwd=bad.project.root)
        assert removed.rc == 0, removed.output
        assert removed.stdout.splitlines() == [
            f"removing container {name} ({removed.stdout.split('(')[1].split(')')[0]})",
            "1 leftover(s) removed"]
        with pytest.raises(docker.errors.NotFound):
            engine.containers.get(name)
        bad_label = run_cli("clean", "--label", "no-equals-sign", cwd=bad.project.root)
        assert one_error(bad_label) == "error: --label 'no-equals-sign': expected KEY=VALUE"
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)
