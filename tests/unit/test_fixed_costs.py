"""Fixed costs cut: what a build's start imports, what it asks the engine, how it commits.

The import checks run a fresh interpreter (this one has imported everything already).
The speed is bench/'s to measure; this keeps the imports from creeping back.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rolebake.engine.connection import Connection

PROBE = """
import json, sys
import rolebake.builder, rolebake.cli, rolebake.report, rolebake.attest, rolebake.verify
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def _imported(code: str, env: dict[str, str] | None = None) -> set[str]:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env=env)
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_a_build_start_does_not_import_what_a_noop_build_never_runs() -> None:
    found = _imported(PROBE)
    assert "rolebake" in found and "docker" in found  # the probe did import the build
    # paramiko: ssh:// engines only; cyclonedx: making an SBOM; testinfra and
    # pytest: the suite's own process; jinja2 (through report.html): parity --html.
    assert not found & {"paramiko", "cyclonedx", "testinfra", "pytest", "jinja2"}


def test_the_lazy_names_are_still_there() -> None:
    from rolebake import attest, report

    assert callable(attest.sbom_document) and callable(attest.deb_purl)
    assert callable(report.parity_html)
    with pytest.raises(AttributeError):
        _ = attest.no_such_name  # type: ignore[attr-defined]


def test_an_ssh_engine_gets_the_ssh_transport_back() -> None:
    code = """
import json, sys
import rolebake.engine
from rolebake.engine import sdk
before = "paramiko" in sys.modules
sdk.ssh_transport()
import docker
# what Connection.connect does for ssh:// (use_ssh_client: the ssh client, no connection
# is made until a request; the version given so none is asked for)
client = docker.APIClient(base_url="ssh://nobody@127.0.0.1:1", version="1.41",
                          use_ssh_client=True)
print(json.dumps([before, type(client._custom_adapter).__name__]))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert json.loads(done.stdout.splitlines()[-1]) == [False, "SSHHTTPAdapter"]


class InfoCounter:
    def __init__(self) -> None:
        self.calls = 0

    def info(self) -> dict[str, str]:
        self.calls += 1
        return {"ID": "x", "Name": "host", "DockerRootDir": "/var/lib/docker"}


def test_the_engine_identity_is_asked_once_per_connection() -> None:
    client = InfoCounter()
    connection = Connection(client)
    first = connection.identity()
    assert connection.identity() == first and len(first) == 32
    assert client.calls == 1


class TopClient:
    """What `_idle` asks: the engine's `top` of a container."""

    def __init__(self, commands: list[str]) -> None:
        self.api = self
        self.commands = commands

    def top(self, _container: str) -> dict[str, object]:
        return {"Titles": ["UID", "PID", "CMD"],
                "Processes": [["root", str(n), c] for n, c in enumerate(self.commands)]}


@pytest.mark.parametrize(("commands", "idle"), [
    (["/sbin/docker-init -- sleep infinity", "sleep infinity"], True),
    (["/usr/libexec/podman/catatonit -- sleep infinity", "sleep infinity"], True),
    (["sleep infinity"], True),
    # anything else may write while the layer is read: the commit pauses the container
    (["/sbin/docker-init -- sleep infinity", "sleep infinity", "nginx: master process"], False),
    (["/sbin/docker-init -- sh -c sleep infinity"], False),
    (["/bin/evil -- sleep infinity"], False),
    ([], False),
])
def test_a_commit_pauses_the_container_unless_only_the_keep_alive_runs(
        commands: list[str], idle: bool) -> None:
    from rolebake.engine import ContainerHandle, DockerEngine

    engine = DockerEngine(TopClient(commands))
    assert engine._idle(ContainerHandle("c", "c")) is idle
