"""How Ansible is configured for a run: the project's ansible.cfg, and an environment built afresh.

ansible-runner hands Ansible the whole host environment, and Ansible then
reads `~/.ansible.cfg` or `/etc/ansible/ansible.cfg`, plugins and collections
from `~/.ansible` and `/usr/share/ansible`: all of that would change what a
build does without changing its cache key. So the environment is built here
from scratch. Ansible reads the project's own `ansible.cfg` (keyed, see
`ansible_inputs`) or an empty one, a private `ANSIBLE_HOME`, and every
setting rolebake depends on is set over whatever the cfg says.
"""

from __future__ import annotations

import configparser
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from rolebake.errors import InputError
from rolebake.spec import Project

CONFIG_FILE = "ansible.cfg"

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
COLLECTIONS_KEYS = ("collections_path", "collections_paths")  # the second is the old spelling
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
    # rolebake writes the target's inventory as YAML; a project's is INI or YAML.
    # Never a script or a plugin that would reach outside the project.
    "ANSIBLE_INVENTORY_ENABLED": "yaml,ini",
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
    """The project's ansible.cfg as Ansible reads it: `[section] key` -> (value, line)."""

    path: Path | None
    values: Mapping[tuple[str, str], tuple[str, int]]

    def get(self, key: str, section: str = "defaults") -> str | None:
        """The raw value of a setting, or None when the cfg does not set it."""
        found = self.values.get((section, key.lower()))
        return found[0] if found else None

    def line(self, key: str, section: str = "defaults") -> int | None:
        """The line of a setting in the cfg."""
        found = self.values.get((section, key.lower()))
        return found[1] if found else None

    def collections(self) -> set[str]:
        """Collections the cfg names plugins of (a strategy, a callback, a vars plugin)."""
        return {m.group(1) for value, _ in self.values.values() for m in _FQCN.finditer(value)
                if m.group(1) not in ("ansible.builtin", "ansible.legacy")}


def read_config(project: Project) -> AnsibleConfig:
    """The project's ansible.cfg (at its root), or an empty config when it has none.

    Raises:
        InputError: the file is not a config Ansible can read (file and line).
    """
    path = project.root / CONFIG_FILE
    if not path.is_file():
        return AnsibleConfig(None, {})
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read: {exc}", path=path) from None
    # The same parser settings as Ansible's own config manager.
    parser = configparser.ConfigParser(inline_comment_prefixes=(";",), interpolation=None)
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error as exc:
        line = getattr(exc, "lineno", None)
        message = str(exc).splitlines()[0]
        raise InputError(f"not a valid ansible.cfg: {message}", path=path, line=line) from None
    lines = _key_lines(text)
    values = {(section, key): (parser.get(section, key, raw=True), lines.get((section, key), 1))
              for section in parser.sections() for key in parser.options(section)}
    return AnsibleConfig(path, values)


def _key_lines(text: str) -> dict[tuple[str, str], int]:
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
    for key in (*PLUGIN_PATHS, *COLLECTIONS_KEYS[1:], *CONTENT_FILES):
        value = config.get(key)
        if not value:
            continue
        entries = [value] if key in CONTENT_FILES else value.split(os.pathsep)
        for entry in (e.strip() for e in entries):
            if not entry or "{{" in entry:
                continue
            expanded = Path(os.path.expandvars(os.path.expanduser(entry)))
            path = expanded if expanded.is_absolute() else config.path.parent / expanded
            if not project.inside(path):
                raise InputError(f"{key} = {entry}: {path} is outside the project; rolebake "
                                 "reads nothing from outside it", path=config.path,
                                 line=config.line(key))
            found.append((key, path))
    return found


def roles_path(project: Project, config: AnsibleConfig, playbook: Path | None) -> list[Path]:
    """Where roles are looked up, in order: beside the playbook, the cfg's `roles_path`, roles/.

    Raises:
        InputError: a `roles_path` entry outside the project, at the cfg's line.
    """
    found = [playbook.parent / "roles"] if playbook is not None else []
    value = config.get("roles_path") or ""
    for entry in (e.strip() for e in value.split(os.pathsep)):
        if not entry or "{{" in entry or config.path is None:
            continue
        expanded = Path(os.path.expandvars(os.path.expanduser(entry)))
        path = expanded if expanded.is_absolute() else config.path.parent / expanded
        if not project.inside(path):
            raise InputError(f"roles_path = {value}: {path} is outside the project; rolebake "
                             "reads nothing from outside it", path=config.path,
                             line=config.line("roles_path"))
        found.append(path)
    found.append(project.roles_dir)
    return list(dict.fromkeys(found))


def environment(config: AnsibleConfig, data_dir: Path, *, roles_path: Sequence[Path],
                remote_tmp: str, programs: Path) -> dict[str, str]:
    """The whole environment ansible-playbook runs with: built, never copied from the host.

    Args:
        config: the project's ansible.cfg (`read_config`).
        data_dir: the run's private folder (removed after the run); holds the
            empty cfg when the project has none, ANSIBLE_HOME and the local tmp.
        roles_path: where roles are looked up, in order.
        remote_tmp: Ansible's temporary folder on the target.
        programs: the folder with the ansible-playbook to run (first on PATH).

    Returns:
        Variables for ansible-runner's `envvars`; see `runner_environment`.
    """
    home = data_dir / "home"
    env = {name: os.environ[name] for name in HOST_VARIABLES if name in os.environ}
    env["PATH"] = os.pathsep.join([str(programs), os.environ.get("PATH", "/usr/bin:/bin")])
    if not any(name in env for name in ("LC_ALL", "LC_CTYPE", "LANG")):
        env["LANG"] = "C.UTF-8"  # Ansible refuses to run without a UTF-8 locale
    if config.path is not None:
        cfg = config.path
    else:
        cfg = data_dir / CONFIG_FILE
        cfg.write_text("# rolebake: the project has no ansible.cfg; Ansible's defaults apply\n",
                       encoding="utf-8")
    env.update(CONTROLLED)
    env.update({
        "ANSIBLE_CONFIG": str(cfg),
        "ANSIBLE_HOME": str(home),
        "ANSIBLE_LOCAL_TEMP": str(data_dir / "tmp"),
        "ANSIBLE_REMOTE_TMP": remote_tmp,
        "ANSIBLE_ROLES_PATH": os.pathsep.join(str(p) for p in roles_path),
    })
    for key, variable in PLUGIN_PATHS.items():
        keys = COLLECTIONS_KEYS if key == "collections_path" else (key,)
        if not any(config.get(k) for k in keys):
            env[variable] = str(home / key.removesuffix("_path"))
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
