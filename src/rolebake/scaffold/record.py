"""Recording what one provisioning pass of a layer did, and keeping it as JSON.

`record` provisions the layer once more, the way a `--no-cache` build does, but
moves no tag and keeps no image: it returns the provisioner's own task results
and the sha256 of every file whose content the roles copied verbatim, measured
in the image before it is removed, and the files whose content depends on
facts or the build host (`hostbound.py`), which no check pins.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rolebake import redact
from rolebake.provision.base import TaskResult
from rolebake.scaffold.facts import facts_from
from rolebake.scaffold.hostbound import host_bound_paths
from rolebake.state import write_private

if TYPE_CHECKING:
    from rolebake.engine import ContainerHandle, Engine
    from rolebake.events import EventSink
    from rolebake.secrets import SecretSet
    from rolebake.spec import Project

FORMAT = 1


@dataclass(frozen=True)
class Recording:
    """What one provisioning pass of a layer did, enough to write its tests."""

    image: str  # the layer id: `web` or `web:dev`
    provisioner: str
    tasks: tuple[TaskResult, ...]
    digests: Mapping[str, str] = field(default_factory=dict)  # path -> sha256
    host_bound: tuple[str, ...] = ()  # paths whose content comes from facts or the host

    def to_dict(self) -> dict[str, Any]:
        """JSON form (the unit-test fixtures use it too).

        A task's `path` (a host path to the file it is written in) is left out:
        it served `record` and says nothing about the image.
        """
        return {
            "format": FORMAT,
            "image": self.image,
            "provisioner": self.provisioner,
            "digests": dict(sorted(self.digests.items())),
            "host_bound": list(self.host_bound),
            "tasks": [{k: v for k, v in dataclasses.asdict(t).items() if k != "path"}
                      for t in self.tasks],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recording:
        """Read the JSON form back."""
        return cls(
            image=str(data["image"]),
            provisioner=str(data.get("provisioner") or "ansible"),
            tasks=tuple(TaskResult(name=t.get("name", ""), role=t.get("role"),
                                   action=t.get("action", ""), status=t.get("status", ""),
                                   args=t.get("args") or {}, result=t.get("result") or {})
                        for t in data.get("tasks") or []),
            digests=dict(data.get("digests") or {}),
            host_bound=tuple(str(p) for p in data.get("host_bound") or ()),
        )


def record(engine: Engine, project: Project, image: str, events: EventSink,
           secrets: SecretSet | None = None) -> Recording:
    """Provision `image`'s layer afresh and return what its tasks did, redacted.

    The layer is built as `--no-cache` would, on the parent image a build would
    use now, with verification off and no tag to move; the image it made is
    measured (sha256 of static files) and removed. Parent layers are not built:
    they must be current (a cache hit), as after `rolebake build`. Secret
    values in the task results (module arguments, output) are replaced by the
    installed Redactor, so neither the kept record nor the tests written from
    it hold one.

    Args:
        engine: the container engine to build and measure with.
        project: the project whose image specs name the layer.
        image: the layer id, `web` or `web:dev`.
        events: where the build reports its steps and tasks.
        secrets: the build's secrets (files, vault password), as for `rolebake build`.

    Returns:
        The layer's task results and the sha256 of its static files.

    Raises:
        InputError: unknown image, or a parent layer that needs building first.
        BuildFailed: provisioning failed.
    """
    # Imported here: building pulls in the engine SDK and the provisioners, which
    # rendering (and importing this package) does not need.
    from rolebake.builder import Builder, BuildOptions
    from rolebake.cache import preview
    from rolebake.engine import BUILD_ID_LABEL, ROLE_LABEL
    from rolebake.errors import InputError
    from rolebake.load import plan_build
    from rolebake.plan import BuildPlan

    plan = plan_build(project, [image])
    layer = plan.layer(image)
    parent = layer.parent
    if layer.parent_is_layer:
        rows = {row.layer: row for row in preview(engine, project, plan)}
        row = rows[layer.parent]
        if not row.hit or row.image is None:
            raise InputError(
                f"the parent layer {layer.parent!r} is not built for its current inputs",
                hint=f"rolebake build {layer.parent}")
        parent = row.image
    scratch = dataclasses.replace(layer, parent=parent, parent_is_layer=False, tags=())
    builder = Builder(engine, project, events, BuildOptions(no_cache=True, verify=False,
                                                            secrets=secrets))
    report = builder.build(BuildPlan(layers=(scratch,), targets=(scratch.id,)))
    result = report.results[scratch.id]
    try:
        if result.error is not None:
            raise result.error
        assert result.provision is not None and result.image_id is not None
        tasks = result.provision.tasks
        # Content rendered from facts may differ in the image the suite checks.
        bound = (host_bound_paths(tasks, layer.settings.variables)
                 if layer.provisioner == "ansible" else [])
        paths = [p for p in facts_from(tasks, layer.provisioner).static_paths()
                 if p not in bound]
        digests: dict[str, str] = {}
        if paths:
            labels = {ROLE_LABEL: "verify", BUILD_ID_LABEL: builder.build_id}
            name = f"rolebake-scaffold-{layer.id.replace(':', '.')}-{uuid.uuid4().hex[:8]}"
            with engine.container(result.image_id, name=name, labels=labels) as container:
                digests = _sha256(engine, container, paths)
    finally:
        if result.image_id is not None:
            engine.remove_image(result.image_id, force=True)
    found = Recording(image=layer.id, provisioner=layer.provisioner, tasks=tasks,
                      digests=digests, host_bound=tuple(bound))
    return Recording.from_dict(redact.data(found.to_dict()))


def _sha256(engine: Engine, container: ContainerHandle, paths: Sequence[str]) -> dict[str, str]:
    """The sha256 of each of `paths` that is a regular file in the container."""
    found = engine.shell(container, 'for p; do [ -f "$p" ] && sha256sum -- "$p"; done; true',
                         *paths)
    digests = {}
    for line in found.output.splitlines():
        digest, _, path = line.partition("  ")
        if len(digest) == 64 and path in paths:
            digests[path] = digest
    return digests


def save(recording: Recording, path: Path) -> None:
    """Keep a recording as JSON (beside the build logs, and as test fixtures): redacted, 0600.

    Args:
        recording: what to keep.
        path: the JSON file to write; its folder is made (0700) if missing.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Redacted before serialising, where escaping would hide a secret from the Redactor.
    write_private(path, json.dumps(redact.data(recording.to_dict()), indent=2,
                                   default=str) + "\n")
