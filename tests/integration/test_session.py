"""The container session on a real engine: a task's `timeout:` kills its command; big files stream.

- A role whose task `sleep 300` has `timeout: 3` (ignored) goes on at once: the
  next task starts within 2 s of the timeout (measured against the same pair
  of tasks around one that returns at once), and no `sleep 300` is left in the
  build container (the role looks, through the same agent).
- A 200 MB file goes into a container and back out through one session while
  this process's peak memory grows by less than 50 MB (the kernel's high-water
  mark, reset first through /proc/self/clear_refs).
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from rolebake.engine import (
    BUILD_ID_LABEL,
    ROLE_LABEL,
    ContainerHandle,
    ContainerSession,
    DockerEngine,
    Engine,
)
from rolebake.events import discard
from rolebake.provision import pytoolchain
from rolebake.provision.base import lend_volume
from rolebake.release import release_of
from tests.conftest import run_cli
from tests.integration.conftest import BASE_IMAGE, TestProject
from tests.integration.tinyproject import (
    add_role,
    add_spec,
    new_project,
    remove_project_images,
)

pytestmark = pytest.mark.integration

HANG_TASKS = """\
---
- name: Baseline before
  ansible.builtin.command: date +%s.%N
  register: base_before
  changed_when: false

- name: Baseline, a task that returns at once
  ansible.builtin.command: "true"
  changed_when: false

- name: Baseline after
  ansible.builtin.command: date +%s.%N
  register: base_after
  changed_when: false

- name: Before
  ansible.builtin.command: date +%s.%N
  register: before
  changed_when: false

- name: Hangs until its timeout
  ansible.builtin.command: sleep 300
  timeout: 3
  ignore_errors: true

- name: After
  ansible.builtin.command: date +%s.%N
  register: after
  changed_when: false

- name: What is still running
  ansible.builtin.shell: |
    for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < "$f" 2>/dev/null; echo; done \\
      | grep -c '^sleep 300' || true
  register: left
  changed_when: false

- name: Measured
  ansible.builtin.debug:
    msg: >-
      left={{ left.stdout | trim }}
      between={{ (after.stdout | float) - (before.stdout | float) }}
      baseline={{ (base_after.stdout | float) - (base_before.stdout | float) }}

- name: A file to test
  ansible.builtin.copy:
    dest: /etc/hang.conf
    content: "done\\n"
    mode: "0644"
"""
SUITE = """\
def test_done(host):
    assert host.file("/etc/hang.conf").content_string == "done\\n"
"""


@pytest.fixture
def project(tmp_path: Path, engine: docker.DockerClient) -> Iterator[TestProject]:
    made = new_project(tmp_path / "project", engine)
    yield made
    remove_project_images(engine, made)


def test_a_task_timeout_kills_its_command_and_the_next_task_runs_at_once(
        project: TestProject) -> None:
    add_role(project, "hang", {"tasks/main.yml": HANG_TASKS})
    spec = add_spec(project, f"hang{project.token}", roles=("hang",), suite=SUITE)
    result = run_cli("build", spec, cwd=project.root)
    assert result.rc == 0, result.stderr
    assert re.search(r"tasks run through rolebake's agent", result.stderr), result.stderr
    log = _log(project, spec)
    assert "Timed out after 3 second" in log, result.stderr
    # Between the tasks before and after it: the 3 s timeout and what any task
    # in between costs (the baseline: the same around a task that returns at
    # once); the command alone would have been 300 s.
    measured = re.search(r"left=(\d+) between=([\d.]+) baseline=([\d.]+)", log)
    assert measured, log
    left, between, baseline = int(measured.group(1)), *map(float, measured.groups()[1:])
    print(f"sleep processes left: {left}; around the timeout {between:.2f} s, "
          f"around a quick task {baseline:.2f} s")
    assert left == 0, log
    assert between - baseline < 3 + 2, log
    assert project.build_containers() == []


def _log(project: TestProject, spec: str) -> str:
    return "".join(p.read_text() for p in (project.root / ".rolebake").rglob(f"{spec}-*.log"))


@pytest.fixture
def lent(engine: docker.DockerClient) -> Iterator[tuple[Engine, ContainerHandle]]:
    """A container of the base image with the python toolchain lent, as a build has it."""
    del engine  # the session's check that an engine answers
    rolebake_engine = DockerEngine.connect(timeout=120)
    image = rolebake_engine.image(BASE_IMAGE)
    assert image is not None
    runtime = pytoolchain.choose(rolebake_engine, release_of(rolebake_engine, image))
    toolchain = pytoolchain.ensure(rolebake_engine, runtime, image, discard, "session-test")
    mount = lend_volume(rolebake_engine, toolchain.id, volume=pytoolchain.VOLUME,
                        at=pytoolchain.VOLUME, kind="python")
    token = uuid.uuid4().hex[:8]
    with rolebake_engine.container(image.id, name=f"rbt-session-{token}", mounts=(mount,),
                                   labels={ROLE_LABEL: "build", BUILD_ID_LABEL: token},
                                   tmpfs={"/srv/big": "size=300m"}) as container:
        yield rolebake_engine, container


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


def test_200_mb_through_the_session_in_bounded_memory(
        lent: tuple[Engine, ContainerHandle], tmp_path: Path) -> None:
    engine, container = lent
    source, back = tmp_path / "big.bin", tmp_path / "back.bin"
    digest = hashlib.sha256()
    with source.open("wb") as handle:
        for _ in range(200):
            block = os.urandom(1024 * 1024)
            digest.update(block)
            handle.write(block)
    with engine.session(container, pytoolchain.INTERPRETER) as session:
        Path("/proc/self/clear_refs").write_text("5")  # the high-water mark starts from now
        start = _rss_kib("VmRSS")
        session.put(source, "/srv/big/big.bin")
        checked = session.run(["sha256sum", "/srv/big/big.bin"])
        session.fetch("/srv/big/big.bin", back)
        grown_mib = (_rss_kib("VmHWM") - start) / 1024
        _still_serves(session)
    assert checked.stdout.split()[0].decode() == digest.hexdigest()
    assert _sha256(back) == digest.hexdigest()
    print(f"peak memory grew by {grown_mib:.1f} MiB")
    assert grown_mib < 50, f"peak memory grew by {grown_mib:.0f} MiB"


def _still_serves(session: ContainerSession) -> None:
    assert session.run(["true"]).rc == 0


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


def test_a_command_timeout_kills_its_process_group_in_the_container(
        lent: tuple[Engine, ContainerHandle]) -> None:
    engine, container = lent
    with engine.session(container, pytoolchain.INTERPRETER) as session:
        done = session.shell("sleep 300 & sleep 300", timeout=2)
        assert done.timed_out
        left = session.shell("for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < \"$f\"; "
                             "echo; done | grep -c '^sleep 300' || true")
    assert left.stdout.strip() == b"0"
