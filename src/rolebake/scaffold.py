"""Starting testinfra suites written from what the roles did, as `goss autoadd` does for a host.

Two halves. `record` provisions the layer once more, the way a `--no-cache`
build does, but moves no tag and keeps no image: it returns the provisioner's
own task results and the sha256 of every file whose content the roles copied
verbatim. `render` is a pure function from such a recording to the source of a
testinfra file, so it is unit-tested with recorded results (JSON fixtures).

What becomes a check:

- packages installed (apt/package/dnf/yum tasks; chef `package[...]`),
- files, templates, directories and links written (copy/template/file/lineinfile):
  existence, kind, mode, owner and group; sha256 for copies (static content),
- users and groups created (user/group tasks): existence, uid/gid, shell, home,
- services enabled (service/systemd tasks with `enabled: true`): the systemd
  `.wants` link or the SysV `/etc/rc?.d` link, since a container runs no systemd.
"""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rolebake.events import EventSink
from rolebake.provision.base import TaskResult

FORMAT = 1
PACKAGE_ACTIONS = {"apt", "package", "dnf", "yum"}
FILE_ACTIONS = {"copy", "template", "file", "lineinfile"}
SERVICE_ACTIONS = {"service", "systemd", "systemd_service", "sysvinit"}
_CHEF_RESOURCE = re.compile(r"^(?P<type>[a-z_]+)\[(?P<name>.+)\]$")
_VERSION_SUFFIX = re.compile(r"[=<>].*$")
_ABSENT = ("absent", "removed", "purged")


@dataclass(frozen=True)
class Recording:
    """What one provisioning pass of a layer did, enough to write its tests."""

    image: str  # the layer id: `web` or `web:dev`
    provisioner: str
    tasks: tuple[TaskResult, ...]
    digests: Mapping[str, str] = field(default_factory=dict)  # path -> sha256

    def to_dict(self) -> dict[str, Any]:
        """JSON form (the unit-test fixtures use it too)."""
        return {
            "format": FORMAT,
            "image": self.image,
            "provisioner": self.provisioner,
            "digests": dict(sorted(self.digests.items())),
            "tasks": [dataclasses.asdict(t) for t in self.tasks],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recording:
        """Read the JSON form back."""
        return cls(
            image=str(data["image"]),
            provisioner=str(data.get("provisioner") or "ansible"),
            tasks=tuple(TaskResult(name=t.get("name", ""), role=t.get("role"),
                                   action=t.get("action", ""), status=t.get("status", ""),
                                   args=t.get("args") or {}, result=t.get("result") or {})
                        for t in data.get("tasks") or []),
            digests=dict(data.get("digests") or {}),
        )


# What the roles did, as facts ------------------------------------------------------------


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
    """
    facts = Facts()
    for task in tasks:
        if task.status not in ("ok", "changed"):
            continue
        if provisioner == "chef-solo":
            _chef(facts, task)
            continue
        for args, result in _items(task):
            action = _short(task.action)
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


def _items(task: TaskResult) -> Iterator[tuple[Mapping[str, Any], Mapping[str, Any]]]:
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


def _short(action: str) -> str:
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


# Rendering ------------------------------------------------------------------------------


def render(recording: Recording) -> str:
    """The source of a testinfra file checking what the recorded tasks did.

    Pure: the same recording always gives the same text.
    """
    facts = facts_from(recording.tasks, recording.provisioner)
    names = _Names()
    out: list[str] = [
        f'"""Image `{recording.image}`: checks written by `rolebake scaffold-tests '
        f'{recording.image}`.',
        "",
        f"Generated from the {recording.provisioner} provisioner's own task results, as",
        "`goss autoadd` does for a live host. A starting point: keep what matters, add",
        "what the roles are for (the service answering, the site served), and delete",
        "what is incidental.",
        '"""',
        "",
        "import pytest",
        "",
    ]
    if facts.packages:
        installed = [n for n, ok in facts.packages.items() if ok]
        removed = [n for n, ok in facts.packages.items() if not ok]
        if installed:
            out += ["", "@pytest.mark.parametrize(\"name\", ["]
            out += [f"    {_py(n)}," for n in installed]
            out += ["])", "def test_package_installed(host, name):",
                    "    assert host.package(name).is_installed", ""]
        if removed:
            out += ["", "@pytest.mark.parametrize(\"name\", ["]
            out += [f"    {_py(n)}," for n in removed]
            out += ["])", "def test_package_removed(host, name):",
                    "    assert not host.package(name).is_installed", ""]
    for fact in facts.files.values():
        out += ["", *_file_test(fact, recording.digests.get(fact.path), names)]
    for group in facts.groups.values():
        out += ["", f"def {names.make('test_group', group.name)}(host):",
                f"    # task: {_comment(group.task)}",
                f"    group = host.group({_py(group.name)})"]
        if not group.present:
            out += ["    assert not group.exists", ""]
            continue
        out += ["    assert group.exists"]
        if group.uid is not None:
            out += [f"    assert group.gid == {group.uid}"]
        out += [""]
    for user in facts.users.values():
        out += ["", f"def {names.make('test_user', user.name)}(host):",
                f"    # task: {_comment(user.task)}",
                f"    user = host.user({_py(user.name)})"]
        if not user.present:
            out += ["    assert not user.exists", ""]
            continue
        out += ["    assert user.exists"]
        if user.uid is not None:
            out += [f"    assert user.uid == {user.uid}"]
        if user.group:
            out += [f"    assert user.group == {_py(user.group)}"]
        if user.shell:
            out += [f"    assert user.shell == {_py(user.shell)}"]
        if user.home:
            out += [f"    assert user.home == {_py(user.home)}"]
        out += [""]
    if facts.services:
        out += ["", "", *_SERVICE_HELPER.strip().splitlines(), ""]
        out += ["", "@pytest.mark.parametrize(\"name\", ["]
        out += [f"    {_py(n)},  # task: {_comment(t)}" for n, t in facts.services.items()]
        out += ["])", "def test_service_enabled(host, name):",
                "    assert _enabled_at_boot(host, name)", ""]
    if not (facts.packages or facts.files or facts.users or facts.groups or facts.services):
        out += ["", "def test_nothing_recorded():",
                '    pytest.skip("the roles reported no packages, files, users or services")',
                ""]
    return "\n".join(out).rstrip() + "\n"


def _file_test(fact: FileFact, sha256: str | None, names: _Names) -> list[str]:
    lines = [f"def {names.make('test_file', fact.path)}(host):",
             f"    # task: {_comment(fact.task)}",
             f"    f = host.file({_py(fact.path)})"]
    if fact.kind == "absent":
        return [*lines, "    assert not f.exists", ""]
    if fact.kind == "link":
        lines += ["    assert f.is_symlink"]
        if fact.link_to:
            lines += [f"    assert host.check_output(\"readlink %s\", f.path) == "
                      f"{_py(fact.link_to)}"]
        return [*lines, ""]
    lines += {"directory": ["    assert f.is_directory"], "exists": ["    assert f.exists"]
              }.get(fact.kind, ["    assert f.is_file"])
    if fact.mode is not None:
        lines += [f"    assert f.mode == 0o{int(fact.mode, 8):o}"]
    if fact.owner is not None:
        lines += [f"    assert f.user == {_py(fact.owner)}"]
    if fact.group is not None:
        lines += [f"    assert f.group == {_py(fact.group)}"]
    if sha256 is not None and fact.static:
        lines += [f"    assert f.sha256sum == {_py(sha256)}"]
    for line in fact.lines:
        lines += [f"    assert {_py(line)} in f.content_string.splitlines()"]
    return [*lines, ""]


_SERVICE_HELPER = '''
def _enabled_at_boot(host, name):
    # No systemd runs in a container: look for the links `systemctl enable` and
    # update-rc.d leave, which the init system follows at boot.
    unit = name if "." in name else name + ".service"
    sysv = name.removesuffix(".service")
    wants = host.run("find /etc/systemd/system -path %s -name %s", "*.wants/*", unit)
    rc = host.run("find /etc/rc2.d /etc/rc3.d /etc/rc4.d /etc/rc5.d -name %s",
                  "S[0-9][0-9]" + sysv)
    return bool(wants.stdout.strip() or rc.stdout.strip())
'''


class _Names:
    """Unique, readable test function names."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def make(self, prefix: str, subject: str) -> str:
        stem = re.sub(r"[^0-9a-zA-Z]+", "_", subject).strip("_").lower() or "item"
        name, n = f"{prefix}_{stem}", 2
        while name in self.used:
            name, n = f"{prefix}_{stem}_{n}", n + 1
        self.used.add(name)
        return name


def _py(value: str) -> str:
    return json.dumps(value) if value.isprintable() else repr(value)


def _comment(text: str) -> str:
    return " ".join(text.split())[:90]


# Recording ------------------------------------------------------------------------------


def record(engine: Any, project: Any, image: str, events: EventSink) -> Recording:
    """Provision `image`'s layer afresh and return what its tasks did.

    The layer is built as `--no-cache` would, on the parent image a build would
    use now, with verification off and no tag to move; the image it made is
    measured (sha256 of static files) and removed. Parent layers are not built:
    they must be current (a cache hit), as after `rolebake build`.

    Raises:
        InputError: unknown image, or a parent layer that needs building first.
        BuildFailed: provisioning failed.
    """
    from rolebake.build import Builder, BuildOptions, preview
    from rolebake.engine import BUILD_ID_LABEL, ROLE_LABEL
    from rolebake.errors import InputError
    from rolebake.plan import BuildPlan, plan_build

    plan = plan_build(project, [image])
    layer = plan.layer(image)
    parent = layer.parent
    if layer.parent_is_layer:
        rows = {row.layer: row for row in preview(engine, project, plan)}
        row = rows[layer.parent]
        if not row.hit or row.image is None:
            raise InputError(
                f"the parent layer {layer.parent!r} is not built for its current inputs",
                hint=f"rolebake build {layer.parent}")
        parent = row.image
    scratch = dataclasses.replace(layer, parent=parent, parent_is_layer=False, tags=())
    builder = Builder(engine, project, events, BuildOptions(no_cache=True, verify=False))
    report = builder.build(BuildPlan(layers=(scratch,), targets=(scratch.id,)))
    result = report.results[scratch.id]
    try:
        if result.error is not None:
            raise result.error
        assert result.provision is not None and result.image_id is not None
        tasks = result.provision.tasks
        paths = facts_from(tasks, layer.provisioner).static_paths()
        digests: dict[str, str] = {}
        if paths:
            labels = {ROLE_LABEL: "verify", BUILD_ID_LABEL: builder.build_id}
            name = f"rolebake-scaffold-{layer.id.replace(':', '.')}-{uuid.uuid4().hex[:8]}"
            with engine.container(result.image_id, name=name, labels=labels) as container:
                digests = _sha256(engine, container, paths)
    finally:
        if result.image_id is not None:
            engine.remove_image(result.image_id, force=True)
    return Recording(image=layer.id, provisioner=layer.provisioner, tasks=tasks,
                     digests=digests)


def _sha256(engine: Any, container: Any, paths: Sequence[str]) -> dict[str, str]:
    found = engine.shell(container, 'for p; do [ -f "$p" ] && sha256sum -- "$p"; done; true',
                         *paths)
    digests = {}
    for line in found.output.splitlines():
        digest, _, path = line.partition("  ")
        if len(digest) == 64 and path in paths:
            digests[path] = digest
    return digests


def save(recording: Recording, path: Path) -> None:
    """Keep a recording as JSON (beside the build logs, and as test fixtures)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(recording.to_dict(), indent=2, default=str) + "\n",
                    encoding="utf-8")
