"""The provisioner registry: a provisioner is one module plus one line here."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from rolebake.errors import InputError

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


def sections() -> set[str]:
    """Top-level spec keys that belong to a provisioner (e.g. `chef`)."""
    found = set()
    for name in PROVISIONERS:
        section = provisioner_class(name).section
        if section:
            found.add(section)
    return found
