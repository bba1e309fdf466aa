"""Which files' content depends on facts or the build host: a scaffolded check never pins it.

`scaffold-tests` records a layer by provisioning it once more, in a new build
container: facts such as `ansible_hostname`, `ansible_processor_vcpus` or the
date may differ from the build whose image the suite will check, so content
rendered from them cannot be pinned (its sha256, its lines). Existence, kind,
mode and owner still are.

A task's result holds rendered values only (a copy's `content:` not at all),
so the task is read as written, at the `file:line` Ansible reports for it,
its free-form arguments split by Ansible's own `parse_kv`, and each text it
writes is parsed with Jinja's own parser. The text is fixed only when every
variable it names is one of the spec's vars (extra vars: the same value in
every run) whose value holds no template itself, or the item of a loop over
such values. Anything else (a fact, a role default, a lookup, `now()`) and a
task that cannot be read as written count as depending on the host.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import nodes

from rolebake.provision.base import TaskResult
from rolebake.scaffold.facts import short_action, task_items
from rolebake.yamlfile import YamlList, YamlMap, leaves, read_ansible_yaml

# The arguments whose text becomes a file's content, by module; `copy` replaces the
# content, the others edit what is there.
CONTENT_ARGS: Mapping[str, tuple[str, ...]] = {
    "copy": ("content",),
    "lineinfile": ("line",),
    "blockinfile": ("block",),
}
_REPLACES = {"copy", "template"}
_LOOPS = ("loop", "with_items", "with_list", "with_dict", "with_together", "with_nested")
_MARKERS = ("{{", "{%", "{#")


def host_bound_paths(tasks: Iterable[TaskResult], spec_vars: Mapping[str, Any]) -> list[str]:
    """The paths whose content, as the last tasks writing them left it, depends on the host.

    Args:
        tasks: a provisioning pass's results, in order (with the `path` each is written at).
        spec_vars: the layer's vars from its spec (extra vars, the same in every run).

    Returns:
        Those paths, in the order the roles first wrote them.
    """
    fixed = {name for name, value in spec_vars.items() if not _templated(value)}
    tasks_read = _TaskReader()
    bound: dict[str, bool] = {}
    for task in tasks:
        if task.status not in ("ok", "changed"):
            continue
        action = short_action(task.action)
        if action not in CONTENT_ARGS and action not in _REPLACES:
            continue
        depends = action != "template" and _depends(tasks_read.raw(task), task.action,
                                                    CONTENT_ARGS.get(action, ()), fixed)
        for args, result in task_items(task):
            path = str(result.get("dest") or result.get("path") or args.get("dest")
                       or args.get("path") or "")
            if not path.startswith("/"):
                continue
            if action in _REPLACES:
                bound.pop(path, None)
                bound[path] = depends
            else:
                bound[path] = bound.get(path, False) or depends
    return [path for path, is_bound in bound.items() if is_bound]


def _depends(raw: Mapping[str, Any] | None, action: str, keys: tuple[str, ...],
             fixed: set[str]) -> bool:
    """Whether the task as written renders its content from anything but fixed values."""
    if raw is None:
        return True  # not found as written: nothing says the content is fixed
    args = _raw_args(raw, action)
    if args is None:
        return True
    texts = [args[key] for key in keys if args.get(key) is not None]
    if not texts:
        return False  # e.g. `copy: src:`, a file of the role copied as it is
    allowed = set(fixed)
    loop = next((raw[key] for key in _LOOPS if key in raw), None)
    if loop is not None and not _depends_on_text(loop, fixed):
        control = raw.get("loop_control")
        name = control.get("loop_var") if isinstance(control, Mapping) else None
        allowed.add(str(name or "item"))
    return any(_depends_on_text(text, allowed) for text in texts)


def _raw_args(raw: Mapping[str, Any], action: str) -> dict[str, Any] | None:
    """The module's arguments as written: `copy: {...}`, `copy: k=v ...`, plus `args:`."""
    from ansible.parsing.splitter import parse_kv  # Ansible's own k=v parser

    value = raw.get(action)
    if value is None:
        for key in ("action", "local_action"):
            written = raw.get(key)
            if isinstance(written, str) and written.split(None, 1)[0] == action:
                value = written.split(None, 1)[1] if " " in written.strip() else ""
    args: dict[str, Any]
    if isinstance(value, Mapping):
        args = dict(value)
    elif isinstance(value, str):
        try:
            args = dict(parse_kv(value))
        except Exception:  # Ansible refuses it too; the task ran, so nothing says it is fixed
            return None
    else:
        return None
    extra = raw.get("args")
    return {**extra, **args} if isinstance(extra, Mapping) else args


def _depends_on_text(value: Any, allowed: set[str]) -> bool:
    """Whether a template in `value` (or its lists and mappings) names a var not `allowed`.

    A template Jinja cannot parse counts as naming one.
    """
    for text in _strings(value):
        if not any(marker in text for marker in _MARKERS):
            continue
        try:
            tree = jinja2.Environment().parse(text)
        except jinja2.TemplateSyntaxError:
            return True
        names = list(tree.find_all(nodes.Name))
        assigned = {n.name for n in names if n.ctx in ("store", "param")}
        if {n.name for n in names if n.ctx == "load"} - assigned - allowed:
            return True
    return False


def _templated(value: Any) -> bool:
    return any(marker in text for text in _strings(value) for marker in _MARKERS)


def _strings(value: Any) -> Iterator[str]:
    return (leaf for leaf in leaves(value) if isinstance(leaf, str))


class _TaskReader:
    """Tasks as written, found by the `file:line` Ansible reports; each file read once."""

    def __init__(self) -> None:
        self._files: dict[str, Any] = {}

    def raw(self, task: TaskResult) -> Mapping[str, Any] | None:
        """The task's mapping as written, or None when it cannot be found."""
        where, _, line = task.path.rpartition(":")
        if not where or not line.isdigit():
            return None
        if where not in self._files:
            path = Path(where)
            self._files[where] = read_ansible_yaml(path) if path.is_file() else None
        return _at_line(self._files[where], int(line))


def _at_line(data: Any, line: int) -> Mapping[str, Any] | None:
    """The mapping that starts at `line`: a task, in a play's lists or a block's."""
    if isinstance(data, YamlMap):
        if data.line == line:
            return data
        values: Iterable[Any] = data.values()
    elif isinstance(data, YamlList):
        values = data
    else:
        return None
    for value in values:
        if isinstance(value, YamlMap | YamlList):
            found = _at_line(value, line)
            if found is not None:
                return found
    return None
