"""Pipelined layers against the fake engine: a child builds while its parent is verified.

The child starts on its parent's committed image; it verifies only after the parent
passed and is tagged only after the parent finished. A parent that fails
verification cancels its children and leaves nothing of them: no image, tag, cache
tag or container. `--jobs` counts a parent and the one child it lends its slot to
as one job.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rolebake.builder import Builder, BuildOptions, BuildReport
from rolebake.errors import TestsFailed
from rolebake.events import Event, LogEvent, StepEvent
from rolebake.image import LAYER_LABEL
from rolebake.load import plan_build
from rolebake.spec import Project
from tests.unit.fake_provisioner import ProvisionerControl
from tests.unit.fakes import BASE_IMAGE, FakeEngine
from tests.unit.test_builder import BASE, WEB, Recorder, cache_tag, make_project, spec_from

pytestmark = pytest.mark.usefixtures("fake_provisioner")

HOLD_S = 5.0  # how long a held step waits for what the test expects to happen meanwhile


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return make_project(tmp_path / "project", base=BASE, web=WEB)


class HeldRecorder(Recorder):
    """A recorder that holds the thread of a step's event until `until` is set (or time passes).

    The event sink is called in the layer's own thread, so holding it there is
    holding the layer inside that step, as a slow step would.
    """

    def __init__(self) -> None:
        super().__init__()
        self.holds: dict[tuple[str, str, str], threading.Event] = {}
        self.held = threading.Event()

    def hold(self, layer: str, step: str, status: str) -> threading.Event:
        until = self.holds[(layer, step, status)] = threading.Event()
        return until

    def __call__(self, event: Event) -> None:
        super().__call__(event)
        if isinstance(event, StepEvent):
            until = self.holds.get((event.layer, event.step.value, event.status.value))
            if until is not None:
                self.held.set()
                until.wait(HOLD_S)

    def index(self, layer: str, step: str, status: str) -> int:
        with self.lock:
            return next(i for i, e in enumerate(self.events) if isinstance(e, StepEvent)
                        and (e.layer, e.step.value, e.status.value) == (layer, step, status))

    def logs(self, layer: str) -> list[str]:
        with self.lock:
            return [e.message for e in self.events if isinstance(e, LogEvent) and e.layer == layer]


def build(engine: FakeEngine, project: Project, recorder: Recorder, targets: list[str],
          **options: Any) -> BuildReport:
    return Builder(engine, project, recorder, BuildOptions(**options)).build(
        plan_build(project, targets))


def layer_images(engine: FakeEngine, layer: str) -> list[str]:
    return [i for i, image in engine.images_by_id.items()
            if image.labels.get(LAYER_LABEL) == layer]


def fail_verification_of(layer: str) -> Callable[[dict[str, Any]], None]:
    """A commit edit that loses the layer's Env, so its metadata check fails."""
    def edit(config: dict[str, Any]) -> None:
        if config["Labels"][LAYER_LABEL] == layer:
            config["Env"] = []
    return edit


def test_child_builds_while_its_parent_is_verified(engine: FakeEngine,
                                                   project: Project) -> None:
    recorder = HeldRecorder()
    # base stays in verify until web's provision has started (or HOLD_S pass).
    inside = recorder.hold("base", "verify", "running")
    sink = _then(recorder, lambda e: isinstance(e, StepEvent) and e.layer == "web"
                 and e.step.value == "provision" and e.status.value == "running", inside.set)

    report = build(engine, project, sink, ["web"])

    assert report.error is None
    assert recorder.index("web", "provision", "running") < recorder.index("base", "verify", "ok")
    # The child waited for its parent at both gates.
    assert recorder.index("base", "verify", "ok") < recorder.index("web", "verify", "running")
    assert recorder.index("base", "tag", "ok") < recorder.index("web", "tag", "running")
    # --json shows the overlap: when each step started, from the build's start.
    base, web = report.results["base"], report.results["web"]
    assert web.step_started["provision"] < base.step_started["verify"] + base.step_seconds["verify"]
    assert web.step_started["create"] >= base.step_started["commit"]
    assert web.to_dict()["step_started"]["verify"] == round(web.step_started["verify"], 2)
    assert engine.tagged("rolebake/web:latest") == report.results["web"].image_id
    assert engine.images_by_id[report.results["web"].image_id].parent == \
        report.results["base"].image_id


def _then(recorder: Recorder, match: Callable[[Event], bool],
          action: Callable[[], None]) -> Callable[[Event], None]:
    """The recorder, which also runs `action` once an event `match`es."""
    def sink(event: Event) -> None:
        recorder(event)
        if match(event):
            action()
    return sink


@pytest.mark.parametrize("keep", [False, True], ids=["dropped", "kept"])
def test_parent_failing_verification_cancels_a_child_in_provision(
        engine: FakeEngine, project: Project, fake_provisioner: ProvisionerControl,
        keep: bool) -> None:
    # web sits in provision (as a long task would) until it is cancelled.
    gate = fake_provisioner.block("web", "provision", timeout=HOLD_S)
    engine.commit_config_edit = fail_verification_of("base")
    recorder = HeldRecorder()
    inside = recorder.hold("base", "verify", "running")
    threading.Thread(target=lambda: inside.set() if gate.entered.wait(HOLD_S) else None,
                     daemon=True).start()

    report = build(engine, project, recorder, ["web"], keep_failed=keep)

    base, web = report.results["base"], report.results["web"]
    assert gate.entered.is_set(), "web never started while base was verified"
    assert isinstance(report.error, TestsFailed) and report.error is base.error
    assert report.error.exit_code == 3
    assert web.status.value == "skipped" and web.error is None
    assert web.reasons == ("parent base failed",)
    assert web.steps["provision"] == "failed"
    assert "cancelled: parent base failed" in recorder.logs("web")
    # Nothing of web: no image, no tag, no cache tag, no container.
    assert layer_images(engine, "web") == []
    assert engine.tagged("rolebake/web:latest") is None
    assert engine.tagged(cache_tag(project, "web", web.cache_key)) is None
    assert engine.container_names() == []
    assert engine.called("tag") == ([(base.image_id, base.failed_tag)] if keep else [])
    assert layer_images(engine, "base") == ([base.image_id] if keep else [])


def test_parent_failing_verification_removes_a_child_waiting_to_verify(
        engine: FakeEngine, project: Project) -> None:
    engine.commit_config_edit = fail_verification_of("base")
    recorder = HeldRecorder()
    inside = recorder.hold("base", "verify", "running")
    sink = _then(recorder, lambda e: isinstance(e, LogEvent) and e.layer == "web" and
                 e.message == "waiting for base to pass verification", inside.set)

    report = build(engine, project, sink, ["web"])

    web = report.results["web"]
    assert inside.is_set(), "web never waited for base"
    assert web.steps["commit"] == "ok" and "verify" not in web.steps
    assert web.image_id is not None and web.image_id not in engine.images_by_id
    assert layer_images(engine, "web") == [] and layer_images(engine, "base") == []
    assert web.status.value == "skipped" and report.error is report.results["base"].error
    assert engine.called("tag") == [] and engine.container_names() == []


def test_parent_failing_its_tag_step_cancels_the_child(
        engine: FakeEngine, project: Project) -> None:
    # base passed verification; web verified too, but waits for base's tags, which fail.
    engine.refuse_tag("rolebake/base:latest")
    report = build(engine, project, Recorder(), ["web"])

    assert report.results["base"].status.value == "failed"
    web = report.results["web"]
    assert web.status.value == "skipped" and "tag" not in web.steps
    assert layer_images(engine, "web") == [] and engine.container_names() == []
    assert engine.tagged("rolebake/web:latest") is None


def test_cache_hit_parent_is_reused_and_its_child_keyed_on_it(
        engine: FakeEngine, project: Project) -> None:
    first = build(engine, project, Recorder(), ["web"])
    (project.roles_dir / "web" / "tasks" / "main.yml").write_text("- name: v2\n")

    again = build(engine, project, Recorder(), ["web"])

    base, web = again.results["base"], again.results["web"]
    assert base.cached and base.image_id == first.results["base"].image_id
    assert not web.cached and web.status.value == "ok"
    assert engine.images_by_id[web.image_id or ""].parent == base.image_id
    third = build(engine, project, Recorder(), ["web"])
    assert third.results["web"].cached and third.results["web"].image_id == web.image_id


def _two_children(tmp_path: Path) -> Project:
    return make_project(tmp_path / "p", base=spec_from(BASE_IMAGE, "common", "rolebake/b:1"),
                        one=spec_from("base", "web", "rolebake/one:1"),
                        two=spec_from("base", "app", "rolebake/two:1"))


def test_one_job_lends_the_parents_slot_to_one_child_only(
        engine: FakeEngine, tmp_path: Path, fake_provisioner: ProvisionerControl) -> None:
    project = _two_children(tmp_path)
    seen: dict[str, list[str]] = {}
    for name in ("one", "two"):
        fake_provisioner.hooks[(name, "provision")] = lambda _ctx, name=name: seen.setdefault(
            name, engine.container_names())

    report = build(engine, project, Recorder(), ["one", "two"], jobs=1)

    assert report.error is None
    # Siblings never build at once with one job: each saw its own container only.
    assert {k: len(v) for k, v in seen.items()} == {"one": 1, "two": 1}


def test_two_jobs_build_both_children_of_a_verifying_parent(
        engine: FakeEngine, tmp_path: Path, fake_provisioner: ProvisionerControl) -> None:
    project = _two_children(tmp_path)
    gates = {name: fake_provisioner.block(name, "provision", timeout=HOLD_S)
             for name in ("one", "two")}
    both = threading.Event()

    def release_when_both_inside() -> None:
        if all(g.entered.wait(HOLD_S) for g in gates.values()):
            both.set()
        for g in gates.values():
            g.release.set()

    threading.Thread(target=release_when_both_inside, daemon=True).start()
    report = build(engine, project, Recorder(), ["one", "two"], jobs=2)

    assert both.is_set(), "the two children of base never built at the same time"
    assert report.error is None
    assert {k: r.status.value for k, r in report.results.items()} == {
        "base": "ok", "one": "ok", "two": "ok"}


def test_cancel_while_a_child_builds_on_a_verifying_parent_leaves_nothing(
        engine: FakeEngine, project: Project, fake_provisioner: ProvisionerControl) -> None:
    gate = fake_provisioner.block("web", "provision", timeout=HOLD_S)
    recorder = HeldRecorder()
    inside = recorder.hold("base", "verify", "running")
    builder = Builder(engine, project, recorder, BuildOptions())

    def stop_when_both_busy() -> None:
        if gate.entered.wait(HOLD_S):
            builder.stop()
        inside.set()

    threading.Thread(target=stop_when_both_busy, daemon=True).start()
    report = builder.build(plan_build(project, ["web"]))

    assert gate.entered.is_set()
    assert {k: r.status.value for k, r in report.results.items()} == {
        "base": "failed", "web": "failed"}
    assert engine.container_names() == [] and engine.called("tag") == []
    assert layer_images(engine, "base") == [] and layer_images(engine, "web") == []
