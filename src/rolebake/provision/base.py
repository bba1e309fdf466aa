"""The interface every provisioner implements, named after the build lifecycle.

A provisioner turns a layer's configuration-management code into changes
inside a build container: `bootstrap` what it needs to run, `provision`,
then `clean` away every trace of itself before the pipeline commits.
"""

from __future__ import annotations

import abc
import contextlib
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from rolebake.engine import ContainerHandle, Engine
from rolebake.events import EventSink
from rolebake.plan import Layer
from rolebake.spec import Fields, ImageSpec, Project

if TYPE_CHECKING:
    from rolebake.secrets import SecretSet


@dataclass(frozen=True)
class ContainerOptions:
    """Extra settings a provisioner needs on its build container (mounts, volumes)."""

    mounts: tuple[Mapping[str, Any], ...] = ()
    volumes_from: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class RunContext:
    """What applying a layer needs, whatever the target (a build container, a VM)."""

    project: Project
    layer: Layer
    events: EventSink
    cancel: threading.Event
    log_path: Path
    secrets: SecretSet | None = None


@dataclass(frozen=True, kw_only=True)
class ProvisionContext(RunContext):
    """Everything one provisioning pass in a build container may use."""

    engine: Engine
    container: ContainerHandle


@dataclass(frozen=True)
class TaskResult:
    """One task (Ansible) or resource (Chef) and what it did."""

    name: str
    role: str | None
    action: str
    status: str  # ok | changed | failed | skipped | ignored
    args: Mapping[str, Any] = field(default_factory=dict)
    result: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProvisionResult:
    """What one provisioning pass did."""

    tasks: tuple[TaskResult, ...]

    @property
    def changed(self) -> tuple[TaskResult, ...]:
        """Tasks that reported a change."""
        return tuple(t for t in self.tasks if t.status == "changed")

    def counts(self) -> dict[str, int]:
        """Task counts by status."""
        counts: dict[str, int] = {}
        for task in self.tasks:
            counts[task.status] = counts.get(task.status, 0) + 1
        return counts


class Provisioner(abc.ABC):
    """Applies one layer's configuration-management code to a build container."""

    name: ClassVar[str]
    section: ClassVar[str | None] = None  # the spec key holding this provisioner's settings

    def __init__(self, project: Project, layer: Layer) -> None:
        """Bind the provisioner to the layer it will apply."""
        self.project = project
        self.layer = layer

    @classmethod
    def parse_options(cls, spec: ImageSpec, project: Project,
                      section: Fields | None) -> Mapping[str, Any]:
        """Validate the provisioner's own spec section (e.g. `chef:`) into plain settings."""
        del spec, project, section
        return {}

    @classmethod
    def validate(cls, spec: ImageSpec, project: Project) -> None:
        """Check that what the spec names exists, before any container is made."""

    @classmethod
    @abc.abstractmethod
    def version(cls) -> str:
        """The provisioner's version, part of every cache key."""

    @abc.abstractmethod
    def input_files(self) -> list[Path]:
        """Every file the provisioner will read for this layer (hashed into the cache key)."""

    def preflight(self, engine: Engine) -> None:
        """Check what the build needs from the engine, before any container is made."""

    @contextlib.contextmanager
    def toolchain(self, engine: Engine) -> Iterator[ContainerOptions]:
        """Make the provisioner's toolchain available to build containers for a while."""
        del engine
        yield ContainerOptions()

    @abc.abstractmethod
    def bootstrap(self, ctx: ProvisionContext) -> None:
        """Make the container able to run the provisioner (recording what was added)."""

    @abc.abstractmethod
    def provision(self, ctx: ProvisionContext, *, idempotence: bool = False) -> ProvisionResult:
        """Apply the layer. With `idempotence`, this is the second, checking pass."""

    @abc.abstractmethod
    def clean(self, ctx: ProvisionContext) -> None:
        """Remove every trace of the provisioner and its bootstrap from the container."""
