"""Ready checks that help: a service bound to loopback is named, with what to change.

A tiny role installs a server (perl, which the debootstrap base already has) that
listens on a role variable's address, 127.0.0.1 by default, as Redis does.
`ready.port` never opens from outside the container: the check sees the
listener inside and fails at once, naming the process (even one running as
another user than root), with what to change.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.conftest import run_cli
from tests.integration.conftest import TestProject
from tests.integration.tinyproject import add_role, add_spec, new_project, remove_project_images

pytestmark = pytest.mark.integration

SERVER = """\
#!/usr/bin/perl
# A service that accepts connections and says hello: {{ ansible_managed }}
use IO::Socket::INET;
my $s = IO::Socket::INET->new(LocalAddr => "{{ loopback_bind }}", LocalPort => 8000,
                              Listen => 5, ReuseAddr => 1) or die "listen: $!";
$| = 1;
print "listening on {{ loopback_bind }}:8000\\n";
while (my $c = $s->accept) { print $c "hello\\n"; close $c; }
"""

TASKS = """\
---
- name: Install the service
  ansible.builtin.template:
    src: server.pl.j2
    dest: /usr/local/bin/loopback-server
    mode: "0755"
"""

SUITE = """\
def test_server_installed(host):
    assert host.file("/usr/local/bin/loopback-server").is_file
"""


@pytest.fixture
def project(tmp_path: Path, engine: docker.DockerClient) -> Iterator[TestProject]:
    project = new_project(tmp_path / "project", engine)
    try:
        yield project
    finally:
        remove_project_images(engine, project)


def test_a_port_bound_to_loopback_fails_fast_naming_the_process_and_the_hint_works(
        project: TestProject) -> None:
    add_role(project, "loopback", {"tasks/main.yml": TASKS,
                                   "templates/server.pl.j2": SERVER,
                                   "defaults/main.yml": "loopback_bind: 127.0.0.1\n"})
    # As `nobody`: root in the container cannot read that user's sockets, the owner can.
    name = add_spec(project, f"lo{project.token}", roles=("loopback",), suite=SUITE,
                    config={"cmd": ["/usr/local/bin/loopback-server"], "user": "nobody"},
                    ready={"port": 8000, "timeout": 300})
    result = run_cli("build", name, cwd=project.root)
    assert result.rc == 3, result.output
    assert re.search(r"port 8000 cannot open from outside the container: inside it "
                     r"loopback-server \(pid \d+\) listens on 127\.0\.0\.1:8000 only, a loopback",
                     result.stderr), result.stderr[-3000:]
    assert "not waiting for the ready timeout" in result.stderr
    assert "listen or bind address" in result.stderr
    assert "| listening on 127.0.0.1:8000" in result.stderr  # the container's log
    assert project.image_id(project.tag(name)) is None
    assert project.build_containers() == []

    # The same check on the image alone, timed: seconds, not the 300 s timeout.
    assert run_cli("build", name, "--no-verify", cwd=project.root).rc == 0
    started = time.monotonic()
    tested = run_cli("test", name, cwd=project.root)
    assert tested.rc == 3, tested.output
    assert time.monotonic() - started < 60, tested.output
    assert "loopback-server (pid" in tested.stderr, tested.stderr

    # The hint's ready.command, as written, makes the same image pass.
    hint = result.stderr.rsplit("ready: ", 1)[1].strip()
    assert hint == "{command: [bash, -c, '</dev/tcp/127.0.0.1/8000']}"
    project.edit_spec(name, ready={"command": ["bash", "-c", "</dev/tcp/127.0.0.1/8000"],
                                   "timeout": 30})
    result = run_cli("build", name, cwd=project.root)
    assert result.rc == 0, result.output
    assert project.image_id(project.tag(name)) is not None
    assert project.build_containers() == []
