"""Loading a project's images: each spec checked by its provisioner, then planned.

Every command starts here, so every spec problem, including those in a
provisioner's own keys (`roles:`, `chef:`) or in what they name (roles, cookbooks),
is one InputError with file and line before any container exists. Names
that are global on an engine (tags, cache repositories) are checked here
against every spec in the project, not only the planned ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from rolebake import provision
from rolebake.errors import InputError
from rolebake.events import EventSink, discard
from rolebake.plan import BuildPlan, Layer, make_plan, spec_layers
from rolebake.provision import galaxy
from rolebake.reference import normal_tag
from rolebake.secrets import SecretSet, vault_values
from rolebake.spec import ImageSpec, Project
from rolebake.spec import load_spec as read_spec


def load_spec(project: Project, name: str) -> ImageSpec:
    """Read images/<name>.yml (each key by its owner) and let its provisioner validate it.

    Raises:
        InputError: anything wrong with the spec, naming file and line.
    """
    spec = read_spec(project, name, provision.readers())
    provision.provisioner_class(spec.provisioner).validate(spec, project)
    return spec


def plan_build(project: Project, targets: Iterable[str] = (),
               events: EventSink = discard) -> BuildPlan:
    """Turn image names (`web`, `web:dev`; none means every image and variant) into a plan.

    The project's requirements.yml is installed first (`provision.galaxy`):
    the specs may name the roles it brings.

    Raises:
        InputError: a bad spec, an unknown image or variant, or a cycle in `from:`;
            a requirement that cannot be reached or installed.
    """
    galaxy.ensure(project, events)
    wanted = list(targets) or all_targets(project)
    plan = make_plan(project, wanted, lambda name: load_spec(project, name))
    _check_shared_names(project, plan)
    return plan


def _check_shared_names(project: Project, plan: BuildPlan) -> None:
    """Refuse a planned layer that shares a tag or a file stem with any other image.

    Tags are global on an engine: two specs tagging the same name overwrite each
    other, whichever builds last. A layer's file stem (`web:dev` -> `web.dev`)
    names its cache repository, logs and Make target, so a spec `web.dev` and a
    variant `dev` of `web` would share them. Specs that do not load are skipped:
    they move no tag until their own error is fixed.
    """
    specs = {layer.spec.name: layer.spec for layer in plan.layers}
    for name in project.spec_names():
        if name not in specs:
            try:
                specs[name] = read_spec(project, name, provision.readers())
            except InputError:
                continue
    planned = {layer.id for layer in plan.layers}
    tags: dict[str, Layer] = {}
    stems: dict[str, Layer] = {}
    for spec in sorted(specs.values(), key=lambda s: s.name):
        for layer in spec_layers(project, spec):
            other = stems.setdefault(layer.file_stem, layer)
            if other.id != layer.id and planned & {layer.id, other.id}:
                here, there = _planned_first(layer, other, planned)
                raise InputError(
                    f"image {here.id!r} and image {there.id!r} ({_where(project, there)}) "
                    f"would share the cache repository {here.cache_repository}; rename one",
                    path=here.spec.path, line=_line(here))
            for tag in map(normal_tag, layer.tags):
                other = tags.setdefault(tag, layer)
                if other.id != layer.id and planned & {layer.id, other.id}:
                    here, there = _planned_first(layer, other, planned)
                    raise InputError(
                        f"tag {tag!r} is also a tag of {there.id} "
                        f"({_where(project, there, 'tags')}); two images cannot share a tag",
                        path=here.spec.path, line=_line(here, "tags"))


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


def all_targets(project: Project) -> list[str]:
    """Every image in images/ and every variant of each."""
    names = project.spec_names()
    if not names:
        raise InputError("no image specs found", path=project.images_dir)
    targets: list[str] = []
    for name in names:
        spec = load_spec(project, name)
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
    files = {path for layer in plan.layers
             for path in provision.provisioner_class(layer.provisioner)(project,
                                                                        layer).input_files()}
    vaulted = vault_values(sorted(files), found.vault_password if found else None,
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
