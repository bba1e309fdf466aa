"""The chef-solo provisioner's part of a spec: `chef:`, a variant's `roles_append`.

Their schema, and their validation into ChefOptions (one frozen record per layer).

The toolchain is named here (`chef.image`, ROLEBAKE_CHEF_IMAGE or `chef.path`);
whether a named toolchain image is usable is checked later, by the provisioner.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rolebake.errors import InputError
from rolebake.reference import is_image_reference
from rolebake.spec import ROLE_NAME_RE, ImageSpec, Project
from rolebake.spec_schema import Key, ProvisionerSettings, Schema
from rolebake.yamlfile import Fields, plain, require_json

TOOLCHAIN_ENV = "ROLEBAKE_CHEF_IMAGE"
# The omnibus packages hard-code their prefix, so the volume must be mounted
# exactly there; the binary follows from which one the image declares.
TOOLCHAIN_DIRS = {"/opt/chef": "/opt/chef/bin/chef-solo", "/opt/cinc": "/opt/cinc/bin/cinc-solo"}

DEFAULTS = {"cookbooks": "cookbooks", "roles": "cookbooks/roles",
            "environments": "cookbooks/environments"}
SECTION_KEYS = {"image", "path", "cookbooks", "roles", "environments", "run_list", "attributes",
                "environment"}
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
RUN_LIST_RE = re.compile(
    r"^(?:recipe\[(?P<recipe>[A-Za-z0-9_.-]+(?:::[A-Za-z0-9_.-]+)?)(?:@[0-9][0-9.]*)?\]"
    r"|role\[(?P<role>[A-Za-z0-9_.-]+)\]"
    r"|(?P<bare>[A-Za-z0-9_.-]+(?:::[A-Za-z0-9_.-]+)?))$"
)


SCHEMA = Schema(
    owner="chef-solo",
    summary="Chef cookbooks and roles applied with chef-solo, the toolchain lent, never "
            "installed.",
    keys=(
        Key("chef", "a mapping: run_list, attributes, image, path, cookbooks, roles, "
                    "environments, environment",
            "What chef-solo runs: `run_list` (required: recipe[name], role[name]), node "
            "`attributes`, the toolchain (`image` or `path`), the project folders and the "
            "Chef environment.",
            "required; folders default to cookbooks/, cookbooks/roles, cookbooks/environments"),
    ),
    variant_keys=(
        Key("roles_append", "a list of Chef role names (required)",
            "The Chef roles the variant's layer runs (as role[name]) on top of the spec's "
            "image."),
    ),
    instead=(("roles", "Chef roles go in `chef.run_list` as role[name]"),
             ("playbook", "give a `chef.run_list` instead"),
             ("vars", "node attributes go in `chef.attributes`"),
             ("sensitive_vars", "it applies to Ansible `vars:`")),
)


@dataclass(frozen=True)
class ChefOptions(ProvisionerSettings):
    """The spec's `chef:` section, validated: what one layer runs (a variant: its roles)."""

    run_list: tuple[str, ...]
    attributes: Mapping[str, Any] = field(default_factory=dict)
    image: str | None = None
    image_from: str | None = None  # "chef.image" or the environment variable's name
    path: str | None = None
    cookbooks: str = DEFAULTS["cookbooks"]
    roles: str = DEFAULTS["roles"]
    environments: str = DEFAULTS["environments"]
    environment: str | None = None

    def key_form(self) -> Mapping[str, Any]:
        """All of it, hashed into the layer's key."""
        return self.to_dict()

    def to_dict(self) -> dict[str, Any]:
        """The plain form (hashed into the layer's key)."""
        return {
            "run_list": list(self.run_list),
            "attributes": dict(self.attributes),
            "image": self.image,
            "image_from": self.image_from,
            "path": self.path,
            "cookbooks": self.cookbooks,
            "roles": self.roles,
            "environments": self.environments,
            "environment": self.environment,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChefOptions:
        """Read the plain form back."""
        return cls(
            run_list=tuple(data.get("run_list") or ()),
            attributes=dict(data.get("attributes") or {}),
            image=data.get("image"),
            image_from=data.get("image_from"),
            path=data.get("path"),
            cookbooks=data.get("cookbooks") or DEFAULTS["cookbooks"],
            roles=data.get("roles") or DEFAULTS["roles"],
            environments=data.get("environments") or DEFAULTS["environments"],
            environment=data.get("environment"),
        )


def read_variants(options: ChefOptions, variants: Mapping[str, Fields]) -> dict[str, ChefOptions]:
    """Each variant's layer: the spec's options, running the variant's `roles_append` roles."""
    layers: dict[str, ChefOptions] = {}
    for name, body in variants.items():
        roles = body.text_list("roles_append", pattern=ROLE_NAME_RE, what="a role name")
        if not roles:
            raise InputError(f"variants.{name}: needs roles_append "
                             "(a variant is a layer of extra Chef roles)",
                             path=body.path, line=body.line)
        layers[name] = replace(options, run_list=tuple(f"role[{r}]" for r in roles))
    return layers


def parse_section(top: Fields, project: Project,
                  environ: Mapping[str, str] | None = None) -> ChefOptions:
    """Validate a spec's `chef:` mapping (InputError with file and line on any problem).

    Args:
        top: the spec's top-level mapping (its `chef:` key, and the lines of the others).
        project: the project the paths are relative to.
        environ: where ROLEBAKE_CHEF_IMAGE is looked up (default: os.environ).

    Returns:
        The options; `image` falls back to ROLEBAKE_CHEF_IMAGE.
    """
    environ = os.environ if environ is None else environ
    section = top.mapping("chef")
    if section is None:
        raise InputError("provisioner chef-solo needs a `chef:` section with a `run_list:`",
                         path=top.path, line=top.line_of("provisioner") or 1)
    section.reject_unknown(SECTION_KEYS)
    run_list = section.text_list("run_list", pattern=RUN_LIST_RE,
                                what="a run-list item (recipe[name], role[name])")
    if not run_list:
        raise InputError("chef: missing `run_list:` (e.g. [\"role[web]\"])",
                         path=section.path, line=section.line)
    attributes = _attributes(section)
    image = section.text("image", what="an image reference")
    if image is not None and not is_image_reference(image):
        raise section.fail("image", f"{image!r} is not an image reference")
    path = section.text("path", what="an absolute path to chef-solo in the parent image")
    if path is not None and not path.startswith("/"):
        raise section.fail("path", f"{path!r} must be an absolute path (e.g. "
                                   "/opt/cinc/bin/cinc-solo)")
    if image is not None and path is not None:
        raise section.fail("path", "give either `image:` (a toolchain image) or `path:` "
                                   "(chef-solo in the parent image), not both")
    image_from = "chef.image" if image is not None else None
    if image is None and path is None and environ.get(TOOLCHAIN_ENV, "").strip():
        image = environ[TOOLCHAIN_ENV].strip()
        image_from = TOOLCHAIN_ENV
        if not is_image_reference(image):
            raise InputError(f"{TOOLCHAIN_ENV}={image!r} is not an image reference",
                             path=top.path, line=top.line_of("chef"))
    dirs = {key: _project_dir(project, section, key) for key in DEFAULTS}
    environment = section.text("environment", pattern=NAME_RE, what="an environment name")
    return ChefOptions(
        run_list=run_list,
        attributes=attributes,
        image=image,
        image_from=image_from,
        path=path,
        cookbooks=dirs["cookbooks"],
        roles=dirs["roles"],
        environments=dirs["environments"],
        environment=environment,
    )


def _attributes(section: Fields) -> dict[str, Any]:
    attrs = section.mapping("attributes")
    if attrs is None:
        return {}
    for key in attrs.data:
        if not isinstance(key, str) or not key:
            raise InputError(f"chef.attributes: {key!r} is not an attribute name",
                             path=attrs.path, line=attrs.line_of(str(key)))
        if key in ("run_list", "recipes"):
            raise attrs.fail(key, "is not an attribute: the run list is `chef.run_list`")
    # chef-solo reads them as JSON: refuse dates, sets, binary and .inf/.nan here.
    require_json(attrs.data, attrs.path, attrs.where, attrs.line)
    value: dict[str, Any] = plain(attrs.data)
    return value


def _project_dir(project: Project, section: Fields, key: str) -> str:
    raw = section.text(key, what="a folder inside the project") or DEFAULTS[key]
    path = Path(raw) if Path(raw).is_absolute() else project.root / raw
    if not project.inside(path):
        raise section.fail(key, f"{raw!r} is outside the project")
    if section.has(key) and not path.is_dir():
        raise section.fail(key, f"{raw!r} is not a folder")
    return project.relative(path)


def require_toolchain(options: ChefOptions, spec: ImageSpec) -> None:
    """Fail (exit 2, one line) when no chef toolchain is named at all.

    Whether a named toolchain image is on the engine is checked when the
    toolchain is set up, still before any container is made.
    """
    if options.image is None and options.path is None:
        raise InputError(
            "no chef toolchain: set ROLEBAKE_CHEF_IMAGE or `chef.image:` to a toolchain image "
            "with /opt/chef or /opt/cinc (e.g. cincproject/cinc), or `chef.path:` to the "
            "chef-solo the parent image has",
            path=spec.path, line=spec.line_of("chef") or spec.line_of("provisioner"),
        )


def options_of(settings: ProvisionerSettings) -> ChefOptions:
    """The chef options of a layer that the chef-solo provisioner applies."""
    if not isinstance(settings, ChefOptions):
        raise TypeError(f"not chef-solo settings: {type(settings).__name__}")
    return settings
