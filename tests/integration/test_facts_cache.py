"""Facts once per parent image, on a real engine (provision/ansible_facts.py).

- The first layer built on a parent gathers facts and keeps them for the parent;
  a second layer on the same parent (the same spec rebuilt after a change: the
  same inventory host name, so the same host name in the facts) takes them from
  the cache (the progress output says so) and its tasks still see them.
- Facts a layer sets (`set_fact: cacheable`) never reach the parent's cache.
- A parent rebuilt with a change is a new parent id: facts are gathered again.
- `rolebake clean` removes the cache of an image the engine no longer has.
"""

from __future__ import annotations

import stat
import uuid
from collections.abc import Iterator

import docker
import pytest

from tests.conftest import run_cli
from tests.integration.conftest import TestProject
from tests.integration.tinyproject import (
    add_role,
    add_spec,
    new_project,
    remove_project_images,
    set_vars,
)

pytestmark = pytest.mark.integration

# The parent: a file that changes with its nonce.
PARENT_TASKS = """\
---
- name: Write the parent's file
  ansible.builtin.copy:
    dest: /etc/fact-parent.conf
    content: "parent {{ tiny_nonce | default('') }}\\n"
    mode: "0644"
"""
# A child: prints facts into the image, then sets a cacheable fact after a change.
CHILD_TASKS = """\
---
- name: Print facts
  ansible.builtin.copy:
    dest: /etc/fact-{{ child_name }}.txt
    content: "{{ ansible_facts['distribution'] }} {{ ansible_facts['hostname'] }}\\n"
    mode: "0644"

- name: A fact of the layer, cacheable
  ansible.builtin.set_fact:
    rolebake_layer_fact: "{{ child_name }}"
    cacheable: true
"""
CHILD_SUITE = """\
def test_facts_file(host):
    assert host.file("/etc/fact-{name}.txt").content_string.split()[0] == "Debian"
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory,
            engine: docker.DockerClient) -> Iterator[TestProject]:
    proj = new_project(tmp_path_factory.mktemp("facts"), engine)
    add_role(proj, "factparent", {"tasks/main.yml": PARENT_TASKS})
    add_role(proj, "factchild", {"tasks/main.yml": CHILD_TASKS})
    yield proj
    remove_project_images(engine, proj)


def _specs(project: TestProject) -> tuple[str, str]:
    parent = add_spec(project, f"fp{project.token}", roles=("factparent",), suite=None,
                      vars={"tiny_nonce": "one"})
    child = add_spec(project, f"fc{project.token}", parent=parent, roles=("factchild",),
                     suite=CHILD_SUITE.format(name="fc"), vars={"child_name": "fc"})
    return parent, child


def _parent_id(project: TestProject, spec: str) -> str:
    found = project.image_id(project.tag(spec))
    assert found is not None
    return found


def _facts_line(output: str, layer: str) -> str:
    lines = [line for line in output.splitlines() if "facts: " in line and layer in line]
    assert lines, output
    return lines[-1]


def test_second_layer_takes_facts_from_the_cache(project: TestProject) -> None:
    parent, child = _specs(project)
    first = second = child
    built = run_cli("build", first, cwd=project.root)
    assert built.rc == 0, built.stderr
    parent_id = _parent_id(project, parent)
    short = parent_id.split(":")[1][:12]
    assert f"facts: gathered (parent {short}); cached for the next layers on it" in \
        _facts_line(built.stderr, first), built.stderr

    folder = project.root / ".rolebake" / "facts" / parent_id.split(":")[1]
    assert [p.name for p in folder.iterdir()] == [_host(project, first)]
    cached = list((folder / _host(project, first)).iterdir())
    assert len(cached) == 1  # Ansible's jsonfile file, named as Ansible names it
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(cached[0].stat().st_mode) == 0o600
    facts = cached[0].read_text()
    assert '\\"ansible_distribution\\": \\"Debian\\"' in facts, facts[:300]
    assert "rolebake_layer_fact" not in facts  # the layer's own, set after the gather

    set_vars(project, child, child_name="fc")  # a change: the layer misses, its parent hits
    again = run_cli("build", second, cwd=project.root)
    assert again.rc == 0, again.stderr
    assert f"facts: from the cache of parent {short}" in _facts_line(again.stderr, second)
    # The task that prints a fact still sees it, in the image.
    out = project.client.containers.run(project.tag(second), ["cat", "/etc/fact-fc.txt"],
                                        entrypoint=[], remove=True).decode()
    assert out.split() == ["Debian", _host(project, second)]
    # The second layer's cacheable fact did not reach the parent's cache either.
    assert "rolebake_layer_fact" not in cached[0].read_text()

    # The parent rebuilt with a change: a new parent id, facts gathered again.
    set_vars(project, parent)
    changed = run_cli("build", second, cwd=project.root)
    assert changed.rc == 0, changed.stderr
    new_id = _parent_id(project, parent)
    assert new_id != parent_id
    assert f"facts: gathered (parent {new_id.split(':')[1][:12]})" in \
        _facts_line(changed.stderr, second), changed.stderr

    # `rolebake clean` removes the cache of an image the engine does not have, only that.
    gone = project.root / ".rolebake" / "facts" / uuid.uuid4().hex.ljust(64, "0")
    gone.mkdir(mode=0o700)
    # A label no leftover carries: nothing of anyone else's on the shared engine is touched.
    cleaned = run_cli("clean", "--label", f"rbt-none={project.token}", cwd=project.root)
    assert cleaned.rc == 0, cleaned.stderr
    assert f"removing fact cache .rolebake/facts/{gone.name}" in cleaned.stdout
    assert not gone.exists()
    assert folder.is_dir() and (project.root / ".rolebake" / "facts" /
                                new_id.split(":")[1]).is_dir()


def _host(project: TestProject, spec: str) -> str:
    """The container's host name: the image's inventory host name (the spec's name)."""
    del project
    return f"rolebake-{spec}"
