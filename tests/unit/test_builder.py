"""The Builder against a fake engine: pipeline order, tags, rollback, cancel, --jobs, exit codes.

No Docker: `tests.unit.fakes.FakeEngine` keeps images and containers in dicts and
`FakeProvisioner` (registered as `provisioner: fake`) records, fails or blocks on
command. Layers have no tests/images/<name> folder, so verification is the
metadata checks only and no pytest is spawned (DESIGN.md invariants 1, 2, 4, 5).
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from rolebake.builder import Builder, BuildOptions, BuildReport
from rolebake.cache import Cache
from rolebake.cli import main
from rolebake.cli.running import handled
from rolebake.engine import BUILD_ID_LABEL, ROLE_LABEL, ContainerHandle
from rolebake.errors import (
    BuildFailed,
    EngineUnavailable,
    InputError,
    Interrupted,
    ParityDifferent,
    RolebakeError,
    TestsFailed,
)
from rolebake.events import PIPELINE, Event, LogEvent, StepEvent, TaskEvent
from rolebake.image import CACHE_KEY_LABEL, LAYER_LABEL, keep_failed
from rolebake.load import plan_build
from rolebake.provision.ansible_events import EventWatcher
from rolebake.provision.ansible_failure import explain
from rolebake.provision.base import ProvisionContext, TaskResult
from rolebake.provision.target import ContainerTarget
from rolebake.spec import Project
from tests.unit.fakes import BASE_IMAGE, FakeEngine, ProvisionerControl

pytestmark = pytest.mark.usefixtures("fake_provisioner")

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "ansible"

BASE = """
    from: debian:bookworm
    provisioner: fake
    roles: [common]
    config:
      env: {LANG: C.UTF-8}
    tags: ["rolebake/base:latest"]
    """

WEB = """
    from: base
    provisioner: fake
    roles: [web]
    config:
      cmd: ["nginx", "-g", "daemon off;"]
      user: www-data
      expose: [8080]
      labels: {org.opencontainers.image.title: web}
    tags: ["rolebake/web:latest", "rolebake/web:1.0"]
    """


def spec_from(parent: str, role: str, *tags: str) -> str:
    tag_list = ", ".join(f'"{t}"' for t in tags)
    return f"from: {parent}\nprovisioner: fake\nroles: [{role}]\ntags: [{tag_list}]\n"


# Fixtures -----------------------------------------------------------------------------


def make_project(root: Path, **specs: str) -> Project:
    (root / "images").mkdir(parents=True)
    for name, text in specs.items():
        (root / "images" / f"{name}.yml").write_text(textwrap.dedent(text).lstrip())
    for role in ("common", "web", "app", "tools"):  # hashed into the keys by FakeProvisioner
        tasks = root / "roles" / role / "tasks" / "main.yml"
        tasks.parent.mkdir(parents=True)
        tasks.write_text(f"- name: {role}\n  ansible.builtin.debug: {{msg: {role}}}\n")
    return Project(root)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return make_project(tmp_path / "project", base=BASE, web=WEB)


class Recorder:
    """An event sink that keeps everything, from any thread."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self.lock:
            self.events.append(event)

    def steps(self, layer: str) -> list[tuple[str, str]]:
        with self.lock:
            return [(e.step.value, e.status.value) for e in self.events
                    if isinstance(e, StepEvent) and e.layer == layer]

    def step_event(self, layer: str, step: str, status: str) -> StepEvent:
        with self.lock:
            return next(e for e in self.events if isinstance(e, StepEvent) and e.layer == layer
                        and e.step.value == step and e.status.value == status)


def run_build(engine: FakeEngine, project: Project, targets: list[str],
              **options: Any) -> tuple[BuildReport, Recorder, Builder]:
    recorder = Recorder()
    builder = Builder(engine, project, recorder, BuildOptions(**options))
    return builder.build(plan_build(project, targets)), recorder, builder


def cache_tag(project: Project, layer_id: str, key: str | None) -> str:
    assert key is not None
    return Cache.tag_for(plan_build(project, [layer_id]).layer(layer_id), key)


def build_containers(engine: FakeEngine) -> list[tuple[Any, ...]]:
    return [args for args in engine.called("container") if args[2][ROLE_LABEL] == "build"]


# Every step of a fresh build, in pipeline order: idempotence, scan and push are not asked for.
FRESH = [
    ("cache", "running"), ("cache", "ok"),
    ("create", "running"), ("create", "ok"),
    ("bootstrap", "running"), ("bootstrap", "ok"),
    ("provision", "running"), ("provision", "ok"),
    ("idempotence", "skipped"),
    ("clean", "running"), ("clean", "ok"),
    ("commit", "running"), ("commit", "ok"),
    ("scan", "skipped"),
    ("verify", "running"), ("verify", "ok"),
    ("attest", "running"), ("attest", "ok"),
    ("tag", "running"), ("tag", "ok"),
    ("push", "skipped"),
]


# A clean build, then a cache hit -------------------------------------------------------


def test_clean_build_runs_the_pipeline_in_order_and_tags_last(
        engine: FakeEngine, project: Project, fake_provisioner: ProvisionerControl) -> None:
    recorder = Recorder()
    builder = Builder(engine, project, recorder, BuildOptions())
    seen_at_tag: dict[str, list[tuple[str, str]]] = {}
    containers_at_tag: dict[str, list[str]] = {}

    def at_tag(image_id: str, ref: str) -> None:
        layer = engine.images_by_id[image_id].labels[LAYER_LABEL]
        seen_at_tag.setdefault(ref, recorder.steps(layer))
        # The layer's own: its child may be building on it already (pipelined layers).
        containers_at_tag.setdefault(ref, [name for name in engine.container_names()
                                           if name.startswith(f"rolebake-build-{layer}-")])

    engine.on("tag", at_tag)
    report = builder.build(plan_build(project, ["web"]))

    assert report.error is None
    for layer in ("base", "web"):
        result = report.results[layer]
        assert result.status.value == "ok", result.error
        assert recorder.steps(layer) == FRESH
        assert list(result.steps) == [s.value for s in PIPELINE]
        assert result.steps == {step: status for step, status in FRESH
                                if status != "running"}
        assert recorder.step_event(layer, "cache", "ok").message == "MISS: never built"
        assert result.reasons == ("never built",)
        assert fake_provisioner.steps_of(layer) == ["preflight", "bootstrap", "provision",
                                                    "clean"]
    # Parents first, pipelined: web starts once base is committed, verifies once base
    # passed verification (and attests after it), and is tagged once base finished.
    events = [(e.layer, e.step.value, e.status.value) for e in recorder.events
              if isinstance(e, StepEvent)]
    assert events.index(("base", "commit", "ok")) < events.index(("web", "cache", "running"))
    assert events.index(("base", "verify", "ok")) < events.index(("web", "verify", "running"))
    assert events.index(("base", "tag", "ok")) < events.index(("web", "tag", "running"))

    web, base = report.results["web"], report.results["base"]
    assert web.image_id is not None and base.image_id is not None
    web_cache = cache_tag(project, "web", web.cache_key)
    assert engine.tagged("rolebake/web:latest") == web.image_id
    assert engine.tagged("rolebake/web:1.0") == web.image_id
    assert engine.tagged(web_cache) == web.image_id
    assert engine.tagged("rolebake/base:latest") == base.image_id
    assert engine.tagged(cache_tag(project, "base", base.cache_key)) == base.image_id
    assert web.tags == ("rolebake/web:latest", "rolebake/web:1.0")
    # The cache tag comes last, and no tag moved before every other step had passed
    # and the build container was gone.
    assert [ref for _, ref in engine.called("tag")] == [
        "rolebake/base:latest", cache_tag(project, "base", base.cache_key),
        "rolebake/web:latest", "rolebake/web:1.0", web_cache]
    for ref, steps in seen_at_tag.items():
        assert ("verify", "ok") in steps and steps[-1] == ("tag", "running"), ref
        assert containers_at_tag[ref] == [], ref

    # One labelled build container per layer, from the parent's image id, removed.
    made = build_containers(engine)
    assert [(image, name) for image, name, _ in made] == [
        (engine.tagged(BASE_IMAGE), f"rolebake-build-base-{builder.build_id}"),
        (base.image_id, f"rolebake-build-web-{builder.build_id}")]
    assert all(labels[BUILD_ID_LABEL] == builder.build_id for _, _, labels in made)
    assert engine.container_names() == []
    # The committed image says what it is (and no longer looks like a build container).
    labels = engine.images_by_id[web.image_id].labels
    assert labels[ROLE_LABEL] == "image" and labels[LAYER_LABEL] == "web"
    assert labels[CACHE_KEY_LABEL] == web.cache_key
    assert engine.images_by_id[web.image_id].config["User"] == "www-data"
    assert engine.images_by_id[web.image_id].parent == base.image_id
    assert engine.images_by_id[base.image_id].config["Env"] == ["PATH=/usr/bin:/bin",
                                                                "LANG=C.UTF-8"]

    # Same inputs again: both layers are hits; no container, no provisioning, same images.
    calls_before = len(engine.calls)
    again, recorder2, _ = run_build(engine, project, ["web"])
    assert again.error is None
    for layer in ("base", "web"):
        result = again.results[layer]
        assert result.status.value == "cached" and result.cached
        assert result.image_id == report.results[layer].image_id
        assert result.cache_key == report.results[layer].cache_key
        assert recorder2.steps(layer) == [("cache", "running"), ("cache", "cached"),
                                          ("attest", "running"), ("attest", "ok"),
                                          ("tag", "running"), ("tag", "ok")]
        assert recorder2.step_event(layer, "attest", "ok").message == \
            "SBOM and provenance reused"
        assert recorder2.step_event(layer, "cache", "cached").message == "HIT"
        assert fake_provisioner.steps_of(layer) == ["preflight", "bootstrap", "provision",
                                                    "clean", "preflight"]
    later = [c.method for c in engine.calls[calls_before:]]
    assert "container" not in later and "commit" not in later
    assert engine.tagged("rolebake/web:latest") == web.image_id


def test_a_hit_moves_only_the_tags_that_are_elsewhere(engine: FakeEngine,
                                                      project: Project) -> None:
    first, _, _ = run_build(engine, project, ["web"])
    web = first.results["web"].image_id
    # Every tag in place: a no-op rebuild moves none (no engine call, no journal entry).
    calls_before = len(engine.calls)
    run_build(engine, project, ["web"])
    assert "tag" not in [c.method for c in engine.calls[calls_before:]]
    # A tag pointed elsewhere since is put back on the layer's image, the others stay.
    engine.tag(first.results["base"].image_id, "rolebake/web:1.0")
    calls_before = len(engine.calls)
    again, _, _ = run_build(engine, project, ["web"])
    assert again.results["web"].cached
    assert [c.args for c in engine.calls[calls_before:] if c.method == "tag"] == [
        (web, "rolebake/web:1.0")]
    assert engine.tagged("rolebake/web:1.0") == engine.tagged("rolebake/web:latest") == web


def test_a_changed_input_misses_and_says_which(engine: FakeEngine, project: Project) -> None:
    first, _, _ = run_build(engine, project, ["web"])
    (project.roles_dir / "web" / "tasks" / "main.yml").write_text("- name: changed\n")
    second, recorder, _ = run_build(engine, project, ["web"])
    assert second.results["base"].cached
    web = second.results["web"]
    assert not web.cached and web.status.value == "ok"
    assert web.reasons == ("roles/web/tasks/main.yml changed",)
    assert recorder.step_event("web", "cache", "ok").message == (
        "MISS: roles/web/tasks/main.yml changed")
    assert web.image_id != first.results["web"].image_id
    assert engine.tagged("rolebake/web:latest") == web.image_id


# Tag rollback (invariant 1) -------------------------------------------------------------


@pytest.mark.parametrize("had_previous", [False, True], ids=["fresh", "rebuild"])
def test_refused_tag_rolls_every_tag_back(engine: FakeEngine, project: Project,
                                          fake_provisioner: ProvisionerControl,
                                          had_previous: bool) -> None:
    previous = None
    if had_previous:
        first, _, _ = run_build(engine, project, ["web"])
        previous = first.results["web"].image_id
        (project.roles_dir / "web" / "tasks" / "main.yml").write_text("- name: v2\n")
    engine.refuse_tag("rolebake/web:1.0")

    report, recorder, _ = run_build(engine, project, ["web"])

    web = report.results["web"]
    error = report.error
    assert isinstance(error, InputError) and error is web.error
    assert error.exit_code == 2
    assert error.message == (f"{project.spec_path('web')}:9: the engine refused tag "
                             "'rolebake/web:1.0': repository is read-only")
    assert web.status.value == "failed" and web.steps["tag"] == "failed"
    assert recorder.steps("web")[-2:] == [("tag", "running"), ("tag", "failed")]
    # The first tag was set, then put back: to the previous image, or taken away.
    assert "rolebake/web:latest" in [ref for _, ref in engine.called("tag")]
    assert engine.tagged("rolebake/web:latest") == previous
    assert engine.tagged("rolebake/web:1.0") == previous
    assert engine.tagged(cache_tag(project, "web", web.cache_key)) is None
    # The new image and every container are gone; base, untouched, is still tagged.
    assert web.image_id is not None and web.image_id not in engine.image_ids()
    assert engine.container_names() == []
    assert engine.tagged("rolebake/base:latest") == report.results["base"].image_id


# Cancel -------------------------------------------------------------------------------------


@pytest.mark.parametrize("provisioner_notices", [True, False],
                         ids=["provisioner-stops", "builder-stops-after"])
def test_cancel_during_provision_fails_the_layer_and_skips_its_child(
        engine: FakeEngine, project: Project, fake_provisioner: ProvisionerControl,
        provisioner_notices: bool) -> None:
    recorder = Recorder()
    builder = Builder(engine, project, recorder, BuildOptions())
    if provisioner_notices:
        # The provisioner is busy until it sees the cancel, as ansible-runner's callback does.
        gate = fake_provisioner.block("base", "provision")
        engine_seen: list[list[str]] = []

        def cancel_when_inside() -> None:
            assert gate.entered.wait(5)
            engine_seen.append(engine.container_names())
            builder.cancel.set()

        canceller = threading.Thread(target=cancel_when_inside)
        canceller.start()
    else:
        # The provisioner finishes its pass; the builder must not go on to the next step.
        fake_provisioner.hooks[("base", "provision")] = lambda _ctx: builder.cancel.set()

    report = builder.build(plan_build(project, ["web"]))

    if provisioner_notices:
        canceller.join(5)
        assert engine_seen == [[f"rolebake-build-base-{builder.build_id}"]]
    base, web = report.results["base"], report.results["web"]
    assert base.status.value == "failed"
    assert isinstance(base.error, BuildFailed) and base.error.exit_code == 1
    assert "cancelled" in base.error.message
    assert fake_provisioner.steps_of("base") == ["preflight", "bootstrap", "provision"]
    assert "commit" not in [c.method for c in engine.calls]
    # Nothing left, nothing tagged; the child never started.
    assert engine.container_names() == []
    assert engine.called("tag") == []
    assert engine.image_ids() == {engine.tagged(BASE_IMAGE)}
    assert web.status.value == "skipped"
    assert web.reasons == ("parent base failed",)
    assert recorder.steps("web") == [("cache", "skipped")]
    assert fake_provisioner.steps_of("web") == ["preflight"]
    assert report.error is base.error


def test_cancel_while_tags_move_puts_them_back(engine: FakeEngine, project: Project) -> None:
    first, _, _ = run_build(engine, project, ["web"])
    previous = first.results["web"].image_id
    (project.roles_dir / "web" / "tasks" / "main.yml").write_text("- name: v2\n")
    recorder = Recorder()
    builder = Builder(engine, project, recorder, BuildOptions())
    # The signal lands right after the first of web's tags moved.
    engine.on("tag", lambda *_: builder.cancel.set(), after=True,
              match=lambda image_id, ref: ref == "rolebake/web:latest")

    report = builder.build(plan_build(project, ["web"]))

    web = report.results["web"]
    assert web.status.value == "failed" and isinstance(web.error, BuildFailed)
    assert web.error.message == "cancelled"
    assert engine.tagged("rolebake/web:latest") == previous
    assert engine.tagged("rolebake/web:1.0") == previous
    assert web.image_id is not None and web.image_id not in engine.image_ids()
    assert engine.container_names() == []


@pytest.fixture
def sigint_raises_interrupted() -> Iterator[None]:
    """SIGINT raises Interrupted in the main thread, as the CLI's handler makes it."""
    def handle(_signum: int, _frame: Any) -> None:
        raise Interrupted("SIGINT")

    previous = signal.signal(signal.SIGINT, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("sigint_raises_interrupted")
def test_interrupt_in_the_main_thread_kills_and_removes_the_build_container(
        engine: FakeEngine, project: Project, fake_provisioner: ProvisionerControl) -> None:
    # A long exec (apt-get) returns only when its container dies: the gate ignores the
    # cancel and opens only when the builder kills the container.
    gate = fake_provisioner.block("base", "provision", timeout=3, stops_on_cancel=False)
    engine.on("kill", lambda _ref: gate.release.set())
    # Ctrl-C a moment later, when the main thread waits on its workers (a signal that lands
    # while it starts a worker is the race below).
    fake_provisioner.hooks[("base", "provision")] = lambda _ctx: threading.Timer(
        0.1, os.kill, (os.getpid(), signal.SIGINT)).start()
    recorder = Recorder()
    builder = Builder(engine, project, recorder, BuildOptions())

    with pytest.raises(Interrupted) as caught:
        builder.build(plan_build(project, ["web"]))

    assert caught.value.exit_code == 130
    assert builder.cancel.is_set()
    killed = engine.called("kill")
    made = build_containers(engine)
    assert len(made) == 1 and made[0][1] == f"rolebake-build-base-{builder.build_id}"
    assert len(killed) == 1
    assert engine.container_names() == []
    assert engine.called("tag") == [] and engine.called("commit") == []
    assert recorder.steps("base")[-2:] == [("provision", "running"), ("provision", "failed")]
    assert recorder.steps("web") == []  # never started


@pytest.mark.usefixtures("sigint_raises_interrupted")
def test_interrupt_while_a_worker_starts_still_waits_for_its_cleanup(
        engine: FakeEngine, project: Project, fake_provisioner: ProvisionerControl,
        monkeypatch: pytest.MonkeyPatch) -> None:
    gate = fake_provisioner.block("base", "provision", timeout=3)
    real_start = threading.Thread.start

    def start_then_interrupted(thread: threading.Thread) -> None:
        real_start(thread)
        if thread.name.startswith("rolebake-build"):
            # Ctrl-C lands while pool.submit is still starting the worker. The
            # builder holds SIGINT back there, so the interrupt arrives once the
            # worker's future is recorded, and the build then waits for its cleanup.
            assert gate.entered.wait(5)
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    monkeypatch.setattr(threading.Thread, "start", start_then_interrupted)
    slow_removal = threading.Event()
    engine.on("remove_container", lambda _ref: slow_removal.wait(0.3))
    builder = Builder(engine, project, Recorder(), BuildOptions())
    try:
        with pytest.raises(Interrupted):
            builder.build(plan_build(project, ["base"]))
        assert engine.container_names() == []
    finally:
        slow_removal.set()
        for thread in threading.enumerate():
            if thread.name.startswith("rolebake-build"):
                thread.join(5)


def test_cancel_noticed_between_steps_reports_the_step_failed(
        engine: FakeEngine, project: Project, fake_provisioner: ProvisionerControl) -> None:
    recorder = Recorder()
    builder = Builder(engine, project, recorder, BuildOptions())
    fake_provisioner.hooks[("base", "provision")] = lambda _ctx: builder.cancel.set()
    report = builder.build(plan_build(project, ["base"]))
    assert report.results["base"].status.value == "failed"
    assert "failed" in report.results["base"].steps.values()
    assert recorder.steps("base")[-1][1] == "failed"


def test_keep_failed_after_a_refused_tag_reports_the_refused_tag(
        engine: FakeEngine, project: Project) -> None:
    engine.refuse_tag("rolebake/web:1.0")
    report, _, _ = run_build(engine, project, ["web"], keep_failed=True)
    error = report.results["web"].error
    assert error is not None and "'rolebake/web:1.0'" in error.message


def test_image_committed_before_a_failed_container_removal_is_removed(
        engine: FakeEngine, project: Project) -> None:
    engine.fail("remove_container", BuildFailed("could not remove container: busy"), times=1)
    report, _, _ = run_build(engine, project, ["base"])
    base = report.results["base"]
    assert isinstance(base.error, BuildFailed)
    assert base.image_id is not None and base.image_id not in engine.image_ids()


def test_cancelled_build_keeps_no_failed_image(engine: FakeEngine, project: Project) -> None:
    recorder = Recorder()
    builder = Builder(engine, project, recorder, BuildOptions(keep_failed=True))
    # The interrupt arrives while the image is being committed.
    engine.on("commit", lambda *_: builder.cancel.set(), after=True)
    report = builder.build(plan_build(project, ["base"]))
    base = report.results["base"]
    assert base.status.value == "failed"
    assert base.failed_tag is None
    assert engine.image_ids() == {engine.tagged(BASE_IMAGE)}


# Verification failures (invariant 2) ------------------------------------------------------


def _drop_user(config: dict[str, Any]) -> None:
    # The engine ignores the committed user: the metadata check must notice.
    config["User"] = "root"


@pytest.mark.parametrize("keep", [False, True], ids=["dropped", "kept"])
def test_failed_verification_never_gets_the_target_tag(
        engine: FakeEngine, project: Project, fake_provisioner: ProvisionerControl,
        keep: bool) -> None:
    first, _, _ = run_build(engine, project, ["web"])
    previous = first.results["web"].image_id
    fake_provisioner.version = "fake 2.0"  # every layer misses now
    engine.commit_config_edit = lambda config: (
        _drop_user(config) if config["Labels"][LAYER_LABEL] == "web" else None)

    report, recorder, _ = run_build(engine, project, ["web"], keep_failed=keep)

    web = report.results["web"]
    error = report.error
    assert isinstance(error, TestsFailed) and error is web.error
    assert error.exit_code == 3
    assert error.message == "1 of 8 image checks failed for web"
    assert error.details == "metadata::User: User: expected 'www-data', image has 'root'"
    assert web.verify is not None and not web.verify.ok
    assert [c.name for c in web.verify.failed] == ["User"]
    assert web.steps["verify"] == "failed" and "tag" not in web.steps
    assert recorder.steps("web")[-2:] == [("verify", "running"), ("verify", "failed")]
    assert web.image_id is not None and web.image_id != previous
    # The target tags still name the image that passed; no cache tag for the failure.
    assert engine.tagged("rolebake/web:latest") == previous
    assert engine.tagged("rolebake/web:1.0") == previous
    assert engine.tagged(cache_tag(project, "web", web.cache_key)) is None
    assert engine.container_names() == []
    # base built fine and moved on.
    assert report.results["base"].status.value == "ok"
    assert engine.tagged("rolebake/base:latest") == report.results["base"].image_id
    if keep:
        expected = f"rolebake/web:failed-{web.image_id.removeprefix('sha256:')[:12]}"
        assert web.failed_tag == expected
        assert engine.tagged(expected) == web.image_id
        assert engine.images_by_id[web.image_id].tags == [expected]
        assert any(isinstance(e, LogEvent) and e.message == f"kept for inspection as {expected}"
                   for e in recorder.events)
        # Kept, but never reused: the next build says why it rebuilds.
        engine.commit_config_edit = None
        again, _, _ = run_build(engine, project, ["web"])
        assert again.results["web"].reasons == (
            "inputs unchanged, but the last image was never verified (--no-verify, failed "
            "checks or an interrupted build); it is not reused",)
        assert again.results["web"].status.value == "ok"
    else:
        assert web.failed_tag is None
        assert web.image_id not in engine.image_ids()


def test_keep_failed_keeps_the_repository_of_a_registry_with_a_port() -> None:
    engine = FakeEngine()
    image = engine.add_image()
    kept = keep_failed(engine, image.id, ["localhost:5000/web"])
    assert kept == f"localhost:5000/web:failed-{image.short_id}"


# --jobs -------------------------------------------------------------------------------------


def test_two_jobs_build_independent_layers_at_the_same_time(
        engine: FakeEngine, tmp_path: Path, fake_provisioner: ProvisionerControl) -> None:
    project = make_project(tmp_path / "p", one=spec_from(BASE_IMAGE, "web", "rolebake/one:1"),
                           two=spec_from(BASE_IMAGE, "app", "rolebake/two:1"))
    gates = {name: fake_provisioner.block(name, "provision") for name in ("one", "two")}
    outcome: dict[str, BuildReport] = {}
    builder = Builder(engine, project, Recorder(), BuildOptions(jobs=2))
    thread = threading.Thread(target=lambda: outcome.setdefault(
        "report", builder.build(plan_build(project, ["one", "two"]))))
    thread.start()
    try:
        # Both layers are inside provision before either is released.
        assert gates["one"].entered.wait(5), "one never reached provision"
        assert gates["two"].entered.wait(5), "two never reached provision while one was held"
        assert sorted(engine.container_names()) == [f"rolebake-build-one-{builder.build_id}",
                                                     f"rolebake-build-two-{builder.build_id}"]
    finally:
        for gate in gates.values():
            gate.release.set()
        thread.join(10)
    report = outcome["report"]
    assert report.error is None
    assert {k: r.status.value for k, r in report.results.items()} == {"one": "ok", "two": "ok"}
    assert engine.tagged("rolebake/one:1") == report.results["one"].image_id
    assert engine.tagged("rolebake/two:1") == report.results["two"].image_id
    assert engine.container_names() == []


def test_one_job_builds_one_layer_at_a_time(
        engine: FakeEngine, tmp_path: Path, fake_provisioner: ProvisionerControl) -> None:
    project = make_project(tmp_path / "p", one=spec_from(BASE_IMAGE, "web", "rolebake/one:1"),
                           two=spec_from(BASE_IMAGE, "app", "rolebake/two:1"))
    inside: list[int] = []
    fake_provisioner.hooks[("one", "provision")] = lambda _ctx: inside.append(
        len(engine.container_names()))
    fake_provisioner.hooks[("two", "provision")] = lambda _ctx: inside.append(
        len(engine.container_names()))
    report, _, _ = run_build(engine, project, ["one", "two"], jobs=1)
    assert report.error is None
    assert inside == [1, 1]


def test_failed_parent_skips_its_child_while_a_sibling_builds(
        engine: FakeEngine, tmp_path: Path, fake_provisioner: ProvisionerControl) -> None:
    project = make_project(
        tmp_path / "p",
        one=spec_from(BASE_IMAGE, "web", "rolebake/one:1"),
        child=spec_from("one", "tools", "rolebake/child:1"),
        two=spec_from(BASE_IMAGE, "app", "rolebake/two:1"))
    fake_provisioner.fail("one", "provision", BuildFailed(
        "task 'install nginx' (role web, module ansible.builtin.apt) failed: No package"))
    # two is still provisioning when one fails: the failure does not stop it.
    gate = fake_provisioner.block("two", "provision")

    def fail_once_two_is_busy(_ctx: ProvisionContext) -> None:
        assert gate.entered.wait(5)

    fake_provisioner.hooks[("one", "provision")] = fail_once_two_is_busy
    release = threading.Timer(0.3, gate.release.set)
    release.start()

    report, recorder, _ = run_build(engine, project, ["child", "two"], jobs=2)
    release.join()

    statuses = {k: r.status.value for k, r in report.results.items()}
    assert statuses == {"one": "failed", "child": "skipped", "two": "ok"}
    assert isinstance(report.error, BuildFailed) and report.error is report.results["one"].error
    assert report.results["child"].reasons == ("parent one failed",)
    assert recorder.steps("child") == [("cache", "skipped")]
    assert recorder.step_event("child", "cache", "skipped").message == "parent one did not build"
    assert recorder.steps("one")[-2:] == [("provision", "running"), ("provision", "failed")]
    assert engine.tagged("rolebake/two:1") == report.results["two"].image_id
    assert engine.tagged("rolebake/one:1") is None and engine.tagged("rolebake/child:1") is None
    # child never had a container; one's was removed when it failed.
    assert sorted(name.split("-")[2] for _, name, _ in build_containers(engine)) == ["one", "two"]
    assert engine.container_names() == []


# --no-verify ----------------------------------------------------------------------------------


def test_no_verify_tags_but_is_never_a_cache_hit(engine: FakeEngine, project: Project) -> None:
    report, recorder, _ = run_build(engine, project, ["base"], verify=False)
    base = report.results["base"]
    assert report.error is None and base.status.value == "ok"
    assert ("verify", "skipped") in recorder.steps("base")
    assert ("verify", "running") not in recorder.steps("base")
    assert base.verify is None
    assert engine.tagged("rolebake/base:latest") == base.image_id
    assert engine.tagged(cache_tag(project, "base", base.cache_key)) is None

    again, recorder2, _ = run_build(engine, project, ["base"])
    rebuilt = again.results["base"]
    assert not rebuilt.cached and rebuilt.status.value == "ok"
    assert rebuilt.cache_key == base.cache_key
    assert rebuilt.reasons == (
        "inputs unchanged, but the last image was never verified (--no-verify, failed "
        "checks or an interrupted build); it is not reused",)
    assert recorder2.step_event("base", "cache", "ok").message.startswith(
        "MISS: inputs unchanged, but the last image was never verified")
    assert rebuilt.image_id != base.image_id
    assert engine.tagged(cache_tag(project, "base", base.cache_key)) == rebuilt.image_id


# Other failures inside the container ------------------------------------------------------------


def test_failed_clean_script_removes_the_container_and_commits_nothing(
        engine: FakeEngine, project: Project) -> None:
    from rolebake.engine import ExecResult

    engine.shell_result = lambda script, _args: (
        ExecResult(1, "rm: cannot remove '/var/lib/apt/lists'\n") if script == "clean.sh"
        else None)
    report, recorder, _ = run_build(engine, project, ["base"])
    base = report.results["base"]
    assert isinstance(base.error, BuildFailed) and base.error.message == "clean step failed"
    assert base.error.details == "rm: cannot remove '/var/lib/apt/lists'"
    assert recorder.steps("base")[-2:] == [("clean", "running"), ("clean", "failed")]
    assert engine.called("commit") == [] and engine.called("tag") == []
    assert engine.container_names() == []


def test_container_killed_from_outside_is_said_plainly(
        engine: FakeEngine, project: Project, fake_provisioner: ProvisionerControl) -> None:
    def kill_then_fail(ctx: ProvisionContext) -> None:
        engine.kill(ctx.container.id)
        raise BuildFailed("task 'x' failed: connection lost")

    fake_provisioner.hooks[("base", "provision")] = kill_then_fail
    report, _, builder = run_build(engine, project, ["base"])
    error = report.results["base"].error
    assert isinstance(error, BuildFailed)
    assert error.message == (f"the build container rolebake-build-base-{builder.build_id} "
                             "stopped during provision (killed from outside)")
    assert error.details == "task 'x' failed: connection lost"
    assert engine.container_names() == []


def test_commit_refused_by_the_engine_leaves_nothing(engine: FakeEngine,
                                                     project: Project) -> None:
    engine.fail("commit", BuildFailed("commit failed: no space left on device"))
    report, recorder, _ = run_build(engine, project, ["base"])
    base = report.results["base"]
    assert isinstance(base.error, BuildFailed)
    assert base.error.message == "commit failed: no space left on device"
    assert recorder.steps("base")[-2:] == [("commit", "running"), ("commit", "failed")]
    assert engine.container_names() == [] and engine.called("tag") == []
    assert engine.image_ids() == {engine.tagged(BASE_IMAGE)}


# The CLI's exit codes (invariant 4) -------------------------------------------------------------


@pytest.fixture
def raising_command() -> Iterator[dict[str, Any]]:
    """A `rolebake raise-for-test` command that raises what the test puts in the box."""
    box: dict[str, Any] = {}
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    @click.command("raise-for-test")
    @click.pass_context
    @handled
    def command(ctx: click.Context) -> None:
        del ctx
        action = box["raise"]
        if callable(action):
            action()
        raise action

    main.add_command(command)
    try:
        yield box
    finally:
        main.commands.pop("raise-for-test", None)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


@pytest.mark.parametrize(("error", "code"), [
    (InputError("spec is wrong", path="images/web.yml", line=3), 2),
    (BuildFailed("task 'x' failed", details="E: no nginx\nE: still none", hint="see log"), 1),
    (TestsFailed("1 of 8 image checks failed for web"), 3),
    (EngineUnavailable("no container engine answers at unix:///var/run/docker.sock"), 4),
    (ParityDifferent("web and the VM differ: 2 resource(s), 0 test(s)"), 5),
    (Interrupted("SIGINT"), 130),
    (Interrupted("SIGTERM"), 143),
    (RolebakeError("something rolebake saw coming"), 1),
], ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v))
def test_cli_turns_each_error_into_its_exit_code(raising_command: dict[str, Any],
                                                 error: RolebakeError, code: int) -> None:
    raising_command["raise"] = error
    result = CliRunner().invoke(main, ["raise-for-test"])
    assert result.exit_code == code, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {error.message}"]
    assert "Traceback" not in result.output
    assert result.stdout == ""
    if error.details:
        assert "  | E: no nginx\n  | E: still none\n  hint: see log" in result.stderr


def test_cli_input_error_names_file_and_line(raising_command: dict[str, Any]) -> None:
    raising_command["raise"] = InputError("roles[0]: 'x y' is not a role name",
                                          path="images/web.yml", line=3)
    result = CliRunner().invoke(main, ["raise-for-test"])
    assert result.stderr.splitlines()[0] == (
        "error: images/web.yml:3: roles[0]: 'x y' is not a role name")


def test_cli_unexpected_exception_is_an_internal_error(raising_command: dict[str, Any]) -> None:
    raising_command["raise"] = KeyError("layer")
    result = CliRunner().invoke(main, ["raise-for-test"])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "internal error: KeyError: 'layer'",
        "  hint: run again with --debug for the traceback, and please report it"]
    assert "Traceback" not in result.output

    debug = CliRunner().invoke(main, ["--debug", "raise-for-test"])
    assert debug.exit_code == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert "internal error: KeyError: 'layer'" in debug.stderr


def test_cli_debug_shows_the_traceback_of_a_rolebake_error_too(
        raising_command: dict[str, Any]) -> None:
    raising_command["raise"] = TestsFailed("1 of 8 image checks failed for web")
    result = CliRunner().invoke(main, ["--debug", "raise-for-test"])
    assert result.exit_code == 3
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.count("error: 1 of 8 image checks failed for web") == 1


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)],
                         ids=["SIGTERM", "SIGINT"])
def test_cli_signal_becomes_interrupted(raising_command: dict[str, Any], signum: int,
                                        code: int) -> None:
    def signal_self() -> None:
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the handler raises long before this ends
        pytest.fail("the signal was not handled")

    raising_command["raise"] = signal_self
    started = time.monotonic()
    result = CliRunner().invoke(main, ["raise-for-test"])
    assert time.monotonic() - started < 4
    assert result.exit_code == code, result.output
    name = signal.Signals(signum).name
    assert result.stderr.splitlines() == [
        f"error: interrupted by {name}; cleaned up, no tag moved"]


# Ansible events -> task results ----------------------------------------------------------------


def ansible_events(name: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = json.loads((FIXTURES / name).read_text())
    return events


def watch(project: Project, events: list[dict[str, Any]]) -> tuple[EventWatcher, list[Event]]:
    seen: list[Event] = []
    ctx = ProvisionContext(
        project=project, layer=plan_build(project, ["base"]).layer("base"),
        target=ContainerTarget(FakeEngine(), ContainerHandle("cid", "rolebake-build-base-x")),
        events=seen.append, cancel=threading.Event(),
        log_path=project.state_dir / "logs" / "base-x.log")
    watcher = EventWatcher(ctx)
    for event in events:
        # No event is written to runner's artifacts: a task's result may hold a secret.
        assert watcher(event) is False
    return watcher, seen


def only_build_host(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if (e.get("event_data") or {}).get("host") in (None,
                                                                            "rolebake-build")]


def test_event_watcher_maps_recorded_events_to_task_results(project: Project) -> None:
    watcher, seen = watch(project, ansible_events("web-run.json"))

    assert [(t.name, t.role, t.action, t.status) for t in watcher.results] == [
        ("write the site config", "web", "ansible.builtin.copy", "failed"),  # unreachable
        ("write the site config", "web", "ansible.builtin.copy", "changed"),
        ("check the site config", "web", "ansible.builtin.stat", "ok"),
        ("only on RedHat", "web", "ansible.builtin.command", "skipped"),
        ("optional cleanup", "web", "ansible.builtin.command", "ignored"),
        ("install nginx", "web", "ansible.builtin.shell", "failed"),
    ]
    unreachable, copied, stat, skipped, ignored, failed = watcher.results
    assert unreachable.args == {} and "Connection refused" in unreachable.result["msg"]
    assert copied.args["dest"] == "/srv/www/site.conf" and copied.args["mode"] == "0644"
    assert copied.result["changed"] is True and copied.result["dest"] == "/srv/www/site.conf"
    assert "md5sum" not in copied.result  # only the keys reports use are kept
    assert stat.args["path"] == "/srv/www/site.conf"
    assert skipped.args == {} and skipped.result == {}
    assert ignored.result["rc"] == 1
    assert failed.args["_raw_params"].startswith("echo 'E: Unable to locate package nginx'")
    assert failed.result["stderr"] == "E: Unable to locate package nginx"
    assert failed.result["rc"] == 100
    # Only real failures count as failures: the ignored one does not.
    assert [t.name for t in watcher.failures] == ["write the site config", "install nginx"]
    assert watcher.failure_paths == ["/srv/project/roles/web/tasks/main.yml:1",
                                     "/srv/project/roles/web/tasks/main.yml:19"]

    tasks = [e for e in seen if isinstance(e, TaskEvent)]
    assert all(e.layer == "base" and e.role == "web" for e in tasks)
    assert [(e.task, e.status, e.ok, e.changed, e.failed) for e in tasks] == [
        ("write the site config", "started", 0, 0, 0),
        ("write the site config", "failed", 0, 0, 1),
        ("write the site config", "changed", 1, 1, 1),
        ("check the site config", "started", 1, 1, 1),
        ("check the site config", "ok", 2, 1, 1),
        ("only on RedHat", "started", 2, 1, 1),
        ("only on RedHat", "skipped", 2, 1, 1),
        ("optional cleanup", "started", 2, 1, 1),
        ("optional cleanup", "ignored", 2, 1, 1),
        ("install nginx", "started", 2, 1, 1),
        ("install nginx", "failed", 2, 1, 2),
    ]
    assert seen == tasks  # nothing but task events


def test_failed_task_becomes_build_failed_naming_task_role_and_module(
        project: Project) -> None:
    watcher, _ = watch(project, only_build_host(ansible_events("web-run.json")))
    error = explain(watcher.ctx, watcher.failures, watcher.failure_paths, stdout="")
    assert isinstance(error, BuildFailed) and error.exit_code == 1
    assert error.message == ("task 'install nginx' (role web, module ansible.builtin.shell) "
                             "failed: non-zero return code")
    assert error.details == "E: Unable to locate package nginx"
    assert error.hint == f"full Ansible log: {watcher.ctx.log_path}"


def test_undefined_variable_is_input_error_at_the_task(project: Project) -> None:
    watcher, _ = watch(project, ansible_events("app-undefined.json"))
    assert [(t.name, t.role, t.status) for t in watcher.results] == [
        ("render the app config", "app", "failed")]
    error = explain(watcher.ctx, watcher.failures, watcher.failure_paths, stdout="")
    assert isinstance(error, InputError) and error.exit_code == 2
    assert error.path == "/srv/project/roles/app/tasks/main.yml" and error.line == 1
    assert error.message == ("/srv/project/roles/app/tasks/main.yml:1: "
                             "task 'render the app config': 'app_port' is undefined")


def test_ansible_refusing_a_role_file_is_input_error_at_its_line(project: Project) -> None:
    watcher, _ = watch(project, [])
    stdout = (FIXTURES / "web-yaml-error.stdout").read_text()
    error = explain(watcher.ctx, watcher.failures, watcher.failure_paths, stdout)
    assert isinstance(error, InputError)
    assert (error.path, error.line) == ("/srv/project/roles/web/tasks/main.yml", 20)
    assert error.message == ("/srv/project/roles/web/tasks/main.yml:20: YAML parsing failed: "
                             "Colons in unquoted values must be followed by a non-space "
                             "character.")


def test_ansible_failing_without_a_task_or_error_line_is_build_failed(
        project: Project) -> None:
    watcher, _ = watch(project, [])
    error = explain(watcher.ctx, watcher.failures, watcher.failure_paths,
                    "PLAY RECAP\nsomething odd\n")
    assert isinstance(error, BuildFailed) and not isinstance(error, InputError)
    assert error.message == "ansible-playbook failed"
    assert error.details == "PLAY RECAP\nsomething odd"


def test_fake_provisioner_task_results_reach_the_layer_result(
        engine: FakeEngine, project: Project, fake_provisioner: ProvisionerControl) -> None:
    fake_provisioner.tasks = (TaskResult("a", "web", "ansible.builtin.apt", "changed"),
                              TaskResult("b", "web", "ansible.builtin.stat", "ok"),
                              TaskResult("c", "web", "ansible.builtin.stat", "ok"))
    report, _, _ = run_build(engine, project, ["base"])
    provisioned = report.results["base"].provision
    assert provisioned is not None
    assert provisioned.counts() == {"changed": 1, "ok": 2}
    assert report.to_dict()["layers"][0]["tasks"] == {"changed": 1, "ok": 2}


def test_a_slow_task_is_named_with_ansibles_own_duration(project: Project) -> None:
    def ok(task: str, duration: float) -> dict[str, Any]:
        return {"event": "runner_on_ok", "event_data": {
            "task": task, "role": "web", "task_action": "ansible.builtin.service",
            "duration": duration, "res": {"changed": True}}}

    _, seen = watch(project, [ok("Restart apache2", 61.2), ok("Reload nginx", 2.5)])
    slow = [e.message for e in seen if isinstance(e, LogEvent)]
    assert slow == ["slow task: 'Restart apache2' took 61 s"]


def test_a_normalised_rebuild_that_fails_keeps_the_image_it_reproduced(
        engine: FakeEngine, project: Project) -> None:
    """The same inputs give the same id: a failed rebuild must not remove the good image."""
    first, _, _ = run_build(engine, project, ["web"], source_date_epoch=1_700_000_000)
    good = first.results["web"].image_id
    assert first.error is None and good is not None
    assert BUILD_ID_LABEL not in (engine.image(good) or pytest.fail("gone")).labels
    engine.remove_image("rolebake/web:1.0")  # so the rebuild moves it, and is refused
    engine.refuse_tag("rolebake/web:1.0")
    again, _, _ = run_build(engine, project, ["web"], no_cache=True,
                            source_date_epoch=1_700_000_000)
    assert again.results["web"].image_id == good  # reproduced
    assert isinstance(again.error, InputError)  # the refused tag failed it
    assert good in engine.image_ids()
    assert engine.tagged("rolebake/web:latest") == good
