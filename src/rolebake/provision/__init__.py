"""The provisioner registry: a provisioner is one module plus one line here."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from rolebake.errors import InputError
from rolebake.spec import CORE_SCHEMA
from rolebake.spec_schema import Schema

if TYPE_CHECKING:
    from rolebake.provision.base import Provisioner

PROVISIONERS: dict[str, str] = {
    "ansible": "rolebake.provision.ansible.AnsibleProvisioner",
    "chef-solo": "rolebake.provision.chef.ChefSoloProvisioner",
}


def names() -> list[str]:
    """Every provisioner a spec may name."""
    return sorted(PROVISIONERS)


def provisioner_class(name: str) -> type[Provisioner]:
    """Load the provisioner class registered under `name`."""
    try:
        dotted = PROVISIONERS[name]
    except KeyError:
        raise InputError(f"unknown provisioner {name!r}; known: {', '.join(names())}") from None
    module, _, attr = dotted.rpartition(".")
    cls: type[Provisioner] = getattr(importlib.import_module(module), attr)
    return cls


def readers() -> dict[str, type[Provisioner]]:
    """Every provisioner by name, as the spec core reads a spec with them (spec.load_spec)."""
    return {name: provisioner_class(name) for name in names()}


def schemas(only: str | None = None) -> list[Schema]:
    """The spec keys of the core and of every provisioner (or of the core and `only`).

    Raises:
        InputError: `only` is not a provisioner.
    """
    wanted = [only] if only is not None else names()
    return [CORE_SCHEMA, *(provisioner_class(name).schema() for name in wanted)]
