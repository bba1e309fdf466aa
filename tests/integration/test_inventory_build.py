"""An image as a host of the inventory: the example site playbook, its groups and group_vars.

images/base.yml is a host of no group but `all`, images/web.yml of group `web`,
both built from playbooks/site.yml and playbooks/inventory.ini. The web image
must hold what a server of group `web` gets (with playbooks/group_vars/web.yml)
and nothing of the `app` or `dev` plays.
"""

from __future__ import annotations

import json

import docker
import pytest

from tests.conftest import run_cli
from tests.integration.conftest import TestProject

pytestmark = pytest.mark.integration

GROUP_TITLE = "rolebake example site (group web)"


def sh(client: docker.DockerClient, image: str, script: str) -> tuple[int, str]:
    container = client.containers.run(image, ["/bin/sh", "-c", script], entrypoint=[],
                                      user="root", detach=True)
    try:
        rc = container.wait()["StatusCode"]
        return rc, container.logs().decode()
    finally:
        container.remove(force=True)


def test_web_image_is_a_host_of_group_web(project: TestProject) -> None:
    group_vars = project.root / "playbooks" / "group_vars" / "web.yml"
    assert GROUP_TITLE in group_vars.read_text()
    # A title of this test's own: the web layer is built here, never a hit on
    # another test's build of the example (its Ansible log is read below).
    title = f"{GROUP_TITLE} {project.token}"
    group_vars.write_text(group_vars.read_text().replace(GROUP_TITLE, title))

    planned = run_cli("plan", "web", cwd=project.root)
    assert planned.rc == 0, planned.output
    assert "applies play 'Configure web servers' (hosts: web)" in planned.stdout
    assert "skips play 'Apply the base configuration to every host'" in planned.stdout
    assert "Configure application servers" not in planned.stdout

    result = run_cli("build", "web", "--json", cwd=project.root)
    assert result.rc == 0, result.output
    layers = {layer["layer"]: layer for layer in json.loads(result.stdout)["layers"]}
    assert layers["web"]["cached"] is False, layers["web"]
    # Ansible saw the plays: common (base applied it) skipped task by task, app
    # and dev matched no host, web ran.
    log = (project.root / layers["web"]["log"]).read_text()  # an absolute path stays one
    common = log.split("PLAY [Apply the base configuration to every host]")[1] \
        .split("PLAY [Configure web servers]")[0]
    assert "TASK [common" in common and "changed:" not in common and "ok:" not in common, log
    assert "PLAY [Configure application servers] ***" in log
    assert log.split("PLAY [Configure application servers]")[1].split("\n")[1].startswith(
        "skipping: no hosts matched"), log
    image = project.tag("web")
    client = project.client

    # What group web gets: common (from base, the `all` play), web, and the
    # title that only group_vars/web.yml sets.
    rc, index = sh(client, image, "cat /var/www/site/index.html")
    assert rc == 0 and f"<title>{title}</title>" in index, index
    assert sh(client, image, "id ops")[0] == 0
    assert sh(client, image, "dpkg -s nginx >/dev/null")[0] == 0
    # Nothing from the app or dev plays.
    for path in ("/opt/app", "/etc/app", "/usr/bin/strace", "/usr/bin/tcpdump"):
        assert sh(client, image, f"test ! -e {path}")[0] == 0, f"{path} is in the web image"
    assert sh(client, image, "id app")[0] != 0

    # The group's vars are an input of the web layer (not of base): a change is a
    # miss, and plan names the file.
    group_vars.write_text(group_vars.read_text().replace(title, "a new title"))
    again = run_cli("plan", "web", cwd=project.root)
    assert again.rc == 0, again.output
    base_line = next(line for line in again.stdout.splitlines() if line.startswith("base"))
    assert "[HIT]" in base_line, again.stdout
    assert "playbooks/group_vars/web.yml changed" in again.stdout, again.stdout
    assert project.build_containers() == []
