"""The step runner: each layer goes through `events.PIPELINE`, independent layers `jobs` at a time.

A step is a method named after it (`_cache`, `_create`, … `_tag`); the runner
walks the pipeline as data, reports the status of every step it runs and decides
which steps apply (a cache hit runs only `cache`, `tag` and `push`). Tags move only
in the tag step, and only for a layer whose every step passed; the push step after it
publishes only what was tagged (DESIGN.md invariants 1, 2, 5).

A layer is built under a host-wide lock of the engine and the layer's cache
repository: builds in two checkouts take turns, the later one hits the cache.
An interrupted run puts back every tag it moved (see `image.TagJournal`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rolebake import aptcache
from rolebake.aptcache import AptCache
from rolebake.cache import FROM_REPO, Cache, CacheDecision, LayerInputs, provisioner_and_inputs
from rolebake.engine import (
    BUILD_ID_LABEL,
    ROLE_LABEL,
    ContainerHandle,
    Engine,
    ImageInfo,
    as_error,
    disk_full_hint,
)
from rolebake.errors import (
    BuildFailed,
    EngineUnavailable,
    InputError,
    Interrupted,
    RolebakeError,
    TestsFailed,
)
from rolebake.events import (
    CONTAINER_STEPS,
    HIT_STEPS,
    PIPELINE,
    EventSink,
    LogEvent,
    Step,
    StepEvent,
    StepStatus,
)
from rolebake.image import (
    LAYER_LABEL,
    TagJournal,
    commit_config,
    git_revision,
    keep_failed,
    provenance_labels,
)
from rolebake.locks import Held, exclusive, host_lock
from rolebake.plan import BuildPlan, Layer
from rolebake.provision import provisioner_class
from rolebake.provision.base import ProvisionContext, Provisioner, ProvisionResult
from rolebake.provision.target import ContainerTarget
from rolebake.registry import CacheRepo, Repository
from rolebake.release import RELEASE_LABEL, Release, release_of
from rolebake.rootfs import cache_dir
from rolebake.scripts import script
from rolebake.secrets import SecretSet, scan_image
from rolebake.spec import Project
from rolebake.verify import VerifyResult, check_metadata, run_suite

# Test hook, for the fault-injection tests only: ROLEBAKE_TEST_PAUSE=<step> makes
# every layer wait (up to ROLEBAKE_TEST_PAUSE_SECONDS, default 60) at the start
# of that step, so a signal can be sent at a step too short to hit otherwise;
# `after:<step>` waits once the step has passed, with no cancel check after it.
TEST_PAUSE_ENV = "ROLEBAKE_TEST_PAUSE"

# How long a failed step waits for an engine that stopped answering to come back
# (a restart), so it can say what happened and remove its container.
ENGINE_RETURN_S = 60.0


@dataclass(frozen=True)
class BuildOptions:
    """How to build (the CLI's flags)."""

    no_cache: bool = False
    jobs: int = 1
    keep_failed: bool = False
    idempotence: bool = False
    verify: bool = True
    secrets: SecretSet | None = None
    push: bool = False  # push every tag of each verified image the user named
    cache_repo: Repository | None = None  # share verified layers through this repository


@dataclass
class LayerResult:
    """What happened to one layer."""

    layer: str
    status: StepStatus = StepStatus.PENDING
    image_id: str | None = None
    cache_key: str | None = None
    cached: bool = False
    reasons: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    source: str | None = None  # of a cached layer: "local" or "cache repo"
    pushed: tuple[str, ...] = ()
    failed_tag: str | None = None
    seconds: float = 0.0
    log_path: str | None = None
    steps: dict[str, str] = field(default_factory=dict)
    step_seconds: dict[str, float] = field(default_factory=dict)
    verify: VerifyResult | None = None
    provision: ProvisionResult | None = None
    error: RolebakeError | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form, for --json."""
        return {
            "layer": self.layer,
            "status": self.status.value,
            "image_id": self.image_id,
            "cache_key": self.cache_key,
            "cached": self.cached,
            "reasons": list(self.reasons),
            "tags": list(self.tags),
            "source": self.source,
            "pushed": list(self.pushed),
            "failed_tag": self.failed_tag,
            "seconds": round(self.seconds, 2),
            "log": self.log_path,
            "steps": dict(self.steps),
            "step_seconds": {k: round(v, 2) for k, v in self.step_seconds.items()},
            "tests": self.verify.to_dict() if self.verify else None,
            "tasks": self.provision.counts() if self.provision else None,
            "error": ({"message": self.error.message, "exit_code": self.error.exit_code,
                       "details": self.error.details} if self.error else None),
        }


@dataclass
class BuildReport:
    """Every layer's result, in plan order."""

    results: dict[str, LayerResult]
    seconds: float = 0.0
    build_id: str = ""

    @property
    def error(self) -> RolebakeError | None:
        """The first error, which decides the exit code."""
        for result in self.results.values():
            if result.error is not None:
                return result.error
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON form, for --json."""
        error = self.error
        return {
            "ok": error is None,
            "exit_code": error.exit_code if error else 0,
            "build_id": self.build_id,
            "seconds": round(self.seconds, 2),
            "layers": [r.to_dict() for r in self.results.values()],
        }


@dataclass
class _Run:
    """One layer on its way through the pipeline: what the steps hand each other."""

    layer: Layer
    result: LayerResult
    parent: ImageInfo
    provisioner: Provisioner
    inputs: LayerInputs
    stack: contextlib.ExitStack
    lock: Held
    release: Release | None = None
    apt: AptCache | None = None
    lent: tuple[str, ...] = ()  # where volumes and binds are mounted in the build container
    config: dict[str, Any] = field(default_factory=dict)
    cached: bool = False
    source: str | None = None  # of a hit
    ctx: ProvisionContext | None = None
    image_id: str | None = None

    @property
    def container(self) -> ContainerHandle:
        """The build container, once the create step made it."""
        assert self.ctx is not None, "the create step has not run"
        return self.ctx.container


class Builder:
    """Runs a BuildPlan against an engine."""

    def __init__(self, engine: Engine, project: Project, events: EventSink,
                 options: BuildOptions | None = None) -> None:
        """Bind the engine, the project and whoever watches the events."""
        self.engine = engine
        self.project = project
        self.events = events
        self.options = options or BuildOptions()
        repo = CacheRepo(engine, self.options.cache_repo) if self.options.cache_repo else None
        self.cache = Cache(engine, repo)
        self.cancel = threading.Event()
        self.build_id = uuid.uuid4().hex[:12]
        self.tags = TagJournal(engine, self.build_id)
        self._locks: dict[str, Path] = {}  # layer id -> its host-wide lock file
        self._engine_identity: str | None = None
        self._targets: frozenset[str] = frozenset()
        self._revision = git_revision(project.root)
        self._steps: dict[Step, Callable[[_Run], Any]] = {
            step: getattr(self, f"_{step.value}") for step in PIPELINE}

    # Scheduling -----------------------------------------------------------------------

    def build(self, plan: BuildPlan) -> BuildReport:
        """Build every layer of the plan, independent layers `jobs` at a time.

        An exception in one layer (a bug included) fails that layer only; the
        others finish, and the report says what happened to each.

        Raises:
            Interrupted: on SIGINT/SIGTERM (raised in the main thread); builds in
                flight are cancelled and cleaned up, and every tag this run moved
                is put back, before it propagates.
        """
        started = time.monotonic()
        self._targets = frozenset(plan.targets)
        for layer in plan.layers:
            # Missing toolchains are bad input: say so before any container exists.
            provisioner_class(layer.provisioner)(self.project, layer).preflight(self.engine)
            if layer.config.healthcheck is not None and self.engine.kind == "podman":
                raise InputError("config.healthcheck: Podman's commit cannot set a "
                                 "HEALTHCHECK, so this image cannot be built on Podman",
                                 path=layer.spec.path, line=layer.spec.line_of("config"),
                                 hint="build it on a Docker engine, or use `ready:` instead")
        results = {layer.id: LayerResult(layer=layer.id) for layer in plan.layers}
        try:
            with self.engine.watch():
                self._schedule(plan, results)
        except BaseException as exc:
            self.roll_back(exc)
            raise
        return BuildReport(results=results, seconds=time.monotonic() - started,
                           build_id=self.build_id)

    def _schedule(self, plan: BuildPlan, results: dict[str, LayerResult]) -> None:
        images: dict[str, ImageInfo] = {}
        sorter = plan.sorter()
        ready: list[Layer] = []
        running: dict[Future[ImageInfo], Layer] = {}
        jobs = max(1, self.options.jobs)
        with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="rolebake-build") as pool:
            try:
                while sorter.is_active():
                    ready.extend(plan.layer(i) for i in sorter.get_ready())
                    while ready and len(running) < jobs:
                        layer = ready.pop(0)
                        if layer.parent_is_layer and layer.parent not in images:
                            self._skip_layer(layer, results[layer.id], results[layer.parent])
                            sorter.done(layer.id)
                            continue
                        parent = images.get(layer.parent) if layer.parent_is_layer else None
                        with _signals_deferred():
                            running[pool.submit(self._build_layer, layer, parent,
                                                results[layer.id])] = layer
                    if not running:
                        continue
                    done, _ = wait(list(running), timeout=0.2, return_when=FIRST_COMPLETED)
                    for future in done:
                        layer = running.pop(future)
                        try:
                            images[layer.id] = future.result()
                        except Exception as exc:  # _build_layer gives RolebakeErrors only
                            results[layer.id].status = StepStatus.FAILED
                            results[layer.id].error = as_error(exc)
                        sorter.done(layer.id)
            except BaseException:
                # SIGINT/SIGTERM land here, in the main thread: stop the workers and
                # let each one remove its container before the interrupt goes on.
                self.cancel.set()
                with contextlib.suppress(Exception):  # no engine: the workers find out
                    self._kill_running_containers()
                for future in running:
                    with contextlib.suppress(BaseException):
                        future.result()
                raise

    def roll_back(self, reason: BaseException | None = None) -> None:
        """Put back every tag this run moved, layers that finished included (safe to repeat).

        Called when the run is stopped (a signal): an interrupted build moves no
        tag. Tags another build may be using stay (see `TagJournal.roll_back`);
        an `Interrupted` reason then says which and why.
        """
        stayed = self.tags.roll_back(self._locks)
        if isinstance(reason, Interrupted):
            reason.tags_stayed(stayed)

    def stop(self) -> None:
        """Cancel a build running in another thread: its layers stop and clean up."""
        self.cancel.set()
        self._kill_running_containers()

    def _skip_layer(self, layer: Layer, result: LayerResult, parent: LayerResult) -> None:
        result.status = StepStatus.SKIPPED
        why = "failed" if parent.status == StepStatus.FAILED else "was skipped"
        result.reasons = (f"parent {layer.parent} {why}",)
        self.events(StepEvent(layer.id, Step.CACHE, StepStatus.SKIPPED,
                              f"parent {layer.parent} did not build"))

    def _kill_running_containers(self) -> None:
        # A long exec (apt-get in a task) only returns when its container dies, and
        # a testinfra suite stops early only when its verify container does: every
        # container of the build carries its id.
        for container in self.engine.containers({BUILD_ID_LABEL: self.build_id}):
            self.engine.kill(container.id)

    # One layer: the pipeline as data ----------------------------------------------------

    def _build_layer(self, layer: Layer, parent: ImageInfo | None,
                     result: LayerResult) -> ImageInfo:
        started = time.monotonic()
        try:
            parent = parent or self._base_image(layer)
            provisioner, inputs = provisioner_and_inputs(self.engine, self.project, layer, parent)
            result.cache_key = inputs.key
            lock = self._locks[layer.id] = self._lock_for(layer)
            with exclusive(lock, on_busy=lambda: self.events(LogEvent(
                               layer.id, "another build of this layer is running; waiting")),
                           check=self._check_cancel) as held, contextlib.ExitStack() as stack:
                run = _Run(layer=layer, result=result, parent=parent,
                           provisioner=provisioner, inputs=inputs, stack=stack, lock=held,
                           release=release_of(self.engine, parent, cache_dir() / "releases"))
                self._run_pipeline(run)
            result.status = StepStatus.CACHED if run.cached else StepStatus.OK
            assert run.image_id is not None
            found = self.engine.image(run.image_id)
            assert found is not None
            return found
        except Exception as exc:  # whatever it was fails this layer only, as a RolebakeError
            if isinstance(exc, RolebakeError):
                raise
            raise as_error(exc) from exc
        finally:
            result.seconds = time.monotonic() - started

    def _lock_for(self, layer: Layer) -> Path:
        """The host-wide lock of `layer` on this engine, shared by every checkout."""
        if self._engine_identity is None:
            self._engine_identity = self.engine.identity()
        return host_lock(layer.file_stem, self._engine_identity, layer.cache_repository)

    def _run_pipeline(self, run: _Run) -> None:
        for step in PIPELINE:
            if run.cached and step not in HIT_STEPS:
                continue  # a hit is reused as it is: only its tags move, then it is pushed
            if not self._applies(run, step):
                if run.cached:
                    continue
                run.result.steps[step.value] = StepStatus.SKIPPED.value
                self.events(StepEvent(run.layer.id, step, StepStatus.SKIPPED))
                continue
            try:
                self._step(run, step)
            except BaseException as exc:
                self._on_failure(run, step, exc)
                raise

    def _applies(self, run: _Run, step: Step) -> bool:
        if step == Step.IDEMPOTENCE:
            return self.options.idempotence or run.layer.spec.idempotence
        if step == Step.SCAN:
            return self.options.secrets is not None and bool(self.options.secrets.values())
        if step == Step.VERIFY:
            return self.options.verify
        if step == Step.PUSH:
            # Only verified images leave the engine: never a --no-verify build's.
            return self.options.verify and (self.cache.repo is not None or (
                self.options.push and run.layer.id in self._targets))
        return True

    def _step(self, run: _Run, step: Step) -> None:
        self.events(StepEvent(run.layer.id, step, StepStatus.RUNNING))
        run.result.steps[step.value] = StepStatus.RUNNING.value
        began = time.monotonic()
        try:
            self._check_cancel()
            if os.environ.get(TEST_PAUSE_ENV) == step.value:
                self.cancel.wait(float(os.environ.get(TEST_PAUSE_ENV + "_SECONDS", "60")))
                self._check_cancel()
            message = self._steps[step](run) or ""
        except BaseException as exc:
            run.result.steps[step.value] = StepStatus.FAILED.value
            text = as_error(exc).message if isinstance(exc, Exception) else \
                type(exc).__name__
            self.events(StepEvent(run.layer.id, step, StepStatus.FAILED, text))
            raise
        finally:
            run.result.step_seconds[step.value] = time.monotonic() - began
        status = StepStatus.CACHED if step == Step.CACHE and run.cached else StepStatus.OK
        run.result.steps[step.value] = status.value
        self.events(StepEvent(run.layer.id, step, status, message))
        if os.environ.get(TEST_PAUSE_ENV) == f"after:{step.value}":
            self.cancel.wait(float(os.environ.get(TEST_PAUSE_ENV + "_SECONDS", "60")))

    def _on_failure(self, run: _Run, step: Step, exc: BaseException) -> None:
        """Say plainly when the engine or the container died under a step; keep or drop an image."""
        cancelled = (self.cancel.is_set() or isinstance(exc, Interrupted)
                     or not isinstance(exc, Exception))
        plainly: RolebakeError | None = None
        if isinstance(exc, RolebakeError) and (full := disk_full_hint(str(exc))) not in exc.hint:
            exc.hint = f"{full}; {exc.hint}" if exc.hint else full
        if not cancelled:
            plainly = self._engine_lost(run, step, exc)
            if plainly is None and step in CONTAINER_STEPS and isinstance(exc, RolebakeError) \
                    and run.ctx is not None and not self._running(run.container):
                plainly = BuildFailed(f"the build container {run.container.name} stopped "
                                      f"during {step.value} (killed from outside)",
                                      details=exc.message, hint=exc.hint)
        after_tag = PIPELINE.index(step) > PIPELINE.index(Step.TAG)
        if run.image_id is not None and not run.cached and step not in CONTAINER_STEPS \
                and not after_tag:  # a failed push leaves the tagged image as it is
            # A cancelled build keeps nothing, whatever --keep-failed says.
            keep = (plainly is None and isinstance(exc, RolebakeError) and not cancelled
                    and self.options.keep_failed)
            try:
                self._keep_or_drop(run, keep)
            except Exception as gone:  # the build's own error matters more
                self.events(LogEvent(run.layer.id, f"could not remove image {run.image_id}: "
                                     f"{as_error(gone).message}"))
        if plainly is not None:
            raise plainly from exc

    def _engine_lost(self, run: _Run, step: Step, exc: BaseException) -> RolebakeError | None:
        """The error to report when the engine stopped or restarted under `step`, else None."""
        details = exc.message if isinstance(exc, RolebakeError) else str(exc)
        if not self.engine.answers(wait_s=ENGINE_RETURN_S):
            return EngineUnavailable(
                f"the container engine stopped answering during {step.value} and did not "
                f"come back within {ENGINE_RETURN_S:g} s", details=details,
                hint="start it again; `rolebake clean` then removes what this build left")
        if not self.engine.restarted():
            return None
        container = (f"; the build container {run.container.name} stopped with it"
                     if step in CONTAINER_STEPS and run.ctx is not None else "")
        return BuildFailed(f"the container engine restarted during {step.value}{container}",
                           details=details, hint="build again")

    def _keep_or_drop(self, run: _Run, keep: bool) -> None:
        assert run.image_id is not None
        if keep and self.engine.image(run.image_id) is not None:
            try:
                run.result.failed_tag = keep_failed(self.engine, run.image_id, run.layer.tags)
            except RolebakeError as kept_error:  # the build's own error matters more
                self.events(LogEvent(run.layer.id, "could not keep the failed image: "
                                     f"{kept_error.message}"))
            else:
                self.events(LogEvent(run.layer.id,
                                     f"kept for inspection as {run.result.failed_tag}"))
        else:
            self.engine.remove_image(run.image_id, force=True)

    def _running(self, container: ContainerHandle) -> bool:
        try:
            return bool(self.engine.container_state(container).get("Running"))
        except Exception:  # gone, or no engine to ask: not running either way
            return False

    # The steps, in pipeline order ----------------------------------------------------------

    def _cache(self, run: _Run) -> str:
        decision: CacheDecision = self.cache.decide(
            run.layer, run.inputs, pull=not self.options.no_cache,
            progress=self._progress(run.layer), check=self._check_cancel)
        if decision.hit and not self.options.no_cache:
            run.cached = True
            run.image_id = run.result.image_id = decision.image_id
            run.result.cached = True
            run.source = run.result.source = decision.source
        else:
            run.result.reasons = ("--no-cache",) if self.options.no_cache else decision.reasons
        if decision.hit:
            hit = "HIT, from the cache repo" if decision.source == FROM_REPO else "HIT"
            return f"{hit}, rebuilt anyway (--no-cache)" if self.options.no_cache else hit
        return "MISS: " + "; ".join(decision.reasons)

    def _create(self, run: _Run) -> str:
        layer = run.layer
        log_path = self.project.private_dir("logs") / f"{layer.file_stem}-{self.build_id}.log"
        run.result.log_path = str(log_path)
        self.events(LogEvent(layer.id, f"log: {log_path}"))
        run.config = commit_config(run.parent.config, layer.config, provenance_labels(
            build_id=self.build_id, spec=layer.spec.name, layer=layer.id,
            cache_key=run.inputs.key, inputs=run.inputs.to_label(),
            provisioner=f"{layer.provisioner} ({run.provisioner.version()})",
            revision=self._revision))
        if run.release is not None:
            run.config["Labels"][RELEASE_LABEL] = run.release.label
        secrets = self.options.secrets
        options = run.stack.enter_context(run.provisioner.toolchain(
            self.engine, labels={BUILD_ID_LABEL: self.build_id}, events=self.events))
        run.apt = run.stack.enter_context(aptcache.claim(self.engine, run.release))
        mounts = tuple(options.mounts) + (run.apt.mounts() if run.apt else ())
        run.lent = tuple(str(m["target"]) for m in mounts if m.get("type") != "tmpfs")
        container = run.stack.enter_context(self.engine.container(
            run.parent.id, name=f"rolebake-build-{layer.file_stem}-{self.build_id}",
            labels={ROLE_LABEL: "build", BUILD_ID_LABEL: self.build_id, LAYER_LABEL: layer.id},
            mounts=mounts, volumes_from=options.volumes_from,
            tmpfs=secrets.tmpfs() if secrets else None))
        run.ctx = ProvisionContext(project=self.project, layer=layer,
                                   target=ContainerTarget(self.engine, container),
                                   events=self.events, cancel=self.cancel, log_path=log_path,
                                   secrets=secrets)
        return container.name

    def _bootstrap(self, run: _Run) -> None:
        assert run.ctx is not None
        prepared = self.engine.shell(run.container, script("prepare.sh"),
                                     env=run.apt.env() if run.apt else None)
        if prepared.rc != 0:
            raise BuildFailed("could not prepare the build container", details=prepared.tail())
        for line in prepared.output.splitlines():
            if run.apt is not None and line.startswith("apt lists:"):
                self.events(LogEvent(run.layer.id, f"apt cache {run.apt.name}: "
                                                   f"{line.split(':', 1)[1].strip()}"))
        if self.options.secrets is not None:
            self.options.secrets.install(self.engine, run.container)
        run.provisioner.bootstrap(run.ctx)

    def _provision(self, run: _Run) -> None:
        assert run.ctx is not None
        run.result.provision = run.provisioner.provision(run.ctx)

    def _idempotence(self, run: _Run) -> None:
        assert run.ctx is not None
        second = run.provisioner.provision(run.ctx, idempotence=True)
        if second.changed:
            names = ", ".join(
                f"{t.role + ' : ' if t.role and not t.name.startswith(t.role) else ''}{t.name}"
                for t in second.changed)
            raise BuildFailed(f"not idempotent: {len(second.changed)} task(s) changed on the "
                              f"second run: {names}",
                              hint="fix the task, or tag it molecule-idempotence-notest")

    def _clean(self, run: _Run) -> None:
        assert run.ctx is not None
        if self.options.secrets is not None:
            self.options.secrets.remove(self.engine, run.container)
        run.provisioner.clean(run.ctx)
        cleaned = self.engine.shell(run.container, script("clean.sh"),
                                    env=run.apt.env() if run.apt else None)
        if cleaned.rc != 0:
            raise BuildFailed("clean step failed", details=cleaned.tail())
        downloads = aptcache.parse_downloads(cleaned.output)
        if run.apt is not None and downloads is not None:
            count, size = downloads
            self.events(LogEvent(run.layer.id, f"apt cache {run.apt.name}: {count} packages "
                                               f"downloaded ({aptcache.human(size)})"))

    def _commit(self, run: _Run) -> str:
        leaked = mount_residue(self.engine.diff(run.container), run.lent)
        if leaked:
            # Hidden under the mount, so nothing in the container can remove it.
            raise BuildFailed(f"the engine made mount points in the layer: {', '.join(leaked)}",
                              hint="a lent toolchain must be mounted on a folder the parent "
                                   "image has (see docs/architecture.md)")
        image_id = run.result.image_id = self.engine.commit(run.container, run.config)
        try:
            run.stack.close()  # the build container goes as soon as its layer is committed
        except BaseException:
            self.engine.remove_image(image_id, force=True)
            raise
        run.image_id = image_id
        return image_id.split(":")[-1][:12]

    def _scan(self, run: _Run) -> None:
        assert run.image_id is not None and self.options.secrets is not None
        scan_image(self.engine, run.image_id, self.options.secrets)

    def _verify(self, run: _Run) -> str:
        assert run.image_id is not None
        image = self.engine.image(run.image_id)
        assert image is not None
        cases = check_metadata(run.config, image.config)
        if run.layer.tests is not None:
            cases += run_suite(self.engine, image.id, run.layer.tests,
                               ready=run.layer.spec.ready, project_root=self.project.root,
                               name=run.layer.file_stem, build_id=self.build_id)
        # --json and --junit list the failing cases too, not only passing runs.
        run.result.verify = verified = VerifyResult(image_id=image.id, cases=tuple(cases))
        if not verified.ok:
            lines = [f"{c.suite}::{c.name}: {c.message.splitlines()[0] if c.message else ''}"
                     for c in verified.failed]
            error = TestsFailed(f"{len(verified.failed)} of {len(cases)} image checks failed "
                                f"for {run.layer.id}", details="\n".join(lines))
            error.verify = verified  # type: ignore[attr-defined]
            raise error
        return f"{len(verified.cases)} checks passed"

    def _tag(self, run: _Run) -> None:
        assert run.image_id is not None
        refs = list(run.layer.tags)
        # Only a verified image becomes a cache hit: a --no-verify build (or a
        # scaffold-tests run) must not hand a later `rolebake build` an untested image.
        if not run.cached and self.options.verify:
            refs.append(Cache.tag_for(run.layer, run.inputs.key))
        try:
            self.tags.move(run.layer.id, run.image_id, refs, run.lock, check=self._check_cancel)
        except InputError as exc:
            raise InputError(exc.message, path=run.layer.spec.path,
                             line=run.layer.spec.line_of("tags")) from None
        run.result.tags = run.layer.tags

    def _push(self, run: _Run) -> str:
        """Publish the tagged, verified image: to the cache repo, then (--push) every tag.

        Only the images the user named have their tags pushed: a parent layer named
        only as `from:` is an intermediate (its tags may name no registry at all).
        A failure is exit 1 with the registry's message; the local tags stay as they are.
        """
        assert run.image_id is not None
        progress, done = self._progress(run.layer), []
        if self.cache.repo is not None and run.source != FROM_REPO:
            done.append(self.cache.publish(run.layer, run.inputs.key, run.image_id, run.parent,
                                           progress, self._check_cancel))
        if self.options.push and run.layer.id in self._targets:
            for tag in run.layer.tags:
                digest = self.engine.push(tag, progress, self._check_cancel)
                run.result.pushed = (*run.result.pushed, tag)
                done.append(f"pushed {tag}" + (f" ({digest})" if digest else ""))
        return "; ".join(done) or "came from the cache repo; nothing to put there"

    # Helpers --------------------------------------------------------------------------

    def _base_image(self, layer: Layer) -> ImageInfo:
        found = self.engine.image(layer.parent)
        if found is None and self.cache.repo is not None:
            # Every engine of a fleet builds on the base the cache repo holds.
            base_id = self.cache.base(layer.parent, pull=True, progress=self._progress(layer),
                                      check=self._check_cancel)
            found = self.engine.image(base_id) if base_id else None
            if found is not None:
                self.events(LogEvent(layer.id, f"{layer.parent} pulled from the cache repo"))
        if found is None:
            self.events(LogEvent(layer.id, f"pulling {layer.parent}"))
            try:
                found = self.engine.pull(layer.parent, self._progress(layer))
            except InputError as exc:
                raise InputError(exc.message, path=layer.spec.path,
                                 line=layer.spec.line_of("from"), hint=exc.hint) from None
        return found

    def _progress(self, layer: Layer) -> Callable[[str], None]:
        """Pull and push progress lines, as log events of the layer."""
        return lambda line: self.events(LogEvent(layer.id, line))

    def _check_cancel(self) -> None:
        if self.cancel.is_set():
            raise BuildFailed("cancelled")


def mount_residue(changes: list[tuple[str, str]], targets: tuple[str, ...]) -> list[str]:
    """Paths a commit would keep at or below where something was mounted.

    Whatever a build writes there goes to the mount, so such a path is one the
    engine made itself (a mount point) and nothing in the container can see.
    """
    found = []
    for kind, path in changes:
        for target in targets:
            below = path.startswith(target.rstrip("/") + "/")
            if below or (path == target and kind == "A"):
                found.append(path)
                break
    return found


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back for a moment; they are delivered when the block ends.

    A signal in the middle of `pool.submit` would start a worker whose future is
    never recorded, and the interrupt would then not wait for its cleanup.
    """
    deferred = {signal.SIGINT, signal.SIGTERM}
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, deferred)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
