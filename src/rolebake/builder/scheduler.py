"""The `--jobs` scheduler: parents first, independent layers side by side; stop and roll back.

Layers are pipelined: a child starts on its parent's committed image while the
parent is still verified (see `stages`). `--jobs` counts job slots; a layer holds
one from its start to its end, except that a parent lends its slot to one child
started on its image before it finished (the pair is one job: the parent only
verifies, attests and tags meanwhile). So `--jobs 1` builds one chain of layers at
a time, overlapping each layer's verification with its child's build, and
independent layers wait for a free slot as before.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from rolebake.builder.records import BuildOptions, BuildReport, LayerResult
from rolebake.builder.runner import Runner
from rolebake.builder.stages import Stage
from rolebake.cache import Cache
from rolebake.engine import BUILD_ID_LABEL, Engine, ImageInfo, as_error
from rolebake.errors import InputError, Interrupted
from rolebake.events import PIPELINE, EventSink, Step, StepEvent, StepStatus
from rolebake.image import TagJournal, git_revision
from rolebake.plan import BuildPlan, Layer
from rolebake.provision import provisioner_class
from rolebake.registry import CacheRepo
from rolebake.spec import Project


class Builder(Runner):
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
        self.tags = TagJournal(engine, self.build_id, project)
        self._locks = {}
        self._engine_identity = None
        self._targets = frozenset()
        self._revision = git_revision(project.root)
        self._steps = {step: getattr(self, f"_{step.value}") for step in PIPELINE}
        self._stages = {}
        self._clock = time.monotonic()

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
        started = self._clock = time.monotonic()
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
        finally:
            # Built, or rolled back: no tag move of this run is left for the next run
            # to finish (the journal on disk is for a run killed outright).
            self.tags.settle()
        return BuildReport(results=results, seconds=time.monotonic() - started,
                           build_id=self.build_id)

    def _schedule(self, plan: BuildPlan, results: dict[str, LayerResult]) -> None:
        images: dict[str, ImageInfo] = {}  # layers that finished well
        built: dict[str, ImageInfo] = {}  # layers still going whose image children may use
        released: set[str] = set()  # handed to the sorter: their children are ready
        self._stages = {layer.id: Stage(layer.id, self.cancel) for layer in plan.layers}
        sorter = plan.sorter()
        ready: list[Layer] = []
        running: dict[Future[ImageInfo], Layer] = {}
        lent: dict[str, str] = {}  # child -> the running parent whose job slot it uses
        jobs = max(1, self.options.jobs)
        # A lent slot runs two layers at once: as many threads as layers, at most.
        with ThreadPoolExecutor(max_workers=max(1, len(plan.layers)),
                                thread_name_prefix="rolebake-build") as pool:
            try:
                while sorter.is_active() or running:
                    for layer in list(running.values()):
                        stage = self._stages[layer.id].built
                        if layer.id not in released and stage.done() and not stage.exception():
                            built[layer.id] = stage.result()  # its children may start
                            sorter.done(layer.id)
                            released.add(layer.id)
                    ready.extend(plan.layer(i) for i in sorter.get_ready())
                    waiting: list[Layer] = []
                    for layer in ready:
                        parent_id = layer.parent if layer.parent_is_layer else None
                        if parent_id is not None and parent_id not in images \
                                and parent_id not in built:
                            self._skip_layer(layer, results[layer.id], results[parent_id])
                            sorter.done(layer.id)
                            released.add(layer.id)
                            continue
                        lends = parent_id in built and parent_id not in lent.values()
                        if not lends and len(running) - len(lent) >= jobs:
                            waiting.append(layer)
                            continue
                        parent = (images.get(parent_id) or built.get(parent_id)
                                  if parent_id is not None else None)
                        with _signals_deferred():
                            running[pool.submit(self._build_layer, layer, parent,
                                                results[layer.id])] = layer
                        if lends and parent_id is not None:
                            lent[layer.id] = parent_id
                    ready = waiting
                    if not running:
                        continue
                    # A layer's committed image lets its children start: wait on that too
                    # (not once settled: a failed one would wake this loop at once, again).
                    watched: list[Future[ImageInfo]] = [*running]
                    watched += [self._stages[r.id].built for r in running.values()
                                if not self._stages[r.id].built.done()]
                    done, _ = wait(watched, timeout=0.2, return_when=FIRST_COMPLETED)
                    for future in done:
                        if future not in running:
                            continue
                        layer = running.pop(future)
                        self._ended(layer, future, results, images)
                        built.pop(layer.id, None)
                        # Its borrower now holds a slot of its own (the count stays the same).
                        lent = {c: p for c, p in lent.items() if layer.id not in (c, p)}
                        if layer.id not in released:
                            sorter.done(layer.id)
                            released.add(layer.id)
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

    def _ended(self, layer: Layer, future: Future[ImageInfo], results: dict[str, LayerResult],
               images: dict[str, ImageInfo]) -> None:
        """Record how a layer's build ended; a child cancelled by its failed parent is skipped."""
        result = results[layer.id]
        try:
            images[layer.id] = future.result()
        except Exception as exc:  # _build_layer gives RolebakeErrors only
            if layer.parent_is_layer and layer.parent not in images \
                    and self._stages[layer.id].cancel.own():
                # The parent's error is the build's; this layer just did not get to finish.
                result.status = StepStatus.SKIPPED
                result.reasons = (f"parent {layer.parent} failed",)
                return
            result.status = StepStatus.FAILED
            result.error = as_error(exc)

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
