"""Faults on a real engine: signals at every pipeline step, a container killed from outside,
two builds of one image at once (in one checkout or two), a build killed outright, no
engine at all (DESIGN.md invariant 1, exit codes). A test-owned engine that restarts or
fills its disk: test_engine_faults.py.

Every fault hits a build that misses the cache (a new `tiny_nonce` var) of an
image that was built once before, so "no tag moved" is checked against a real
previous image. A step is hit by waiting for its progress line; the steps that
take milliseconds (create, cache lookup, commit, scan, tag) are held open by a
gate on the build's event stream (gate.py: the build runs with its step events
watched from outside, no hook in rolebake), and so are bootstrap and clean, which
take a fraction of a second now that python is lent instead of installed;
the others (lock wait, provision, idempotence, verify) are hit in real time.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from rolebake.engine import DockerEngine
from rolebake.load import plan_build
from rolebake.locks import host_lock
from rolebake.spec import Project
from tests.conftest import run_cli
from tests.integration.conftest import TestProject
from tests.integration.gate import HELD
from tests.integration.tinyproject import (
    Build,
    add_spec,
    iter_build_containers,
    new_project,
    python_base,
    remove_project_images,
    set_vars,
    spec_images,
    tiny_spec,
)

pytestmark = pytest.mark.integration

SLOW_SUITE = """\
def test_takes_its_time(host):
    assert host.file("/etc/tiny.conf").is_file
    host.check_output("sleep 120")
"""


@dataclass
class Faults:
    project: TestProject
    quick: str  # tiny spec on a python base: no bootstrap, steps follow each other fast
    full: str  # tiny spec on the debootstrap base: a real python bootstrap and its removal
    before: dict[str, str]  # spec -> image id of its previous good build


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory,
           engine: docker.DockerClient) -> Iterator[Faults]:
    project = new_project(tmp_path_factory.mktemp("faults") / "project", engine)
    try:
        quick = tiny_spec(project, "q", **{"from": python_base(engine, project)})
        full = tiny_spec(project, "f")
        result = run_cli("build", quick, full, cwd=project.root)
        assert result.rc == 0, result.output
        before = {s: project.image_id(project.tag(s)) for s in (quick, full)}
        yield Faults(project, quick, full, {k: v for k, v in before.items() if v})
    finally:
        remove_project_images(engine, project)


def assert_clean_stop(faults: Faults, spec: str, build: Build, signame: str) -> str:
    """Exit 130/143 with one message, no container, no new image, the previous tag kept."""
    result = build.finish(timeout=180)
    output = result.output
    assert result.rc == (130 if signame == "SIGINT" else 143), output
    assert f"error: interrupted by {signame}; cleaned up, no tag moved" in output, output
    assert "Traceback" not in output, output
    project = faults.project
    assert project.build_containers() == [], output
    assert project.image_id(project.tag(spec)) == faults.before[spec], output
    assert spec_images(project.client, spec) == {faults.before[spec]}, output
    return output


POINTS = [
    # (step, spec, signal, progress line to wait for, seconds to wait after it, gate)
    ("cache", "quick", "SIGTERM", r"\] cache \.\.\.", 0, "cache"),
    ("create", "quick", "SIGINT", r"\] create \.\.\.", 0, "create"),
    ("bootstrap", "full", "SIGINT", r"\] bootstrap \.\.\.", 0, "bootstrap"),
    ("provision", "quick", "SIGINT", r"task tiny : Sleep a while", 2, None),
    ("provision", "quick", "SIGTERM", r"task tiny : Sleep a while", 2, None),
    ("idempotence", "quick", "SIGTERM", r"\] idempotence \.\.\.", 0, None),
    ("clean", "full", "SIGTERM", r"\] clean \.\.\.", 0, "clean"),
    ("commit", "quick", "SIGINT", r"\] commit \.\.\.", 0, "commit"),
    ("scan", "quick", "SIGTERM", r"\] scan \.\.\.", 0, "scan"),
    ("verify", "quick", "SIGINT", r"\] verify \.\.\.", 6, None),
    ("tag", "quick", "SIGTERM", r"\] tag \.\.\.", 0, "tag"),
]


@pytest.mark.parametrize(("step", "which", "signame", "line", "delay", "gate"), POINTS,
                         ids=[f"{p[0]}-{p[2]}" for p in POINTS])
def test_signal_at_step(faults: Faults, tmp_path: Path, step: str, which: str, signame: str,
                        line: str, delay: float, gate: str | None) -> None:
    project = faults.project
    spec = faults.quick if which == "quick" else faults.full
    args = [spec]
    suite = project.root / "tests" / "images" / spec / "test_slow.py"
    values: dict[str, object] = {}
    if step == "provision":
        values["tiny_sleep"] = 120
    if step == "idempotence":
        values["tiny_idem_sleep"] = 120
        project.edit_spec(spec, idempotence=True)
    if step == "scan":
        secret = tmp_path / "token"
        secret.write_text(uuid.uuid4().hex)
        args += ["--secret", f"id=token,src={secret}"]
    if step == "verify":
        suite.write_text(SLOW_SUITE)
    set_vars(project, spec, **values)
    try:
        build = Build(project, *args, gate=gate)
        try:
            build.wait_for(line)
            if gate is not None:
                build.wait_for(rf"{HELD} {gate}$")
            if step == "idempotence":  # mid-task, in the second run
                build.wait_for(r"task tiny : Sleep on the second run")
                delay = 2
            time.sleep(delay)
            started = time.monotonic()
            build.signal(signame)
            output = assert_clean_stop(faults, spec, build, signame)
        finally:
            build.kill()
        assert f"] {step} FAILED" in output or step == "cache", output
        # Each running step is stopped, not waited for: the slow task and the slow
        # suite would each take two minutes more.
        assert time.monotonic() - started < 60, output
    finally:
        suite.unlink(missing_ok=True)
        project.edit_spec(spec, idempotence=False)


def layer_lock(project: TestProject, spec: str) -> Path:
    """The host-wide lock rolebake takes for `spec`'s layer of the project on this engine."""
    layer = plan_build(Project(project.root), [spec]).layer(spec)
    return host_lock(layer.lock_name, DockerEngine(project.client).identity(),
                     layer.cache_repository)


def cache_repository(project: TestProject, spec: str) -> str:
    """`rolebake-cache/<project>/<spec>`: the repository of the layer's cache tags."""
    return plan_build(Project(project.root), [spec]).layer(spec).cache_repository


def test_signal_while_waiting_for_the_lock(faults: Faults) -> None:
    project, spec = faults.project, faults.quick
    set_vars(project, spec)
    lock = layer_lock(project, spec)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # as another `rolebake build` of this layer would
        build = Build(project, spec)
        try:
            build.wait_for(r"another build of this layer is running; waiting")
            time.sleep(1)
            build.signal("SIGINT")
            assert_clean_stop(faults, spec, build, "SIGINT")
        finally:
            build.kill()


def test_build_container_killed_from_outside(faults: Faults) -> None:
    project, spec = faults.project, faults.quick
    set_vars(project, spec, tiny_sleep=120)
    build = Build(project, spec)
    try:
        build.wait_for(r"task tiny : Sleep a while")
        time.sleep(2)
        (container,) = list(iter_build_containers(project.client, project.token))
        container.kill()
        result = build.finish(timeout=180)
    finally:
        build.kill()
    assert result.rc == 1, result.output
    errors = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1, result.output
    assert "stopped during provision" in errors[0] and container.name in errors[0], errors
    assert "Traceback" not in result.output
    assert project.build_containers() == []
    assert project.image_id(project.tag(spec)) == faults.before[spec]
    assert spec_images(project.client, spec) == {faults.before[spec]}


def cache_tags(project: TestProject, spec: str) -> set[str]:
    return {t for i in project.client.images.list(cache_repository(project, spec))
            for t in i.tags}


def test_signal_after_a_layer_finished_puts_back_every_tag_of_the_run(faults: Faults) -> None:
    # A chain: the quick spec, and a child on it. The child's tag step passes its last
    # cancel check and moves every tag; only then does SIGTERM land (the after:tag
    # gate holds the layer there). The parent had finished long before.
    project, parent = faults.project, faults.quick
    child = add_spec(project, f"c{project.token}", parent=parent, roles=("tiny",))
    try:
        assert run_cli("build", child, cwd=project.root).rc == 0
        before = {spec: project.image_id(project.tag(spec)) for spec in (parent, child)}
        faults.before[parent] = before[parent]  # rebuilt if an earlier test changed its vars
        images = {spec: spec_images(project.client, spec) for spec in (parent, child)}
        caches = {spec: cache_tags(project, spec) for spec in (parent, child)}
        set_vars(project, parent)  # both layers build anew
        build = Build(project, child, gate="after:tag")
        try:
            build.wait_for(rf"\[{child}\] tag ok")
            build.wait_for(rf"{HELD} after:tag")
            build.signal("SIGTERM")
            result = build.finish(timeout=180)
        finally:
            build.kill()
        assert result.rc == 143, result.output
        assert "error: interrupted by SIGTERM; cleaned up, no tag moved" in result.stderr
        assert f"[{parent}] tag ok" in result.stderr  # the parent had moved its tags
        for spec in (parent, child):
            assert project.image_id(project.tag(spec)) == before[spec], result.output
            # Nothing of this run is left. (Subsets: another test session ending on the
            # shared engine may remove cache tags it saw appear, and their images.)
            assert spec_images(project.client, spec) <= images[spec], result.output
            assert cache_tags(project, spec) <= caches[spec], result.output
        assert project.build_containers() == []
    finally:
        remove_spec_images(project.client, child)


def test_a_build_killed_outright_is_cleaned_up_by_its_build_id(faults: Faults) -> None:
    project, spec = faults.project, faults.quick
    set_vars(project, spec)
    known = spec_images(project.client, spec)
    suite = project.root / "tests" / "images" / spec / "test_slow.py"
    suite.write_text(SLOW_SUITE)
    try:
        build = Build(project, spec)
        try:
            build.wait_for(r"\] verify \.\.\.")
            verify = wait_for_container(project.client, "verify", spec)
            build.proc.kill()  # SIGKILL: nothing of rolebake's own cleanup runs
            build.proc.wait()
        finally:
            build.kill()
    finally:
        suite.unlink()
    build_id = verify.labels["rolebake.build-id"]
    left = project.client.containers.list(all=True,
                                          filters={"label": f"rolebake.build-id={build_id}"})
    assert [c.name for c in left] == [verify.name]
    result = run_cli("clean", "--older-than", "0s", "--label", f"rolebake.build-id={build_id}",
                     cwd=project.root)
    assert result.rc == 0, result.output
    assert f"removing container {verify.name}" in result.stdout
    labelled = {"label": f"rolebake.build-id={build_id}"}
    assert project.client.containers.list(all=True, filters=labelled) == []
    assert project.client.images.list(all=True, filters=labelled) == []
    assert project.image_id(project.tag(spec)) == faults.before[spec]
    assert spec_images(project.client, spec) - known == set()


def wait_for_container(client: docker.DockerClient, role: str, spec: str,
                       timeout: float = 120) -> Any:
    """The container of `role` whose name names `spec`, once the engine has it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for container in client.containers.list(filters={"label": f"rolebake.role={role}"}):
            if spec in container.name:
                return container
        time.sleep(0.2)
    raise AssertionError(f"no {role} container for {spec} within {timeout}s")


def remove_spec_images(client: docker.DockerClient, spec: str) -> None:
    for image in client.images.list(all=True, filters={"label": f"rolebake.spec={spec}"}):
        with contextlib.suppress(docker.errors.APIError):
            client.images.remove(image.id, force=True)


@pytest.mark.parametrize("checkouts", ["one-checkout", "two-checkouts"])
def test_two_builds_at_once_share_one_cache_entry(faults: Faults, tmp_path: Path,
                                                  checkouts: str) -> None:
    project, spec = faults.project, faults.quick
    set_vars(project, spec)
    known = spec_images(project.client, spec)
    other = project
    if checkouts == "two-checkouts":
        # Two CI jobs, two clones, one engine: the lock is the engine's, not the clone's.
        # Cloned into a folder of the repository's name, as CI runners do, the clone is
        # the same project (docs/projects.md).
        other = TestProject(root=tmp_path / "clone" / project.root.name, token=project.token,
                            client=project.client)
        shutil.copytree(project.root, other.root, ignore=shutil.ignore_patterns(".rolebake"))
    first = Build(project, spec, "--json")
    try:
        first.wait_for(r"\] create \.\.\.")
        second = Build(other, spec, "--json")
        try:
            results = [first.finish(), second.finish()]
        finally:
            second.kill()
    finally:
        first.kill()
    for result in results:
        assert result.rc == 0, result.output
    assert "another build of this layer is running; waiting" in results[1].stderr
    assert "cache cached: HIT" in results[1].stderr, results[1].stderr
    new = project.image_id(project.tag(spec))
    assert new != faults.before[spec]
    client = project.client
    repository = cache_repository(project, spec)
    cache_tags = [t for i in client.images.list(repository) for t in i.tags]
    key = client.images.get(new).labels["rolebake.cache-key"].split(":")[-1][:40]
    assert [t for t in cache_tags if t.endswith(key)] == [f"{repository}:{key}"]
    # Compared with what was there, not equal to it: another test session ending on the
    # shared engine may remove cache tags (and images) it saw appear meanwhile.
    assert spec_images(client, spec) - known == {new}
    assert project.build_containers() == []
    assert new is not None
    faults.before[spec] = new  # the next test's "previous image"


def test_no_engine_is_exit_4_in_one_line(faults: Faults, tmp_path: Path) -> None:
    # Stopping the shared engine mid-build is not done here (other builds use it);
    # a socket nobody listens on is what a build sees once the daemon is gone.
    dead = tmp_path / "dead.sock"
    result = run_cli("build", faults.quick, cwd=faults.project.root,
                     env={"DOCKER_HOST": f"unix://{dead}"}, timeout=120)
    assert result.rc == 4, result.output
    errors = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert errors == [f"error: no container engine answers at unix://{dead}"], result.output
    assert "Traceback" not in result.output
