"""The steps of the pipeline, one method each, named after the step (`_cache` … `_push`).

A step takes the layer's `LayerRun`, does its part through the engine, the
cache, the provisioner, verification or the tag journal, and returns the line
its event shows (or nothing). Which steps run, in what order, and what a
failure means is the runner's business (`runner.py`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rolebake import aptcache
from rolebake.aptcache import AptCache
from rolebake.attest import Attestor, build_record
from rolebake.builder.records import BuildOptions, LayerResult
from rolebake.builder.stages import Stage
from rolebake.cache import FROM_REPO, Cache, CacheDecision, LayerInputs, with_recorded
from rolebake.engine import BUILD_ID_LABEL, ROLE_LABEL, ContainerHandle, Engine, ImageInfo
from rolebake.errors import BuildFailed, InputError, TestsFailed
from rolebake.events import EventSink, LogEvent
from rolebake.image import (
    CACHE_KEY_LABEL,
    INPUTS_LABEL,
    LAYER_LABEL,
    MANAGED_LABEL,
    TagJournal,
    commit_config,
    managed_label,
    provenance_labels,
)
from rolebake.locks import Held
from rolebake.normalise import normalise_image, stable_labels
from rolebake.plan import Layer
from rolebake.provision import observed
from rolebake.provision.base import ProvisionContext, Provisioner
from rolebake.provision.target import ContainerTarget
from rolebake.release import RELEASE_LABEL, Release
from rolebake.scripts import script
from rolebake.secrets import scan_image
from rolebake.spec import Project
from rolebake.verify import VerifyResult, check_metadata, run_suite


@dataclass
class LayerRun:
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
    existed: bool = False  # the normalised image was there before this build made it
    started: float = field(default_factory=time.time)  # wall clock, for the provenance

    @property
    def container(self) -> ContainerHandle:
        """The build container, once the create step made it."""
        assert self.ctx is not None, "the create step has not run"
        return self.ctx.container


class Steps:
    """The pipeline's steps over the state of one build (set up by `Builder`)."""

    engine: Engine
    project: Project
    events: EventSink
    options: BuildOptions
    cache: Cache
    cancel: threading.Event
    build_id: str
    tags: TagJournal
    _targets: frozenset[str]
    _revision: str | None
    _stages: dict[str, Stage]  # layer id -> how far it got, for its children

    def _cache(self, run: LayerRun) -> str:
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

    def _create(self, run: LayerRun) -> str:
        layer = run.layer
        log_path = self.project.private_dir("logs") / f"{layer.file_stem}-{self.build_id}.log"
        run.result.log_path = str(log_path)
        self.events(LogEvent(layer.id, f"log: {log_path}"))
        run.config = commit_config(run.parent.config, layer.config, provenance_labels(
            build_id=self.build_id, spec=layer.spec.name, layer=layer.id,
            cache_key=run.inputs.key, inputs=run.inputs.to_label(),
            provisioner=f"{layer.provisioner} ({run.provisioner.version()})",
            revision=self._revision, project=layer.spec.project))
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
            tmpfs=secrets.tmpfs() if secrets else None, hostname=options.hostname,
            remove_in_background=True))
        run.ctx = ProvisionContext(project=self.project, layer=layer,
                                   target=ContainerTarget(self.engine, container),
                                   events=self.events, cancel=self._layer_cancel(layer.id),
                                   log_path=log_path, secrets=secrets)
        return container.name

    def _bootstrap(self, run: LayerRun) -> None:
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

    def _provision(self, run: LayerRun) -> None:
        assert run.ctx is not None
        run.result.provision = run.provisioner.provision(run.ctx)
        run.config["Labels"][MANAGED_LABEL] = managed_label(run.result.provision.managed_paths())
        if run.provisioner.observed is not None:
            self._observed(run, run.provisioner.observed)

    def _observed(self, run: LayerRun, seen: observed.Observed) -> None:
        """Check what the provisioner read against the key; record it; key it from now on.

        The key is then remade from this run's record (what the next `plan` will
        compute), and the image is labelled and cache-tagged with that key.
        """
        layer = run.layer
        recorded = run.inputs.values.get("observed") or {}
        holes = observed.check(self.project, seen,
                               keyed=[*(run.inputs.values.get("files") or {}), *recorded],
                               declared=seen.declared,
                               record=self.options.record_inputs or seen.record,
                               where=(layer.spec.path, layer.spec.line_of("inputs")))
        if holes:
            shown = ", ".join(holes[:5]) + (f" and {len(holes) - 5} more" if len(holes) > 5 else "")
            self.events(LogEvent(layer.id, f"notice: keyed from now on (read by Ansible, not "
                                           f"seen by the static walk): {shown}"))
        observed.save(self.project, layer, seen)
        run.inputs = with_recorded(self.project, run.inputs, observed.load(self.project, layer))
        run.result.cache_key = run.inputs.key
        run.config["Labels"][CACHE_KEY_LABEL] = run.inputs.key
        run.config["Labels"][INPUTS_LABEL] = run.inputs.to_label()

    def _idempotence(self, run: LayerRun) -> None:
        assert run.ctx is not None
        second = run.provisioner.provision(run.ctx, idempotence=True)
        if second.changed:
            names = ", ".join(
                f"{t.role + ' : ' if t.role and not t.name.startswith(t.role) else ''}{t.name}"
                for t in second.changed)
            raise BuildFailed(f"not idempotent: {len(second.changed)} task(s) changed on the "
                              f"second run: {names}",
                              hint="fix the task, or tag it molecule-idempotence-notest")

    def _clean(self, run: LayerRun) -> None:
        assert run.ctx is not None
        if self.options.secrets is not None:
            self.options.secrets.remove(self.engine, run.container)
        run.provisioner.clean(run.ctx)
        cleaned = self.engine.shell(run.container, script("clean.sh"),
                                    env=run.apt.env() if run.apt else None)
        if cleaned.rc != 0:
            raise BuildFailed("clean step failed", details=cleaned.tail())
        for line in cleaned.output.splitlines():
            if line.startswith("notice: "):
                self.events(LogEvent(run.layer.id, line))
        downloads = aptcache.parse_downloads(cleaned.output)
        if run.apt is not None and downloads is not None:
            count, size = downloads
            self.events(LogEvent(run.layer.id, f"apt cache {run.apt.name}: {count} packages "
                                               f"downloaded ({aptcache.human(size)})"))

    def _commit(self, run: LayerRun) -> str:
        leaked = mount_residue(self.engine.diff(run.container), run.lent)
        if leaked:
            # Hidden under the mount, so nothing in the container can remove it.
            raise BuildFailed(f"the engine made mount points in the layer: {', '.join(leaked)}",
                              hint="a lent toolchain must be mounted on a folder the parent "
                                   "image has (see docs/architecture.md)")
        image_id = run.result.image_id = self.engine.commit(run.container, run.config)
        try:
            run.stack.close()  # the build container goes as soon as its layer is committed
            normalised = self._normalise(run, image_id)
        except BaseException:
            self.engine.remove_image(image_id, force=True)
            raise
        image_id = run.image_id = run.result.image_id = normalised
        return image_id.split(":")[-1][:12]

    def _normalise(self, run: LayerRun, committed: str) -> str:
        """The reproducible form of the committed image (normalise.py); its id.

        The same inputs give the same id, which may name an image that exists
        already (tagged by an earlier build): `run.existed` keeps a failure of
        this build from removing it.
        """
        epoch = self.options.source_date_epoch
        if epoch is None:
            return committed
        if self.engine.kind == "podman":
            self.events(LogEvent(run.layer.id, "notice: layers are not normalised on Podman "
                                               "(its load differs): not reproducible"))
            return committed
        began = time.monotonic()
        done = normalise_image(self.engine, committed, epoch=epoch,
                               created_by=f"rolebake {run.layer.id}",
                               scratch=self.project.private_dir("tmp"))
        run.existed = done.existed
        if not done.existed:
            self.tags.made(run.layer.id, done.image_id)
        run.config["Labels"] = stable_labels(run.config["Labels"], epoch)  # what verify expects
        run.result.step_seconds["normalise"] = time.monotonic() - began
        if done.dropped:
            self.events(LogEvent(run.layer.id, f"normalised: dropped {len(done.dropped)} "
                                               "per-build files (logs, caches, -old, machine id)"))
        return done.image_id

    def _scan(self, run: LayerRun) -> None:
        assert run.image_id is not None and self.options.secrets is not None
        scan_image(self.engine, run.image_id, self.options.secrets)

    def _verify(self, run: LayerRun) -> str:
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

    def _attest(self, run: LayerRun) -> str:
        """The verified image's SBOM and provenance, kept by image id (a hit reuses them)."""
        assert run.image_id is not None
        image = self.engine.image(run.image_id)
        assert image is not None
        record = None if run.cached else build_record(
            self.project, run.layer, image_id=image.id, inputs=run.inputs.values,
            cache_key=run.inputs.key, revision=self._revision, build_id=self.build_id,
            started=run.started, provisioner=run.provisioner.version(),
            verify=run.result.verify.to_dict() if run.result.verify else None,
            observed=run.inputs.recorded,
            options={"noCache": self.options.no_cache, "push": self.options.push,
                     "idempotence": self.options.idempotence or run.layer.spec.idempotence,
                     "cacheRepo": str(self.options.cache_repo or "") or None})
        Attestor(self.engine, self.project, build_id=self.build_id).layer(
            image, run.layer, record=record, attest_dir=self.options.attest_dir,
            base_ref=None if run.layer.parent_is_layer else run.layer.parent)
        run.result.attested = (f".rolebake/attest/{image.id.split(':')[-1][:12]}",)
        if self.options.attest_dir is not None:
            run.result.attested += (str(self.options.attest_dir / run.layer.file_stem),)
        return "SBOM and provenance " + ("reused" if run.cached else "recorded")

    def _tag(self, run: LayerRun) -> None:
        assert run.image_id is not None
        refs = list(run.layer.tags)
        # Only a verified image becomes a cache hit: a --no-verify build (or a
        # scaffold-tests run) must not hand a later `rolebake build` an untested image.
        if not run.cached and self.options.verify:
            refs.append(Cache.tag_for(run.layer, run.inputs.key))
        try:
            self.tags.move(run.layer.id, run.image_id, refs, run.lock, check=self._between_tags)
        except InputError as exc:
            raise InputError(exc.message, path=run.layer.spec.path,
                             line=run.layer.spec.line_of("tags")) from None
        run.result.tags = run.layer.tags

    def _push(self, run: LayerRun) -> str:
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
                if digest:  # the SBOM and attestation go next to it, under cosign's tags
                    put = Attestor(self.engine, self.project).publish(run.image_id, tag, digest)
                    run.result.attested = (*run.result.attested, put.sbom, put.attestation)
                    done.append("SBOM and attestation pushed")
        return "; ".join(done) or "came from the cache repo; nothing to put there"

    # Helpers --------------------------------------------------------------------------

    def _progress(self, layer: Layer) -> Callable[[str], None]:
        """Pull and push progress lines, as log events of the layer."""
        return lambda line: self.events(LogEvent(layer.id, line))

    def _between_tags(self) -> None:
        """Called after each tag moved: a cancel then puts back those already moved."""
        self._check_cancel()

    def _check_cancel(self, layer: str | None = None) -> None:
        if self._layer_cancel(layer).is_set():
            raise BuildFailed("cancelled")

    def _layer_cancel(self, layer: str | None) -> threading.Event:
        """What stops `layer` (its parent failed, or the whole build stopped); else the build's."""
        stage = self._stages.get(layer) if layer is not None else None
        return stage.cancel if stage is not None else self.cancel


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
