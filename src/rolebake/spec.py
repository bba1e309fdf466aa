"""Image specs: images/<name>.yml turned into frozen records, validated once, here.

Every problem is reported as one InputError naming the file and line
(DESIGN.md invariant 4), before any container exists.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rolebake.errors import InputError
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
from rolebake.state import private_dir
from rolebake.yamlfile import Fields, YamlList, load_yaml, plain, require_json

__all__ = ["HealthCheck", "ImageConfig", "ImageSpec", "Project", "ReadyCheck", "Variant",
           "load_spec"]

# Every pattern is used with fullmatch: `re.match` with a `$` anchor lets a
# trailing newline through ("web\n"), and that name then reaches the engine.
# A spec or variant name becomes a repository component (`rolebake/web`,
# `rolebake-cache/web.dev`): `web-` or `a..b` would pass a looser pattern and
# fail only when the finished image is tagged.
SPEC_NAME_RE = re.compile(rf"(?=.{{1,100}}\Z){COMPONENT}")
VARIANT_NAME_RE = SPEC_NAME_RE
NAME_RULE = "lowercase letters and digits, with '.', '_' or '-' between them, up to 100"
ROLE_NAME_RE = re.compile(r"(?=.{1,255}\Z)[A-Za-z0-9_][A-Za-z0-9_.-]*")  # a folder name
VAR_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# An Ansible group name (Ansible warns about, and may rewrite, anything else).
GROUP_NAME_RE = re.compile(r"(?=.{1,255}\Z)[A-Za-z_][A-Za-z0-9_]*")
# An inventory host name: a DNS name or an address, no pattern characters.
HOST_NAME_RE = re.compile(r"(?=.{1,255}\Z)[A-Za-z0-9_][A-Za-z0-9_.-]*")

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
    """One more image from the same spec: extra roles as a layer on top of it."""

    name: str
    roles_append: tuple[str, ...]
    vars: Mapping[str, Any]
    config: ImageConfig
    tags: tuple[str, ...]
    line: int


@dataclass(frozen=True)
class ImageSpec:
    """A validated images/<name>.yml."""

    name: str
    path: Path
    parent: str  # a layer id (`base`, `base:dev`) when parent_is_spec, else an image reference
    parent_is_spec: bool
    provisioner: str
    roles: tuple[str, ...]
    playbook: Path | None
    vars: Mapping[str, Any]
    config: ImageConfig
    tags: tuple[str, ...]
    tests: Path
    tests_explicit: bool
    ready: ReadyCheck | None
    idempotence: bool
    variants: tuple[Variant, ...]
    sensitive_vars: tuple[str, ...]
    groups: tuple[str, ...] | None  # inventory groups the image is a host of; None: not said
    host: str | None  # the inventory host name the image takes (its host_vars)
    inventory: Path | None  # the inventory given by the spec
    provisioner_options: Mapping[str, Any]
    sections: Mapping[str, Any]  # provisioner sections, raw, until the provisioner parses them
    lines: Mapping[str, int]

    def line_of(self, key: str) -> int | None:
        """The line of a top-level key in the spec file, when it is there."""
        return self.lines.get(key)

    @property
    def parent_spec(self) -> str | None:
        """The spec the parent layer comes from (`base` for `from: base:dev`), if any."""
        return self.parent.partition(":")[0] if self.parent_is_spec else None

    def section(self, key: str | None) -> Fields | None:
        """A provisioner's raw section as typed fields, or None when the spec has none."""
        if key is None or self.sections.get(key) is None:
            return None
        return Fields(self.sections[key], self.path, key, self.line_of(key) or 1)


@dataclass(frozen=True)
class Project:
    """A rolebake project: the folder holding images/, roles/, playbooks/, tests/."""

    root: Path

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


TOP_LEVEL_KEYS = {
    "from", "provisioner", "roles", "playbook", "vars", "sensitive_vars", "config", "tags",
    "tests", "ready", "idempotence", "variants", "groups", "host", "inventory",
}
VARIANT_KEYS = {"roles_append", "vars", "config", "tags"}


def load_spec(project: Project, name: str, *, sections: Collection[str] = ()) -> ImageSpec:
    """Read and validate images/<name>.yml, keeping provisioner sections raw.

    The provisioner named by the spec validates its own section and what the
    spec names (roles, cookbooks): `load.load_spec` does both in one call.

    Args:
        project: the project holding the spec.
        name: the spec's name (its file name without .yml).
        sections: top-level keys that belong to a provisioner (e.g. `chef`).

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
    top.reject_unknown(TOP_LEVEL_KEYS | set(sections))

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

    provisioner = top.text("provisioner", what="a provisioner name") or DEFAULT_PROVISIONER

    roles = top.text_list("roles", pattern=ROLE_NAME_RE, what="a role name")
    playbook = _project_path(project, top, "playbook")
    config = _config(top.mapping("config"))
    tags = _tags(top) or (f"rolebake/{name}:latest",)
    tests_path = _project_path(project, top, "tests")
    tests_explicit = tests_path is not None
    tests = tests_path or project.root / "tests" / "images" / name
    if tests_explicit and not tests.exists():
        raise top.fail("tests", f"{top.data['tests']!r} does not exist")
    if tests_explicit and not tests.is_dir():
        # a file here would silently mean "no suite": plan keeps only folders
        raise top.fail("tests", f"{top.data['tests']!r} is not a folder of testinfra files")

    vars_ = _vars(top, "vars")
    sensitive = top.text_list("sensitive_vars", pattern=VAR_NAME_RE, what="a variable name")
    variants = _variants(top, name)
    _check_sensitive_known(top, sensitive, vars_, variants)

    groups, host, inventory = _inventory_fields(project, top)
    spec = ImageSpec(
        name=name,
        path=path,
        parent=parent,
        parent_is_spec=parent_is_spec,
        provisioner=provisioner,
        roles=roles,
        playbook=playbook,
        vars=vars_,
        config=config,
        tags=tags,
        tests=tests,
        tests_explicit=tests_explicit,
        ready=_ready(top.mapping("ready")),
        idempotence=top.flag("idempotence", False),
        variants=variants,
        sensitive_vars=sensitive,
        groups=groups,
        host=host,
        inventory=inventory,
        provisioner_options={},
        sections={k: top.data[k] for k in sections if k in top.data},
        lines={k: top.line_of(k) for k in top.data if isinstance(k, str)},
    )
    _check_tags_unique(spec)
    return spec


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


def _project_path(project: Project, fields: Fields, key: str) -> Path | None:
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


def _inventory_fields(project: Project, top: Fields) -> tuple[tuple[str, ...] | None,
                                                             str | None, Path | None]:
    """`groups:`, `host:` and `inventory:`: where the image sits in the Ansible inventory."""
    groups = None
    if top.has("groups"):
        groups = top.text_list("groups", pattern=GROUP_NAME_RE,
                               what="an inventory group name (letters, digits, _)")
        if "ungrouped" in groups:
            raise top.fail("groups", "'ungrouped' is Ansible's group of hosts in no group; "
                                     "give `groups: [all]` for a host of no group")
    host = top.text("host", pattern=HOST_NAME_RE, what="an inventory host name")
    inventory = _project_path(project, top, "inventory")
    if inventory is not None and not inventory.exists():
        raise top.fail("inventory", f"{top.data['inventory']!r} does not exist")
    if groups is None and (host is not None or inventory is not None):
        key = "host" if host is not None else "inventory"
        raise top.fail(key, f"`{key}:` needs `groups:` (the inventory groups the image is a "
                            "host of; `[all]` for none but all)")
    return groups, host, inventory


def _vars(fields: Fields, key: str) -> dict[str, Any]:
    section = fields.mapping(key)
    if section is None:
        return {}
    for var in section.data:
        if not isinstance(var, str) or not VAR_NAME_RE.fullmatch(var):
            raise InputError(
                f"{section.where}: {_key_text(var)} is not a valid variable name",
                path=section.path, line=section.line_of(var),
            )
    # Vars reach Ansible as JSON extra vars: refuse here what JSON cannot carry.
    require_json(section.data, section.path, section.where, section.line)
    return dict(plain(section.data))


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


def _variants(top: Fields, name: str) -> tuple[Variant, ...]:
    section = top.mapping("variants")
    if section is None:
        return ()
    variants: list[Variant] = []
    for variant_name in section.data:
        line = section.line_of(variant_name)
        if not isinstance(variant_name, str) or not VARIANT_NAME_RE.fullmatch(variant_name):
            raise InputError(f"variants: {_key_text(variant_name)} is not a variant name "
                             f"({NAME_RULE})",
                             path=section.path, line=line)
        body = Fields(section.data[variant_name] or {}, section.path,
                       f"variants.{variant_name}", line)
        body.reject_unknown(VARIANT_KEYS)
        roles = body.text_list("roles_append", pattern=ROLE_NAME_RE, what="a role name")
        if not roles:
            raise InputError(
                f"variants.{variant_name}: needs roles_append "
                "(a variant is a layer of extra roles)",
                path=section.path, line=line,
            )
        tags = _tags(body)
        variants.append(Variant(
            name=variant_name,
            roles_append=roles,
            vars=_vars(body, "vars"),
            config=_config(body.mapping("config")),
            tags=tags or (f"rolebake/{name}:{variant_name}",),
            line=line,
        ))
    return tuple(variants)


def _check_sensitive_known(top: Fields, sensitive: tuple[str, ...], vars_: Mapping[str, Any],
                           variants: tuple[Variant, ...]) -> None:
    """Each name in `sensitive_vars` must be a var of the spec or of one of its variants.

    A misspelt name would protect nothing: the real var's value would go into
    the `rolebake.inputs` label as a plain, guessable digest, and into logs.
    """
    known = set(vars_).union(*(v.vars for v in variants))
    items = top.data.get("sensitive_vars")
    for index, name in enumerate(sensitive):
        if name in known:
            continue
        line = items.line_of(index) if isinstance(items, YamlList) else top.line_of(
            "sensitive_vars")
        close = difflib.get_close_matches(name, sorted(known), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise InputError(f"sensitive_vars[{index}]: {name!r} is not a var of this spec or of "
                         f"its variants{hint}; known: {', '.join(sorted(known)) or 'none'}",
                         path=top.path, line=line)


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
