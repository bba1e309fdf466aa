"""A scaffolded suite passes against the image it was generated from, for a role using facts.

`scaffold-tests` provisions the layer once more in a new build container; what
the role rendered from facts (`ansible_hostname`, `ansible_processor_vcpus`)
may differ from the image `rolebake test` checks, so it is never pinned.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.conftest import run_cli
from tests.integration.conftest import TestProject
from tests.integration.tinyproject import add_role, add_spec, new_project, remove_project_images

pytestmark = pytest.mark.integration

TASKS = """\
---
- name: Write the welcome page
  ansible.builtin.copy:
    dest: /etc/welcome.html
    content: "<h1>Welcome to {{ ansible_hostname }} ({{ ansible_processor_vcpus }} cpus)</h1>\\n"
    mode: "0644"

- name: Write the fixed notice
  ansible.builtin.copy:
    dest: /etc/notice
    content: "Managed for {{ site_name }}\\n"
    mode: "0640"

- name: Name the builder
  ansible.builtin.lineinfile:
    path: /etc/built-on
    line: "built on {{ ansible_hostname }}"
    create: true
    mode: "0644"
"""

SUITE = """\
def test_welcome(host):
    assert host.file("/etc/welcome.html").is_file
"""


@pytest.fixture
def project(tmp_path: Path, engine: docker.DockerClient) -> Iterator[TestProject]:
    project = new_project(tmp_path / "project", engine)
    try:
        yield project
    finally:
        remove_project_images(engine, project)


def test_a_suite_scaffolded_from_facts_passes_on_its_image(project: TestProject) -> None:
    add_role(project, "facts", {"tasks/main.yml": TASKS})
    name = add_spec(project, f"facts{project.token}", roles=("facts",), suite=SUITE,
                    vars={"site_name": f"shop {project.token}"})
    built = run_cli("build", name, cwd=project.root)
    assert built.rc == 0, built.output

    scaffolded = run_cli("scaffold-tests", name, cwd=project.root)
    assert scaffolded.rc == 0, scaffolded.output
    text = (project.root / "tests" / "images" / name / "test_scaffold.py").read_text()
    welcome = text.split("def test_file_etc_welcome_html(host):", 1)[1].split("\ndef ", 1)[0]
    assert "sha256sum" not in welcome and "f.mode == 0o644" in welcome, text
    assert "not pinned" in welcome
    built_on = text.split("def test_file_etc_built_on(host):", 1)[1].split("\ndef ", 1)[0]
    assert "built on" not in built_on and "f.is_file" in built_on, text
    # Content from the spec's vars alone is the same in every run: still pinned.
    notice = text.split("def test_file_etc_notice(host):", 1)[1].split("\ndef ", 1)[0]
    assert "f.sha256sum ==" in notice and "f.mode == 0o640" in notice, text

    tested = run_cli("test", name, cwd=project.root)
    assert tested.rc == 0, tested.output
    passed = [line for line in tested.stdout.splitlines() if line.startswith("PASSED")]
    for check in ("test_file_etc_welcome_html", "test_file_etc_notice",
                  "test_file_etc_built_on"):
        assert any(line.endswith(f"test_scaffold::{check}") for line in passed), tested.stdout
    assert project.build_containers() == []
