"""Turning a provisioner's task results into facts: packages, files, users, groups, services.

Ansible tasks carry their module arguments and results (a looped task one
result per item); Chef resources carry only `type[name]` and the action taken.
Either way, later tasks win for the same path or name, and the facts keep the
order in which the roles first touched each thing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from rolebake.provision.base import TaskResult

PACKAGE_ACTIONS = {"apt", "package", "dnf", "yum"}
FILE_ACTIONS = {"copy", "template", "file", "lineinfile"}
SERVICE_ACTIONS = {"service", "systemd", "systemd_service", "sysvinit"}
_CHEF_RESOURCE = re.compile(r"^(?P<type>[a-z_]+)\[(?P<name>.+)\]$")
_VERSION_SUFFIX = re.compile(r"[=<>].*$")
_ABSENT = ("absent", "removed", "purged")


@dataclass
class FileFact:
    """One path a task manages, with what the last task touching it set."""

    path: str
    kind: str  # file | directory | link | absent | exists
    task: str
    mode: str | None = None
    owner: str | None = None
    group: str | None = None
    link_to: str | None = None
    static: bool = False  # content copied verbatim: its sha256 is a fair check
    lines: list[str] = field(default_factory=list)
    host_bound: bool = False  # content rendered from facts or the host: never pinned

    def unpin(self) -> None:
        """Its content depends on the host: keep the checks of kind, mode and owner only."""
        self.host_bound, self.static, self.lines = True, False, []


@dataclass
class UserFact:
    """A user or group a task created (or removed)."""

    name: str
    task: str
    present: bool = True
    uid: int | None = None
    group: str | None = None
    shell: str | None = None
    home: str | None = None


@dataclass
class Facts:
    """Everything `render` turns into checks, in the order the roles did it."""

    packages: dict[str, bool] = field(default_factory=dict)  # name -> installed
    files: dict[str, FileFact] = field(default_factory=dict)
    users: dict[str, UserFact] = field(default_factory=dict)
    groups: dict[str, UserFact] = field(default_factory=dict)
    services: dict[str, str] = field(default_factory=dict)  # name -> task

    def static_paths(self) -> list[str]:
        """Files whose sha256 should be measured in the image."""
        return [f.path for f in self.files.values() if f.static and f.kind == "file"]


def facts_from(tasks: Iterable[TaskResult], provisioner: str = "ansible") -> Facts:
    """Fold task results into facts; later tasks win for the same path or name.

    Args:
        tasks: a provisioning pass's results, in the order they finished.
        provisioner: `ansible` (tasks with module arguments) or `chef-solo`
            (resources named `type[name]`, with their action).

    Returns:
        The facts, each kind in the order the roles first touched it; tasks that
        failed or were skipped count for nothing.
    """
    facts = Facts()
    for task in tasks:
        if task.status not in ("ok", "changed"):
            continue
        if provisioner == "chef-solo":
            _chef(facts, task)
            continue
        for args, result in task_items(task):
            action = short_action(task.action)
            if action in PACKAGE_ACTIONS:
                _package(facts, args, result)
            elif action in FILE_ACTIONS:
                _file(facts, action, task.name, args, result)
            elif action == "user":
                _user(facts, task.name, args, result)
            elif action == "group":
                _group(facts, task.name, args, result)
            elif action in SERVICE_ACTIONS and _true(args.get("enabled")):
                name = str(args.get("name") or result.get("name") or "")
                if name:
                    facts.services[name] = task.name
    return facts


def task_items(task: TaskResult) -> Iterator[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """(args, result) per item: a looped task carries one result per item."""
    items = task.result.get("results")
    if isinstance(items, list) and items:
        for item in items:
            if not isinstance(item, Mapping) or item.get("skipped") or item.get("failed"):
                continue
            args = (item.get("invocation") or {}).get("module_args") or {}
            yield args, item
    else:
        yield task.args, task.result


def short_action(action: str) -> str:
    """A builtin module's short name (`ansible.builtin.copy` -> `copy`); '' for others'."""
    for prefix in ("ansible.builtin.", "ansible.legacy."):
        if action.startswith(prefix):
            return action[len(prefix):]
    return action if "." not in action else ""


def _true(value: Any) -> bool:
    return value is True or str(value).lower() in ("true", "yes", "1", "on")


def _names(value: Any) -> list[str]:
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list):
        return []
    return [_VERSION_SUFFIX.sub("", str(v).strip()) for v in value if str(v).strip()]


def _package(facts: Facts, args: Mapping[str, Any], result: Mapping[str, Any]) -> None:
    del result
    state = str(args.get("state") or "present")
    installed = state not in _ABSENT
    if state in ("build-dep", "fixed"):
        return
    for name in _names(args.get("name") or args.get("pkg")):
        if name.endswith(".deb") or "/" in name or "*" in name:
            continue  # a file or a pattern, not a package name a check can use
        facts.packages.pop(name, None)
        facts.packages[name] = installed


def _file(facts: Facts, action: str, task: str, args: Mapping[str, Any],
          result: Mapping[str, Any]) -> None:
    path = str(result.get("dest") or result.get("path") or args.get("dest")
               or args.get("path") or "")
    if not path.startswith("/"):
        return
    previous = facts.files.pop(path, None)
    fact = FileFact(path=path, kind="file", task=task)
    if action == "file":
        state = str(result.get("state") or args.get("state") or "file")
        if state == "absent":
            facts.files[path] = FileFact(path=path, kind="absent", task=task)
            return
        fact.kind = {"directory": "directory", "link": "link", "hard": "file",
                     "touch": "exists"}.get(state, "file")
        if fact.kind == "link":
            fact.link_to = str(args.get("src") or result.get("src") or "") or None
            facts.files[path] = fact
            return
        if previous is not None and previous.kind == "file" and fact.kind in ("file", "exists"):
            # `file` only changes attributes of what an earlier task wrote.
            fact.static, fact.lines, fact.kind = previous.static, previous.lines, "file"
    elif action == "lineinfile":
        state = str(args.get("state") or "present")
        if previous is not None and previous.kind == "file":
            fact.static = False
            fact.lines = list(previous.lines)
        line = args.get("line")
        if state == "present" and isinstance(line, str) and line:
            fact.lines.append(line)
    else:
        fact.static = action == "copy" and not str(args.get("dest") or path).endswith("/") \
            and not _true(args.get("remote_src")) and result.get("state") != "directory"
        if result.get("state") == "directory":
            fact.kind = "directory"
    fact.mode = _mode(result.get("mode"), args.get("mode"))
    fact.owner = _str(result.get("owner"), args.get("owner"))
    fact.group = _str(result.get("group"), args.get("group"))
    facts.files[path] = fact


def _mode(actual: Any, asked: Any) -> str | None:
    for value in (actual, asked):
        if isinstance(value, int):
            return f"0{value:o}"
        if isinstance(value, str) and re.fullmatch(r"0?[0-7]{3,4}", value):
            return "0" + value.lstrip("0").rjust(3, "0")
    return None


def _str(*values: Any) -> str | None:
    for value in values:
        if isinstance(value, str) and value:
            return value
    return None


def _user(facts: Facts, task: str, args: Mapping[str, Any], result: Mapping[str, Any]) -> None:
    name = str(args.get("name") or result.get("name") or "")
    if not name:
        return
    present = str(args.get("state") or "present") != "absent"
    fact = UserFact(name=name, task=task, present=present)
    if present:
        fact.uid = _int(result.get("uid"))
        fact.group = _str(args.get("group"))
        fact.shell = _str(result.get("shell"), args.get("shell"))
        fact.home = _str(result.get("home"), args.get("home"))
    facts.users.pop(name, None)
    facts.users[name] = fact


def _group(facts: Facts, task: str, args: Mapping[str, Any], result: Mapping[str, Any]) -> None:
    name = str(args.get("name") or result.get("name") or "")
    if not name:
        return
    present = str(args.get("state") or "present") != "absent"
    facts.groups.pop(name, None)
    facts.groups[name] = UserFact(name=name, task=task, present=present,
                                  uid=_int(result.get("gid")) if present else None)


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _chef(facts: Facts, task: TaskResult) -> None:
    """Chef resources carry no arguments, only `type[name]` and the action."""
    match = _CHEF_RESOURCE.match(task.name)
    if match is None:
        return
    kind, name, action = match.group("type"), match.group("name"), task.action
    if kind in ("package", "apt_package", "dnf_package", "yum_package"):
        for package in _names(name):
            facts.packages[package] = action not in ("remove", "purge")
    elif kind in ("template", "cookbook_file", "file", "remote_file", "directory", "link"):
        if not name.startswith("/"):
            return
        if action == "delete":
            facts.files[name] = FileFact(path=name, kind="absent", task=task.name)
        else:
            facts.files[name] = FileFact(path=name, task=task.name, kind={
                "directory": "directory", "link": "link"}.get(kind, "file"))
    elif kind in ("user", "linux_user"):
        facts.users[name] = UserFact(name=name, task=task.name, present=action != "remove")
    elif kind == "group":
        facts.groups[name] = UserFact(name=name, task=task.name, present=action != "remove")
    elif kind == "service" and action == "enable":
        facts.services[name] = task.name
