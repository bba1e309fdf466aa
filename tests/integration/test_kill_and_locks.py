"""A run killed outright in the tag step, and a lock file turned into a link, on a real
engine (DESIGN.md invariants 1 and 7).

SIGKILL lands in the middle of the tag step (the `tag:moved` gate holds the layer
after its first tag moved) or right after it (`after:tag`): no cleanup of any kind runs,
so the tags are split or moved. The next `rolebake plan` on the engine finds the run's
journal on disk, puts the previous tags back and says so.

A lock file in the (test-owned) host lock folder replaced by a link to a file the test
owns: the next build fails with a one-line error naming the link, and the file it points
to keeps its content and mode.
"""

from __future__ import annotations

import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from rolebake.load import plan_build
from rolebake.spec import Project
from tests.conftest import run_cli
from tests.integration.conftest import TestProject
from tests.integration.gate import HELD
from tests.integration.tinyproject import (
    Build,
    new_project,
    python_base,
    remove_project_images,
    set_vars,
    spec_images,
    tiny_spec,
)

pytestmark = pytest.mark.integration


@dataclass
class Tiny:
    project: TestProject
    spec: str
    locks: Path  # the host lock folder these builds use (ROLEBAKE_LOCK_DIR)

    @property
    def env(self) -> dict[str, str]:
        return {"ROLEBAKE_LOCK_DIR": str(self.locks)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory,
         engine: docker.DockerClient) -> Iterator[Tiny]:
    tmp = tmp_path_factory.mktemp("kill")
    project = new_project(tmp / "project", engine)
    try:
        spec = tiny_spec(project, "k", **{"from": python_base(engine, project)})
        found = Tiny(project, spec, tmp / "locks")
        built = run_cli("build", spec, cwd=project.root, env=found.env)
        assert built.rc == 0, built.output
        yield found
    finally:
        remove_project_images(engine, project)


def _cache_tags(project: TestProject, spec: str) -> dict[str, str]:
    """The layer's cache tags (`rolebake-cache/<project>/<layer>:<key>`) and their images."""
    repository = plan_build(Project(project.root), [spec]).layer(spec).cache_repository
    return {t: i.id for i in project.client.images.list(repository) for t in i.tags}


@pytest.mark.parametrize("hook", ["tag:moved", "after:tag"])
def test_sigkill_in_the_tag_step_is_rolled_back_by_the_next_run(tiny: Tiny, hook: str) -> None:
    project, spec = tiny.project, tiny.spec
    before = project.image_id(project.tag(spec))
    caches = _cache_tags(project, spec)
    assert before is not None and caches  # the layer was built and cached
    set_vars(project, spec)  # a miss: a new image, whose tags will move
    build = Build(project, spec, env=tiny.env, gate=hook, gate_seconds=120)
    try:
        # The gate holds the layer after its first tag moved (`tag:moved`) or once the
        # tag step passed (`after:tag`), and says so.
        build.wait_for(rf"{HELD} {hook}", timeout=600)
        deadline = time.monotonic() + 30
        while project.image_id(project.tag(spec)) == before and time.monotonic() < deadline:
            time.sleep(0.2)
        build.proc.kill()  # SIGKILL: no rollback, no cleanup runs
        build.proc.wait(timeout=60)
    finally:
        build.kill()
    moved = project.image_id(project.tag(spec))
    assert moved is not None and moved != before, "the kill must land after a tag moved"
    journals = list((project.root / ".rolebake" / "journal").glob("*.jsonl"))
    assert len(journals) == 1, journals
    assert stat.S_IMODE(journals[0].stat().st_mode) == 0o600

    planned = run_cli("plan", spec, cwd=project.root, env=tiny.env)
    assert planned.rc == 0, planned.output
    notes = [line for line in planned.stderr.splitlines() if "killed while moving tags" in line]
    assert notes, planned.output
    assert any(f"put back {project.tag(spec)}" in line for line in notes), notes
    assert project.image_id(project.tag(spec)) == before
    assert _cache_tags(project, spec) == caches
    assert moved not in spec_images(project.client, spec)  # untagged: removed
    assert not journals[0].exists()
    again = run_cli("plan", spec, cwd=project.root, env=tiny.env)
    assert "killed while moving tags" not in again.stderr, again.output


def test_a_planted_lock_link_leaves_its_target_untouched(tiny: Tiny, tmp_path: Path) -> None:
    project, spec = tiny.project, tiny.spec
    locks = sorted(tiny.locks.glob("*.lock"))
    assert locks, "the first build made its layer lock here"
    targets: list[Path] = []
    try:
        for index, lock in enumerate(locks):
            target = tmp_path / f"victim-{index}"
            target.write_text("precious, root's own\n")
            target.chmod(0o600)
            lock.unlink()
            lock.symlink_to(target)
            targets.append(target)
        set_vars(project, spec)
        before = project.image_id(project.tag(spec))
        result = run_cli("build", spec, cwd=project.root, env=tiny.env)
        assert result.rc != 0, result.output
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, result.stderr
        assert "is a symbolic link; refusing to follow it" in result.output, result.output
        assert "Traceback" not in result.output
        for target in targets:
            assert target.read_text() == "precious, root's own\n"
            assert stat.S_IMODE(target.stat().st_mode) == 0o600
        assert project.image_id(project.tag(spec)) == before
        assert project.build_containers() == []
    finally:
        for lock in locks:
            if lock.is_symlink():
                lock.unlink()
