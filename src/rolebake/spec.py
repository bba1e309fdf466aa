"""Image specs: images/<name>.yml turned into frozen records, validated once, at load.

The spec core lives here: the keys every image has (`CORE_SCHEMA`). Every
other key belongs to the provisioner the spec names, which declares it in
its own schema and reads it into its own frozen settings (spec_schema.py);
a key no owner of this spec declares is refused here, naming its owner when
another provisioner has it. Every problem is reported as one InputError
naming the file and line (DESIGN.md invariant 4), before any container exists.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from rolebake import redact
from rolebake.errors import InputError
from rolebake.project_config import ProjectIdentity, read_identity
from rolebake.reference import (
    CACHE_NAMESPACE,
    COMPONENT,
    in_cache_namespace,
    is_image_reference,
    is_tag,
    normal_tag,
)
from rolebake.spec_config import (
    MAX_DURATION_S,
    HealthCheck,
    ImageConfig,
    _config,
    _key_text,
)
from rolebake.spec_schema import CORE, Key, ProvisionerSettings, Schema, owners
from rolebake.state import private_dir
from rolebake.yamlfile import Fields, load_yaml

__all__ = ["HealthCheck", "ImageConfig", "ImageSpec", "Project", "ProvisionerSettings",
           "ReadyCheck", "SettingsReader", "Variant", "load_spec"]

# Every pattern is used with fullmatch: `re.match` with a `$` anchor lets a
# trailing newline through ("web\n"), and that name then reaches the engine.
# A spec or variant name becomes a repository component (`<project>/web`,
# `rolebake-cache/<project>/web.dev`): `web-` or `a..b` would pass a looser pattern and
# fail only when the finished image is tagged.
SPEC_NAME_RE = re.compile(rf"(?=.{{1,100}}\Z){COMPONENT}")
VARIANT_NAME_RE = SPEC_NAME_RE
NAME_RULE = "lowercase letters and digits, with '.', '_' or '-' between them, up to 100"
# A role (Ansible) or Chef role name: a folder or file name.
ROLE_NAME_RE = re.compile(r"(?=.{1,255}\Z)[A-Za-z0-9_][A-Za-z0-9_.-]*")

DEFAULT_PROVISIONER = "ansible"
DEFAULT_READY_TIMEOUT = 60.0


@dataclass(frozen=True)
class ReadyCheck:
    """How verification knows a container from the image is ready for its tests."""

    port: int | None = None
    command: tuple[str, ...] | None = None
    timeout_s: float = DEFAULT_READY_TIMEOUT


@dataclass(frozen=True)
class Variant:
    """One more image from the same spec: a layer on top of it (extra roles, say)."""

    name: str
    config: ImageConfig
    tags: tuple[str, ...]
    line: int
    settings: ProvisionerSettings  # what the variant's layer applies, the spec's merged in


@dataclass(frozen=True)
class ImageSpec:
    """A validated images/<name>.yml."""

    name: str
    project: str  # the project's identity (project_config.py): scopes its names on the engine
    path: Path
    parent: str  # a layer id (`base`, `base:dev`) when parent_is_spec, else an image reference
    parent_is_spec: bool
    provisioner: str
    config: ImageConfig
    tags: tuple[str, ...]
    tests: Path
    tests_explicit: bool
    ready: ReadyCheck | None
    idempotence: bool
    variants: tuple[Variant, ...]
    settings: ProvisionerSettings  # the provisioner's part (its own frozen record)
    lines: Mapping[str, int]

    def line_of(self, key: str) -> int | None:
        """The line of a top-level key in the spec file, when it is there."""
        return self.lines.get(key)

    @property
    def parent_spec(self) -> str | None:
        """The spec the parent layer comes from (`base` for `from: base:dev`), if any."""
        return self.parent.partition(":")[0] if self.parent_is_spec else None


@dataclass(frozen=True)
class Project:
    """A rolebake project: the folder holding images/, roles/, playbooks/, tests/."""

    root: Path

    @functools.cached_property
    def identity(self) -> ProjectIdentity:
        """Who the project is on a shared engine (rolebake.yml, else the root folder's name).

        Raises:
            InputError: a bad rolebake.yml (file and line).
        """
        return read_identity(self.root)

    @property
    def name(self) -> str:
        """The project's name: its default tags, cache tags and layer locks carry it."""
        return self.identity.name

    @property
    def images_dir(self) -> Path:
        """Folder of image specs."""
        return self.root / "images"

    @property
    def roles_dir(self) -> Path:
        """Folder of Ansible roles."""
        return self.root / "roles"

    @property
    def state_dir(self) -> Path:
        """Folder for logs and locks (kept out of git)."""
        return self.root / ".rolebake"

    def private_dir(self, *parts: str) -> Path:
        """`.rolebake/<parts>`, made on demand; every folder of it mode 0700 (see state.py)."""
        return private_dir(self.state_dir, *parts)

    def spec_path(self, name: str) -> Path:
        """Path of the spec file for image `name`."""
        return self.images_dir / f"{name}.yml"

    def has_spec(self, name: str) -> bool:
        """Tell whether images/<name>.yml exists."""
        return bool(SPEC_NAME_RE.fullmatch(name)) and self.spec_path(name).is_file()

    def spec_names(self) -> list[str]:
        """Every image spec in the project, sorted (hidden files such as editor locks skipped).

        Entries that are not valid specs (a folder, a bad name) are listed too, so
        that loading them says what is wrong instead of skipping them silently.
        """
        if not self.images_dir.is_dir():
            return []
        return sorted(p.stem for p in self.images_dir.glob("*.yml")
                      if not p.name.startswith("."))

    def inside(self, path: Path) -> bool:
        """Tell whether `path` (resolved, links followed) stays inside the project.

        Raises:
            InputError: the path cannot be followed (a link loop, a name too long).
        """
        try:
            resolved = path.resolve()
        except (OSError, RuntimeError) as exc:  # Python raises RuntimeError on a link loop
            reason = "a link loop" if isinstance(exc, RuntimeError) else exc.strerror
            raise InputError(f"cannot follow this path: {reason}", path=path) from None
        try:
            resolved.relative_to(self.root.resolve())
        except ValueError:
            return False
        return True

    def relative(self, path: Path) -> str:
        """Path relative to the project root, as shown in reports and labels."""
        try:
            return str(path.resolve().relative_to(self.root.resolve()))
        except (ValueError, OSError, RuntimeError):
            return str(path)

    def logical(self, path: Path) -> str:
        """Path relative to the project root as written, links not followed.

        A link inside a role is named by its own path, not its target's; the
        path is returned as given when it is not below the root.
        """
        written = Path(os.path.normpath(os.path.abspath(path)))
        for root in (self.root, self.root.resolve()):
            try:
                return str(written.relative_to(os.path.normpath(os.path.abspath(root))))
            except ValueError:
                continue
        return str(path)


CORE_SCHEMA = Schema(
    owner=CORE,
    summary="What every image has, whichever provisioner applies it.",
    keys=(
        Key("from", "a spec name (`base`, `base:dev`) or an image reference (required)",
            "The parent: another spec of images/ (its layer), or an image to build on.",
            ""),
        Key("provisioner", "a provisioner name",
            "What applies the layer: `ansible` or `chef-solo`; its keys are listed below.",
            DEFAULT_PROVISIONER),
        Key("config", "a mapping: cmd, entrypoint, env, user, workdir, expose, volumes, "
                      "labels, healthcheck",
            "The image's runtime config, over the parent's.", "the parent's"),
        Key("tags", "a list of tags (name:tag)",
            "What the verified image is tagged with.",
            "`<project>/<name>:latest` (docs/projects.md)"),
        Key("tests", "a folder inside the project",
            "The testinfra suite run on a container of the new image before it is tagged.",
            "`tests/images/<name>`"),
        Key("ready", "a mapping: `port` or `command`, and `timeout`",
            "How verification knows a container of the image is ready for its tests.",
            "healthy by its HEALTHCHECK, else running for a second"),
        Key("idempotence", "true or false",
            "Apply the layer twice and fail on any change in the second pass.", "false"),
        Key("variants", "a mapping of variant names to their keys",
            "More images from the same spec, each a layer on top of it.", "none"),
    ),
    variant_keys=(
        Key("config", "as the spec's `config`", "The variant image's config, over the spec's.",
            "the spec's"),
        Key("tags", "a list of tags", "What the variant image is tagged with.",
            "`<project>/<name>:<variant>`"),
    ),
)


class SettingsReader(Protocol):
    """A provisioner, as the spec core sees it: the keys it owns, and how it reads them."""

    def schema(self) -> Schema:
        """The keys the provisioner owns, at the top level and in a variant."""
        ...

    def read_settings(self, top: Fields, variants: Mapping[str, Fields], project: Project
                      ) -> tuple[ProvisionerSettings, Mapping[str, ProvisionerSettings]]:
        """Read its keys: the spec's layer, and each variant's layer (the spec's merged in)."""
        ...


def load_spec(project: Project, name: str,
              provisioners: Mapping[str, SettingsReader]) -> ImageSpec:
    """Read and validate images/<name>.yml: the core here, the rest by its provisioner.

    The core reads the keys every image has; the provisioner the spec names
    reads its own keys (`provisioners[name].read_settings`) into its settings
    record. A key owned by another provisioner is refused, naming its owner.
    Whether what the spec names exists (roles, cookbooks) is the provisioner's
    `validate`: `load.load_spec` does both in one call.

    Args:
        project: the project holding the spec.
        name: the spec's name (its file name without .yml).
        provisioners: every provisioner a spec may name, by name.

    Returns:
        The validated spec.

    Raises:
        InputError: anything wrong with the spec, naming file and line.
    """
    path = _spec_file(project, name)
    data = load_yaml(path)
    if data is None:
        raise InputError("the spec is empty", path=path, line=1)
    top = Fields(data, path, "", 1)
    _register_sensitive(top)  # before anything is checked: no error can print them
    schemas = [CORE_SCHEMA, *(reader.schema() for reader in provisioners.values())]
    provisioner = top.text("provisioner", what="a provisioner name") or DEFAULT_PROVISIONER
    if provisioner not in provisioners:
        raise top.fail("provisioner", f"unknown provisioner {provisioner!r}; known: "
                                      f"{', '.join(sorted(provisioners))}")
    reader = provisioners[provisioner]
    own = reader.schema()
    _reject_foreign(top, CORE_SCHEMA.names() | own.names(), schemas, own)

    parent = top.text("from", required=True, what="a spec name or an image reference")
    assert parent is not None
    # `base` and `base:dev` name layers of images/base.yml, as on the command line;
    # whether base has a variant `dev` is known once base is loaded (plan.make_plan).
    parent_spec, _, _ = parent.partition(":")
    parent_is_spec = project.has_spec(parent_spec)
    if parent_spec == name:
        raise top.fail("from", "an image cannot be built from itself or one of its variants")
    if not parent_is_spec and not is_image_reference(parent):
        raise top.fail("from", f"{parent!r} is neither a spec in images/ nor an image reference")

    config = _config(top.mapping("config"))
    tags = _tags(top) or (f"{project.name}/{name}:latest",)
    tests_path = project_path(project, top, "tests")
    tests_explicit = tests_path is not None
    tests = tests_path or project.root / "tests" / "images" / name
    if tests_explicit and not tests.exists():
        raise top.fail("tests", f"{top.data['tests']!r} does not exist")
    if tests_explicit and not tests.is_dir():
        # a file here would silently mean "no suite": plan keeps only folders
        raise top.fail("tests", f"{top.data['tests']!r} is not a folder of testinfra files")
    ready = _ready(top.mapping("ready"))
    idempotence = top.flag("idempotence", False)
    bodies = _variant_bodies(top, CORE_SCHEMA.variant_names() | own.variant_names(), schemas,
                             own)
    variant_core = {variant_name: (_tags(body) or (f"{project.name}/{name}:{variant_name}",),
                                   _config(body.mapping("config")))
                    for variant_name, body in bodies.items()}
    settings, variant_settings = reader.read_settings(top, bodies, project)
    variants = tuple(Variant(name=variant_name, config=config_, tags=tags_,
                             line=bodies[variant_name].line,
                             settings=variant_settings[variant_name])
                     for variant_name, (tags_, config_) in variant_core.items())
    spec = ImageSpec(
        name=name,
        project=project.name,
        path=path,
        parent=parent,
        parent_is_spec=parent_is_spec,
        provisioner=provisioner,
        config=config,
        tags=tags,
        tests=tests,
        tests_explicit=tests_explicit,
        ready=ready,
        idempotence=idempotence,
        variants=variants,
        settings=settings,
        lines={k: top.line_of(k) for k in top.data if isinstance(k, str)},
    )
    _check_tags_unique(spec)
    return spec


def _reject_foreign(fields: Fields, allowed: set[str] | frozenset[str], schemas: list[Schema],
                    own: Schema, *, variant: bool = False) -> None:
    """Refuse a key of another provisioner by naming its owner; any other unknown key as such."""
    for key in fields.data:
        if isinstance(key, str) and key in allowed:
            continue
        others = owners(schemas, key, variant=variant) if isinstance(key, str) else []
        if others:
            label = f"{fields.where}.{key}" if fields.where else key
            instead = own.instead_of(key)
            raise InputError(f"`{label}:` is a key of the {' and '.join(others)} provisioner, "
                             f"not of {own.owner}" + (f": {instead}" if instead else
                                                      f" (see `rolebake spec-keys {own.owner}`)"),
                             path=fields.path, line=fields.line_of(key))
        fields.reject_unknown(set(allowed))  # says which key, and the closest allowed one


def _variant_bodies(top: Fields, allowed: frozenset[str], schemas: list[Schema],
                    own: Schema) -> dict[str, Fields]:
    """Each variant's mapping, its name and its keys checked; the keys are read by their owner."""
    section = top.mapping("variants")
    if section is None:
        return {}
    bodies: dict[str, Fields] = {}
    for variant_name in section.data:
        line = section.line_of(variant_name)
        if not isinstance(variant_name, str) or not VARIANT_NAME_RE.fullmatch(variant_name):
            raise InputError(f"variants: {_key_text(variant_name)} is not a variant name "
                             f"({NAME_RULE})",
                             path=section.path, line=line)
        body = Fields(section.data[variant_name] or {}, section.path,
                      f"variants.{variant_name}", line)
        body.line = line  # a variant is where its name is (its mapping may start below)
        _reject_foreign(body, allowed, schemas, own, variant=True)
        bodies[variant_name] = body
    return bodies


def _spec_file(project: Project, name: str) -> Path:
    """The spec file for `name`, or an InputError that says what is there instead."""
    path = project.spec_path(name)
    if not SPEC_NAME_RE.fullmatch(name):
        rule = f"use {NAME_RULE}"
        if path.is_file() or path.is_symlink():  # found by listing images/: name the file
            raise InputError(f"{name!r} is not an image name: {rule} (rename the file)",
                             path=path)
        raise InputError(f"{name!r} is not an image name: {rule}")
    if path.is_symlink() and not path.exists():
        raise InputError("the spec is a link to nothing", path=path)
    if path.is_dir():
        raise InputError("a spec must be a file, this is a folder", path=path)
    if path.exists() and not path.is_file():
        raise InputError("a spec must be a regular file", path=path)
    if not path.exists():
        known = project.spec_names()
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        other = path.with_suffix(".yaml")
        if other.is_file():
            hint += f" ({project.relative(other)} exists: specs end in .yml)"
        raise InputError(
            f"no image spec {name!r}{hint}; known: {', '.join(known) or 'none'}",
            path=path,
        )
    if not project.inside(path):
        raise InputError("the spec is a link out of the project", path=path)
    return path


def _tags(fields: Fields) -> tuple[str, ...]:
    tags = fields.text_list("tags", check=is_tag, what="a tag (name:tag, no digest)")
    for index, tag in enumerate(tags):
        if in_cache_namespace(tag):
            raise fields.item_fail("tags", index, f"{tag!r} is in {CACHE_NAMESPACE}, the "
                                                  "namespace of rolebake's cache tags")
    return tags


def project_path(project: Project, fields: Fields, key: str) -> Path | None:
    """A path key inside the project (None when not given); InputError at its line if not."""
    raw = fields.text(key, what="a path inside the project")
    if raw is None:
        return None
    candidate = Path(raw)
    if any(len(part.encode()) > 255 for part in candidate.parts):
        raise fields.fail(key, f"{raw!r} has a name longer than 255 bytes")
    path = candidate if candidate.is_absolute() else project.root / candidate
    if not project.inside(path):
        raise fields.fail(key, f"{raw!r} is outside the project")
    return path


def _register_sensitive(top: Fields) -> None:
    """Hide the values of the vars `sensitive_vars` names (spec and variants) from now on.

    Read from the raw data before any of it is checked, so that no error raised
    while the spec is parsed can print one (`redact.register`).
    """
    names = top.data.get("sensitive_vars")
    wanted = frozenset(n for n in names if isinstance(n, str)) if isinstance(names, list) \
        else frozenset()
    sections = [top.data.get("vars")]
    variants = top.data.get("variants")
    if isinstance(variants, Mapping):
        sections += [v.get("vars") for v in variants.values() if isinstance(v, Mapping)]
    for section in sections:
        if isinstance(section, Mapping):
            for name in wanted.intersection(k for k in section if isinstance(k, str)):
                redact.register(_leaves(section[name]))


def _leaves(value: Any) -> list[str]:
    """Every scalar in `value` (keys too) as text: what a message could quote."""
    if isinstance(value, Mapping):
        return [text for key, item in value.items() for text in (*_leaves(key), *_leaves(item))]
    if isinstance(value, list | tuple | set | frozenset):
        return [text for item in value for text in _leaves(item)]
    if value is None or isinstance(value, bool):
        return []
    return [str(value)]


def _ready(section: Fields | None) -> ReadyCheck | None:
    if section is None:
        return None
    section.reject_unknown({"port", "command", "timeout"})
    port = section.number("port", minimum=1, maximum=65535, integer=True)
    command = section.command("command")
    if (port is None) == (command is None):
        raise InputError("ready: give exactly one of 'port' or 'command'",
                         path=section.path, line=section.line)
    timeout = section.number("timeout", minimum=1, maximum=MAX_DURATION_S)
    return ReadyCheck(
        port=int(port) if port is not None else None,
        command=command,
        timeout_s=timeout if timeout is not None else DEFAULT_READY_TIMEOUT,
    )


def _check_tags_unique(spec: ImageSpec) -> None:
    seen: dict[str, str] = {}
    for owner, tags in [(spec.name, spec.tags)] + [
        (f"{spec.name}:{v.name}", v.tags) for v in spec.variants
    ]:
        for tag in map(normal_tag, tags):
            if tag in seen:
                raise InputError(
                    f"tag {tag!r} is given to both {seen[tag]} and {owner}",
                    path=spec.path, line=spec.line_of("tags"),
                )
            seen[tag] = owner
