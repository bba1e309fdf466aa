"""Pipelined layers on a real engine: a child builds while its parent is verified.

The parents' suites take a few seconds, so the overlap is certain: the child's
build container starts on the parent's committed image and provisions while the
parent's suite runs (`build --json` gives each step's start time). A parent
whose suite fails cancels its child in the middle of its provision and leaves
nothing of it: no image, no tag, no cache tag, no container; the build exits 3
(DESIGN.md, exit codes). Only this module's own specs, tags and containers are
counted (its project token is in every name).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import docker
import pytest

from tests.conftest import run_cli
from tests.integration.conftest import TestProject
from tests.integration.tinyproject import (
    TINY_SUITE,
    add_spec,
    new_project,
    remove_project_images,
    set_vars,
    spec_images,
    tiny_spec,
)

pytestmark = pytest.mark.integration

SLOW_PASS = TINY_SUITE + """

def test_takes_its_time(host):
    import time
    time.sleep(4)
"""

SLOW_FAIL = TINY_SUITE + """

def test_fails_after_a_while(host):
    import time
    time.sleep(4)
    assert host.file("/etc/not-there.conf").is_file
"""


@dataclass
class Pipeline:
    project: TestProject
    parent: str  # its suite passes, slowly
    child: str  # built on parent
    bad: str  # its suite fails, slowly
    doomed: str  # built on bad; its provision sleeps long, to be cancelled in it


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory,
             engine: docker.DockerClient) -> Iterator[Pipeline]:
    project = new_project(tmp_path_factory.mktemp("pipeline") / "project", engine)
    try:
        parent = tiny_spec(project, "p", suite=SLOW_PASS)
        bad = tiny_spec(project, "x", suite=SLOW_FAIL)
        child = add_spec(project, f"c{project.token}", parent=parent)
        doomed = add_spec(project, f"d{project.token}", parent=bad,
                          vars={"tiny_sleep": 120})
        yield Pipeline(project, parent, child, bad, doomed)
    finally:
        remove_project_images(engine, project)


def build_json(project: TestProject, *args: str) -> tuple[int, dict[str, Any], str]:
    result = run_cli("build", *args, "--json", cwd=project.root, timeout=600)
    assert result.stdout.strip(), result.output
    report = json.loads(result.stdout)
    return result.rc, {layer["layer"]: layer for layer in report["layers"]}, result.output


# `--json` rounds each start and each duration to 0.01 s: a step that starts the
# moment another ends may read up to 0.02 s before that end.
SLACK = 0.02


def ended(layer: dict[str, Any], step: str) -> float:
    return float(layer["step_started"][step] + layer["step_seconds"][step])


def test_child_provisions_while_its_parent_is_verified(pipeline: Pipeline) -> None:
    project = pipeline.project
    set_vars(project, pipeline.parent)  # a new parent image: both layers miss

    rc, layers, output = build_json(project, pipeline.child)

    assert rc == 0, output
    parent, child = layers[pipeline.parent], layers[pipeline.child]
    assert not parent["cached"] and not child["cached"], output
    # The child's container started on the parent's committed image and provisioned
    # while the parent's suite ran; it verified only after the parent passed.
    assert child["step_started"]["create"] >= ended(parent, "commit") - SLACK, output
    assert child["step_started"]["provision"] < ended(parent, "verify"), output
    assert child["step_started"]["verify"] >= ended(parent, "verify") - SLACK, output
    assert child["step_started"]["tag"] >= ended(parent, "tag") - SLACK, output
    assert project.image_id(project.tag(pipeline.parent)) == parent["image_id"]
    assert project.build_containers() == []
    # Built again: both are hits, as before pipelining.
    rc, again, output = build_json(project, pipeline.child)
    assert rc == 0 and again[pipeline.parent]["cached"] and again[pipeline.child]["cached"], \
        output
    assert again[pipeline.child]["image_id"] == child["image_id"]


def test_parent_failing_verification_leaves_nothing_of_its_child(pipeline: Pipeline) -> None:
    project = pipeline.project
    client = project.client

    rc, layers, output = build_json(project, pipeline.doomed)

    assert rc == 3, output
    bad, doomed = layers[pipeline.bad], layers[pipeline.doomed]
    assert bad["status"] == "failed" and bad["error"]["exit_code"] == 3, output
    assert doomed["status"] == "skipped" and doomed["error"] is None, output
    assert doomed["reasons"] == [f"parent {pipeline.bad} failed"], output
    # It was inside its (two-minute) provision when the parent failed, and was stopped there.
    assert doomed["steps"]["provision"] == "failed" and "commit" not in doomed["steps"], output
    assert doomed["step_started"]["provision"] < ended(bad, "verify"), output
    # Nothing of it: no image (committed or kept), no tag, no cache tag, no container.
    assert spec_images(client, pipeline.doomed) == set(), output
    assert spec_images(client, pipeline.bad) == set(), output
    tags = [t for image in client.images.list() for t in image.tags
            if pipeline.doomed in t or pipeline.bad in t]
    assert tags == [], output
    assert project.build_containers() == [], output


def test_parent_failing_verification_keeps_only_itself_with_keep_failed(
        pipeline: Pipeline) -> None:
    project = pipeline.project
    client = project.client
    set_vars(project, pipeline.doomed, tiny_sleep=0)  # the child waits to verify, committed

    rc, layers, output = build_json(project, pipeline.doomed, "--keep-failed")

    assert rc == 3, output
    bad, doomed = layers[pipeline.bad], layers[pipeline.doomed]
    assert doomed["status"] == "skipped" and doomed["failed_tag"] is None, output
    assert spec_images(client, pipeline.doomed) == set(), output
    assert spec_images(client, pipeline.bad) == {bad["image_id"]}, output
    assert [t for image in client.images.list() for t in image.tags
            if pipeline.doomed in t] == [], output
    assert project.build_containers() == [], output
    client.images.remove(bad["failed_tag"], force=True)
