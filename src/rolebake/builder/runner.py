"""One layer through the pipeline: its lock, which steps apply, events, and what a failure means.

The pipeline is data (`events.PIPELINE`); the runner walks it, reports the
status of every step it runs and decides which steps apply (a cache hit runs
only `cache`, `attest`, `tag` and `push`). When a step fails it says plainly whether the
engine or the build container died under it, and keeps or drops the image.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rolebake.builder.records import LayerResult
from rolebake.builder.stages import Stage
from rolebake.builder.steps import LayerRun, Steps
from rolebake.cache import provisioner_and_inputs
from rolebake.engine import BUILD_ID_LABEL, ContainerHandle, ImageInfo, as_error, disk_full_hint
from rolebake.errors import BuildFailed, EngineUnavailable, InputError, Interrupted, RolebakeError
from rolebake.events import (
    CONTAINER_STEPS,
    HIT_STEPS,
    PIPELINE,
    LogEvent,
    Step,
    StepEvent,
    StepStatus,
)
from rolebake.image import LAYER_LABEL, keep_failed
from rolebake.locks import exclusive, host_lock
from rolebake.plan import Layer
from rolebake.release import release_of
from rolebake.rootfs import cache_dir

# How long a failed step waits for an engine that stopped answering to come back
# (a restart), so it can say what happened and remove its container.
ENGINE_RETURN_S = 60.0


class Runner(Steps):
    """Runs one layer through the pipeline (the steps are `Steps`' methods)."""

    _locks: dict[str, Path]  # layer id -> its host-wide lock file
    _engine_identity: str | None
    _steps: dict[Step, Callable[[LayerRun], Any]]
    _clock: float  # when the build started (monotonic): steps' start times are from here

    def _build_layer(self, layer: Layer, parent: ImageInfo | None,
                     result: LayerResult) -> ImageInfo:
        """Build `layer` on `parent` (None: its base image); its parent may still be verifying."""
        started = time.monotonic()
        stage = self._stage(layer.id)
        try:
            if layer.parent_is_layer:
                self._stage(layer.parent).adopt(stage)  # raises once the parent failed
            parent = parent or self._base_image(layer)
            provisioner, inputs = provisioner_and_inputs(self.engine, self.project, layer, parent)
            result.cache_key = inputs.key
            lock = self._locks[layer.id] = self._lock_for(layer)
            with exclusive(lock, on_busy=lambda: self.events(LogEvent(
                               layer.id, "another build of this layer is running; waiting")),
                           check=lambda: self._check_cancel(layer.id)) as held, \
                    contextlib.ExitStack() as stack:
                run = LayerRun(layer=layer, result=result, parent=parent,
                               provisioner=provisioner, inputs=inputs, stack=stack, lock=held,
                               release=release_of(self.engine, parent, cache_dir() / "releases"))
                self._run_pipeline(run)
            result.status = StepStatus.CACHED if run.cached else StepStatus.OK
            assert run.image_id is not None
            found = self.engine.image(run.image_id)
            assert found is not None
            stage.finish(found)
            return found
        except BaseException as exc:
            self._fail_stage(layer.id, exc)  # a no-op once the pipeline did it
            self._release_children(layer.id)
            if isinstance(exc, RolebakeError) or not isinstance(exc, Exception):
                raise
            # Whatever it was fails this layer only, as a RolebakeError.
            raise as_error(exc) from exc
        finally:
            stage.ended.set()
            result.seconds = time.monotonic() - started

    def _stage(self, layer: str) -> Stage:
        return self._stages.setdefault(layer, Stage(layer, self.cancel))

    def _fail_stage(self, layer: str, exc: BaseException) -> None:
        """Stop the children already building on `layer`'s image (`_release_children` waits)."""
        for child in self._stage(layer).fail(exc):
            if child.ended.is_set():
                continue
            if not child.cancel.is_set():  # a cancelled build says so itself
                child.cancel.set()
                self.events(LogEvent(child.layer, f"cancelled: parent {layer} failed"))
            # A long exec (a task) returns only when its container dies.
            with contextlib.suppress(Exception):  # no engine: the child finds out itself
                for container in self.engine.containers({BUILD_ID_LABEL: self.build_id,
                                                         LAYER_LABEL: child.layer}):
                    self.engine.kill(container.id)

    def _release_children(self, layer: str) -> None:
        """Let the children of a failed layer remove their images, and wait until they are gone.

        Called once the layer's image is kept (tagged) or about to be dropped: an
        engine removing a child's image takes its untagged parent with it, and
        refuses to remove an image a container or another image stands on.
        """
        stage = self._stage(layer)
        stage.settled.set()
        for child in stage.children():
            child.ended.wait()

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

    def _lock_for(self, layer: Layer) -> Path:
        """The host-wide lock of `layer` on this engine, shared by every checkout of its project.

        Its identity holds the layer's cache repository, which names the project:
        another project's layer of the same name never waits for this one.
        """
        if self._engine_identity is None:
            self._engine_identity = self.engine.identity()
        return host_lock(layer.lock_name, self._engine_identity, layer.cache_repository)

    def _run_pipeline(self, run: LayerRun) -> None:
        for step in PIPELINE:
            try:
                self._pass_gate(run, step)
            except BaseException as exc:
                self._stop_at(run, step, exc)
                raise
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
                self._stop_at(run, step, exc)
                raise

    def _stop_at(self, run: LayerRun, step: Step, exc: BaseException) -> None:
        """A layer failed at `step`: its children hear of it, its own failure is handled."""
        self._fail_stage(run.layer.id, exc)
        try:
            self._on_failure(run, step, exc)
        finally:
            self._release_children(run.layer.id)

    def _pass_gate(self, run: LayerRun, step: Step) -> None:
        """Pipelined layers: tell the children how far this layer got; wait for the parent.

        Before verify, the image is committed and scanned: children may start on it,
        and this layer waits until its parent passed verification. Before attest,
        this layer passed its own. Before tag, it waits until its parent finished.
        """
        stage = self._stage(run.layer.id)
        if step == Step.VERIFY:
            assert run.image_id is not None
            image = self.engine.image(run.image_id)
            assert image is not None
            stage.reach_built(image)
        elif step == Step.ATTEST:
            stage.reach_verified()
        if not run.layer.parent_is_layer or step not in (Step.VERIFY, Step.TAG):
            return
        parent = self._stage(run.layer.parent)
        future, what = ((parent.verified, "pass verification") if step == Step.VERIFY
                        else (parent.done, "be tagged"))
        if parent.pending(future, stage):
            self.events(LogEvent(run.layer.id, f"waiting for {parent.layer} to {what}"))
            parent.wait(future, stage)

    def _applies(self, run: LayerRun, step: Step) -> bool:
        if step == Step.IDEMPOTENCE:
            return self.options.idempotence or run.layer.spec.idempotence
        if step == Step.SCAN:
            return self.options.secrets is not None and bool(self.options.secrets.values())
        if step in (Step.VERIFY, Step.ATTEST):
            return self.options.verify  # only verified images get an SBOM and provenance
        if step == Step.PUSH:
            # Only verified images leave the engine: never a --no-verify build's.
            return self.options.verify and (self.cache.repo is not None or (
                self.options.push and run.layer.id in self._targets))
        return True

    def _step(self, run: LayerRun, step: Step) -> None:
        # The step starts when it is announced: its time and its event's agree.
        began = time.monotonic()
        run.result.step_started[step.value] = began - self._clock
        self.events(StepEvent(run.layer.id, step, StepStatus.RUNNING, at=began))
        run.result.steps[step.value] = StepStatus.RUNNING.value
        try:
            self._check_cancel(run.layer.id)
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

    def _on_failure(self, run: LayerRun, step: Step, exc: BaseException) -> None:
        """Say plainly when the engine or the container died under a step; keep or drop an image."""
        cancelled = (self._layer_cancel(run.layer.id).is_set() or isinstance(exc, Interrupted)
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
            # A cancelled build keeps nothing, whatever --keep-failed says; nor does one
            # whose image holds a secret (the scan found it): kept, it would leak it.
            leaked = step == Step.SCAN and not cancelled
            keep = (plainly is None and isinstance(exc, RolebakeError) and not cancelled
                    and self.options.keep_failed and not leaked)
            try:
                self._keep_or_drop(run, keep)
                if leaked and self.options.keep_failed:
                    self.events(LogEvent(run.layer.id, f"image {run.image_id} removed, not "
                                         "kept: it failed the secret scan (--keep-failed "
                                         "never keeps an image that holds a secret)"))
                    if isinstance(exc, RolebakeError):
                        exc.message += ("; it was removed despite --keep-failed: a kept image "
                                        "would keep the secret")
                        exc.args = (exc.message,)
            except Exception as gone:  # the build's own error matters more
                self.events(LogEvent(run.layer.id, f"could not remove image {run.image_id}: "
                                     f"{as_error(gone).message}"))
        if plainly is not None:
            raise plainly from exc

    def _engine_lost(self, run: LayerRun, step: Step, exc: BaseException) -> RolebakeError | None:
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

    def _keep_or_drop(self, run: LayerRun, keep: bool) -> None:
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
            self._release_children(run.layer.id)
        else:
            self._release_children(run.layer.id)  # their images first: they stand on this one
            if run.existed:  # the same id as an image built before: that one stays
                return
            if run.layer.parent_is_layer:
                # Removing this image takes an untagged parent with it: wait until the
                # parent is tagged, kept, or going anyway.
                self._stage(run.layer.parent).settled.wait()
            self.engine.remove_image(run.image_id, force=True)

    def _running(self, container: ContainerHandle) -> bool:
        try:
            return bool(self.engine.container_state(container).get("Running"))
        except Exception:  # gone, or no engine to ask: not running either way
            return False
