"""An image as a host of the project's Ansible inventory: its groups, and the plays that apply.

A spec with `groups:` makes its build target (a container, or the parity VM)
a host of the project's inventory: it joins those groups (their parent groups
by the inventory's `children`, and `all`), so a playbook's plays apply to it
exactly as `ansible-playbook --limit` would apply them to a server of those
groups, and the `group_vars/` and `host_vars/` beside the inventory and the
playbook apply with Ansible's own precedence. Ansible itself decides at run
time (the project's inventory is passed with a small generated one and
`--limit`); the static reading here lets `rolebake plan` list the plays, keys
the vars files of those groups, and picks the plays a parent layer applied.

The inventory is the spec's `inventory:`, else the `inventory` of the
project's ansible.cfg, else the first of DEFAULT_NAMES at the project root or
beside the playbook. INI and YAML inventories, or a folder of them, are read.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from rolebake.errors import InputError
from rolebake.provision.ansible_config import read_config
from rolebake.provision.ansible_spec import settings_of
from rolebake.spec import ImageSpec, Project
from rolebake.yamlfile import YamlList, read_ansible_yaml

DEFAULT_NAMES = ("inventory", "inventory.ini", "inventory.yml", "inventory.yaml",
                 "hosts", "hosts.ini", "hosts.yml", "hosts.yaml")
# What Ansible skips in an inventory folder (INVENTORY_IGNORE_EXTS, and the vars folders).
IGNORED_SUFFIXES = (".pyc", ".pyo", ".swp", ".bak", "~", ".rpm", ".md", ".txt", ".rst",
                    ".orig", ".cfg", ".retry")
IGNORED_DIRS = ("group_vars", "host_vars")
SKIP_VAR = "rolebake_skip_plays"
LEGACY_HOST = "rolebake-build"  # the target's name when the spec gives no `groups:`
_INI_SECTION = re.compile(r"^\[([^\]:]+)(?::(\w+))?\]\s*$")
_WILDCARD = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Inventory:
    """The group structure of an inventory: which groups hold which, which hosts are where."""

    path: Path | None  # the file or folder; None when the project has none
    files: tuple[Path, ...] = ()
    parents: Mapping[str, frozenset[str]] = field(default_factory=dict)  # group -> parents
    host_groups: Mapping[str, frozenset[str]] = field(default_factory=dict)  # host -> groups

    def ancestors(self, groups: Iterable[str]) -> set[str]:
        """The groups and every group above them through `children`."""
        found: set[str] = set()
        stack = list(groups)
        while stack:
            group = stack.pop()
            if group not in found:
                found.add(group)
                stack.extend(self.parents.get(group, ()))
        return found

    @property
    def vars_dirs(self) -> tuple[Path, ...]:
        """The group_vars/ and host_vars/ folders' parent beside the inventory."""
        if self.path is None:
            return ()
        return (self.path if self.path.is_dir() else self.path.parent,)


@dataclass(frozen=True)
class Membership:
    """The build target as a host of the inventory."""

    host: str
    groups: tuple[str, ...]  # every group it is in, `all` and parent groups included
    inventory: Inventory
    named: bool  # the spec named the host (its connection settings are then forced)


@dataclass(frozen=True)
class Play:
    """One play of a playbook, as far as host selection goes."""

    name: str  # as Ansible names it (`ansible_play_name`): its name, else its hosts
    hosts: str  # the pattern, as written
    path: Path
    line: int | None


def membership(project: Project, spec: ImageSpec) -> Membership | None:
    """The target's host name and groups, or None when the spec gives no `groups:`.

    Raises:
        InputError: the inventory cannot be read (file and line).
    """
    own = settings_of(spec)
    if own.groups is None:
        return None
    inventory = read_inventory(project, find_inventory(project, spec))
    host = own.host or f"rolebake-{spec.name}"
    direct = set(own.groups) | set(inventory.host_groups.get(host, ()))
    groups = inventory.ancestors(direct - {"all"}) | {"all"}
    if groups == {"all"}:
        groups.add("ungrouped")  # as Ansible puts a host of no group
    if host in inventory.parents or host in groups:
        raise InputError(f"host name {host!r} is also a group of the inventory; Ansible "
                         "would confuse them (give `host:` another name)",
                         path=spec.path, line=spec.line_of("host") or spec.line_of("groups"))
    ordered = ["all", *sorted(groups - {"all"})]
    return Membership(host=host, groups=tuple(ordered), inventory=inventory,
                      named=own.host is not None)


def find_inventory(project: Project, spec: ImageSpec) -> Path | None:
    """The spec's inventory, else ansible.cfg's `inventory`, else a default; None when none."""
    own = settings_of(spec)
    return locate_inventory(project, own.inventory, own.playbook)


def locate_inventory(project: Project, given: Path | None, playbook: Path | None) -> Path | None:
    """`given`, else ansible.cfg's `inventory`, else a default name (root, then beside playbook).

    Raises:
        InputError: the cfg names an inventory outside the project, or none there.
    """
    if given is not None:
        return given
    config = read_config(project)
    value = config.get("inventory")
    if value and config.path is not None:
        first = value.split(",")[0].strip()
        path = Path(os.path.expanduser(first))
        path = path if path.is_absolute() else config.path.parent / path
        if not project.inside(path):
            raise InputError(f"inventory = {first}: outside the project; rolebake reads nothing "
                             "from outside it", path=config.path, line=config.line("inventory"))
        if not path.exists():
            raise InputError(f"inventory = {first}: not found", path=config.path,
                             line=config.line("inventory"))
        return path
    folders = [project.root]
    if playbook is not None:
        folders.append(playbook.parent)
    for folder in folders:
        for name in DEFAULT_NAMES:
            if (folder / name).exists() and project.inside(folder / name):
                return folder / name
    return None


def read_inventory(project: Project, path: Path | None) -> Inventory:
    """Read an INI or YAML inventory, or a folder of them, for its groups and hosts.

    Raises:
        InputError: a file that is neither (a script, a plugin's config), with file and line.
    """
    if path is None:
        return Inventory(None)
    files = _inventory_files(project, path)
    parents: dict[str, set[str]] = {}
    hosts: dict[str, set[str]] = {}
    for file in files:
        if file.suffix in (".yml", ".yaml", ".json"):
            _read_yaml(file, parents, hosts)
        else:
            _read_ini(file, parents, hosts)
    return Inventory(path, tuple(files), {g: frozenset(p) for g, p in parents.items()},
                     {h: frozenset(g) for h, g in hosts.items()})


def _inventory_files(project: Project, path: Path) -> list[Path]:
    if not project.inside(path):
        raise InputError("the inventory is outside the project", path=path)
    if path.is_file():
        return [path]
    found: list[Path] = []
    for entry in sorted(path.iterdir()):
        if entry.name.startswith(".") or entry.name.endswith(IGNORED_SUFFIXES) \
                or entry.name in IGNORED_DIRS:
            continue
        found.extend(_inventory_files(project, entry))
    return found


def _read_ini(path: Path, parents: dict[str, set[str]], hosts: dict[str, set[str]]) -> None:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the inventory: {exc}", path=path) from None
    if text.startswith("#!"):
        raise InputError("an inventory script: rolebake reads INI and YAML inventories only "
                         "(a script could reach anything)", path=path, line=1)
    group, kind = "ungrouped", "hosts"
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith((";", "#")):
            continue
        header = _INI_SECTION.match(line)
        if header:
            group, kind = header.group(1).strip(), header.group(2) or "hosts"
            if kind not in ("hosts", "children", "vars"):
                raise InputError(f"unknown section kind {kind!r} (hosts, children or vars)",
                                 path=path, line=number)
            parents.setdefault(group, set())
            continue
        if line.startswith("["):
            raise InputError("not an INI inventory section header", path=path, line=number)
        name = line.split()[0]
        if kind == "children":
            parents.setdefault(name, set()).add(group)
        elif kind == "hosts":
            hosts.setdefault(name, set()).add(group)


def _read_yaml(path: Path, parents: dict[str, set[str]], hosts: dict[str, set[str]]) -> None:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        raise InputError(f"not a YAML inventory: {str(exc).splitlines()[0]}", path=path,
                         line=line + 1 if line is not None else None) from None
    if data is None:
        return
    if not isinstance(data, dict) or "plugin" in data:
        raise InputError("not a YAML inventory (groups at the top); inventory plugins are "
                         "not read", path=path, line=1)
    stack: list[tuple[str, Any, str | None]] = [(g, body, None) for g, body in data.items()]
    while stack:
        group, body, parent = stack.pop()
        group = str(group)
        parents.setdefault(group, set())
        if parent is not None:
            parents[group].add(parent)
        if not isinstance(body, dict):
            continue
        for host in (body.get("hosts") or {}) if isinstance(body.get("hosts"), dict) else ():
            hosts.setdefault(str(host), set()).add(group)
        children = body.get("children")
        if isinstance(children, dict):
            stack.extend((child, sub, group) for child, sub in children.items())


# Host patterns ------------------------------------------------------------------------------

def split_pattern(hosts: Any) -> list[str] | None:
    """A play's `hosts:` as Ansible's list of terms; None when templated (known at run time)."""
    terms = hosts if isinstance(hosts, list) else [hosts]
    found: list[str] = []
    for term in terms:
        text = str(term if term is not None else "")
        if "{{" in text or "{%" in text:
            return None
        # Ansible splits on commas, and on colons outside IPv6 addresses and regexes.
        for raw in text.split(","):
            part = raw.strip()
            pieces = [part] if part.startswith("~") or part.count(":") > 1 \
                else part.split(":")
            found.extend(p.strip() for p in pieces if p.strip())
    return found


def matches(hosts: Any, member: Membership | None) -> bool | None:
    """Whether a play with this `hosts:` applies to the target; None when templated.

    Without a membership (a spec with no `groups:`), every play applies.
    """
    terms = split_pattern(hosts)
    if terms is None:
        return None
    if member is None:
        return True
    regular = [t for t in terms if not t.startswith(("!", "&"))]
    selected = any(_term(t, member) for t in regular) if regular else True
    for term in terms:
        if term.startswith("&"):
            selected = selected and _term(term[1:], member)
        elif term.startswith("!"):
            selected = selected and not _term(term[1:], member)
    return selected


def _term(term: str, member: Membership) -> bool:
    names = (member.host, *member.groups)
    term = re.sub(r"\[[-0-9:]*\]$", "", term)  # web[0]: a subscript of group web
    if term in ("all", "*"):
        return True
    if term.startswith("~"):
        try:
            pattern = re.compile(term[1:])
        except re.error:
            return False
        return any(pattern.match(name) for name in names)
    if _WILDCARD.search(term):
        return any(fnmatch.fnmatchcase(name, term) for name in names)
    return term in names


# Plays --------------------------------------------------------------------------------------

def plays(playbook: Path, seen: frozenset[str] = frozenset()) -> list[Play]:
    """Every play of a playbook in order, imported playbooks expanded where the path is plain."""
    data = read_ansible_yaml(playbook)
    found: list[Play] = []
    for index, play in enumerate(data if isinstance(data, list) else []):
        if not isinstance(play, dict):
            continue
        line = data.line_of(index) if isinstance(data, YamlList) else None
        target = play.get("import_playbook") or play.get("ansible.builtin.import_playbook")
        if isinstance(target, str):
            path = playbook.parent / target
            real = os.path.realpath(path)
            if "{{" not in target and path.is_file() and real not in seen:
                found.extend(plays(path, seen | {real}))
            continue
        hosts = play.get("hosts")
        pattern = ",".join(map(str, hosts)) if isinstance(hosts, list) else str(hosts or "")
        name = play.get("name")
        found.append(Play(name=str(name) if name else pattern, hosts=pattern, path=playbook,
                          line=line))
    return found


@dataclass(frozen=True)
class PlaySelection:
    """The plays of a layer's playbook: those that apply, and those its parent layers applied."""

    applied: tuple[Play, ...]
    skipped: tuple[Play, ...]  # applied by a parent layer: not again
    undecided: tuple[Play, ...]  # templated `hosts:`: Ansible decides
    notes: tuple[str, ...] = ()
    order: tuple[Play, ...] = ()  # every play of the playbook, in order

    def lines(self) -> list[str]:
        """One line per play that applies or is skipped, in playbook order, for `rolebake plan`."""
        shown: list[str] = []
        for play in self.order:
            what = f"play {play.name!r} (hosts: {play.hosts})"
            if play in self.skipped:
                shown.append(f"skips {what}: a parent layer applied it")
            elif play in self.undecided:
                shown.append(f"applies {what} if Ansible matches the pattern at run time")
            elif play in self.applied:
                shown.append(f"applies {what}")
        return shown

    @property
    def skip_names(self) -> list[str]:
        """The `ansible_play_name`s to skip."""
        return sorted({p.name for p in self.skipped})


def select_plays(playbook: Path, member: Membership | None,
                 parents: Sequence[Membership | None]) -> PlaySelection:
    """The plays that apply to the target, less those a parent layer applied already.

    Args:
        playbook: the layer's playbook.
        member: the target as a host of the inventory (None: every play applies).
        parents: the memberships of the parent layers built from the same playbook.
    """
    applied: list[Play] = []
    skipped: list[Play] = []
    undecided: list[Play] = []
    every = plays(playbook)
    for play in every:
        verdict = matches(play.hosts, member)
        if verdict is None:
            undecided.append(play)
        elif verdict and any(matches(play.hosts, p) for p in parents):
            skipped.append(play)
        elif verdict:
            applied.append(play)
    notes: list[str] = []
    # Plays are skipped by name; a name shared with a play that applies cannot be.
    keep = {p.name for p in (*applied, *undecided)}
    clash = [p for p in skipped if p.name in keep]
    if clash:
        skipped = [p for p in skipped if p.name not in keep]
        applied += clash
        notes.append("plays named alike are applied again: "
                     + ", ".join(sorted({p.name for p in clash})))
    return PlaySelection(tuple(applied), tuple(skipped), tuple(undecided), tuple(notes),
                         tuple(every))


def not_applied(project: Project, spec: ImageSpec, playbook: Path | None,
                member: Membership | None) -> frozenset[tuple[str, int | None]]:
    """The plays of the playbook the layer does not apply, by (real path, line): not keyed."""
    if playbook is None or member is None or not playbook.is_file():
        return frozenset()
    selection = select_plays(playbook, member, parent_memberships(project, spec, playbook))
    applied = {*selection.applied, *selection.undecided}
    return frozenset((os.path.realpath(p.path), p.line) for p in selection.order
                     if p not in applied)


def legacy_groups(playbook: Path) -> set[str]:
    """Every group a playbook's plays name: a spec without `groups:` joins them all."""
    groups: set[str] = set()
    for play in plays(playbook):
        for term in split_pattern(play.hosts) or []:
            name = term.lstrip("&!")
            if name and name != "all" and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", name):
                groups.add(name)
    return groups


@dataclass(frozen=True)
class RunInventory:
    """What one Ansible run gets: the inventories, the host to limit to, the extra vars."""

    host: str
    generated: Mapping[str, Any]  # the inventory rolebake writes (YAML)
    sources: tuple[Path, ...]  # the project's inventory, passed before the generated one
    extravars: Mapping[str, Any]
    wrapper: list[dict[str, Any]] | None  # a playbook importing the layer's, skipping plays


def prepare(project: Project, spec: ImageSpec, playbook: Path | None,
            connection: Mapping[str, Any]) -> RunInventory:
    """The inventory, limit, extra vars and playbook wrapper of one layer's run.

    Args:
        project: the project.
        spec: the layer's spec (its `groups:`, `host:`, `inventory:`).
        playbook: the layer's playbook, None for roles.
        connection: the target's host vars (how Ansible reaches it, secrets).
    """
    member = membership(project, spec)
    if member is None:
        groups = legacy_groups(playbook) if playbook is not None else set()
        inventory: dict[str, Any] = {"all": {"hosts": {LEGACY_HOST: dict(connection)}}}
        if groups:
            inventory["all"]["children"] = {g: {"hosts": {LEGACY_HOST: {}}}
                                            for g in sorted(groups)}
        return RunInventory(LEGACY_HOST, inventory, (), {}, None)
    inventory = {"all": {"hosts": {member.host: dict(connection)}}}
    children = [g for g in member.groups if g not in ("all", "ungrouped")]
    if children:
        inventory["all"]["children"] = {g: {"hosts": {member.host: {}}} for g in children}
    extravars: dict[str, Any] = {}
    if member.named:
        # host_vars of a real host name its address and user: the target's own win.
        extravars.update({k: v for k, v in connection.items() if k.startswith("ansible_")})
    wrapper = None
    if playbook is not None:
        selection = select_plays(playbook, member, parent_memberships(project, spec, playbook))
        if selection.skipped:
            extravars[SKIP_VAR] = selection.skip_names
            wrapper = [{"name": "rolebake: the plays a parent layer did not apply",
                        "import_playbook": str(playbook.resolve()),
                        "when": f"ansible_play_name not in {SKIP_VAR}"}]
    sources = tuple(member.inventory.files) if member.inventory.path is not None else ()
    return RunInventory(member.host, inventory, sources, extravars, wrapper)


def parent_memberships(project: Project, spec: ImageSpec,
                       playbook: Path) -> list[Membership | None]:
    """The memberships of the layers below this one that applied the same playbook.

    The parent specs were validated when the plan was made; their raw fields are
    enough here.
    """
    found: list[Membership | None] = []
    name = spec.parent_spec
    seen: set[str] = set()
    target = os.path.realpath(playbook)
    while name is not None and name not in seen:
        seen.add(name)
        path = project.spec_path(name)
        data = read_ansible_yaml(path) if path.is_file() else None
        if not isinstance(data, dict):
            break
        raw = data.get("playbook")
        if isinstance(raw, str) and os.path.realpath(project.root / raw) == target:
            inventory = data.get("inventory")
            groups = data.get("groups")
            parent = replace(spec, name=name, path=path, settings=replace(
                settings_of(spec), playbook=project.root / raw,
                groups=tuple(map(str, groups)) if isinstance(groups, list) else None,
                host=str(data["host"]) if data.get("host") else None,
                inventory=project.root / inventory if isinstance(inventory, str) else None))
            found.append(membership(project, parent))
        parent_ref = str(data.get("from") or "").partition(":")[0]
        name = parent_ref if project.has_spec(parent_ref) else None
    return found
