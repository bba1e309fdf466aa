"""The provisioner interface, named after the build lifecycle, and the helpers provisioners share.

A provisioner turns a layer's configuration-management code into changes on a
target: decide its `runtime`, lend its `toolchain`, `bootstrap` what it needs
to run, `provision`, then `clean` away every trace of itself before the
pipeline commits. The target is a build container or (for `rolebake parity`)
a machine over SSH; only `provision` runs there.

Toolchains are lent, never installed: a toolchain image's VOLUME, filled once
into a named volume, is mounted read-only in the build container
(`lend_volume`) on SCRATCH or below it, so not even a mount point is left in
the layer.
"""

from __future__ import annotations

import abc
import contextlib
import os
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from rolebake import redact
from rolebake.engine import ROLE_LABEL, ContainerHandle, Engine, ImageInfo
from rolebake.errors import BuildFailed, InputError, RolebakeError
from rolebake.events import EventSink, TaskEvent, discard
from rolebake.locks import exclusive
from rolebake.plan import Layer
from rolebake.provision.observed import Observed
from rolebake.provision.target import ContainerTarget, Target
from rolebake.rootfs import cache_dir
from rolebake.spec import ImageSpec, Project
from rolebake.spec_schema import ProvisionerSettings, Schema
from rolebake.state import append_private
from rolebake.yamlfile import Fields

if TYPE_CHECKING:
    from rolebake.release import Release
    from rolebake.secrets import SecretSet

# /mnt exists in Debian-style images and is meant for temporary mounts. A mount
# point that does not exist in the image stays in the layer as an empty folder;
# /mnt itself exists, and mount points below a tmpfs on it live on the tmpfs --
# unless something uses the engine's archive API (docker cp) on the container,
# which makes them in the layer (Ansible's docker_api copies files that way).
SCRATCH = "/mnt"


def scratch_mount() -> dict[str, Any]:
    """The build container's scratch tmpfs, where toolchains and workspaces are mounted."""
    return {"target": SCRATCH, "source": None, "type": "tmpfs"}


@dataclass(frozen=True)
class ContainerOptions:
    """Extra settings a provisioner needs on its build container (mounts, volumes)."""

    mounts: tuple[Mapping[str, Any], ...] = ()
    volumes_from: tuple[str, ...] = ()
    hostname: str | None = None  # the image's host name (Ansible: its inventory host)

    def merge(self, other: ContainerOptions) -> ContainerOptions:
        """Both sets of mounts (one mount per target: the first one given wins)."""
        targets = {m["target"] for m in self.mounts}
        extra = tuple(m for m in other.mounts if m["target"] not in targets)
        return ContainerOptions(mounts=self.mounts + extra,
                                volumes_from=self.volumes_from + other.volumes_from,
                                hostname=self.hostname or other.hostname)


TOOLCHAIN_IMAGE_LABEL = "rolebake.toolchain.image"


def lend_volume(engine: Engine, image_id: str, *, volume: str, at: str, kind: str,
                build_labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The mount that lends a toolchain image's VOLUME read-only at `at`.

    The volume is the image's own, filled once: a named volume per toolchain
    image id, which the engine fills from the image when a created, never
    started container of it mounts the empty volume (kitchen-dokken lends chef
    the same way, with one container per run). Every build container then mounts
    it without copying anything (the volume stays until `rolebake clean` finds
    its image gone). `at` should be SCRATCH, or below it on a tmpfs when
    nothing uses the archive API on the build container.

    `build_labels` (the build id) go on the container that fills the volume,
    so an interrupted build and `rolebake clean` find it.

    Raises:
        BuildFailed: the engine could not fill the volume from the image.
    """
    labels = {ROLE_LABEL: "toolchain", "rolebake.toolchain": kind,
              TOOLCHAIN_IMAGE_LABEL: image_id}
    name = f"rolebake-toolchain-{kind}-{image_id.rsplit(':', maxsplit=1)[-1][:12]}"
    # One build fills it; the others wait, and never mount a half-filled volume.
    with exclusive(cache_dir() / "locks" / f"{name}.lock"):
        found = engine.volumes({TOOLCHAIN_IMAGE_LABEL: image_id, "rolebake.toolchain": kind})
        if name not in found:
            _fill_volume(engine, image_id, name, volume, labels, kind, build_labels or {})
    return {"target": at, "source": name, "type": "volume", "read_only": True}


def _fill_volume(engine: Engine, image_id: str, name: str, volume: str,
                 labels: Mapping[str, str], kind: str, build_labels: Mapping[str, str]) -> None:
    engine.ensure_volume(name, labels)
    filler = f"rolebake-fill-{kind}-{uuid.uuid4().hex[:8]}"
    try:
        # The engine copies the image's files into an empty named volume it mounts.
        engine.remove_container(engine.create_stopped(
            image_id, name=filler,
            labels={**build_labels, ROLE_LABEL: "build", "rolebake.toolchain": kind},
            mounts=[{"target": volume, "source": name, "type": "volume"}]))
    except Exception as exc:  # the engine's own error too; engine.py does not wrap it
        engine.remove_container(filler)
        engine.remove_volume(name)
        if isinstance(exc, RolebakeError):
            raise
        raise BuildFailed(f"could not fill the {kind} toolchain volume from "
                          f"{image_id[:19]}: {exc}") from None


@dataclass(frozen=True)
class ProvisionerInputs:
    """What a provisioner reads for one layer beyond the spec, for the layer's cache key.

    `files` are paths inside the project as the provisioner sees them (a link
    keeps its own path; its target's bytes are what is hashed). `tools` are
    inputs that are not project files, by name: a collection's version, a
    toolchain image's id. `notes` say where the key is wider than the layer
    needs and why (a name only known at run time), for `rolebake plan`.
    """

    files: tuple[Path, ...] = ()
    tools: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    plays: tuple[str, ...] = ()  # the plays of a playbook that apply, for `rolebake plan`


@dataclass(frozen=True, kw_only=True)
class ProvisionContext:
    """Everything one provisioning pass may use, whatever the target."""

    project: Project
    layer: Layer
    target: Target
    events: EventSink
    cancel: threading.Event
    log_path: Path
    secrets: SecretSet | None = None

    @property
    def engine(self) -> Engine:
        """The engine of a build-container target."""
        return self._container_target().engine

    @property
    def container(self) -> ContainerHandle:
        """The build container of a build-container target."""
        return self._container_target().container

    def _container_target(self) -> ContainerTarget:
        if not isinstance(self.target, ContainerTarget):
            raise InputError(f"layer {self.layer.id}: this step needs a build container, "
                             f"not {type(self.target).__name__}")
        return self.target


# Modules whose `path`/`dest` is a file or folder the roles manage.
FILE_MODULES = frozenset({"copy", "template", "file", "lineinfile", "blockinfile", "replace",
                          "ini_file", "get_url", "unarchive"})


@dataclass(frozen=True)
class TaskResult:
    """One task (Ansible) or resource (Chef) and what it did."""

    name: str
    role: str | None
    action: str
    status: str  # ok | changed | failed | skipped | ignored
    args: Mapping[str, Any] = field(default_factory=dict)
    result: Mapping[str, Any] = field(default_factory=dict)
    # Where the task is written (`file:line`, as Ansible reports it), '' when unknown:
    # `scaffold-tests` reads the task as written there (what its result does not say).
    path: str = ""


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

    def managed_paths(self) -> list[str]:
        """Files and folders this pass's file tasks managed, in task order."""
        return managed_paths(self.tasks)


def managed_paths(tasks: Iterable[TaskResult]) -> list[str]:
    """Absolute paths that file tasks which ran (not skipped, not failed) named, once each.

    A task's `dest` or `path`, from its arguments or else its result (where a
    role passed it through a variable), in task order.
    """
    paths: dict[str, None] = {}
    for task in tasks:
        module = task.action.rsplit(".", 1)[-1]
        if module not in FILE_MODULES or task.status in ("skipped", "failed"):
            continue
        for key in ("dest", "path"):
            value = task.args.get(key) or task.result.get(key)
            if isinstance(value, str) and value.startswith("/"):
                paths[value] = None
                break
    return list(paths)


class Provisioner(abc.ABC):
    """Applies one layer's configuration-management code to a target."""

    name: ClassVar[str]
    over_ssh: ClassVar[bool] = False  # can `provision` apply the layer to an SSHTarget?
    # What the last provisioning pass in a build container read (observed.py); None when
    # the provisioner cannot tell, and then the key is the static walk's alone.
    observed: Observed | None = None

    def __init__(self, project: Project, layer: Layer) -> None:
        """Bind the provisioner to the layer it will apply."""
        self.project = project
        self.layer = layer

    # The provisioner's part of a spec: the core (spec.py) reads the keys every image
    # has, refuses keys no owner declares, and hands the rest to these two.

    @classmethod
    def schema(cls) -> Schema:
        """The spec keys this provisioner owns, with their docs (`rolebake spec-keys`)."""
        return Schema(owner=cls.name)

    @classmethod
    def read_settings(cls, top: Fields, variants: Mapping[str, Fields], project: Project
                      ) -> tuple[ProvisionerSettings, Mapping[str, ProvisionerSettings]]:
        """Read this provisioner's keys of a spec into its own frozen settings record.

        Args:
            top: the spec's top-level mapping (only keys of `schema()` are this
                provisioner's to read; the core has refused any other).
            variants: each variant's mapping, by name, in the spec's order.
            project: the project the spec's paths are relative to.

        Returns:
            The settings of the spec's own layer, and of each variant's layer
            (what it applies, the spec's settings merged in), by variant name.

        Raises:
            InputError: a bad value, naming file and line.
        """
        del top, project
        return ProvisionerSettings(), {name: ProvisionerSettings() for name in variants}

    @classmethod
    def validate(cls, spec: ImageSpec, project: Project) -> None:
        """Check that what the spec names exists, before any container is made."""

    @classmethod
    @abc.abstractmethod
    def version(cls) -> str:
        """The provisioner's version, part of every cache key."""

    @abc.abstractmethod
    def input_files(self) -> list[Path]:
        """Every project file the provisioner will read for this layer (hashed into the key)."""

    def inputs(self, engine: Engine) -> ProvisionerInputs:
        """Everything the provisioner reads for this layer: files, tool versions, notes.

        The engine is there for inputs that live in it (a toolchain image's id);
        nothing is created or pulled. By default, the files alone.
        """
        del engine
        return ProvisionerInputs(files=tuple(self.input_files()))

    def preflight(self, engine: Engine) -> None:
        """Check what the build needs from the engine, before any container is made."""

    def runtime(self, engine: Engine, parent: ImageInfo, release: Release | None) -> str:
        """Decide how the provisioner will run on `parent`; the text is a cache-key input.

        Called for the layer before its cache key is made (by a build and by
        `rolebake plan` alike), so it must not make anything.
        """
        del engine, parent, release
        return ""

    @contextlib.contextmanager
    def toolchain(self, engine: Engine,
                  labels: Mapping[str, str] | None = None,
                  events: EventSink = discard) -> Iterator[ContainerOptions]:
        """Make the provisioner's toolchain available to build containers for a while.

        Args:
            engine: the engine the build containers run on.
            labels: to put on every container the toolchain makes (the build id),
                so an interrupted build and `rolebake clean` find them.
            events: where to say what the toolchain needed (made once, lent).
        """
        del engine, labels, events
        yield ContainerOptions()

    @abc.abstractmethod
    def bootstrap(self, ctx: ProvisionContext) -> None:
        """Make the build container able to run the provisioner (recording what was added)."""

    @abc.abstractmethod
    def provision(self, ctx: ProvisionContext, *, idempotence: bool = False) -> ProvisionResult:
        """Apply the layer to the context's target. With `idempotence`, the checking pass."""

    @abc.abstractmethod
    def clean(self, ctx: ProvisionContext) -> None:
        """Remove every trace of the provisioner and its bootstrap from the build container."""


# Helpers every provisioner uses --------------------------------------------------------


@dataclass
class TaskCounter:
    """Running ok/changed/failed counts, turned into TaskEvents for the progress line."""

    ctx: ProvisionContext
    counts: dict[str, int] = field(default_factory=lambda: {"ok": 0, "changed": 0, "failed": 0})

    def count(self, status: str) -> None:
        """Count one finished task (a change is also ok, as Ansible's recap counts it)."""
        if status in ("ok", "changed"):
            self.counts["ok"] += 1
        if status in ("changed", "failed"):
            self.counts[status] += 1

    def emit(self, task: str, role: str | None, status: str) -> None:
        """Tell the watcher about a task with the counts so far."""
        self.ctx.events(TaskEvent(layer=self.ctx.layer.id, task=task, role=role, status=status,
                                  ok=self.counts["ok"], changed=self.counts["changed"],
                                  failed=self.counts["failed"]))


def tail(text: str, lines: int = 15) -> str:
    """The last lines of a provisioner's output, for error details."""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def first_line(text: str) -> str:
    """The first non-empty line of a message."""
    return text.strip().splitlines()[0] if text.strip() else text


def append_log(log_path: Path, title: str, text: str) -> None:
    """Add one pass's full output to the layer's log file: redacted, and private (0600)."""
    append_private(log_path, redact.text(f"===== {title} =====\n{text}\n"))


# Folders that are never a provisioner's input: version control, caches, virtualenvs,
# and rolebake's own state (its logs change on every build).
SKIPPED_DIRS = frozenset({".git", ".rolebake", "__pycache__", ".pytest_cache", ".mypy_cache",
                          ".ruff_cache", ".tox", ".venv"})


def tree_files(root: Path, project: Project, *, seen: set[str] | None = None) -> list[Path]:
    """Every file below `root`, links inside the project followed, skipping editor and VCS litter.

    A file is listed under the path the provisioner sees (a link keeps its own
    name, a linked folder's files sit below the link); the cache hashes the
    bytes behind it. Each real folder is walked once per `seen`, so a link
    loop ends and a folder linked twice is listed once.

    Raises:
        InputError: a link (or `root` itself) that leads out of the project,
            naming the link.
    """
    seen = set() if seen is None else seen
    found: list[Path] = []
    check_inside(root, project)

    def walk(folder: Path) -> None:
        real = os.path.realpath(folder)
        if real in seen:
            return
        seen.add(real)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            path = folder / entry.name
            if entry.name in SKIPPED_DIRS or entry.name.endswith((".pyc", ".swp", "~")) \
                    or entry.name == ".DS_Store":
                continue
            if entry.is_symlink():
                check_inside(path, project)
            if entry.is_dir():  # follows a link that stays inside the project
                walk(path)
            elif entry.is_file() or entry.is_symlink():  # a dangling link is listed too
                found.append(path)

    if root.is_dir():
        walk(root)
    elif root.exists() or root.is_symlink():
        found.append(root)
    return found


def check_inside(path: Path, project: Project, *, where: Path | None = None,
                 line: int | None = None) -> None:
    """Refuse a path that is, or passes through, a link leading out of the project.

    Args:
        path: the path as written (it need not exist).
        project: the project.
        where: the file that names `path` (the link itself when None).
        line: the line in `where`.

    Raises:
        InputError: `path` resolves outside the project.
    """
    if project.inside(path):
        return
    shown = project.logical(path)
    if where is None and path.is_symlink():
        raise InputError(f"links to {os.readlink(path)!r}, outside the project; rolebake reads "
                         "nothing from outside the project (copy the file in instead)",
                         path=path)
    if where is None:
        raise InputError(f"{shown} leads out of the project (through a link)", path=path)
    raise InputError(f"{shown} is outside the project; rolebake reads nothing from outside it",
                     path=where, line=line)
