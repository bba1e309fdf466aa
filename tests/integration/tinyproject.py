"""A tiny test-only image spec and role, and a way to drive a build from its progress output.

Shared by test_secrets.py, test_faults.py and test_bad_input.py. The spec names
carry the test project's token, so their cache tags (rolebake-cache/<project>/<spec>) are
this test's own and can be removed afterwards without touching anyone else's.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import yaml

from tests.conftest import REPO, Run
from tests.integration.conftest import BASE_IMAGE, TestProject, copy_project

TINY_TASKS = """\
---
- name: Write the tiny file
  ansible.builtin.copy:
    dest: /etc/tiny.conf
    content: "tiny {{ tiny_nonce | default('') }}\\n"
    mode: "0644"

- name: Sleep a while
  ansible.builtin.command: sleep {{ tiny_sleep | default(0) }}
  changed_when: false
  when: (tiny_sleep | default(0) | int) > 0

- name: Sleep on the second run
  ansible.builtin.shell: |
    if [ -e /tmp/.rolebake-tiny-once ]; then sleep {{ tiny_idem_sleep | default(0) }}; fi
    touch /tmp/.rolebake-tiny-once
  changed_when: false
"""

TINY_SUITE = """\
def test_tiny_file(host):
    assert host.file("/etc/tiny.conf").is_file
"""


def new_project(root: Path, client: docker.DockerClient) -> TestProject:
    """A copy of the example project (own tag namespace) for a whole module."""
    token = uuid.uuid4().hex[:8]
    root.mkdir(parents=True, exist_ok=True)
    copy_project(root, token)
    return TestProject(root=root, token=token, client=client)


def add_role(project: TestProject, name: str, files: dict[str, str]) -> None:
    """Write a role: {relative path: text}."""
    for rel, text in files.items():
        path = project.root / "roles" / name / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def add_spec(project: TestProject, name: str, *, parent: str = BASE_IMAGE,
             roles: tuple[str, ...] = ("tiny",), suite: str | None = TINY_SUITE,
             **extra: Any) -> str:
    """Write images/<name>.yml (tagged rbt-<token>/<name>:latest) and its testinfra suite."""
    data: dict[str, Any] = {"from": parent, "roles": list(roles),
                            "tags": [project.tag(name)], **extra}
    project.spec(name).write_text(yaml.safe_dump(data, sort_keys=False))
    if suite is not None:
        tests = project.root / "tests" / "images" / name
        tests.mkdir(parents=True, exist_ok=True)
        (tests / f"test_{name}.py").write_text(suite)
    return name


def tiny_spec(project: TestProject, prefix: str, **extra: Any) -> str:
    """The tiny role under a spec name of this project's own (e.g. `s1a2b3c4d`)."""
    add_role(project, "tiny", {"tasks/main.yml": TINY_TASKS})
    return add_spec(project, f"{prefix}{project.token}", **extra)


def python_base(client: docker.DockerClient, project: TestProject) -> str:
    """The debootstrap base with python3 already in it: builds on it skip the bootstrap."""
    ref = project.tag("pybase", "1")
    container = client.containers.run(
        BASE_IMAGE, ["/bin/sh", "-c", "apt-get update -qq && apt-get install -y -qq "
                     "--no-install-recommends python3 python3-apt >/dev/null && "
                     "rm -rf /var/lib/apt/lists/*"],
        detach=True, name=f"rbt-{project.token}-pybase", labels={"rbt": project.token})
    try:
        assert container.wait(timeout=600)["StatusCode"] == 0, container.logs().decode()
        # The install command must not become the image's CMD: containers of it
        # would run apt for seconds and then stop under the suite's feet.
        container.commit(repository=ref.split(":")[0], tag="1", changes=['CMD ["bash"]'])
    finally:
        container.remove(force=True)
    return ref


def remove_project_images(client: docker.DockerClient, project: TestProject) -> None:
    """Remove every image tagged into the project's namespace or its specs' cache repos."""
    mine = (f"rbt-{project.token}/", "rolebake-cache/")
    for image in client.images.list():
        for tag in image.tags:
            if tag.startswith(mine[0]) or (tag.startswith(mine[1]) and project.token in tag):
                with contextlib.suppress(docker.errors.APIError):
                    client.images.remove(tag, force=True)


def spec_images(client: docker.DockerClient, spec: str) -> set[str]:
    """Ids of every image (tagged or not) rolebake committed for `spec`."""
    return {i.id for i in client.images.list(all=True, filters={"label": f"rolebake.spec={spec}"})}


def set_vars(project: TestProject, spec: str, **values: Any) -> None:
    """Replace the spec's vars (a new `tiny_nonce` makes the next build a cache miss)."""
    project.edit_spec(spec, vars={"tiny_nonce": uuid.uuid4().hex, **values})


GATE = Path(__file__).resolve().parent / "gate.py"


class Build:
    """`rolebake build` running in the background, read line by line from its stderr.

    With `gate` (`commit`, `after:tag`: see gate.py) each layer is held at that
    step until the build is signalled, `release()` is called, or `gate_seconds`
    pass; `wait_for(HELD)` waits until it is held.
    """

    def __init__(self, project: TestProject, *args: str, env: dict[str, str] | None = None,
                 gate: str | None = None, gate_seconds: float = 60):
        program = ([str(GATE), gate, str(gate_seconds)] if gate is not None
                   else ["-m", "rolebake"])
        self.proc = subprocess.Popen(
            [sys.executable, *program, "build", *args], cwd=project.root,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})})
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stdout: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 300) -> str:
        """Block until a progress line matches `pattern` (a regex); return it."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no line matching {pattern!r} within {timeout}s:\n{self.text}"
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            assert line is not None, f"build ended before {pattern!r}:\n{self.text}"
            self.lines.append(line)
            if re.search(pattern, line):
                return line

    def finish(self, timeout: float = 300) -> Run:
        """Wait for the build to end; its exit code and all it printed."""
        assert self.proc.stdout is not None
        stdout = self.proc.stdout.read()
        rc = self.proc.wait(timeout=timeout)
        while True:
            line = self._queue.get(timeout=30)
            if line is None:
                break
            self.lines.append(line)
        return Run(rc, stdout, self.text)

    def signal(self, signame: str) -> None:
        self.proc.send_signal(getattr(signal, signame))

    def release(self) -> None:
        """Let a layer held at the gate go on."""
        self.proc.send_signal(signal.SIGUSR1)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip()


def iter_build_containers(client: docker.DockerClient, token: str) -> Iterator[Any]:
    for container in client.containers.list(all=True, filters={"label": "rolebake.role=build"}):
        if token in container.name:
            yield container
