"""`rolebake parity`: the same roles on a VM and in the image, then one suite and one diff.

The image is built (or reused from the cache) as usual. A VM, either a
throwaway local qemu VM booted from the very rootfs the base image was made
from or an existing host over SSH, gets every layer's roles with the same vars,
in the same order, through the same Ansible provisioner. Then the image's
testinfra suite runs against both, and a state snapshot of both is diffed.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import testinfra

from rolebake import verify_session
from rolebake.builder import Builder, BuildOptions, BuildReport
from rolebake.engine import BUILD_ID_LABEL, ROLE_LABEL, Engine
from rolebake.errors import BuildFailed, InputError, SnapshotError, VMError
from rolebake.events import EventSink, LogEvent
from rolebake.image import managed_from_labels
from rolebake.load import plan_build
from rolebake.parity import aptproxy
from rolebake.parity.diff import ParityReport, diff_snapshots
from rolebake.parity.qemu import QemuVM
from rolebake.parity.snapshot import take_snapshot
from rolebake.parity.vmlayers_run import LayerOnVM, VMLayers, chain_keys
from rolebake.parity.why import requested_from_tasks
from rolebake.plan import BuildPlan, Layer
from rolebake.provision import provisioner_class
from rolebake.provision.base import ProvisionContext, TaskResult, managed_paths
from rolebake.provision.target import SSHTarget
from rolebake.release import release_of
from rolebake.rootfs import (
    COMPLETE_STAMP,
    VMImage,
    cache_dir,
    default_mirror,
    make_rootfs,
    parse_base_name,
    prepare_vm_image,
    rootfs_dir,
)
from rolebake.secrets import SecretSet
from rolebake.spec import Project
from rolebake.state import scratch_dir
from rolebake.verify import SESSION_ARGS, TestCase, session_url, suite_for_host, wait_ready
from rolebake.vmlayers import store_for

_ALWAYS_DIFFERENT = {"/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow"}
_T = TypeVar("_T")


@dataclass
class ParityResult:
    """Everything `rolebake parity` found."""

    image: str
    image_id: str
    vm: str
    report: ParityReport
    container_tests: list[TestCase]
    vm_tests: list[TestCase]
    timings: dict[str, float] = field(default_factory=dict)
    steps: dict[str, tuple[float, float]] = field(default_factory=dict)  # start, end
    #: Per layer, bottom up: whether the VM had it from a kept snapshot or applied it.
    vm_layers: list[LayerOnVM] = field(default_factory=list)

    @property
    def tests_differ(self) -> list[str]:
        """Names of tests whose outcome is not the same on both targets.

        A test marked `rolebake_only(side)` must pass (or skip) on its side and be
        skipped on the other; that is not a difference.
        """
        on_c = {c.name.split("[")[0]: c for c in self.container_tests}
        on_v = {c.name.split("[")[0]: c for c in self.vm_tests}
        differ = []
        for name in set(on_c) | set(on_v):
            c, v = on_c.get(name), on_v.get(name)
            only = (c.only if c else "") or (v.only if v else "")
            if only in ("container", "vm"):
                mine, other = (c, v) if only == "container" else (v, c)
                if mine is None or mine.outcome in ("failed", "error") \
                        or (other is not None and other.outcome != "skipped"):
                    differ.append(name)
            elif (c.outcome if c else None) != (v.outcome if v else None) \
                    or (c is not None and c.outcome in ("failed", "error")):
                differ.append(name)
        return sorted(differ)

    @property
    def ok(self) -> bool:
        """True when the states agree and the suite passes on both."""
        return self.report.ok and not self.tests_differ

    @property
    def status(self) -> str:
        """`ok`; `recommends` when only Recommends-only packages fail it; else `different`."""
        if self.tests_differ:
            return "different"
        return self.report.verdict

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "image": self.image,
            "image_id": self.image_id,
            "vm": self.vm,
            "ok": self.ok,
            "status": self.status,
            "state": self.report.to_dict(),
            "tests": {
                "container": [c.to_dict() for c in self.container_tests],
                "vm": [c.to_dict() for c in self.vm_tests],
                "differ": self.tests_differ,
            },
            "seconds": {k: round(v, 1) for k, v in self.timings.items()},
            "steps": {k: {"start": s, "end": e} for k, (s, e) in self.steps.items()},
            "vm_layers": [row.to_dict() for row in self.vm_layers],
        }


def run_parity(engine: Engine, project: Project, image: str, vm: str, *,
               events: EventSink, secrets: SecretSet | None = None,
               strict_ids: bool = False, accept_recommends: bool = False) -> ParityResult:
    """Build `image` and, at the same time, apply the same layers to a VM; then check both.

    The container build runs in a thread while this thread boots the VM and
    provisions it (a local VM gets the build's apt cache through a proxy);
    afterwards the suite and the state snapshot run on the container and on
    the VM at the same time.

    Args:
        engine: the container engine.
        project: the project.
        image: a spec name (or name:variant).
        vm: `qemu` for a throwaway local VM, or `ssh://user@host:port` for an existing one.
        events: progress sink.
        secrets: the vault password and sensitive values, for the build and the VM alike.
        strict_ids: count shifted dynamic system ids as differences.
        accept_recommends: do not count packages one side has only as Recommends the other
            side skipped as differences.

    Raises:
        InputError: a bad --vm value, or an image built with a provisioner other than Ansible.
        BuildFailed: the build, the VM or the provisioning of the VM failed.
    """
    clock = _Clock()
    target = None if vm == "qemu" else _parse_vm(vm)
    plan = plan_build(project, [image])
    for layer in plan.layers:
        if not provisioner_class(layer.provisioner).over_ssh:
            raise InputError(f"parity needs a provisioner that works over SSH; layer {layer.id} "
                             f"uses {layer.provisioner}", path=layer.spec.path)
    final = plan.layer(image)
    builder = Builder(engine, project, events, BuildOptions(secrets=secrets))
    layers: VMLayers | None = None
    scratch, chain = project.state_dir, []
    if target is None:
        # Before the build starts: working out the keys asks ansible-core in this process,
        # which the build's thread does too (its globals are not for two threads at once).
        with clock.step("vm_layers_lookup"):
            chain = chain_keys(engine, project, plan)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="rolebake-parity") as pool, \
            contextlib.ExitStack() as scratch_stack:
        build = pool.submit(clock.timed, "build", builder.build, plan)
        try:
            if target is None:
                scratch = scratch_stack.enter_context(
                    scratch_dir(project.private_dir("tmp"), "vm-layers-"))
            with _vm(plan, target, events, clock,
                     lambda image: VMLayers.plan(store_for(project), image.identity, scratch,
                                                 chain, events)) \
                    as (ssh, vm_image, machine, layers):
                with clock.step("provision_vm"), \
                        _apt_proxy(engine, plan, machine, events) as apt_conf:
                    tasks = _apply_to_vm(project, plan, ssh, events, secrets,
                                         check=lambda: _raise_if_failed(build),
                                         layers=layers, machine=machine, apt_conf=apt_conf,
                                         clock=clock)
                report = build.result()
                if layers is not None:
                    layers.publish(report)
                if report.error is not None:
                    raise report.error
                image_id = report.results[image].image_id
                assert image_id is not None
                managed = _managed(engine, plan, report,
                                   tasks, events, layers.managed() if layers else [])
                container = pool.submit(clock.timed, "container_checks", _container_side,
                                        engine, project, final, image_id, managed,
                                        builder.build_id)
                with clock.step("vm_checks"):
                    vm_tests, vm_snapshot = _vm_side(project, final, ssh, managed)
                container_tests, container_snapshot = container.result()
        except BaseException:
            _stop_build(builder, build, layers)
            raise
    diff = diff_snapshots(
        container_snapshot, vm_snapshot,
        vm_only_packages=vm_image.added_packages if vm_image else (),
        vm_only_users=vm_image.added_users if vm_image else (),
        vm_only_groups=vm_image.added_groups if vm_image else (),
        strict_ids=strict_ids,
        accept_recommends=accept_recommends,
        # The same roles ran on both sides: the VM's apt tasks name what they asked for.
        requested_packages=requested_from_tasks(tasks)
        | (layers.requested() if layers else frozenset()),
    )
    return ParityResult(image=image, image_id=image_id, vm=vm, report=diff,
                        container_tests=container_tests, vm_tests=vm_tests,
                        timings={k: e - s for k, (s, e) in clock.steps.items()},
                        steps=dict(clock.steps),
                        vm_layers=layers.rows if layers else [])


def _stop_build(builder: Builder, build: Future[BuildReport], layers: VMLayers | None) -> None:
    """After a failed VM or Ctrl-C: stop the build, and keep the VM layers both sides finished.

    The build thread removes its containers before this returns. A layer frozen on
    the VM whose image layer the build finished is as good as on a run that
    passed (`VMLayers.publish` stops at the first one not finished): a rerun
    after fixing the top layer's role boots from it instead of applying it again.
    """
    builder.stop()
    with contextlib.suppress(BaseException):
        report = build.result()
        if layers is not None:
            layers.publish(report)


class _Clock:
    """When each step of a parity run started and ended, in seconds since the run began."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.steps: dict[str, tuple[float, float]] = {}

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        begun = time.monotonic() - self.started
        try:
            yield
        finally:
            self.steps[name] = (round(begun, 1), round(time.monotonic() - self.started, 1))

    def timed(self, name: str, work: Callable[..., _T], *args: Any) -> _T:
        with self.step(name):
            return work(*args)


def _raise_if_failed(build: Future[BuildReport]) -> None:
    """Stop provisioning the VM as soon as the image build has failed."""
    if build.done():
        report = build.result()
        if report.error is not None:
            raise report.error


@contextlib.contextmanager
def _apt_proxy(engine: Engine, plan: BuildPlan, machine: QemuVM | None,
               events: EventSink) -> Iterator[Callable[[bool], None]]:
    """Serve the build's shared apt cache to a local VM; yields a switch for its apt conf.

    The conf is on while a layer's roles run and off before the disk is frozen, so a kept
    VM layer never points apt at a proxy that is gone.
    """
    base = engine.image(plan.layers[0].parent)
    release = (release_of(engine, base, cache_dir() / "releases")
               if base is not None and machine is not None else None)
    if machine is None or base is None or release is None:
        yield lambda _on: None
        return
    with aptproxy.serve(engine, release.key, base.id) as proxy:
        if proxy is None:
            yield lambda _on: None
            return

        def switch(on: bool) -> None:
            if on:
                machine.run(["sh", "-c", 'printf "%s" "$1" > "$2"', "rolebake",
                             proxy.apt_conf(), aptproxy.CONF])
            else:
                machine.run(["rm", "-f", aptproxy.CONF])

        events(LogEvent("vm", f"apt goes through {proxy.guest_url} (the shared apt cache of "
                              f"{release}, then the mirror)"))
        try:
            yield switch
        finally:
            with contextlib.suppress(VMError):
                switch(False)
            events(LogEvent("vm", f"apt: {proxy.stats.summary()}"))


def _vm_side(project: Project, final: Layer, ssh: SSHTarget,
             managed: list[str]) -> tuple[list[TestCase], Any]:
    tests = (suite_for_host(final.tests, ssh.url, project.root,
                            tuple(a for a in ssh.pytest_args() if not a.startswith("--hosts=")),
                            side="vm")
             if final.tests else [])
    try:
        snapshot = take_snapshot(testinfra.get_host(ssh.url, **ssh.testinfra_kwargs()), managed)
    except SnapshotError as exc:
        raise BuildFailed(f"could not take the VM's state snapshot: {exc.message}",
                          details=exc.details) from None
    return tests, snapshot


def _managed(engine: Engine, plan: BuildPlan, report: BuildReport, vm_tasks: list[TaskResult],
             events: EventSink, kept: list[str] | None = None) -> list[str]:
    """What the roles managed on either side, the paths both snapshots compare.

    The container's side comes from each layer's image label, which its build
    wrote, so a task that ran only in the container (a container-only branch)
    names its file even when the layer was reused from the cache.
    """
    paths: list[str] = []
    for layer in plan.layers:
        image_id = report.results[layer.id].image_id
        image = engine.image(image_id) if image_id else None
        recorded = managed_from_labels(image.labels) if image else None
        if recorded is None:
            events(LogEvent(layer.id, "its image records no managed paths (built by an older "
                                      "rolebake): only the VM's tasks name the paths compared"))
            continue
        paths += recorded
    # Layers the VM took from a kept snapshot: what their tasks named when they ran.
    paths += (kept or []) + managed_paths(vm_tasks)
    return [p for p in dict.fromkeys(paths) if p not in _ALWAYS_DIFFERENT]


def _parse_vm(vm: str) -> SSHTarget:
    try:
        return SSHTarget.parse(vm)
    except ValueError as exc:
        raise InputError(f"--vm {vm!r}: {exc}",
                         hint="use --vm qemu or --vm ssh://user@host:port") from None


@contextlib.contextmanager
def _vm(plan: BuildPlan, target: SSHTarget | None, events: EventSink, clock: _Clock,
        plan_layers: Callable[[VMImage], VMLayers],
        ) -> Iterator[tuple[SSHTarget, VMImage | None, QemuVM | None, VMLayers | None]]:
    if target is not None:
        yield target, None, None, None
        return
    base = plan.layers[0]
    layers: VMLayers | None = None
    try:
        with contextlib.ExitStack() as stack:
            with clock.step("vm_boot"):
                image = _prepare_local_vm(base, events)
                layers = plan_layers(image)
                stack.callback(layers.cleanup)
                machine = stack.enter_context(
                    QemuVM(image, log=lambda line: events(LogEvent("vm", line)),
                           boot_from=layers.boot_from, overlay=layers.first_overlay()))
            events(LogEvent("vm", f"up ({machine.accel}) at {machine.ssh_target.url}"
                                  + (f", from VM layer {layers.found[-1].layer}"
                                     if layers.found else "")))
            yield machine.ssh_target, image, machine, layers
    except VMError as exc:
        raise BuildFailed(f"the parity VM failed: {exc.message}", details=exc.details) from None


def _prepare_local_vm(base: Layer, events: EventSink) -> VMImage:
    """The VM disk made from the rootfs the base image came from."""
    parent = base.parent
    repository, _, suite = parent.partition(":")
    if repository != "rolebake/debian":
        raise InputError(
            f"--vm qemu boots the rootfs of a `rolebake base` image; {base.id} is built on "
            f"{parent}", path=base.spec.path, line=base.spec.line_of("from"),
            hint="use --vm ssh://user@host:port for other bases")
    _, suite = parse_base_name(f"debian:{suite}")
    mirror = default_mirror()
    rootfs = rootfs_dir(suite)
    if not (rootfs / COMPLETE_STAMP).exists():
        make_rootfs(rootfs, suite, mirror, events)
    events(LogEvent("vm", "preparing the VM disk (kernel, systemd, sshd) from the base rootfs"))
    try:
        return prepare_vm_image(rootfs, cache_dir() / "vm" / f"debian-{suite}", mirror=mirror,
                                log=lambda line: events(LogEvent("vm", line)))
    except VMError as exc:
        raise BuildFailed(f"could not prepare the parity VM: {exc.message}",
                          details=exc.details) from None


def _apply_to_vm(project: Project, plan: BuildPlan, ssh: SSHTarget, events: EventSink,
                 secrets: SecretSet | None = None,
                 check: Callable[[], None] = lambda: None, *,
                 layers: VMLayers | None = None, machine: QemuVM | None = None,
                 apt_conf: Callable[[bool], None] = lambda _on: None,
                 clock: _Clock | None = None) -> list[TaskResult]:
    """Every layer's roles, parents first, with the same vars, over SSH (`check` between).

    One layer at a time: on a local VM, the layers its kept snapshot holds are skipped and
    the disk is frozen after each layer applied (`VMLayers.checkpoint`).
    """
    tasks: list[TaskResult] = []
    run_id = uuid.uuid4().hex[:12]
    skip = layers.skip if layers is not None else set()
    for layer in plan.layers:
        if layer.id in skip:
            continue
        check()
        ctx = ProvisionContext(project=project, layer=layer, target=ssh, events=events,
                               cancel=threading.Event(), log_path=project.private_dir("logs") /
                               f"parity-{layer.file_stem}-{run_id}.log", secrets=secrets)
        events(LogEvent(layer.id, f"applying to the VM (log: {ctx.log_path})"))
        started = time.monotonic()
        with clock.step(f"vm_layer:{layer.id}") if clock else contextlib.nullcontext():
            apt_conf(True)
            result = provisioner_class(layer.provisioner)(project, layer).provision(ctx)
            apt_conf(False)
        tasks.extend(result.tasks)
        if layers is not None and machine is not None:
            layers.checkpoint(machine, layer, time.monotonic() - started, list(result.tasks))
    return tasks


def _container_side(engine: Engine, project: Project, layer: Layer, image_id: str,
                    managed: list[str], build_id: str) -> tuple[list[TestCase], Any]:
    # The build's id, as on every container of the run: `rolebake clean --label
    # rolebake.build-id=…` finds it if parity dies before removing it.
    labels = {ROLE_LABEL: "verify", BUILD_ID_LABEL: build_id}
    name = f"rolebake-parity-{layer.id.replace(':', '.')}-{uuid.uuid4().hex[:12]}"
    with engine.container(image_id, name=name, labels=labels, keep_alive=False) as container:
        if wait_ready(engine, container, layer.spec.ready):
            return _check_container(project, layer, container.id, managed)
    # The image's command ends at once (a shell): its files are checked in an
    # idle container, as verification does.
    with engine.container(image_id, name=name + "-idle", labels=labels) as container:
        return _check_container(project, layer, container.id, managed)


def _check_container(project: Project, layer: Layer, container_id: str,
                     managed: list[str]) -> tuple[list[TestCase], Any]:
    host = session_url(container_id)
    tests = (suite_for_host(layer.tests, host, project.root, SESSION_ARGS)
             if layer.tests else [])
    verify_session.register()
    try:
        snapshot = take_snapshot(testinfra.get_host(host), managed)
    except SnapshotError as exc:
        raise BuildFailed(f"could not take the container's state snapshot: {exc.message}",
                          details=exc.details) from None
    return tests, snapshot
