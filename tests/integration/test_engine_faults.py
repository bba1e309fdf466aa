"""Faults of the engine itself, on a throwaway engine this module starts (never the shared one).

The engine restarts in the middle of a build; the engine's disk fills up during
provisioning or at the commit. Each ends with one clear error, no tag moved, and
nothing left on the engine after `rolebake clean` (DESIGN.md invariant 1, exit
codes). The engine (tests/integration/engines.py) has no network, so the layer is the tiny
role (files and commands only) on a base that already has python3, made on the
shared engine and loaded into this one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import docker
import pytest

from tests.conftest import Run, run_cli
from tests.integration.conftest import TestProject
from tests.integration.engines import ThrowawayEngine, can_run_engines
from tests.integration.gate import HELD
from tests.integration.tinyproject import (
    Build,
    add_role,
    add_spec,
    new_project,
    python_base,
    set_vars,
    spec_images,
    tiny_spec,
)

pytestmark = pytest.mark.integration

BULKY_TASKS = """\
---
- name: Write a big file
  ansible.builtin.command: >-
    dd if=/dev/urandom of=/opt/bulky bs=1M count={{ bulky_mb | default(1) }} status=none
  changed_when: true
"""

BULKY_SUITE = """\
def test_bulky_file(host):
    assert host.file("/opt/bulky").is_file
"""


@dataclass
class Faulty:
    engine: ThrowawayEngine
    project: TestProject  # its client is the throwaway engine's
    tiny: str
    bulky: str
    before: dict[str, str]  # spec -> its previous good image on the throwaway engine

    def env(self) -> dict[str, str]:
        # The base already has python3, and this engine has no network to make the
        # lent python toolchain with: the layers use the image's own python3.
        return {**self.engine.env(), "ROLEBAKE_PYTHON_TOOLCHAIN": "none"}

    def build(self, *args: str, env: dict[str, str] | None = None,
              gate: str | None = None) -> Build:
        return Build(self.project, *args, env={**self.env(), **(env or {})}, gate=gate)

    def cli(self, *args: str) -> Run:
        return run_cli(*args, cwd=self.project.root, env=self.env(), timeout=600)


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory,
           engine: docker.DockerClient) -> Iterator[Faulty]:
    why = can_run_engines()
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the engine fault tests: {why}")
        pytest.skip(why)
    throwaway = ThrowawayEngine(tmp_path_factory.mktemp("engine"), size_mib=1536)
    throwaway.start()
    try:
        project = new_project(tmp_path_factory.mktemp("faulty") / "project", throwaway.client)
        base = python_base(engine, project)  # on the shared engine: apt needs a network
        try:
            throwaway.load(base, engine)
        finally:
            engine.images.remove(base, force=True)
        tiny = tiny_spec(project, "t", **{"from": base})
        add_role(project, "bulky", {"tasks/main.yml": BULKY_TASKS})
        bulky = add_spec(project, f"b{project.token}", parent=base, roles=("bulky",),
                         suite=BULKY_SUITE)
        faulty = Faulty(throwaway, project, tiny, bulky, {})
        result = faulty.cli("build", tiny, bulky)
        assert result.rc == 0, result.output
        for spec in (tiny, bulky):
            image = project.image_id(project.tag(spec))
            assert image is not None
            faulty.before[spec] = image
        yield faulty
    finally:
        throwaway.destroy()


def one_error(result: Run) -> list[str]:
    """The error block: the one `error:` line and the detail and hint lines after it."""
    lines = result.stderr.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("error:")]
    assert len(starts) == 1, result.output
    block = [lines[starts[0]]]
    block += [line for line in lines[starts[0] + 1:] if line.startswith("  ")]
    assert "Traceback" not in result.output
    return block


def assert_nothing_moved_and_clean_leaves_nothing(faulty: Faulty, spec: str,
                                                  known: set[str]) -> None:
    project, client = faulty.project, faulty.engine.client
    assert project.image_id(project.tag(spec)) == faulty.before[spec]
    cleaned = faulty.cli("clean", "--older-than", "0s")
    assert cleaned.rc == 0, cleaned.output
    # The engine is the test's own: anything rolebake made and left is a leftover.
    assert client.containers.list(all=True) == []
    assert client.images.list(filters={"dangling": True, "label": "rolebake.role=image"}) == []
    assert spec_images(client, spec) <= known
    assert project.image_id(project.tag(spec)) == faulty.before[spec]


def test_engine_restart_during_provision(faulty: Faulty) -> None:
    project, spec = faulty.project, faulty.tiny
    known = spec_images(faulty.engine.client, spec)
    set_vars(project, spec, tiny_sleep=300)
    build = faulty.build(spec)
    try:
        build.wait_for(r"task tiny : Sleep a while")
        time.sleep(2)
        faulty.engine.restart()  # SIGTERM to dockerd, as a service restart; then up again
        result = build.finish(timeout=300)
    finally:
        build.kill()
    assert result.rc == 1, result.output
    error = one_error(result)
    assert error[0].startswith("error: the container engine restarted during provision; "
                               f"the build container rolebake-build-{spec}-"), result.output
    assert error[0].endswith(" stopped with it"), result.output
    assert "  hint: build again" in error, result.output
    assert_nothing_moved_and_clean_leaves_nothing(faulty, spec, known)


@pytest.mark.parametrize("step", ["provision", "commit"])
def test_engine_disk_fills_up(faulty: Faulty, step: str) -> None:
    project, spec, engine = faulty.project, faulty.bulky, faulty.engine
    known = spec_images(engine.client, spec)
    set_vars(project, spec, bulky_mb=300)
    # The layer is held at the start of the step, the disk is filled, the step goes on.
    build = faulty.build(spec, gate=step)
    try:
        build.wait_for(rf"{HELD} {step}$")
        with engine.disk_filled(leave_mib=60):
            build.release()
            result = build.finish(timeout=300)
    finally:
        build.kill()
    assert result.rc == 1, result.output
    error = one_error(result)
    assert "no space left on device" in "\n".join(error).lower(), result.output
    assert any(line.startswith("  hint: the engine's disk is full") for line in error), error
    assert f"] {step} FAILED" in result.stderr, result.output
    assert_nothing_moved_and_clean_leaves_nothing(faulty, spec, known)
