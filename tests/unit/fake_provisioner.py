"""A scriptable provisioner for unit tests of the build pipeline.

`FakeProvisioner` is registered as the `fake` provisioner by the tests
(`rolebake.provision.PROVISIONERS["fake"] = FAKE_PROVISIONER`); every
instance reports to, and takes orders from, the class-wide `control`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rolebake.engine import Engine
from rolebake.errors import BuildFailed
from rolebake.provision import ansible_spec
from rolebake.provision.base import (
    ProvisionContext,
    Provisioner,
    ProvisionResult,
    TaskResult,
    tree_files,
)
from rolebake.spec import ImageSpec, Project
from rolebake.spec_schema import Schema
from rolebake.yamlfile import Fields


@dataclass
class Gate:
    """Holds a provisioner step until released; says when a layer has reached it."""

    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    timeout: float = 10.0
    # False: like a blocking exec, only a release (e.g. the container killed) ends it.
    stops_on_cancel: bool = True


@dataclass
class ProvisionerControl:
    """What every FakeProvisioner records and is told to do, by layer id and step."""

    calls: list[tuple[str, str]] = field(default_factory=list)  # (layer, step), in order
    failures: dict[tuple[str, str], BaseException] = field(default_factory=dict)
    gates: dict[tuple[str, str], Gate] = field(default_factory=dict)
    hooks: dict[tuple[str, str], Callable[[ProvisionContext], None]] = field(
        default_factory=dict)
    tasks: tuple[TaskResult, ...] = (
        TaskResult(name="install nginx", role="web", action="ansible.builtin.apt",
                   status="changed", args={"name": "nginx"}),
        TaskResult(name="check config", role="web", action="ansible.builtin.stat",
                   status="ok"),
    )
    version: str = "fake 1.0"
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, layer: str, step: str, error: BaseException) -> None:
        """Make `step` (preflight, bootstrap, provision, clean) raise `error` for `layer`."""
        self.failures[(layer, step)] = error

    def block(self, layer: str, step: str, timeout: float = 10.0, *,
              stops_on_cancel: bool = True) -> Gate:
        """Make `step` wait for `layer` until the gate is released (or the build cancelled)."""
        gate = Gate(timeout=timeout, stops_on_cancel=stops_on_cancel)
        self.gates[(layer, step)] = gate
        return gate

    def steps_of(self, layer: str) -> list[str]:
        """The steps run for `layer`, in order."""
        with self.lock:
            return [step for name, step in self.calls if name == layer]


class FakeProvisioner(Provisioner):
    """A provisioner that only records, fails or blocks when the test says so."""

    name = "fake"
    control = ProvisionerControl()

    @classmethod
    def schema(cls) -> Schema:
        """Ansible's keys (roles, vars, roles_append ...), so a fake spec reads like a real one."""
        return Schema(owner=cls.name, keys=ansible_spec.SCHEMA.keys,
                      variant_keys=ansible_spec.SCHEMA.variant_keys)

    @classmethod
    def read_settings(cls, top: Fields, variants: Mapping[str, Fields], project: Project
                      ) -> tuple[ansible_spec.AnsibleSettings,
                                 Mapping[str, ansible_spec.AnsibleSettings]]:
        """Read as the ansible provisioner reads them."""
        return ansible_spec.read(top, variants, project)

    @classmethod
    def validate(cls, spec: ImageSpec, project: Project) -> None:
        """Anything goes: the fake applies nothing."""

    @classmethod
    def version(cls) -> str:
        """Part of every cache key, so a test can change it to force a miss."""
        return cls.control.version

    def input_files(self) -> list[Path]:
        """The files of the layer's roles, when the test project has any."""
        files: list[Path] = []
        for role in ansible_spec.settings_of(self.layer).roles:
            folder = self.project.roles_dir / role
            if folder.is_dir():
                files.extend(tree_files(folder, self.project))
        return files

    def preflight(self, engine: Engine) -> None:
        """Record, or fail as told."""
        self._step("preflight", None)

    def bootstrap(self, ctx: ProvisionContext) -> None:
        """Record, or fail or block as told."""
        self._step("bootstrap", ctx)

    def provision(self, ctx: ProvisionContext, *, idempotence: bool = False) -> ProvisionResult:
        """Record, or fail or block as told; report the control's task results."""
        self._step("idempotence" if idempotence else "provision", ctx)
        if idempotence:
            return ProvisionResult(tasks=tuple(
                TaskResult(t.name, t.role, t.action, "ok" if t.status == "changed" else t.status)
                for t in self.control.tasks))
        return ProvisionResult(tasks=self.control.tasks)

    def clean(self, ctx: ProvisionContext) -> None:
        """Record, or fail or block as told."""
        self._step("clean", ctx)

    def _step(self, step: str, ctx: ProvisionContext | None) -> None:
        control = self.control
        key = (self.layer.id, step)
        with control.lock:
            control.calls.append(key)
        hook = control.hooks.get(key)
        if hook is not None and ctx is not None:
            hook(ctx)
        gate = control.gates.get(key)
        if gate is not None:
            gate.entered.set()
            waited = 0.0
            while not gate.release.wait(0.01):
                waited += 0.01
                # As ansible-runner's cancel_callback does: a cancelled build stops here.
                if gate.stops_on_cancel and ctx is not None and ctx.cancel.is_set():
                    raise BuildFailed(f"{step} was cancelled")
                if waited > gate.timeout:
                    raise BuildFailed(f"test gate for {key} was never released")
            # What ran in the build container fails when the container died meanwhile.
            if ctx is not None and not ctx.engine.container_state(ctx.container).get("Running"):
                raise BuildFailed(f"{step}: the build container {ctx.container.name} stopped")
        error = control.failures.get(key)
        if error is not None:
            raise error
