"""Loading a project's images: each spec checked by its provisioner, then planned.

Every command starts here, so every spec problem, including those in a
provisioner's own keys (`roles:`, `chef:`) or in what they name (roles, cookbooks),
is one InputError with file and line before any container exists. Names
that are global on an engine (tags, cache repositories) are checked here
against every spec in the project, not only the planned ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from rolebake import provision
from rolebake.errors import InputError
from rolebake.events import EventSink, discard
from rolebake.plan import BuildPlan, Layer, make_plan, spec_layers
from rolebake.provision import galaxy, requirements
from rolebake.reference import normal_tag
from rolebake.secrets import SecretSet, vault_values, vaulted_at
from rolebake.spec import ImageSpec, Project
from rolebake.spec import load_spec as read_spec
from rolebake.yamlfile import parsed_once


def load_spec(project: Project, name: str) -> ImageSpec:
    """Read images/<name>.yml (each key by its owner) and let its provisioner validate it.

    Raises:
        InputError: anything wrong with the spec, naming file and line.
    """
    spec = read_spec(project, name, provision.readers())
    provision.provisioner_class(spec.provisioner).validate(spec, project)
    return spec


def plan_build(project: Project, targets: Iterable[str] = (),
               events: EventSink = discard, *, install: bool = False) -> BuildPlan:
    """Turn image names (`web`, `web:dev`; none means every image and variant) into a plan.

    With `install` (a build's first step, before any layer), the project's
    requirements.yml is installed first (`provision.galaxy`): the specs may
    name the roles it brings. Without it (`plan`, `makefile`) nothing is run
    or installed: the requirements files are only read and checked, and the
    last install for them, if any, is what the layers are keyed on. Each spec
    is loaded (and checked by its provisioner) once, and each file parsed
    once (`yamlfile.parsed_once`).

    Raises:
        InputError: a bad spec, an unknown image or variant, or a cycle in `from:`;
            a bad requirements file; (with `install`) a requirement that cannot be
            reached or installed.
    """
    loaded: dict[str, ImageSpec] = {}

    def load(name: str) -> ImageSpec:
        if name not in loaded:
            loaded[name] = load_spec(project, name)
        return loaded[name]

    with parsed_once():
        if install:
            galaxy.ensure(project, events)
        else:
            requirements.declared(project)  # a bad or option-like source is exit 2 here too
        wanted = list(targets) or all_targets(project, load)
        plan = make_plan(project, wanted, load)
        _check_shared_names(project, plan)
    return plan


def install_requirements(project: Project, events: EventSink = discard) -> None:
    """Install the project's requirements.yml unless installed: a build's first step.

    Raises:
        InputError: a requirement that cannot be reached or installed.
    """
    galaxy.ensure(project, events)


def _check_shared_names(project: Project, plan: BuildPlan) -> None:
    """Refuse a planned layer that shares a tag or a file stem with any other image.

    Tags are global on an engine: two specs tagging the same name overwrite each
    other, whichever builds last, and a tag that names an image some spec is
    built `from:` (its own parent, or another's) would move that base. A
    layer's file stem (`web:dev` -> `web.dev`) names its cache repository, logs
    and Make target, so a spec `web.dev` and a variant `dev` of `web` would
    share them. Specs that do not load are skipped: they move no tag until
    their own error is fixed.
    """
    specs = {layer.spec.name: layer.spec for layer in plan.layers}
    for name in project.spec_names():
        if name not in specs:
            try:
                specs[name] = read_spec(project, name, provision.readers())
            except InputError:
                continue
    planned = {layer.id for layer in plan.layers}
    layers = [layer for spec in sorted(specs.values(), key=lambda s: s.name)
              for layer in spec_layers(project, spec)]
    bases: dict[str, Layer] = {}  # an image some layer is built from -> the first such layer
    for layer in layers:
        if not layer.parent_is_layer and "@" not in layer.parent:
            bases.setdefault(_engine_tag(layer.parent), layer)
    tags: dict[str, Layer] = {}
    stems: dict[str, Layer] = {}
    for layer in layers:
        other = stems.setdefault(layer.file_stem, layer)
        if other.id != layer.id and planned & {layer.id, other.id}:
            here, there = _planned_first(layer, other, planned)
            raise InputError(
                f"image {here.id!r} and image {there.id!r} ({_where(project, there)}) "
                f"would share the cache repository {here.cache_repository}; rename one",
                path=here.spec.path, line=_line(here))
        for tag in layer.tags:
            _check_not_a_base(project, layer, tag, bases.get(_engine_tag(tag)), planned)
            other = tags.setdefault(_engine_tag(tag), layer)
            if other.id != layer.id and planned & {layer.id, other.id}:
                here, there = _planned_first(layer, other, planned)
                raise InputError(
                    f"tag {normal_tag(tag)!r} is also a tag of {there.id} "
                    f"({_where(project, there, 'tags')}); two images cannot share a tag",
                    path=here.spec.path, line=_line(here, "tags"))


def _check_not_a_base(project: Project, layer: Layer, tag: str, based: Layer | None,
                      planned: set[str]) -> None:
    """Refuse a tag naming an image a layer is built from: tagging it would move that base."""
    if based is None or not planned & {layer.id, based.id}:
        return
    if based.id == layer.id:
        why = "the image this one is built from (`from:`); tagging it would replace its own base"
    else:
        why = (f"the image {based.id} is built from ({_where(project, based, 'from')}); "
               f"tagging it would change what {based.id} builds on")
        if based.spec.name != layer.spec.name:
            why += f" (to build on this image, write `from: {layer.id}` there)"
    raise InputError(f"tag {normal_tag(tag)!r} is {why}", path=layer.spec.path,
                     line=_line(layer, "tags"))


def _engine_tag(reference: str) -> str:
    """A tag as the engine stores it: `:latest` added, Docker Hub's implicit prefixes dropped."""
    tag = normal_tag(reference)
    for prefix in ("docker.io/library/", "index.docker.io/library/", "docker.io/",
                   "index.docker.io/"):
        if tag.startswith(prefix):
            return tag.removeprefix(prefix)
    return tag


def _planned_first(one: Layer, two: Layer, planned: set[str]) -> tuple[Layer, Layer]:
    """The pair with a planned layer first: the error is about what the user asked for."""
    return (one, two) if one.id in planned else (two, one)


def _line(layer: Layer, key: str = "") -> int:
    """Where a layer is declared: its variant's line, or the spec's `key` (else line 1)."""
    for variant in layer.spec.variants:
        if variant.name == layer.variant:
            return variant.line
    return (layer.spec.line_of(key) if key else None) or 1


def _where(project: Project, layer: Layer, key: str = "") -> str:
    return f"{project.relative(layer.spec.path)}:{_line(layer, key)}"


def all_targets(project: Project,
                load: Callable[[str], ImageSpec] | None = None) -> list[str]:
    """Every image in images/ and every variant of each (specs read with `load`)."""
    names = project.spec_names()
    if not names:
        raise InputError("no image specs found", path=project.images_dir)
    targets: list[str] = []
    for name in names:
        spec = (load or (lambda n: load_spec(project, n)))(name)
        targets.append(name)
        targets.extend(f"{name}:{v.name}" for v in spec.variants)
    return targets


def plan_secrets(project: Project, plan: BuildPlan, secrets: Iterable[str] = (),
                 vault_password_file: Path | None = None,
                 env_password: str | None = None) -> SecretSet | None:
    """Every secret of a build of `plan`: flags, vaulted values, sensitive vars; None if none.

    Vaulted values are looked for in what the layers' provisioners read
    (`input_files`) and in the specs' vars, and decrypted here, on the host,
    before any container: a wrong password is bad input before anything runs.

    Args:
        project: the project.
        plan: the layers to build.
        secrets: `--secret id=NAME,src=PATH` flags.
        vault_password_file: `--vault-password-file`.
        env_password: ROLEBAKE_VAULT_PASSWORD's value, read (and removed) by the CLI.

    Raises:
        InputError: a bad flag, or a vaulted value without (or with the wrong) password.
    """
    found = SecretSet.from_cli(secrets, vault_password_file, env_password)
    vaulted = vault_values(_input_files(project, plan), found.vault_password if found else None,
                           [(layer.spec.path, layer.settings.variables)
                            for layer in plan.layers])
    sensitive = [value for layer in plan.layers
                 for name, value in layer.settings.variables.items()
                 if name in layer.settings.sensitive]
    if found is None and (vaulted or sensitive):
        found = SecretSet()
    if found is not None:
        found.add_values(vaulted)
        found.add_values(sensitive)
    return found


def vault_needed(project: Project, plan: BuildPlan) -> list[tuple[Path, int]]:
    """The vaulted files and values a build of `plan` reads: (file, line), none decrypted."""
    return vaulted_at(_input_files(project, plan),
                      [(layer.spec.path, layer.settings.variables) for layer in plan.layers])


def _input_files(project: Project, plan: BuildPlan) -> list[Path]:
    """What the layers' provisioners read (role vars, playbooks, vars files, group_vars)."""
    return sorted({path for layer in plan.layers
                   for path in provision.provisioner_class(layer.provisioner)(
                       project, layer).input_files()})
