"""How Ansible is configured for a run: the project's ansible.cfg, and an environment built afresh.

ansible-runner hands Ansible the whole host environment, and Ansible then
reads `~/.ansible.cfg` or `/etc/ansible/ansible.cfg`, plugins and collections
from `~/.ansible` and `/usr/share/ansible`: all of that would change what a
build does without changing its cache key. So the environment is built here
from scratch. Ansible reads the project's own `ansible.cfg` (keyed, see
`ansible_inputs`) or an empty one, a private `ANSIBLE_HOME`, and every
setting rolebake depends on is set over whatever the cfg says.

What the cfg says is read by Ansible's own ConfigManager (`ansible_api`): the
same typing, the same paths relative to the cfg's folder, the same keys
(an old spelling Ansible dropped is dropped here too).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rolebake.errors import InputError
from rolebake.provision import ansible_api
from rolebake.spec import Project

CONFIG_FILE = "ansible.cfg"
PLUGINS = Path(__file__).parent / "ansible_plugins"
TARGET_VARS_PLUGIN = "rolebake_target"  # ansible_plugins/vars/rolebake_target.py
# Without an `[inventory] enable_plugins` in the project's cfg: no script, no plugin config.
DEFAULT_INVENTORY_PLUGINS = ("yaml", "ini")

# [defaults] keys naming folders Ansible loads code or content from. A project
# may point them at folders of its own (keyed, refused when outside the
# project); when its cfg leaves one unset, the variable points into the run's
# private ANSIBLE_HOME, so ~/.ansible/plugins and /usr/share/ansible are not read.
PLUGIN_PATHS: Mapping[str, str] = {
    "library": "ANSIBLE_LIBRARY",
    "module_utils": "ANSIBLE_MODULE_UTILS",
    "action_plugins": "ANSIBLE_ACTION_PLUGINS",
    "become_plugins": "ANSIBLE_BECOME_PLUGINS",
    "cache_plugins": "ANSIBLE_CACHE_PLUGINS",
    "cliconf_plugins": "ANSIBLE_CLICONF_PLUGINS",
    "connection_plugins": "ANSIBLE_CONNECTION_PLUGINS",
    "doc_fragment_plugins": "ANSIBLE_DOC_FRAGMENT_PLUGINS",
    "filter_plugins": "ANSIBLE_FILTER_PLUGINS",
    "httpapi_plugins": "ANSIBLE_HTTPAPI_PLUGINS",
    "inventory_plugins": "ANSIBLE_INVENTORY_PLUGINS",
    "lookup_plugins": "ANSIBLE_LOOKUP_PLUGINS",
    "netconf_plugins": "ANSIBLE_NETCONF_PLUGINS",
    "strategy_plugins": "ANSIBLE_STRATEGY_PLUGINS",
    "terminal_plugins": "ANSIBLE_TERMINAL_PLUGINS",
    "test_plugins": "ANSIBLE_TEST_PLUGINS",
    "vars_plugins": "ANSIBLE_VARS_PLUGINS",
    "collections_path": "ANSIBLE_COLLECTIONS_PATH",
}
# (ansible-core 2.19 no longer reads the old spelling `collections_paths`; neither does rolebake.)
COLLECTIONS_KEYS = ("collections_path",)
# [defaults] keys naming one file Ansible reads content from.
CONTENT_FILES = ("plugin_filters_cfg",)

# What rolebake decides whatever the project's cfg says: how the target is
# reached, where Ansible's temporary files go, what rolebake parses (the
# runner's events and the default callback's YAML), and nothing that would
# stop a build to wait for a person or write Ansible's output elsewhere.
CONTROLLED: Mapping[str, str] = {
    "ANSIBLE_PIPELINING": "True",
    "ANSIBLE_HOST_KEY_CHECKING": "False",
    "ANSIBLE_RETRY_FILES_ENABLED": "False",
    "ANSIBLE_NOCOLOR": "1",
    "ANSIBLE_FORCE_COLOR": "0",
    "ANSIBLE_STDOUT_CALLBACK": "default",
    "ANSIBLE_CALLBACK_RESULT_FORMAT": "yaml",
    # ansible-runner adds its own event callback folder to this; nothing else.
    "ANSIBLE_CALLBACK_PLUGINS": "",
    "ANSIBLE_DEPRECATION_WARNINGS": "False",
    "ANSIBLE_SYSTEM_WARNINGS": "False",
    # An inventory file Ansible cannot read is an input error, not a warning in a log.
    "ANSIBLE_INVENTORY_UNPARSED_FAILED": "True",
    "ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "True",
    "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "True",  # community.docker comes from there
    "ANSIBLE_LOG_PATH": "/dev/null",  # the layer's log is rolebake's, redacted
    "ANSIBLE_ENABLE_TASK_DEBUGGER": "False",
    "ANSIBLE_DEBUG": "False",
    "ANSIBLE_KEEP_REMOTE_FILES": "False",
}

# The only host variables Ansible gets: where programs and the user's home
# are, the locale, and how to reach the engine or a VM (the same engine
# rolebake talks to; ssh's agent for `parity`). PYTHONPATH stays so Ansible
# imports what rolebake's own Python sees (the collections keyed are found there).
HOST_VARIABLES = (
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR",
    "PYTHONPATH", "SSH_AUTH_SOCK",
    "DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_TLS_HOSTNAME",
    "DOCKER_API_VERSION", "DOCKER_TIMEOUT",
    "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
)

_KEY_LINE = re.compile(r"^\s*([^=:;#\s][^=:]*?)\s*[=:]")
_SECTION_LINE = re.compile(r"^\s*\[([^\]]+)\]")
# A plugin named by its fully qualified name: namespace.collection.plugin.
_FQCN = re.compile(r"(?<![\w./-])([a-z][a-z0-9_]*\.[a-z][a-z0-9_]*)\.[a-z_][a-z0-9_]*(?![\w/-])")


@dataclass(frozen=True)
class AnsibleConfig:
    """The project's ansible.cfg, as Ansible's own ConfigManager reads it.

    Values are typed and resolved by Ansible (a path relative to the cfg's
    folder, `~` and `$VARS` expanded, lists split); a setting counts only
    when the cfg sets it (its origin is the file), never Ansible's default
    nor the host's ANSIBLE_* variables.
    """

    path: Path | None
    manager: Any = field(default=None, compare=False, repr=False)  # ansible's ConfigManager
    names: Mapping[tuple[str, str], str] = field(default_factory=dict)  # (section, key) -> setting
    lines: Mapping[tuple[str, str], int] = field(default_factory=dict)

    def value(self, key: str, section: str = "defaults") -> Any:
        """The value the cfg gives `[section] key`, as Ansible types it; None when unset."""
        setting = self.names.get((section, key.lower()))
        if self.manager is None or self.path is None or setting is None:
            return None
        return self._setting(setting, key, section)

    def _setting(self, setting: str, key: str, section: str) -> Any:
        from ansible.errors import AnsibleError

        try:
            value, origin = self.manager.get_config_value_and_origin(setting)
        except AnsibleError as exc:
            raise InputError(f"{key} = ...: {_first_line(str(exc))}", path=self.path,
                             line=self.line(key, section)) from None
        return value if origin == str(self.path) else None

    def get(self, key: str, section: str = "defaults") -> str | None:
        """The value of a setting as text (a list joined with `,`); None when the cfg leaves it."""
        value = self.value(key, section)
        if value is None:
            return None
        return ",".join(map(str, value)) if isinstance(value, list) else str(value)

    def paths(self, key: str, section: str = "defaults") -> list[str]:
        """A path-list setting, each entry resolved by Ansible (relative to the cfg's folder)."""
        value = self.value(key, section)
        if value is None:
            return []
        return [str(v) for v in (value if isinstance(value, list) else [value])]

    def line(self, key: str, section: str = "defaults") -> int | None:
        """The line of a setting in the cfg (for messages only)."""
        return self.lines.get((section, key.lower()))

    def collections(self) -> set[str]:
        """Collections the cfg names plugins of (a strategy, a callback, a vars plugin)."""
        found: set[str] = set()
        for (section, key), setting in self.names.items():
            if (section, key) not in self.lines:
                continue
            value = self._setting(setting, key, section)
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, str):
                    found.update(m.group(1) for m in _FQCN.finditer(item))
        return found - {"ansible.builtin", "ansible.legacy"}


def read_config(project: Project) -> AnsibleConfig:
    """The project's ansible.cfg (at its root) through Ansible's ConfigManager; empty when none.

    Raises:
        InputError: the file is not a config Ansible can read (file and line).
    """
    path = project.root / CONFIG_FILE
    if not path.is_file():
        return AnsibleConfig(None)
    try:
        stat = path.stat()
    except OSError as exc:
        raise InputError(f"cannot read: {exc}", path=path) from None
    return _read_config(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=32)
def _read_config(path: Path, mtime: int, size: int) -> AnsibleConfig:
    del mtime, size  # the cache key: a changed file is read again
    ansible_api.ready()
    from ansible.errors import AnsibleError

    try:
        text = path.read_text(encoding="utf-8")
        # The project's own values: no environment (rolebake's settings are laid over them
        # in the run's environment, see `settings`).
        manager = ansible_api.config_manager(path, {})
    except (OSError, UnicodeDecodeError, AnsibleError) as exc:
        message = _first_line(str(exc))
        number = re.search(r"line (\d+)", message)
        raise InputError(f"not a valid ansible.cfg: {message}", path=path,
                         line=int(number.group(1)) if number else None) from None
    names: dict[tuple[str, str], str] = {}
    for setting, definition in manager.get_configuration_definitions().items():
        for entry in definition.get("ini") or ():
            names.setdefault((entry.get("section", "defaults"), entry["key"].lower()), setting)
    return AnsibleConfig(path, manager, names, _key_lines(text))


def _key_lines(text: str) -> dict[tuple[str, str], int]:
    """Where each key is written, so that an error can name its line (Ansible keeps none)."""
    lines: dict[tuple[str, str], int] = {}
    section = ""
    for number, line in enumerate(text.splitlines(), start=1):
        header = _SECTION_LINE.match(line)
        if header:
            section = header.group(1).strip()
            continue
        match = _KEY_LINE.match(line)
        if match and not line[:1].isspace():
            lines.setdefault((section, match.group(1).strip().lower()), number)
    return lines


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0]


def content_paths(project: Project, config: AnsibleConfig) -> list[tuple[str, Path]]:
    """The folders and files the project's cfg points Ansible at, each inside the project.

    Templated values (`{{ ANSIBLE_HOME }}/...`) point into the run's private
    ANSIBLE_HOME, which holds nothing, and are left out.

    Raises:
        InputError: a path that leaves the project, at the cfg's line.
    """
    if config.path is None:
        return []
    found: list[tuple[str, Path]] = []
    for key in (*PLUGIN_PATHS, *CONTENT_FILES):
        for entry in config.paths(key):
            if "{{" in entry:
                continue
            path = Path(entry)
            if not project.inside(path):
                raise InputError(f"{key} = {config.get(key)}: {path} is outside the project; "
                                 "rolebake reads nothing from outside it", path=config.path,
                                 line=config.line(key))
            found.append((key, path))
    return found


def roles_path(project: Project, config: AnsibleConfig, playbook: Path | None) -> list[Path]:
    """Where roles are looked up, in order: beside the playbook, the cfg's `roles_path`, roles/.

    Raises:
        InputError: a `roles_path` entry outside the project, at the cfg's line.
    """
    found = [playbook.parent / "roles"] if playbook is not None else []
    for entry in config.paths("roles_path"):
        if "{{" in entry:
            continue
        path = Path(entry)
        if not project.inside(path):
            raise InputError(f"roles_path = {config.get('roles_path')}: {path} is outside the "
                             "project; rolebake reads nothing from outside it",
                             path=config.path, line=config.line("roles_path"))
        found.append(path)
    found.append(project.roles_dir)
    return list(dict.fromkeys(found))


def inventory_plugins(config: AnsibleConfig) -> list[str]:
    """The inventory plugins Ansible may use: the cfg's `enable_plugins`, else yaml and ini.

    rolebake's own generated inventory is YAML, so `yaml` is always among them.
    A `script` (or any other) plugin runs only when the project's cfg, which is
    keyed, enables it (see docs/architecture.md).
    """
    enabled = [str(p) for p in config.value("enable_plugins", "inventory") or ()] \
        or list(DEFAULT_INVENTORY_PLUGINS)
    return list(dict.fromkeys([*enabled, "yaml"]))


def settings(config: AnsibleConfig, home: Path) -> dict[str, str]:
    """The ANSIBLE_* settings of a run: rolebake's over the project's cfg.

    The same settings serve the build's ansible-playbook (`environment`) and
    the questions rolebake asks Ansible in its own process (`ansible_api`).
    """
    cfg = config.path if config.path is not None else ansible_api.EMPTY_CFG
    env = dict(CONTROLLED)
    env.update({
        "ANSIBLE_CONFIG": str(cfg),
        "ANSIBLE_HOME": str(home),
        "ANSIBLE_INVENTORY_ENABLED": ",".join(inventory_plugins(config)),
        # The target's connection, over every host_vars: rolebake's vars plugin, last.
        "ANSIBLE_VARS_ENABLED": ",".join(dict.fromkeys([
            *(str(p) for p in config.value("vars_plugins_enabled") or ("host_group_vars",)),
            TARGET_VARS_PLUGIN])),
    })
    for key, variable in PLUGIN_PATHS.items():
        if not config.value(key):
            env[variable] = str(home / key.removesuffix("_path"))
    # The cfg's vars_plugins folders, when it names some: the variable hides the cfg's value.
    own = os.pathsep.join(config.paths("vars_plugins")) or env.get("ANSIBLE_VARS_PLUGINS", "")
    env["ANSIBLE_VARS_PLUGINS"] = os.pathsep.join(filter(None, [str(PLUGINS / "vars"), own]))
    return env


def environment(config: AnsibleConfig, data_dir: Path, *, roles_path: Sequence[Path],
                remote_tmp: str, programs: Path) -> dict[str, str]:
    """The whole environment ansible-playbook runs with: built, never copied from the host.

    Args:
        config: the project's ansible.cfg (`read_config`).
        data_dir: the run's private folder (removed after the run); holds
            ANSIBLE_HOME and the local tmp.
        roles_path: where roles are looked up, in order.
        remote_tmp: Ansible's temporary folder on the target.
        programs: the folder with the ansible-playbook to run (first on PATH).

    Returns:
        Variables for ansible-runner's `envvars`; see `runner_environment`.
    """
    env = {name: os.environ[name] for name in HOST_VARIABLES if name in os.environ}
    env["PATH"] = os.pathsep.join([str(programs), os.environ.get("PATH", "/usr/bin:/bin")])
    if not any(name in env for name in ("LC_ALL", "LC_CTYPE", "LANG")):
        env["LANG"] = "C.UTF-8"  # Ansible refuses to run without a UTF-8 locale
    env.update(settings(config, data_dir / "home"))
    env.update({
        "ANSIBLE_LOCAL_TEMP": str(data_dir / "tmp"),
        "ANSIBLE_REMOTE_TMP": remote_tmp,
        "ANSIBLE_ROLES_PATH": os.pathsep.join(str(p) for p in roles_path),
    })
    return env


def runner_environment(prepared: Mapping[str, str], ours: Mapping[str, str]) -> dict[str, str]:
    """ansible-runner's prepared environment, less what it copied from the host.

    ansible-runner starts from `os.environ`, lays `ours` over it, then adds
    its own event callback. Kept: every variable of ours (as the runner left
    it) and every one the runner itself set or changed; dropped: whatever
    else came from the host unchanged (a stray ANSIBLE_*, a password).
    """
    host = os.environ
    return {key: value for key, value in prepared.items()
            if key in ours or host.get(key) != value}
