"""ansible-core in rolebake's own process, with the project's settings and nothing else.

rolebake asks Ansible itself what an inventory holds, which hosts a pattern
names and what the project's ansible.cfg says (`ansible_inventory`,
`ansible_config`). ansible-core keeps its settings in module globals: the
`ansible.constants` values computed at import from whatever ansible.cfg and
ANSIBLE_* variables the process sees, the plugin loaders' search paths and
caches, and the `host_group_vars` plugin's file cache. `session()` sets all of
them for one project, under one lock, and puts them back afterwards:

- the settings come from a ConfigManager for the project's cfg (or an empty
  one) that reads the environment rolebake builds for Ansible's run, never the
  host's (a stray ANSIBLE_INVENTORY or ~/.ansible.cfg changes nothing);
- `context.CLIARGS` is empty (no command line of anyone else's applies);
- inventory and vars plugins are ansible-core's own only: the loaders search
  no folder, and no collection loader is installed, so no code of the
  project's or of a collection runs in rolebake's process. (The project's own
  plugins run in the build's ansible-playbook, as on a server.)
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

# Ansible's globals are one per process; every use of them goes through this lock.
_LOCK = threading.RLock()
EMPTY_CFG = Path(__file__).parent / "ansible_plugins" / "empty.cfg"
# The variables Ansible itself gives every host (not the inventory's).
MAGIC_VARS = frozenset({"inventory_hostname", "inventory_hostname_short", "group_names", "groups",
                        "omit", "playbook_dir", "inventory_dir", "inventory_file",
                        "ansible_playbook_python", "ansible_config_file", "ansible_version",
                        "ansible_check_mode", "ansible_diff_mode", "ansible_forks",
                        "ansible_inventory_sources", "ansible_skip_tags", "ansible_run_tags",
                        "ansible_verbosity", "role_names", "hostvars", "environment",
                        "ansible_collection_name", "ansible_dependent_role_names",
                        "ansible_play_role_names", "ansible_role_names", "ansible_play_name",
                        "ansible_play_hosts", "ansible_play_hosts_all", "ansible_play_batch",
                        "play_hosts", "ansible_search_path"})


def ready() -> None:
    """Call before importing anything of ansible-core in rolebake's process."""
    with _LOCK:
        _display_made_on_real_streams()


def _display_made_on_real_streams() -> None:
    """Make Ansible's Display singleton while sys.stdout/stderr are the process's own.

    Display patches the streams it finds when it is made (a lock around writes, an
    encoding error handler); rolebake's RedactingStream has neither `buffer` nor
    `reconfigure`, and Ansible would print two warnings into every command that
    asks it anything. Display looks sys.stdout up again at every write, so its
    output still goes through the redacting streams afterwards.
    """
    if "ansible.utils.display" in sys.modules:
        return  # made already (the patch is Display's first-instance work only)
    out, err = sys.stdout, sys.stderr
    try:
        sys.stdout = sys.__stdout__ or out
        sys.stderr = sys.__stderr__ or err
        from ansible.utils.display import Display

        Display()
    finally:
        sys.stdout, sys.stderr = out, err


def config_manager(path: Path | None, env: Mapping[str, str]) -> Any:
    """A ConfigManager for `path` (None: no cfg) that sees `env` instead of os.environ.

    One per cfg (as it is now) and environment, kept for the process.

    Raises:
        AnsibleOptionsError: the file is not a config Ansible can read.
    """
    cfg = path if path is not None else EMPTY_CFG
    ready()
    try:
        stat = cfg.stat()
        stamp: tuple[int, int] = (stat.st_mtime_ns, stat.st_size)
    except OSError:
        stamp = (0, 0)
    return _config_manager(cfg, stamp, tuple(sorted(env.items())))


_BASE_DEFS: dict[str, Any] = {}  # ansible-core's own setting definitions (base.yml), read once


@functools.lru_cache(maxsize=16)
def _config_manager(cfg: Path, stamp: tuple[int, int],
                    env_items: tuple[tuple[str, str], ...]) -> Any:
    del stamp  # part of the cache key only
    from ansible.config import manager as manager_module
    from ansible.config.manager import ConfigManager

    env = dict(env_items)

    class ProjectConfig(ConfigManager):
        """Ansible's own config manager; its environment lookups go to `env`."""

        def _read_config_yaml_file(self, yml_file: Any) -> Any:
            # base.yml takes 0.2 s to parse; every manager reads the same file.
            key = os.fsdecode(yml_file)
            if key not in _BASE_DEFS:
                from ansible import constants

                # The manager ansible.constants made at import read the same file.
                ours = getattr(constants.config, "_base_defs", None)
                same = key == os.path.join(os.path.dirname(manager_module.__file__), "base.yml")
                _BASE_DEFS[key] = ours if same and ours else \
                    super()._read_config_yaml_file(yml_file)
            return _BASE_DEFS[key]

        def _loop_entries(self, container: Any, entry_list: Any) -> Any:
            return super()._loop_entries(env if container is os.environ else container,
                                         entry_list)

    return ProjectConfig(conf_file=str(cfg))


def _constants(manager: Any) -> dict[str, Any]:
    """Every setting's value, as ansible/constants.py computes them at import; once a manager."""
    found = getattr(manager, "_rolebake_constants", None)
    if found is None:
        from ansible import constants

        # Defaults are templated with the settings computed so far ({{ ANSIBLE_HOME }}),
        # over the module's own names, as constants.py does.
        scope = dict(vars(constants))
        found = {}
        for name in manager.get_configuration_definitions():
            found[name] = scope[name] = manager.get_config_value(name, variables=scope)
        manager._rolebake_constants = found
    return dict(found)


@contextlib.contextmanager
def session(path: Path | None, env: Mapping[str, str]) -> Iterator[Any]:
    """ansible-core's globals set from the project's cfg and `env`, for a `with` block.

    Args:
        path: the project's ansible.cfg, or None.
        env: the ANSIBLE_* settings the build's run gets (not the host's).

    Yields:
        The ConfigManager in use (ansible.constants.config).
    """
    with _LOCK:
        from ansible import constants
        from ansible.plugins import loader as plugin_loader

        manager = config_manager(path, env)
        names = list(manager.get_configuration_definitions())
        saved = {name: getattr(constants, name) for name in (*names, "config")
                 if hasattr(constants, name)}
        from ansible import context
        from ansible.inventory import manager as inventory_manager
        from ansible.utils.context_objects import CLIArgs

        cliargs = context.CLIARGS
        loaders = (plugin_loader.inventory_loader, plugin_loader.vars_loader)
        loader_paths = [loader.config for loader in loaders]
        ignored = inventory_manager.IGNORED
        try:
            values = _constants(manager)
            # No command line: no extra vars, limit or tags of anyone else's reach the answers.
            context.CLIARGS = CLIArgs({})
            constants.config = manager
            for name, value in values.items():
                setattr(constants, name, value)
            for loader in loaders:
                loader.config = []  # ansible-core's own plugins only
                loader._clear_caches()
            _clear_vars_cache()
            # What an inventory folder's walk skips, computed at import from the host's settings.
            inventory_manager.IGNORED = re.compile(b"|".join([
                *inventory_manager.IGNORED_ALWAYS,
                *(os.fsencode(p) for p in constants.INVENTORY_IGNORE_PATTERNS),
                *(re.escape(os.fsencode(e)) + b"$" for e in constants.INVENTORY_IGNORE_EXTS)]))
            yield manager
        finally:
            context.CLIARGS = cliargs
            inventory_manager.IGNORED = ignored
            for name, value in saved.items():
                setattr(constants, name, value)
            for loader, paths in zip(loaders, loader_paths, strict=True):
                loader.config = paths
                loader._clear_caches()
            _clear_vars_cache()


def _clear_vars_cache() -> None:
    """host_group_vars remembers, per process, which vars files exist: forget it."""
    for name, module in list(sys.modules.items()):
        if name.endswith("host_group_vars") and module is not None:
            for cache in ("FOUND", "NAK", "CANONICAL_PATHS"):
                found: Any = getattr(module, cache, None)
                if found is not None:
                    found.clear()


class _Collector:
    """Stands in for Ansible's Display in the inventory manager: keeps what it would print."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.messages.append(str(msg))

    def error_as_warning(self, msg: str | None = None, exception: BaseException | None = None,
                         **kwargs: Any) -> None:
        detail = str(getattr(exception, "message", "") or exception or "").strip()
        self.messages.append(" ".join(filter(None, [msg, detail.splitlines()[0]
                                                    if detail else ""])))

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None  # debug, vvv, ...: nothing to keep


@contextlib.contextmanager
def collected_warnings() -> Iterator[list[str]]:
    """What the inventory manager would print (each plugin's reason a source failed), kept.

    Only inside `session`: the lock is held.
    """
    from ansible.inventory import manager as inventory_manager

    collector = _Collector()
    display = inventory_manager.display
    inventory_manager.display = collector
    try:
        yield collector.messages
    finally:
        inventory_manager.display = display
