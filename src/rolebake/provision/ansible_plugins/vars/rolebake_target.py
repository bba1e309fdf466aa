"""Ansible vars plugin: the build target's connection settings, for the target alone.

Loaded by the ansible-playbook rolebake starts (ANSIBLE_VARS_PLUGINS, enabled
last in ANSIBLE_VARS_ENABLED). The target may be a real host of the project's
inventory (spec `host:`), whose host_vars/ name its address, user and python;
the build must still reach the container (or the parity VM). Inventory host
vars lose to host_vars/ files, and extra vars would apply to every host, so
that a template listing the other hosts' `ansible_host` would print the
container's id. Vars plugins run after host_group_vars here, for the playbook's
folder last, so these values beat every host_vars/ file and group_vars, for
the one host named in the file, and for nobody else.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ansible.inventory.host import Host
from ansible.plugins.vars import BaseVarsPlugin

DOCUMENTATION = """
name: rolebake_target
short_description: the build target's connection settings, for the target alone
description:
  - Reads the JSON file named by ROLEBAKE_TARGET_VARS (an object with the host's name
    and its vars) and gives those vars to that host only.
author: rolebake
"""

VARIABLE = "ROLEBAKE_TARGET_VARS"


class VarsModule(BaseVarsPlugin):
    """The target's vars, read once per process."""

    REQUIRES_ENABLED = True
    _loaded: tuple[str, dict[str, Any]] | None = None

    def get_vars(self, loader: Any, path: str, entities: Any, cache: bool = True) -> dict[str, Any]:
        """The target's vars for the target, nothing for any other host or group."""
        del loader, path, cache
        host, values = self._target()
        found: dict[str, Any] = {}
        for entity in entities if isinstance(entities, list) else [entities]:
            if isinstance(entity, Host) and entity.name == host:
                found.update(values)
        return found

    @classmethod
    def _target(cls) -> tuple[str, dict[str, Any]]:
        if cls._loaded is None:
            source = os.environ.get(VARIABLE)
            if not source:
                cls._loaded = ("", {})
            else:
                with open(source, encoding="utf-8") as handle:
                    data = json.load(handle)
                cls._loaded = (str(data["host"]), dict(data["vars"]))
        return cls._loaded
