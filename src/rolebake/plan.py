"""The build plan: the DAG of layers that the requested images need, parents first.

Pure: it neither reads role files nor talks to the engine. Specs come in
through a loader (see `load.py`), layers go out in an order that
`graphlib.TopologicalSorter` decides, which also finds cycles in `from:`.
"""

from __future__ import annotations

import graphlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from rolebake.errors import InputError
from rolebake.reference import cache_repository
from rolebake.spec import (
    SPEC_NAME_RE,
    VARIANT_NAME_RE,
    ImageConfig,
    ImageSpec,
    Project,
    ProvisionerSettings,
)


@dataclass(frozen=True)
class Layer:
    """One committed layer: what a provisioner applies (a set of roles) on a parent image."""

    id: str
    spec: ImageSpec
    parent: str
    parent_is_layer: bool
    settings: ProvisionerSettings  # what the provisioner applies in this layer
    config: ImageConfig
    tags: tuple[str, ...]
    tests: Path | None
    variant: str | None = None

    @property
    def provisioner(self) -> str:
        """The provisioner named by the layer's spec."""
        return self.spec.provisioner

    @property
    def cache_repository(self) -> str:
        """Repository of the internal cache tags for this layer (its project's own)."""
        return cache_repository(self.spec.project, self.file_stem)

    @property
    def lock_name(self) -> str:
        """The readable part of the layer's host-wide lock file: `<project>.<layer>`."""
        return f"{self.spec.project}.{self.file_stem}"

    @property
    def file_stem(self) -> str:
        """The layer id as a file or container name part (`web:dev` -> `web.dev`)."""
        return self.id.replace(":", ".")


@dataclass(frozen=True)
class BuildPlan:
    """Layers in build order (parents first) and the layers the user asked for."""

    layers: tuple[Layer, ...]
    targets: tuple[str, ...]

    def layer(self, layer_id: str) -> Layer:
        """The layer with that id."""
        for layer in self.layers:
            if layer.id == layer_id:
                return layer
        raise KeyError(layer_id)

    def children(self, layer_id: str) -> list[Layer]:
        """Layers built directly on `layer_id`."""
        return [x for x in self.layers if x.parent_is_layer and x.parent == layer_id]

    def sorter(self) -> graphlib.TopologicalSorter[str]:
        """A prepared sorter over the plan's layers: the `--jobs` scheduler walks it."""
        sorter = graphlib.TopologicalSorter(_graph(self.layers))
        sorter.prepare()
        return sorter


SpecLoader = Callable[[str], ImageSpec]


def make_plan(project: Project, targets: Iterable[str], load: SpecLoader) -> BuildPlan:
    """Turn image names (`web`, `web:dev`) into the layers they need, parents first.

    Args:
        project: the project (for the default test folders of variants).
        targets: the layers asked for.
        load: reads and validates one spec by name.

    Raises:
        InputError: an unknown image or variant (asked for, or named by `from:`), or a
            cycle in `from:`.
    """
    wanted = list(targets)
    for target in wanted:
        name, colon, variant = target.partition(":")
        if not SPEC_NAME_RE.fullmatch(name) or (colon and not VARIANT_NAME_RE.fullmatch(variant)):
            raise InputError(f"{target!r} is not an image: give a spec name (web) or a spec "
                             "and one of its variants (web:dev)")
    specs: dict[str, ImageSpec] = {}
    for target in wanted:
        name = target.split(":", 1)[0]
        while name not in specs:
            spec = load(name)
            specs[name] = spec
            if spec.parent_spec is None:
                break
            name = spec.parent_spec
    layers: dict[str, Layer] = {}
    for spec in specs.values():
        layers.update((layer.id, layer) for layer in spec_layers(project, spec))
    for spec in specs.values():
        if spec.parent_spec is not None and spec.parent not in layers:
            variant = spec.parent.partition(":")[2]
            known = ", ".join(v.name for v in specs[spec.parent_spec].variants) or "none"
            raise InputError(
                f"from: image {spec.parent_spec!r} has no variant {variant!r}; variants: "
                f"{known} (a registry image named like a spec needs its registry host)",
                path=spec.path, line=spec.line_of("from"))
    for target in wanted:
        if target not in layers:
            name, _, variant = target.partition(":")
            known = ", ".join(v.name for v in specs[name].variants) or "none"
            raise InputError(f"image {name!r} has no variant {variant!r}; variants: {known}",
                             path=specs[name].path, line=specs[name].line_of("variants"))
    needed = _closure(layers, wanted)
    try:
        order = list(graphlib.TopologicalSorter(_graph(layers.values())).static_order())
    except graphlib.CycleError as exc:
        raise _cycle_error(exc.args[1], specs, wanted) from None
    return BuildPlan(layers=tuple(layers[i] for i in order if i in needed),
                     targets=tuple(wanted))


def spec_layers(project: Project, spec: ImageSpec) -> list[Layer]:
    """The spec's own layer and one layer per variant on top of it."""
    base = Layer(
        id=spec.name,
        spec=spec,
        parent=spec.parent,
        parent_is_layer=spec.parent_is_spec,
        settings=spec.settings,
        config=spec.config,
        tags=spec.tags,
        tests=spec.tests if spec.tests.is_dir() else None,
    )
    layers = [base]
    for variant in spec.variants:
        own_tests = project.root / "tests" / "images" / f"{spec.name}-{variant.name}"
        layers.append(Layer(
            id=f"{spec.name}:{variant.name}",
            spec=spec,
            parent=spec.name,
            parent_is_layer=True,
            settings=variant.settings,
            config=variant.config,
            tags=variant.tags,
            tests=own_tests if own_tests.is_dir() else base.tests,
            variant=variant.name,
        ))
    return layers


def _graph(layers: Iterable[Layer]) -> dict[str, set[str]]:
    # Sorted, so that independent layers come out in a stable order.
    return {layer.id: ({layer.parent} if layer.parent_is_layer else set())
            for layer in sorted(layers, key=lambda x: x.id)}


def _closure(layers: Mapping[str, Layer], wanted: Iterable[str]) -> set[str]:
    needed: set[str] = set()
    stack = list(wanted)
    while stack:
        layer_id = stack.pop()
        if layer_id in needed:
            continue
        needed.add(layer_id)
        layer = layers[layer_id]
        if layer.parent_is_layer:
            stack.append(layer.parent)
    return needed


def _cycle_error(cycle: list[str], specs: Mapping[str, ImageSpec],
                 wanted: list[str]) -> InputError:
    # graphlib lists each node before the layer built on it; `from:` reads the other way.
    names = list(reversed(cycle[:-1]))
    start = next((names.index(n) for t in wanted for n in (t, t.partition(":")[0])
                  if n in names), names.index(min(names)))
    names = names[start:] + names[:start]
    # A variant's edge to its own spec is implicit; the `from:` to fix is a spec's.
    first = specs[next(n for n in names if ":" not in n)]
    return InputError(f"`from:` makes a cycle: {' -> '.join([*names, names[0]])}",
                      path=first.path, line=first.line_of("from"))
