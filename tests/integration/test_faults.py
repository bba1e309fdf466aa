"""Faults on a real engine: signals at every pipeline step, a container killed from outside,
two builds of one image at once, no engine at all (DESIGN.md invariant 1, exit codes).

Every fault hits a build that misses the cache (a new `tiny_nonce` var) of an
image that was built once before, so "no tag moved" is checked against a real
previous image. A step is hit by waiting for its progress line; the steps that
take milliseconds (create, cache lookup, commit, scan, tag) are held open with
the ROLEBAKE_TEST_PAUSE test hook in build.Builder._step, and so are bootstrap and
clean, which take a fraction of a second now that python is lent instead of installed;
the others (lock wait, provision, idempotence, verify) are hit in real time.
"""

from __future__ import annotations

import fcntl
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from tests.conftest import run_cli
from tests.integration.conftest import TestProject
from tests.integration.tinyproject import (
    Build,
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
    # (step, spec, signal, progress line to wait for, seconds to wait after it, test hook)
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


@pytest.mark.parametrize(("step", "which", "signame", "line", "delay", "hook"), POINTS,
                         ids=[f"{p[0]}-{p[2]}" for p in POINTS])
def test_signal_at_step(faults: Faults, tmp_path: Path, step: str, which: str, signame: str,
                        line: str, delay: float, hook: str | None) -> None:
    project = faults.project
    spec = faults.quick if which == "quick" else faults.full
    args = [spec]
    env = {"ROLEBAKE_TEST_PAUSE": hook} if hook else {}
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
        build = Build(project, *args, env=env)
        try:
            build.wait_for(line)
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


def test_signal_while_waiting_for_the_lock(faults: Faults) -> None:
    project, spec = faults.project, faults.quick
    set_vars(project, spec)
    lock = project.root / ".rolebake" / "locks" / f"{spec}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as handle:
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


def test_two_builds_at_once_share_one_cache_entry(faults: Faults) -> None:
    project, spec = faults.project, faults.quick
    set_vars(project, spec)
    first = Build(project, spec, "--json")
    try:
        first.wait_for(r"\] create \.\.\.")
        second = Build(project, spec, "--json")
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
    cache_tags = [t for i in client.images.list(f"rolebake-cache/{spec}") for t in i.tags]
    key = client.images.get(new).labels["rolebake.cache-key"].split(":")[-1][:40]
    assert [t for t in cache_tags if t.endswith(key)] == [f"rolebake-cache/{spec}:{key}"]
    assert spec_images(client, spec) == {faults.before[spec], new}
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
