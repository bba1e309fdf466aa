"""The chef-solo provisioner: Chef cookbooks and roles applied inside the build container.

Chef's toolchain is lent by a toolchain image (or found in the parent image),
never installed, and everything chef reads or writes stays on a tmpfs that is
never committed. One concern per module: `options` (the provisioner's keys
of a spec), `cookbooks` (what a run list pulls in), `render` (what rolebake
hands chef), `output` (what chef prints) and `provisioner` (the lifecycle).
"""

from __future__ import annotations

from rolebake.provision.chef.cookbooks import (
    Resolved,
    cookbook_depends,
    cookbook_index,
    resolve,
    role_run_list,
)
from rolebake.provision.chef.options import (
    ChefOptions,
    options_of,
    parse_section,
    require_toolchain,
)
from rolebake.provision.chef.output import (
    ChefError,
    DocOutputParser,
    ResourceEvent,
    failure_from_output,
    find_error,
    parse_chef_output,
)
from rolebake.provision.chef.provisioner import ChefSoloProvisioner
from rolebake.provision.chef.render import (
    chef_argv,
    chef_env,
    container_options,
    node_json,
    solo_rb,
    toolchain_dir,
)

__all__ = [
    "ChefError",
    "ChefOptions",
    "ChefSoloProvisioner",
    "DocOutputParser",
    "Resolved",
    "ResourceEvent",
    "chef_argv",
    "chef_env",
    "container_options",
    "cookbook_depends",
    "cookbook_index",
    "failure_from_output",
    "find_error",
    "node_json",
    "options_of",
    "parse_chef_output",
    "parse_section",
    "require_toolchain",
    "resolve",
    "role_run_list",
    "solo_rb",
    "toolchain_dir",
]
