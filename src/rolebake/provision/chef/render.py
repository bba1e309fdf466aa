"""What rolebake hands chef in the build container: workspace, solo.rb, node JSON, argv, mounts.

Everything chef needs lives on a tmpfs at /mnt, which the engine never
commits: the read-only cookbooks, roles and environments, the solo.rb and
node JSON rolebake writes, and chef's cache, backups and local-mode state.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rolebake.provision.base import SCRATCH, ContainerOptions, scratch_mount
from rolebake.provision.chef.options import TOOLCHAIN_DIRS

TMPFS = SCRATCH
WORKSPACE = f"{TMPFS}/rolebake-chef"
# The lent toolchain volume is mounted here, on the tmpfs; /opt/chef or /opt/cinc
# is a link to it for the length of the build (the omnibus prefix is hard-coded).
TOOLCHAIN_MOUNT = f"{WORKSPACE}/toolchain"
CONFIG_DIR = f"{WORKSPACE}/config"
COOKBOOKS_DIR = f"{WORKSPACE}/cookbooks"
ROLES_DIR = f"{WORKSPACE}/roles"
ENVIRONMENTS_DIR = f"{WORKSPACE}/environments"
STATE_DIR = f"{WORKSPACE}/state"
OUTPUT_FILE = f"{WORKSPACE}/state/chef-solo.out"
NODE_NAME = "rolebake-build"


def _ruby(value: str) -> str:
    # Single quotes: no interpolation, only \\ and \' are escapes.
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def solo_rb(*, environment: str | None = None, workspace: str = WORKSPACE) -> str:
    """The solo.rb for one build: every path chef reads or writes is in the workspace.

    Args:
        environment: the Chef environment to converge in, if any.
        workspace: the folder (on the build container's tmpfs) chef works in.

    Returns:
        The file's text.
    """
    state = f"{workspace}/state"
    lines = [
        "# Written by rolebake for one image build; it never reaches the image.",
        "# Every path chef writes is on a tmpfs, so nothing of chef is committed.",
        f"chef_repo_path {_ruby(state + '/repo')}",
        f"cookbook_path [{_ruby(workspace + '/cookbooks')}]",
        f"role_path {_ruby(workspace + '/roles')}",
        f"environment_path {_ruby(workspace + '/environments')}",
        f"data_bag_path {_ruby(workspace + '/data_bags')}",
        f"node_path {_ruby(state + '/nodes')}",
        f"client_path {_ruby(state + '/clients')}",
        f"cache_path {_ruby(state + '/cache')}",
        f"file_cache_path {_ruby(state + '/cache')}",
        f"file_backup_path {_ruby(state + '/backup')}",
        f"node_name {_ruby(NODE_NAME)}",
        "log_location STDOUT",
    ]
    if environment is not None:
        lines.append(f"environment {_ruby(environment)}")
    return "\n".join(lines) + "\n"


def node_json(run_list: Sequence[str], attributes: Mapping[str, Any]) -> str:
    """The JSON given to `chef-solo -j`: normal attributes plus the run list."""
    return json.dumps({**dict(attributes), "run_list": list(run_list)}, indent=2,
                      sort_keys=True) + "\n"


def chef_argv(binary: str, workspace: str = WORKSPACE) -> list[str]:
    """The chef-solo command line: the doc formatter, forced, so each resource gets a line."""
    return [binary, "--config", f"{workspace}/config/solo.rb",
            "--json-attributes", f"{workspace}/config/node.json",
            "--format", "doc", "--force-formatter", "--no-color", "--log_level", "warn"]


def chef_env() -> dict[str, str]:
    """Environment for the run: accept Chef's license for this run only (Cinc ignores it)."""
    return {"CHEF_LICENSE": "accept-no-persist", "LANG": "C.UTF-8"}


def toolchain_dir(volumes: Mapping[str, Any] | None) -> str | None:
    """Which toolchain folder an image declares as a VOLUME (None: neither)."""
    for folder in TOOLCHAIN_DIRS:
        if folder in (volumes or {}) or f"{folder}/" in (volumes or {}):
            return folder
    return None


def container_options(*, cookbooks: Mapping[str, Path], roles_dir: Path | None,
                      environments_dir: Path | None, config_dir: Path,
                      toolchain_mount: Mapping[str, Any] | None) -> ContainerOptions:
    """The build container's mounts: a tmpfs workspace, the inputs read-only, the toolchain.

    Only the cookbooks the run list uses are mounted, one by one, so chef sees
    exactly the files the cache key covers.
    """
    mounts: list[Mapping[str, Any]] = [scratch_mount()]

    def bind(source: Path, target: str) -> None:
        mounts.append({"target": target, "source": str(source.resolve()), "type": "bind",
                       "read_only": True})

    bind(config_dir, CONFIG_DIR)
    for name, folder in cookbooks.items():
        bind(folder, f"{COOKBOOKS_DIR}/{name}")
    if roles_dir is not None and roles_dir.is_dir():
        bind(roles_dir, ROLES_DIR)
    if environments_dir is not None and environments_dir.is_dir():
        bind(environments_dir, ENVIRONMENTS_DIR)
    if toolchain_mount is not None:
        mounts.append(toolchain_mount)
    return ContainerOptions(mounts=tuple(mounts))

