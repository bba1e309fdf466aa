"""The image's own identity during the build: its host name, and the other hosts' addresses.

A role templating `ansible_hostname` bakes the image's inventory host name
(spec `host:`, else `rolebake-<spec>`), not the build container's random id;
with `host:` naming a real host of the inventory, a template that lists the
other hosts' `ansible_host` gets their inventory addresses (and the image's
own inventory address), as on a server, never the container's id.
"""

from __future__ import annotations

import docker
import pytest
import yaml

from tests.conftest import run_cli
from tests.integration.conftest import BASE_IMAGE, TestProject
from tests.integration.tinyproject import add_role, dedent

pytestmark = pytest.mark.integration

IDENT = dedent("""
    {{ ansible_hostname }}|{{ ansible_fqdn }}|{{ inventory_hostname }}
""")
BACKENDS = dedent("""
    {% for h in groups['web'] | sort %}
    {{ h }} {{ hostvars[h].ansible_host | default('-') }}
    {% endfor %}
""")
TASKS = dedent("""
    - name: Who am I
      ansible.builtin.template:
        src: ident.j2
        dest: /etc/ident
        mode: "0644"
    - name: The web backends, as a load balancer's config lists them
      ansible.builtin.template:
        src: backends.j2
        dest: /etc/backends
        mode: "0644"
      when: "'web' in groups"
""")


def read(client: docker.DockerClient, image: str, path: str) -> str:
    container = client.containers.run(image, ["cat", path], entrypoint=[], user="root",
                                      detach=True)
    try:
        assert container.wait()["StatusCode"] == 0, container.logs().decode()
        return str(container.logs().decode())
    finally:
        container.remove(force=True)


def build(project: TestProject, name: str) -> None:
    result = run_cli("build", name, "--no-verify", cwd=project.root)
    assert result.rc == 0, result.output
    assert project.build_containers() == []


def test_ansible_hostname_is_the_images_host_name(project: TestProject) -> None:
    add_role(project, "ident", {"tasks/main.yml": TASKS, "templates/ident.j2": IDENT,
                                "templates/backends.j2": BACKENDS})
    name = f"ident{project.token}"
    project.spec(name).write_text(yaml.safe_dump(
        {"from": BASE_IMAGE, "roles": ["ident"], "tags": [project.tag(name)]}))
    build(project, name)
    host = f"rolebake-{name}"
    assert read(project.client, project.tag(name), "/etc/ident").strip() == \
        f"{host}|{host}|{host}"


def test_host_leaves_the_other_hosts_addresses_alone(project: TestProject) -> None:
    add_role(project, "ident", {"tasks/main.yml": TASKS, "templates/ident.j2": IDENT,
                                "templates/backends.j2": BACKENDS})
    site = project.root / "ident"
    (site / "host_vars").mkdir(parents=True)
    (site / "inventory.ini").write_text(
        "[web]\nweb1.example.internal ansible_host=10.0.0.1\n"
        "web2.example.internal ansible_host=10.0.0.2\n[lb]\nlb1.example.internal\n")
    # The real server's own settings: its address, and a user and connection the build
    # container does not have. The image keeps the address; the build still reaches it.
    (site / "host_vars" / "web2.example.internal.yml").write_text(
        "ansible_host: 10.0.0.22\nansible_user: deploy\nansible_connection: ssh\n")
    (site / "site.yml").write_text("- hosts: web\n  roles: [ident]\n")
    name = f"named{project.token}"
    project.spec(name).write_text(yaml.safe_dump(
        {"from": BASE_IMAGE, "playbook": "ident/site.yml", "inventory": "ident/inventory.ini",
         "groups": ["web"], "host": "web2.example.internal", "tags": [project.tag(name)]}))
    build(project, name)
    image = project.tag(name)
    assert read(project.client, image, "/etc/ident").strip() == \
        "web2|web2.example.internal|web2.example.internal"
    assert read(project.client, image, "/etc/backends").split("\n") == [
        "web1.example.internal 10.0.0.1", "web2.example.internal 10.0.0.22", ""]
