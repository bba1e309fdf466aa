"""Verification on a real engine: test-gated tags, metadata checks, the idempotence gate,
scaffolded suites and JUnit output (issue 3).

To keep the runtime modest the module builds one tiny image, `tiny-<token>`,
from the debootstrap base with a small role of its own (no nginx, no gunicorn),
and reuses it for every check that does not need a build of its own. The
token in the spec name puts every container rolebake makes for it (build and
verify) within reach of `project.build_containers()`.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
import yaml

from tests.conftest import run_cli
from tests.integration.conftest import BASE_IMAGE, TestProject, copy_project

pytestmark = pytest.mark.integration

TINY_TASKS = """\
---
- name: Create the tiny group
  ansible.builtin.group:
    name: tiny
    system: true

- name: Create the tiny user
  ansible.builtin.user:
    name: tiny
    group: tiny
    system: true
    shell: /usr/sbin/nologin
    home: /var/lib/tiny
    create_home: false

- name: Install less
  ansible.builtin.apt:
    name: [less]
    state: present
    install_recommends: false

- name: Create the configuration directory
  ansible.builtin.file:
    path: /etc/tiny
    state: directory
    owner: root
    group: tiny
    mode: "0750"

- name: Write the greeting
  ansible.builtin.copy:
    dest: /etc/tiny/greeting
    content: "hello from {{ tiny_greeting }}\\n"
    owner: root
    group: tiny
    mode: "0640"

- name: Write the settings
  ansible.builtin.template:
    src: settings.j2
    dest: /etc/tiny/settings
    owner: root
    group: root
    mode: "0644"

- name: Turn on verbose logging
  ansible.builtin.lineinfile:
    path: /etc/tiny/logging.conf
    line: "verbose = true"
    create: true
    mode: "0644"

- name: Install the init script
  ansible.builtin.copy:
    src: tiny.init
    dest: /etc/init.d/tiny
    owner: root
    group: root
    mode: "0755"

- name: Enable tiny at boot
  ansible.builtin.service:
    name: tiny
    enabled: true
"""

TINY_INIT = """\
#!/bin/sh
### BEGIN INIT INFO
# Provides:          tiny
# Required-Start:    $remote_fs
# Required-Stop:     $remote_fs
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: a service that does nothing
### END INIT INFO
exit 0
"""

TINY_SUITE = '''\
def test_greeting(host):
    greeting = host.file("/etc/tiny/greeting")
    assert greeting.is_file
    assert greeting.content_string.startswith("hello from ")
'''

FAILING_SUITE = '''\
def test_greeting_is_private(host):
    # Deliberately wrong: the role makes the greeting 0640.
    assert host.file("/etc/tiny/greeting").mode == 0o600
'''

FLAPPY_TASKS = """\
---
- name: Read the clock
  ansible.builtin.command: date

- name: Read the clock for Molecule
  ansible.builtin.command: date
  tags: [molecule-idempotence-notest]
"""


@dataclass
class Tiny:
    """The module's project copy with the tiny image built once."""

    project: TestProject
    name: str
    image_id: str
    report: dict
    junit: Path

    @property
    def tag(self) -> str:
        return self.project.tag(self.name)

    @property
    def suite(self) -> Path:
        return self.project.root / "tests" / "images" / self.name


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def add_tiny(root: Path, name: str, token: str) -> None:
    """A test-only role and spec: fast to build, and touching every kind of fact."""
    role = root / "roles" / "tiny"
    _write(role / "tasks" / "main.yml", TINY_TASKS)
    _write(role / "files" / "tiny.init", TINY_INIT)
    _write(role / "templates" / "settings.j2",
           "# {{ ansible_managed }}\nname = {{ tiny_greeting }}\n")
    _write(role / "defaults" / "main.yml", "tiny_greeting: world\n")
    spec = {
        "from": BASE_IMAGE,
        "roles": ["tiny"],
        "vars": {"tiny_greeting": token},
        "idempotence": True,
        "config": {"cmd": ["sleep", "infinity"], "user": "tiny", "env": {"TINY": "1"},
                   "labels": {"org.opencontainers.image.title": "tiny"}},
        "tags": [f"rbt-{token}/{name}:latest"],
    }
    _write(root / "images" / f"{name}.yml", yaml.safe_dump(spec, sort_keys=False))
    _write(root / "tests" / "images" / name / "test_tiny.py", TINY_SUITE)


def assert_no_containers(project: TestProject) -> None:
    left = project.build_containers()
    assert not left, f"containers left behind: {left}"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory,
         engine: docker.DockerClient) -> Iterator[Tiny]:
    """The tiny image, built (and verified) once for the module."""
    token = uuid.uuid4().hex[:8]
    root = tmp_path_factory.mktemp("verification") / "project"
    root.mkdir()
    copy_project(root, token)
    name = f"tiny-{token}"
    add_tiny(root, name, token)
    project = TestProject(root=root, token=token, client=engine)
    result = run_cli("build", name, "--json", "--junit", "junit.xml", cwd=root)
    assert result.rc == 0, result.output
    report = json.loads(result.stdout)
    image_id = project.image_id(project.tag(name))
    assert image_id is not None
    yield Tiny(project, name, image_id, report, root / "junit.xml")
    # Its tags (good and failed-) and the cache tags of its layers: all hold the token.
    for image in engine.images.list():
        for tag in image.tags:
            if tag.startswith(f"rbt-{token}/") or (
                    tag.startswith("rolebake-cache/") and token in tag):
                with contextlib.suppress(docker.errors.APIError):
                    engine.images.remove(tag, force=True)


def test_image_is_verified_on_build(tiny: Tiny) -> None:
    layer = tiny.report["layers"][-1]
    assert layer["layer"] == tiny.name
    assert layer["steps"]["idempotence"] == "ok"  # `idempotence: true` in the spec
    assert layer["steps"]["verify"] == "ok"
    assert layer["image_id"] == tiny.image_id  # the tag names the image that was tested
    cases = layer["tests"]["cases"]
    assert {c["name"] for c in cases if c["suite"] == "metadata"} >= {
        "Cmd", "Entrypoint", "User", "Env", "Labels"}
    assert [c["outcome"] for c in cases if c["name"] == "test_greeting"] == ["passed"]
    assert all(c["outcome"] == "passed" for c in cases)
    assert_no_containers(tiny.project)


def test_junit_lists_every_case(tiny: Tiny) -> None:
    root = ET.parse(tiny.junit).getroot()
    cases = root.findall(".//testcase")
    reported = tiny.report["layers"][-1]["tests"]["cases"]
    assert len(cases) == len(reported)
    assert {c.get("name") for c in cases} == {c["name"] for c in reported}
    suite = root.find("testsuite")
    assert suite is not None and suite.get("name") == tiny.name
    assert suite.get("tests") == str(len(reported)) and suite.get("failures") == "0"


def test_metadata_check_catches_a_spec_the_image_does_not_match(tiny: Tiny) -> None:
    """The spec now asks for a user and a port the committed image does not have.

    This is the real way an image and its spec part: the spec is edited and
    the image is not rebuilt (or a build is skipped). `rolebake test SPEC`
    checks the image's committed config against the spec as it is now, with no
    test code, and fails with exit 3 naming the settings that differ.
    """
    spec_path = tiny.project.spec(tiny.name)
    original = spec_path.read_text()
    try:
        spec = yaml.safe_load(original)
        spec["config"]["user"] = "root"
        spec["config"]["expose"] = [9999]
        spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
        result = run_cli("test", tiny.name, cwd=tiny.project.root)
    finally:
        spec_path.write_text(original)
    assert result.rc == 3, result.output
    assert "FAILED  metadata::User" in result.stdout
    assert "FAILED  metadata::ExposedPorts" in result.stdout
    assert "User: expected 'root', image has 'tiny'" in result.stderr
    assert "9999/tcp" in result.stderr
    assert "PASSED  metadata::Cmd" in result.stdout
    assert_no_containers(tiny.project)

    again = run_cli("test", tiny.name, cwd=tiny.project.root)
    assert again.rc == 0, again.output


def test_scaffolded_suite_passes_on_its_image_and_fails_on_another(tiny: Tiny) -> None:
    root = tiny.project.root
    target = tiny.suite / "test_scaffold.py"
    result = run_cli("scaffold-tests", tiny.name, cwd=root)
    assert result.rc == 0, result.output
    try:
        text = target.read_text()
        # One check of each kind the role gave reason for.
        for expected in ('host.package(name).is_installed', '"less"',
                         'host.file("/etc/tiny/greeting")', "f.mode == 0o640",
                         "f.sha256sum ==", 'host.file("/etc/tiny/settings")',
                         '"verbose = true" in f.content_string.splitlines()', 'host.user("tiny")',
                         'host.group("tiny")', '"tiny",  # task: Enable tiny at boot'):
            assert expected in text, f"{expected!r} not in\n{text}"
        # It moved no tag and left no cache entry behind: the next build is a hit.
        assert tiny.project.image_id(tiny.tag) == tiny.image_id
        plan = json.loads(run_cli("plan", tiny.name, "--json", cwd=root).stdout)
        assert plan["layers"][-1]["status"] == "HIT", plan["layers"][-1]
        assert plan["layers"][-1]["image"] == tiny.image_id
        refused = run_cli("scaffold-tests", tiny.name, cwd=root)
        assert refused.rc == 2 and "not overwriting" in refused.stderr

        alone = root / "scaffolded"
        alone.mkdir()
        shutil.copy(target, alone / "test_scaffold.py")
        own = run_cli("test", tiny.tag, "--tests", "scaffolded", cwd=root)
        assert own.rc == 0, own.output
        assert own.stdout.count("PASSED") >= 8
        other = run_cli("test", BASE_IMAGE, "--tests", "scaffolded", cwd=root)
        assert other.rc == 3, other.output
        assert "FAILED  scaffolded.test_scaffold::test_user_tiny" in other.stdout
        assert "FAILED  scaffolded.test_scaffold::test_service_enabled[tiny]" in other.stdout
    finally:
        target.unlink(missing_ok=True)
    assert_no_containers(tiny.project)


def test_failing_test_exits_3_leaves_the_tag_and_keep_failed_keeps_the_image(
        tiny: Tiny) -> None:
    """One build for both: the failing suite gates the tag; --keep-failed keeps the image."""
    _write(tiny.suite / "test_fails.py", FAILING_SUITE)
    spec = yaml.safe_load(tiny.project.spec(tiny.name).read_text())
    spec["vars"]["tiny_greeting"] = "changed"  # a changed input: the layer is rebuilt
    tiny.project.spec(tiny.name).write_text(yaml.safe_dump(spec, sort_keys=False))

    result = run_cli("build", tiny.name, "--keep-failed", "--json", "--junit", "failed.xml",
                     cwd=tiny.project.root)
    assert result.rc == 3, result.output
    # The target tag still names the image that passed.
    assert tiny.project.image_id(tiny.tag) == tiny.image_id
    # The failing test is listed with its assertion.
    assert "image checks failed for " + tiny.name in result.stderr
    assert "test_fails::test_greeting_is_private: AssertionError: assert 416 == 384" \
        in result.stderr  # 0o640 == 0o600, as pytest says it
    layer = json.loads(result.stdout)["layers"][-1]
    assert layer["status"] == "failed" and layer["error"]["exit_code"] == 3
    outcomes = {c["name"]: c["outcome"] for c in layer["tests"]["cases"]}
    assert outcomes["test_greeting_is_private"] == "failed"
    assert outcomes["test_greeting"] == "passed"
    failures = ET.parse(tiny.project.root / "failed.xml").getroot().findall(".//failure")
    assert [f.get("message") for f in failures] == ["AssertionError: assert 416 == 384"]
    # --keep-failed: the image stays, for inspection, under <repo>:failed-<short id>.
    short = layer["image_id"].split(":")[-1][:12]
    assert layer["failed_tag"] == f"rbt-{tiny.project.token}/{tiny.name}:failed-{short}"
    assert tiny.project.image_id(layer["failed_tag"]) == layer["image_id"]
    # A failed build is no cache hit: the next build tries again.
    plan = json.loads(run_cli("plan", tiny.name, "--json", cwd=tiny.project.root).stdout)
    assert plan["layers"][-1]["status"] == "MISS"
    assert_no_containers(tiny.project)


def test_idempotence_gate_names_the_changing_task(project: TestProject) -> None:
    """`command: date` always reports changed; the same task tagged
    molecule-idempotence-notest is exempt, as Molecule users expect."""
    name = f"flappy-{project.token}"
    _write(project.root / "roles" / "flappy" / "tasks" / "main.yml", FLAPPY_TASKS)
    _write(project.root / "images" / f"{name}.yml", yaml.safe_dump({
        "from": BASE_IMAGE, "roles": ["flappy"], "tags": [project.tag(name)]}))
    result = run_cli("build", name, "--idempotence", cwd=project.root)
    assert result.rc == 1, result.output
    # The progress lines name both tasks as they run; the verdict names one.
    error = result.stderr[result.stderr.index("\nerror: "):]
    assert "error: not idempotent: 1 task(s) changed on the second run: " \
        "flappy : Read the clock\n" in error
    assert "for Molecule" not in error
    assert "hint: fix the task, or tag it molecule-idempotence-notest" in error
    assert "[" + name + "] idempotence FAILED" in result.stderr
    assert project.image_id(project.tag(name)) is None
    assert_no_containers(project)
