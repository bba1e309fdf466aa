"""The ansible provisioner's part of an image spec: its keys, their schema, and reading them.

The spec core (spec.py) reads what every image has; these keys are
Ansible's alone, read here into `AnsibleSettings` with file and line on any
problem. Whether the roles and the playbook exist is checked later, by
`AnsibleProvisioner.validate`.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rolebake.errors import InputError
from rolebake.plan import Layer
from rolebake.spec import ROLE_NAME_RE, ImageSpec, Project, Variant, project_path
from rolebake.spec_config import _key_text
from rolebake.spec_schema import Key, ProvisionerSettings, Schema
from rolebake.yamlfile import Fields, YamlList, plain, require_json

VAR_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# An Ansible group name (Ansible warns about, and may rewrite, anything else).
GROUP_NAME_RE = re.compile(r"(?=.{1,255}\Z)[A-Za-z_][A-Za-z0-9_]*")
# An inventory host name: a DNS name or an address, no pattern characters.
HOST_NAME_RE = re.compile(r"(?=.{1,255}\Z)[A-Za-z0-9_][A-Za-z0-9_.-]*")

SCHEMA = Schema(
    owner="ansible",
    summary="Ansible roles or a playbook, applied with ansible-runner (the default).",
    keys=(
        Key("roles", "a list of role names",
            "The roles to apply, found in roles/ (or ansible.cfg's roles_path, or "
            "requirements.yml); give `roles:` or `playbook:`, not both.", "none"),
        Key("playbook", "a path inside the project",
            "A playbook to apply instead of `roles:`; its plays apply to the image as to a "
            "host of `groups:`.", "none"),
        Key("vars", "a mapping of variable names to JSON values",
            "Extra vars for the roles or the playbook (Ansible Vault `!vault` values allowed).",
            "none"),
        Key("sensitive_vars", "a list of names from `vars` (or a variant's `vars`)",
            "Vars whose values are secrets: keyed with a secret salt, never shown or "
            "labelled.", "none"),
        Key("groups", "a list of inventory group names (`[all]` for none)",
            "The inventory groups the image is a host of: their group_vars apply, and the "
            "playbook's plays for them.", "not a host of the inventory"),
        Key("host", "an inventory host name",
            "The host the image stands for (its host_vars, its groups); needs `groups:`.",
            "`rolebake-<name>`"),
        Key("inventory", "a path inside the project",
            "The inventory to read groups and variables from; needs `groups:`.",
            "ansible.cfg's `inventory`, else an `inventory*` or `hosts*` file at the root, "
            "then beside the playbook"),
        Key("inputs", "a list of absolute host paths (files or folders)",
            "Files outside the project Ansible may read (`copy: {src: /etc/hostname}`, a "
            "collection on PYTHONPATH), each keyed by content; any other read from outside "
            "the project fails the build.", "none: the build reads only the project"),
        Key("record_inputs", "true or false",
            "Key project files Ansible read that the cache key missed (a cache hole) from "
            "now on, instead of failing the build (as `rolebake build --record-inputs`).",
            "false"),
    ),
    variant_keys=(
        Key("roles_append", "a list of role names (required)",
            "The roles the variant's layer applies on top of the spec's image."),
        Key("vars", "a mapping of variable names to JSON values",
            "More vars for the variant's roles, over the spec's.", "the spec's"),
    ),
)


@dataclass(frozen=True)
class AnsibleSettings(ProvisionerSettings):
    """What one layer applies with Ansible: the spec's own, or a variant's (roles_append)."""

    roles: tuple[str, ...] = ()
    playbook: Path | None = None
    vars: Mapping[str, Any] = field(default_factory=dict)
    sensitive_vars: tuple[str, ...] = ()
    groups: tuple[str, ...] | None = None  # inventory groups the image is a host of; None: not said
    host: str | None = None  # the inventory host name the image takes (its host_vars)
    inventory: Path | None = None  # the inventory given by the spec
    inputs: tuple[str, ...] = ()  # host paths Ansible may read, keyed by content
    record_inputs: bool = False  # key a cache hole from now on instead of failing

    @property
    def variables(self) -> Mapping[str, Any]:
        """The extra vars."""
        return self.vars

    @property
    def sensitive(self) -> tuple[str, ...]:
        """The names of `sensitive_vars`."""
        return self.sensitive_vars

    def key_form(self) -> Mapping[str, Any]:
        """The roles and the playbook (the inventory is keyed by its files and the host)."""
        form: dict[str, Any] = {"roles": list(self.roles), "playbook": self.playbook}
        if self.inputs:  # their content is keyed too, as tools (AnsibleProvisioner.inputs)
            form["inputs"] = list(self.inputs)
        return form


def settings_of(holder: ImageSpec | Variant | Layer) -> AnsibleSettings:
    """The Ansible settings of a spec, a variant or a layer that the ansible provisioner applies."""
    found = holder.settings
    if not isinstance(found, AnsibleSettings):
        raise TypeError(f"{type(holder).__name__} is not for the ansible provisioner: "
                        f"{type(found).__name__}")
    return found


def read(top: Fields, variants: Mapping[str, Fields],
         project: Project) -> tuple[AnsibleSettings, dict[str, AnsibleSettings]]:
    """Read the Ansible keys of a spec and of each variant (InputError at file:line).

    Returns:
        The spec layer's settings, and each variant layer's: its `roles_append`
        as its roles, no playbook, and the spec's vars under its own.
    """
    roles = top.text_list("roles", pattern=ROLE_NAME_RE, what="a role name")
    playbook = project_path(project, top, "playbook")
    names = top.data.get("sensitive_vars")
    hidden = frozenset(n for n in names if isinstance(n, str)) if isinstance(names, list) \
        else frozenset()
    vars_ = read_vars(top, "vars", hidden)
    sensitive = top.text_list("sensitive_vars", pattern=VAR_NAME_RE, what="a variable name")
    layers: dict[str, AnsibleSettings] = {}
    own_vars: list[Mapping[str, Any]] = []
    for name, body in variants.items():
        appended = body.text_list("roles_append", pattern=ROLE_NAME_RE, what="a role name")
        if not appended:
            raise InputError(f"variants.{name}: needs roles_append "
                             "(a variant is a layer of extra roles)",
                             path=body.path, line=body.line)
        extra = read_vars(body, "vars", hidden)
        own_vars.append(extra)
        layers[name] = AnsibleSettings(roles=appended, vars={**vars_, **extra})
    _check_sensitive_known(top, sensitive, vars_, own_vars)
    groups, host, inventory = _inventory_fields(project, top)
    inputs, record = _host_inputs(top), top.flag("record_inputs", False)
    spec = AnsibleSettings(roles=roles, playbook=playbook, vars=vars_, sensitive_vars=sensitive,
                           groups=groups, host=host, inventory=inventory, inputs=inputs,
                           record_inputs=record)
    # A variant's layer is a host of the same inventory, with the same secrets and inputs.
    return spec, {name: replace(layer, sensitive_vars=sensitive, groups=groups, host=host,
                                inventory=inventory, inputs=inputs, record_inputs=record)
                  for name, layer in layers.items()}


def _host_inputs(top: Fields) -> tuple[str, ...]:
    """`inputs:`: absolute host paths that exist (observed.py refuses any other host read)."""
    inputs = top.text_list("inputs", what="an absolute host path")
    for index, path in enumerate(inputs):
        if not os.path.isabs(path):
            raise top.item_fail("inputs", index, f"{path!r} is not an absolute path; "
                                "`inputs:` declares host files outside the project")
        if not os.path.exists(path):
            raise top.item_fail("inputs", index, f"{path} does not exist")
    return inputs


def read_vars(fields: Fields, key: str, sensitive: frozenset[str] = frozenset()
              ) -> dict[str, Any]:
    """A `vars:` mapping: valid variable names, values that JSON can carry.

    An error in a `sensitive` var names its key, never its value (nor a key or a
    number inside it).
    """
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
    for var, value in section.data.items():
        where = f"{section.where}.{var}"
        try:
            require_json(value, section.path, where, section.line_of(var))
        except InputError:
            if var not in sensitive:
                raise
            raise InputError(f"{where}: a sensitive var can hold only text, numbers, lists "
                             "and mappings with text keys (its content is not shown)",
                             path=section.path, line=section.line_of(var)) from None
    return dict(plain(section.data))


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
    inventory = project_path(project, top, "inventory")
    if inventory is not None and not inventory.exists():
        raise top.fail("inventory", f"{top.data['inventory']!r} does not exist")
    if groups is None and (host is not None or inventory is not None):
        key = "host" if host is not None else "inventory"
        raise top.fail(key, f"`{key}:` needs `groups:` (the inventory groups the image is a "
                            "host of; `[all]` for none but all)")
    return groups, host, inventory


def _check_sensitive_known(top: Fields, sensitive: tuple[str, ...], vars_: Mapping[str, Any],
                           variant_vars: list[Mapping[str, Any]]) -> None:
    """Each name in `sensitive_vars` must be a var of the spec or of one of its variants.

    A misspelt name would protect nothing: the real var's value would go into
    the `rolebake.inputs` label as a plain, guessable digest, and into logs.
    """
    known = set(vars_).union(*variant_vars)
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
