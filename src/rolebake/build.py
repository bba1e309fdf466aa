"""The build pipeline: for each layer, parents first, the steps in plan.PIPELINE.

cache -> create -> bootstrap -> provision -> idempotence -> clean -> commit ->
scan -> verify -> tag. Tags move only at the very end, and only for a layer
whose every step passed (DESIGN.md invariants 1, 2, 5).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rolebake import __version__
from rolebake.engine import (
    BUILD_ID_LABEL,
    ROLE_LABEL,
    ContainerHandle,
    Engine,
    ImageInfo,
    commit_config,
)
from rolebake.errors import BuildFailed, InputError, Interrupted, RolebakeError, TestsFailed
from rolebake.events import EventSink, LogEvent, StepEvent
from rolebake.plan import (
    BuildPlan,
    CacheDecision,
    Layer,
    LayerInputs,
    Step,
    StepStatus,
    explain_miss,
    layer_inputs,
)
from rolebake.provision import provisioner_class
from rolebake.provision.ansible import script
from rolebake.provision.base import ProvisionContext, Provisioner, ProvisionResult
from rolebake.secrets import SecretSet, scan_image
from rolebake.spec import Project
from rolebake.verify import VerifyResult, check_metadata, run_suite

LAYER_LABEL = "rolebake.layer"
SPEC_LABEL = "rolebake.spec"
CACHE_KEY_LABEL = "rolebake.cache-key"
INPUTS_LABEL = "rolebake.inputs"
# Test hook, for the fault-injection tests only: ROLEBAKE_TEST_PAUSE=<step> makes
# every layer wait (up to ROLEBAKE_TEST_PAUSE_SECONDS, default 60) at the start
# of that step, so a signal can be sent at a step too short to hit otherwise.
TEST_PAUSE_ENV = "ROLEBAKE_TEST_PAUSE"


@dataclass(frozen=True)
class BuildOptions:
    """How to build (the CLI's flags)."""

    no_cache: bool = False
    jobs: int = 1
    keep_failed: bool = False
    idempotence: bool = False
    verify: bool = True
    secrets: SecretSet | None = None


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
    failed_tag: str | None = None
    seconds: float = 0.0
    log_path: str | None = None
    steps: dict[str, str] = field(default_factory=dict)
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
            "failed_tag": self.failed_tag,
            "seconds": round(self.seconds, 2),
            "log": self.log_path,
            "steps": dict(self.steps),
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
            "seconds": round(self.seconds, 2),
            "layers": [r.to_dict() for r in self.results.values()],
        }


class Cache:
    """The layer cache, kept in the engine: a layer is cached when its cache tag exists.

    The cache tag is set in the tag step, after verification, so an image from
    a failed, interrupted or unverified build is never a cache hit.
    """

    def __init__(self, engine: Engine) -> None:
        """Use the images `engine` holds."""
        self.engine = engine

    @staticmethod
    def tag_for(layer: Layer, key: str) -> str:
        """The internal tag that marks a verified build of `layer` with `key`."""
        return f"{layer.cache_repository}:{key.rsplit(':', maxsplit=1)[-1][:40]}"

    def decide(self, layer: Layer, inputs: LayerInputs) -> CacheDecision:
        """HIT with the image id, or MISS with the inputs that changed since the last build."""
        key = inputs.key
        found = self.engine.image(self.tag_for(layer, key))
        if found is not None and found.labels.get(CACHE_KEY_LABEL) == key:
            return CacheDecision(hit=True, key=key, image_id=found.id)
        if self.engine.images({CACHE_KEY_LABEL: key, ROLE_LABEL: "image"}):
            # Same inputs, but that image never passed verification: it is not reused.
            return CacheDecision(hit=False, key=key, reasons=(
                "inputs unchanged, but the last image was never verified (--no-verify, "
                "failed checks or an interrupted build); it is not reused",))
        return CacheDecision(hit=False, key=key, reasons=explain_miss(inputs, self.previous(layer)))

    def previous(self, layer: Layer) -> LayerInputs | None:
        """Inputs of the last build of this layer, to explain a miss.

        The image the layer's own tag names comes first; otherwise the most recent
        verified build of a layer of that name on the engine.
        """
        for tag in layer.tags:
            tagged = self.engine.image(tag)
            if tagged is not None and tagged.labels.get(LAYER_LABEL) == layer.id:
                return LayerInputs.from_label(tagged.labels.get(INPUTS_LABEL))
        for image in self.engine.images({LAYER_LABEL: layer.id, ROLE_LABEL: "image"}):
            if any(t.startswith(layer.cache_repository + ":") for t in image.tags):
                return LayerInputs.from_label(image.labels.get(INPUTS_LABEL))
        return None


class Builder:
    """Runs a BuildPlan against an engine."""

    def __init__(self, engine: Engine, project: Project, events: EventSink,
                 options: BuildOptions | None = None) -> None:
        """Bind the engine, the project and whoever watches the events."""
        self.engine = engine
        self.project = project
        self.events = events
        self.options = options or BuildOptions()
        self.cache = Cache(engine)
        self.cancel = threading.Event()
        self.build_id = uuid.uuid4().hex[:12]
        self._revision = _git_revision(project.root)

    # Scheduling -----------------------------------------------------------------------

    def build(self, plan: BuildPlan) -> BuildReport:
        """Build every layer of the plan, independent layers `jobs` at a time.

        Raises:
            Interrupted: on SIGINT/SIGTERM (raised in the main thread); builds in
                flight are cancelled and cleaned up before it propagates.
        """
        started = time.monotonic()
        for layer in plan.layers:
            # Missing toolchains are bad input: say so before any container exists.
            provisioner_class(layer.provisioner)(self.project, layer).preflight(self.engine)
        results = {layer.id: LayerResult(layer=layer.id) for layer in plan.layers}
        images: dict[str, ImageInfo] = {}
        pending = list(plan.layers)
        running: dict[Future[ImageInfo], Layer] = {}
        with ThreadPoolExecutor(max_workers=max(1, self.options.jobs),
                                thread_name_prefix="rolebake-build") as pool:
            try:
                while pending or running:
                    for layer in list(pending):
                        parent_ok = (not layer.parent_is_layer) or layer.parent in images
                        parent_failed = layer.parent_is_layer and results[
                            layer.parent].status in (StepStatus.FAILED, StepStatus.SKIPPED)
                        if parent_failed:
                            pending.remove(layer)
                            results[layer.id].status = StepStatus.SKIPPED
                            results[layer.id].reasons = (f"parent {layer.parent} failed",)
                            self.events(StepEvent(layer.id, Step.CACHE, StepStatus.SKIPPED,
                                                  f"parent {layer.parent} did not build"))
                        elif parent_ok and len(running) < max(1, self.options.jobs):
                            pending.remove(layer)
                            parent = images.get(layer.parent) if layer.parent_is_layer else None
                            running[pool.submit(self._build_layer, layer, parent,
                                                results[layer.id])] = layer
                    if not running:
                        break
                    done, _ = wait(list(running), timeout=0.2, return_when=FIRST_COMPLETED)
                    for future in done:
                        layer = running.pop(future)
                        try:
                            images[layer.id] = future.result()
                        except RolebakeError as exc:
                            results[layer.id].status = StepStatus.FAILED
                            results[layer.id].error = exc
            except BaseException:
                # SIGINT/SIGTERM land here, in the main thread: stop the workers and
                # let each one remove its container before the interrupt goes on.
                self.cancel.set()
                self._kill_running_containers()
                for future in running:
                    with contextlib.suppress(BaseException):
                        future.result()
                raise
        return BuildReport(results=results, seconds=time.monotonic() - started)

    def _kill_running_containers(self) -> None:
        # A long exec (apt-get in a task) only returns when its container dies.
        for container in self.engine.containers({BUILD_ID_LABEL: self.build_id}):
            self.engine.kill(container.id)
        # A testinfra suite only stops early when its container dies; verify
        # containers carry this build's id in their name (see _verify).
        for container in self.engine.containers({ROLE_LABEL: "verify"}):
            if f"-{self.build_id}-" in container.name:
                self.engine.kill(container.id)

    # One layer ------------------------------------------------------------------------

    def _build_layer(self, layer: Layer, parent: ImageInfo | None,
                     result: LayerResult) -> ImageInfo:
        started = time.monotonic()
        try:
            image = self._layer_pipeline(layer, parent, result)
        finally:
            result.seconds = time.monotonic() - started
        return image

    def _layer_pipeline(self, layer: Layer, parent: ImageInfo | None,
                        result: LayerResult) -> ImageInfo:
        parent = parent or self._base_image(layer)
        provisioner, inputs = layer_provisioner_and_inputs(self.project, layer, parent.id)
        result.cache_key = inputs.key
        with self._lock(layer):
            decision = self._step(layer, result, Step.CACHE, lambda: self.cache.decide(
                layer, inputs), status_of=lambda d: StepStatus.CACHED if d.hit else StepStatus.OK,
                message_of=lambda d: "HIT" if d.hit else "MISS: " + "; ".join(d.reasons))
            if decision.hit and not self.options.no_cache:
                assert decision.image_id is not None
                result.cached = True
                result.image_id = decision.image_id
                self._step(layer, result, Step.TAG, lambda: self._tag(layer, decision.image_id))
                result.tags = layer.tags
                result.status = StepStatus.CACHED
                found = self.engine.image(decision.image_id)
                assert found is not None
                return found
            result.reasons = decision.reasons if not self.options.no_cache else ("--no-cache",)
            config = commit_config(parent.config, layer.config,
                                   self._labels(layer, inputs, provisioner))
            image_id = self._run_container_steps(layer, parent, provisioner, config, result)
            result.image_id = image_id
            try:
                self._after_commit(layer, image_id, config, inputs, result)
            except BaseException as exc:
                self._discard(layer, image_id, result, keep=isinstance(exc, RolebakeError)
                              and not isinstance(exc, Interrupted))
                raise
        result.status = StepStatus.OK
        found = self.engine.image(image_id)
        assert found is not None
        return found

    def _run_container_steps(self, layer: Layer, parent: ImageInfo, provisioner: Provisioner,
                             config: Mapping[str, Any], result: LayerResult) -> str:
        log_path = self.project.state_dir / "logs" / (
            f"{layer.id.replace(':', '.')}-{self.build_id}.log")
        result.log_path = str(log_path)
        self.events(LogEvent(layer.id, f"log: {log_path}"))
        labels = {ROLE_LABEL: "build", BUILD_ID_LABEL: self.build_id, LAYER_LABEL: layer.id}
        name = f"rolebake-build-{layer.id.replace(':', '.')}-{self.build_id}"
        self._check_cancel()
        secrets = self.options.secrets
        with provisioner.toolchain(self.engine) as options, self.engine.container(
            parent.id, name=name, labels=labels, mounts=options.mounts,
            volumes_from=options.volumes_from,
            tmpfs=secrets.tmpfs() if secrets else None,
        ) as container, self._watched(container, result):
            self._step(layer, result, Step.CREATE, lambda: container.name,
                       message_of=lambda created: created)
            ctx = ProvisionContext(project=self.project, layer=layer, engine=self.engine,
                                   container=container, events=self.events, cancel=self.cancel,
                                   log_path=log_path, secrets=secrets)

            def bootstrap() -> None:
                prepared = self.engine.shell(container, script("prepare.sh"))
                if prepared.rc != 0:
                    raise BuildFailed("could not prepare the build container",
                                      details=prepared.tail())
                if secrets is not None:
                    secrets.install(self.engine, container)
                provisioner.bootstrap(ctx)

            self._step(layer, result, Step.BOOTSTRAP, bootstrap)
            result.provision = self._step(layer, result, Step.PROVISION,
                                          lambda: provisioner.provision(ctx))
            if self.options.idempotence or layer.spec.idempotence:
                self._step(layer, result, Step.IDEMPOTENCE,
                           lambda: self._idempotence(provisioner, ctx))
            else:
                self._skip(layer, result, Step.IDEMPOTENCE)

            def clean() -> None:
                if secrets is not None:
                    secrets.remove(self.engine, container)
                provisioner.clean(ctx)
                cleaned = self.engine.shell(container, script("clean.sh"))
                if cleaned.rc != 0:
                    raise BuildFailed("clean step failed", details=cleaned.tail())

            self._step(layer, result, Step.CLEAN, clean)
            return self._step(layer, result, Step.COMMIT,
                              lambda: self.engine.commit(container, config),
                              message_of=lambda image_id: image_id.split(":")[-1][:12])

    @contextlib.contextmanager
    def _watched(self, container: ContainerHandle, result: LayerResult) -> Iterator[None]:
        """Say so plainly when a step failed because the build container itself stopped."""
        try:
            yield
        except RolebakeError as exc:
            if self.cancel.is_set() or isinstance(exc, Interrupted) or self._running(container):
                raise
            step = next((k for k, v in result.steps.items() if v == StepStatus.FAILED.value),
                        "the build")
            raise BuildFailed(f"the build container {container.name} stopped during {step} "
                              "(killed from outside, or the engine restarted)",
                              details=exc.message, hint=exc.hint) from None

    def _running(self, container: ContainerHandle) -> bool:
        try:
            return bool(self.engine.container_state(container).get("Running"))
        except Exception:  # gone, or no engine to ask: not running either way
            return False

    def _after_commit(self, layer: Layer, image_id: str, expected: Mapping[str, Any],
                      inputs: LayerInputs, result: LayerResult) -> None:
        image = self.engine.image(image_id)
        assert image is not None
        secrets = self.options.secrets
        if secrets is not None and secrets.values():
            self._step(layer, result, Step.SCAN, lambda: scan_image(self.engine, image_id,
                                                                    secrets))
        else:
            self._skip(layer, result, Step.SCAN)
        if self.options.verify:
            try:
                verified = self._step(layer, result, Step.VERIFY,
                                      lambda: self._verify(layer, image, expected),
                                      message_of=lambda v: f"{len(v.cases)} checks passed")
            except TestsFailed as exc:
                # --json and --junit list the failing cases too, not only passing runs.
                result.verify = getattr(exc, "verify", None)
                raise
            result.verify = verified
        else:
            self._skip(layer, result, Step.VERIFY)
        self._check_cancel()
        # Only a verified image becomes a cache hit: a --no-verify build (or a
        # scaffold-tests run) must not hand a later `rolebake build` an untested image.
        key = inputs.key if self.options.verify else None
        self._step(layer, result, Step.TAG, lambda: self._tag(layer, image_id, key))
        result.tags = layer.tags

    def _verify(self, layer: Layer, image: ImageInfo,
                expected: Mapping[str, Any]) -> VerifyResult:
        cases = check_metadata(expected, image.config)
        if layer.tests is not None:
            cases += run_suite(self.engine, image.id, layer.tests, ready=layer.spec.ready,
                               project_root=self.project.root,
                               name=f"{layer.id.replace(':', '.')}-{self.build_id}")
        verified = VerifyResult(image_id=image.id, cases=tuple(cases))
        if not verified.ok:
            lines = [f"{c.suite}::{c.name}: {c.message.splitlines()[0] if c.message else ''}"
                     for c in verified.failed]
            error = TestsFailed(f"{len(verified.failed)} of {len(cases)} image checks failed "
                                f"for {layer.id}", details="\n".join(lines))
            error.verify = verified  # type: ignore[attr-defined]
            raise error
        return verified

    def _idempotence(self, provisioner: Provisioner, ctx: ProvisionContext) -> ProvisionResult:
        second = provisioner.provision(ctx, idempotence=True)
        if second.changed:
            names = ", ".join(
                f"{t.role + ' : ' if t.role and not t.name.startswith(t.role) else ''}{t.name}"
                for t in second.changed)
            raise BuildFailed(f"not idempotent: {len(second.changed)} task(s) changed on the "
                              f"second run: {names}",
                              hint="fix the task, or tag it molecule-idempotence-notest")
        return second

    def _tag(self, layer: Layer, image_id: str, key: str | None = None) -> None:
        """Move the layer's tags (and its cache tag last); all of them or none.

        A tag the engine refuses, or a signal, half-way through would leave some
        tags moved and the image about to be removed: put each one back.
        """
        refs = [*layer.tags, *([Cache.tag_for(layer, key)] if key is not None else [])]
        previous = {ref: self._image_id(ref) for ref in refs}
        moved: list[str] = []
        try:
            for ref in refs:
                try:
                    self.engine.tag(image_id, ref)
                except InputError as exc:
                    raise InputError(exc.message, path=layer.spec.path,
                                     line=layer.spec.line_of("tags")) from None
                moved.append(ref)
            self._check_cancel()
        except BaseException:
            for ref in moved:
                before = previous[ref]
                if before is not None:
                    self.engine.tag(before, ref)
                else:
                    self.engine.remove_image(ref)
            raise

    def _image_id(self, ref: str) -> str | None:
        found = self.engine.image(ref)
        return found.id if found is not None else None

    def _discard(self, layer: Layer, image_id: str, result: LayerResult, *, keep: bool) -> None:
        if keep and self.options.keep_failed:
            repository = layer.tags[0].rsplit(":", 1)[0] if layer.tags else "rolebake/failed"
            failed = f"{repository}:failed-{image_id.rsplit(':', maxsplit=1)[-1][:12]}"
            self.engine.tag(image_id, failed)
            result.failed_tag = failed
            self.events(LogEvent(layer.id, f"kept for inspection as {failed}"))
        else:
            self.engine.remove_image(image_id, force=True)

    # Helpers --------------------------------------------------------------------------

    def _base_image(self, layer: Layer) -> ImageInfo:
        found = self.engine.image(layer.parent)
        if found is None:
            self.events(LogEvent(layer.id, f"pulling {layer.parent}"))
            try:
                found = self.engine.pull(layer.parent)
            except InputError as exc:
                raise InputError(exc.message, path=layer.spec.path,
                                 line=layer.spec.line_of("from"), hint=exc.hint) from None
        return found

    def _labels(self, layer: Layer, inputs: LayerInputs, provisioner: Provisioner) -> dict[str,
                                                                                           str]:
        labels = {
            ROLE_LABEL: "image",
            BUILD_ID_LABEL: self.build_id,
            SPEC_LABEL: layer.spec.name,
            LAYER_LABEL: layer.id,
            CACHE_KEY_LABEL: inputs.key,
            INPUTS_LABEL: inputs.to_label(),
            "rolebake.version": __version__,
            "rolebake.provisioner": f"{layer.provisioner} ({provisioner.version()})",
            "org.opencontainers.image.created": dt.datetime.now(dt.UTC).isoformat(
                timespec="seconds"),
        }
        if self._revision:
            labels["rolebake.git-revision"] = self._revision
            labels["org.opencontainers.image.revision"] = self._revision
        return labels

    @contextlib.contextmanager
    def _lock(self, layer: Layer) -> Iterator[None]:
        """One build of a layer at a time per project; a second one waits, then reuses."""
        lock_dir = self.project.state_dir / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        with (lock_dir / f"{layer.id.replace(':', '.')}.lock").open("w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.events(LogEvent(layer.id, "another build of this layer is running; waiting"))
                while True:
                    self._check_cancel()
                    try:
                        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        time.sleep(0.2)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _check_cancel(self) -> None:
        if self.cancel.is_set():
            raise BuildFailed("cancelled")

    def _skip(self, layer: Layer, result: LayerResult, step: Step) -> None:
        result.steps[step.value] = StepStatus.SKIPPED.value
        self.events(StepEvent(layer.id, step, StepStatus.SKIPPED))

    def _step(self, layer: Layer, result: LayerResult, step: Step, action: Callable[[], Any],
              *, status_of: Callable[[Any], StepStatus] | None = None,
              message_of: Callable[[Any], str] | None = None) -> Any:
        self._check_cancel()
        self.events(StepEvent(layer.id, step, StepStatus.RUNNING))
        result.steps[step.value] = StepStatus.RUNNING.value
        try:
            if os.environ.get(TEST_PAUSE_ENV) == step.value:
                self.cancel.wait(float(os.environ.get(TEST_PAUSE_ENV + "_SECONDS", "60")))
                self._check_cancel()
            value = action()
        except BaseException as exc:
            result.steps[step.value] = StepStatus.FAILED.value
            message = exc.message if isinstance(exc, RolebakeError) else type(exc).__name__
            self.events(StepEvent(layer.id, step, StepStatus.FAILED, message))
            raise
        status = status_of(value) if status_of else StepStatus.OK
        result.steps[step.value] = status.value
        self.events(StepEvent(layer.id, step, status, message_of(value) if message_of else ""))
        return value


def _git_revision(root: Path) -> str | None:
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain"],
                               capture_output=True, text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("-dirty" if dirty.strip() else "")


def image_summary(image: ImageInfo) -> Mapping[str, Any]:
    """Provenance of an image built by rolebake, from its labels."""
    return {k: v for k, v in image.labels.items() if k.startswith("rolebake.") and k !=
            INPUTS_LABEL}


def layer_provisioner_and_inputs(project: Project, layer: Layer,
                                 parent_id: str) -> tuple[Provisioner, LayerInputs]:
    """The layer's provisioner and the inputs that make its cache key (build and plan alike)."""
    provisioner = provisioner_class(layer.provisioner)(project, layer)
    inputs = layer_inputs(project, layer, parent_id, provisioner.input_files(),
                          provisioner.version(), layer.spec.provisioner_options)
    return provisioner, inputs


@dataclass(frozen=True)
class PlanRow:
    """One layer of `rolebake plan`: would it be reused, and if not, why."""

    layer: str
    parent: str
    depth: int
    hit: bool
    image: str | None
    key: str | None
    reasons: tuple[str, ...]
    tags: tuple[str, ...]

    @property
    def status(self) -> str:
        """HIT or MISS."""
        return "HIT" if self.hit else "MISS"

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"layer": self.layer, "parent": self.parent, "depth": self.depth,
                "status": self.status, "image": self.image, "cache_key": self.key,
                "reasons": list(self.reasons), "tags": list(self.tags)}


def preview(engine: Engine, project: Project, plan: BuildPlan) -> list[PlanRow]:
    """Say, for every layer, whether a build now would reuse it. Touches no container."""
    rows: list[PlanRow] = []
    images: dict[str, str | None] = {}
    depths: dict[str, int] = {}
    cache = Cache(engine)
    for layer in plan.layers:
        depth = depths[layer.parent] + 1 if layer.parent_is_layer else 0
        depths[layer.id] = depth
        if layer.parent_is_layer:
            parent_id = images.get(layer.parent)
        else:
            found = engine.image(layer.parent)
            parent_id = found.id if found else None
        if parent_id is None:
            reason = (f"parent {layer.parent} will be rebuilt first" if layer.parent_is_layer
                      else f"base image {layer.parent} is not on the engine")
            rows.append(PlanRow(layer.id, layer.parent, depth, False, None, None, (reason,),
                                layer.tags))
            images[layer.id] = None
            continue
        _, inputs = layer_provisioner_and_inputs(project, layer, parent_id)
        decision = cache.decide(layer, inputs)
        images[layer.id] = decision.image_id
        rows.append(PlanRow(layer.id, layer.parent, depth, decision.hit, decision.image_id,
                            decision.key, decision.reasons, layer.tags))
    return rows
