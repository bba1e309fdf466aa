"""An image as a host of the project's Ansible inventory, as Ansible itself answers it.

A spec with `groups:` makes its build target (a container, or the parity VM)
a host of the project's inventory: it joins those groups (their parent groups
by the inventory's `children`, and `all`), so a playbook's plays apply to it
exactly as `ansible-playbook --limit` would apply them to a server of those
groups, and the `group_vars/` and `host_vars/` beside the inventory and the
playbook apply with Ansible's own precedence.

Every question is put to ansible-core in this process (`ansible_api.session`:
the project's cfg, ansible-core's own plugins): `InventoryManager` reads the
inventory (INI, YAML, a folder of them, a script when the project's cfg
enables the `script` plugin), the image is added as a host of its groups
(`add_host`), `get_hosts` matches each play's pattern, `VariableManager` gives
its variables. rolebake keeps no grammar of its own for inventories or
patterns; what is left here is which questions to ask, and how the build's
run gets the same answers (the project's inventory, a generated one with the
target, `--limit`).

The inventory is the spec's `inventory:`, else the `inventory` of the
project's ansible.cfg, else the first of DEFAULT_NAMES at the project root or
beside the playbook.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rolebake.errors import InputError
from rolebake.provision import ansible_api
from rolebake.provision import inventory_answers as answers
from rolebake.provision.ansible_config import inventory_plugins, read_config, settings
from rolebake.provision.ansible_spec import settings_of
from rolebake.spec import ImageSpec, Project
from rolebake.yamlfile import YamlList, read_ansible_yaml

DEFAULT_NAMES = ("inventory", "inventory.ini", "inventory.yml", "inventory.yaml",
                 "hosts", "hosts.ini", "hosts.yml", "hosts.yaml")
SKIP_VAR = "rolebake_skip_plays"
# What Ansible prints while rolebake asks it (it would land in `plan`'s output): off.
QUIET = {"ANSIBLE_HOST_PATTERN_MISMATCH": "ignore", "ANSIBLE_LOCALHOST_WARNING": "False",
         "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False",
         # Only ansible-core's own vars plugin runs in rolebake's process, and only when
         # vars are asked for: group_vars are not read (nor decrypted) to list groups.
         "ANSIBLE_VARS_ENABLED": "host_group_vars", "ANSIBLE_RUN_VARS_PLUGINS": "demand"}


def host_name(spec: ImageSpec) -> str:
    """The image's inventory host name: the spec's `host:`, else `rolebake-<spec name>`.

    It is also the build container's hostname, so facts (`ansible_hostname`,
    `ansible_fqdn`) say it.
    """
    return settings_of(spec).host or f"rolebake-{spec.name}"


@dataclass(frozen=True)
class Inventory:
    """What Ansible read of the project's inventory: its files, groups and hosts."""

    sources: tuple[Path, ...] = ()  # files or folders, as Ansible gets them
    files: tuple[Path, ...] = ()  # the files among them Ansible reads (keyed)
    groups: frozenset[str] = frozenset({"all", "ungrouped"})
    hosts: frozenset[str] = frozenset()

    @property
    def path(self) -> Path | None:
        """The first source; None when the project has no inventory."""
        return self.sources[0] if self.sources else None

    @property
    def vars_dirs(self) -> tuple[Path, ...]:
        """Where group_vars/ and host_vars/ beside the inventory are looked for."""
        return tuple(dict.fromkeys(p if p.is_dir() else p.parent for p in self.sources))


@dataclass(frozen=True)
class Membership:
    """The build target as a host of the inventory."""

    host: str
    groups: tuple[str, ...]  # every group it is in, `all` and parent groups included
    inventory: Inventory
    named: bool  # the spec named the host
    declared: tuple[str, ...] = ()  # the spec's `groups:`
    project: Project | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Play:
    """One play of a playbook, as far as host selection goes."""

    name: str  # as Ansible names it (`ansible_play_name`): its name, else its hosts
    hosts: str  # the pattern, as written
    path: Path
    line: int | None


# Asking Ansible -------------------------------------------------------------------------------

@contextlib.contextmanager
def _ansible(project: Project) -> Iterator[None]:
    """ansible-core set up for the project, as the build's run will be."""
    config = read_config(project)
    # ANSIBLE_HOME is never made: Ansible only looks there, finds nothing.
    env = {**settings(config, project.root / ".rolebake" / "ansible-home"), **QUIET}
    ansible_api.ready()
    from ansible.errors import AnsibleError

    try:
        with ansible_api.session(config.path, env):
            yield
    except AnsibleError as exc:  # a setting of the cfg Ansible refuses
        raise InputError(f"Ansible: {_message(exc)}", path=config.path) from None


def _message(exc: BaseException) -> str:
    text = str(getattr(exc, "message", "") or exc)
    return (text.strip().splitlines() or [type(exc).__name__])[0]


def _manager(project: Project, sources: Sequence[Path]) -> Any:
    """Ansible's InventoryManager over the project's inventory (inside `_ansible`).

    Raises:
        InputError: a source Ansible cannot parse, with Ansible's reason.
    """
    from ansible.errors import AnsibleError
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader

    loader = DataLoader()
    with ansible_api.collected_warnings() as warnings:
        try:
            manager = InventoryManager(loader, sources=[str(s) for s in sources],
                                       parse=bool(sources))
        except AnsibleError as exc:
            why = "; ".join(warnings) or _message(exc)
            source = next((s for s in sources if str(s) in _message(exc)), None)
            raise InputError(f"Ansible cannot read the inventory: {why}",
                             path=source or (sources[0] if sources else project.root)) from None
    if not sources:
        manager.reconcile_inventory()
    return manager


def _add_target(manager: Any, host: str, groups: Iterable[str]) -> Any:
    """The target as a host of its groups, as the run's generated inventory puts it."""
    for group in groups:
        if group != "all" and group not in manager.groups:
            manager.add_group(group)
        manager.add_host(host, group)
    manager.reconcile_inventory()
    return manager.get_host(host)


@functools.lru_cache(maxsize=64)
def _read(project: Project, sources: tuple[Path, ...], stamp: tuple[Any, ...]) -> Inventory:
    del stamp  # part of the cache key only
    enabled = inventory_plugins(read_config(project))
    with _ansible(project):
        files = tuple(f for s in sources for f in _source_files(project, s))
        for file in files:
            if "script" not in enabled and _is_script(file):
                raise InputError("an inventory script: Ansible runs one only when the "
                                 "project's ansible.cfg enables the `script` inventory plugin "
                                 "([inventory] enable_plugins = script, yaml, ini)",
                                 path=file, line=1)
        manager = _manager(project, sources)
        return Inventory(sources, files, frozenset(manager.groups), frozenset(manager.hosts))


def _is_script(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(2) == b"#!"
    except OSError:
        return False


def _stamp(sources: Iterable[Path], project: Project) -> tuple[Any, ...]:
    """What changes when any file of the inventory (or the cfg) changes: the cache key."""
    found: list[Any] = []
    for path in [project.root / "ansible.cfg", *sources]:
        for root, dirs, files in os.walk(path) if path.is_dir() else [("", [], [str(path)])]:
            dirs.sort()
            for name in sorted(files):
                with contextlib.suppress(OSError):
                    stat = os.stat(os.path.join(root, name))
                    found.append((root, name, stat.st_mtime_ns, stat.st_size, stat.st_mode))
    return tuple(found)


def _source_files(project: Project, source: Path) -> list[Path]:
    """The files Ansible reads of a source (a folder: what it does not ignore, in its order)."""
    from ansible.inventory import manager as inventory_manager

    if not project.inside(source):
        raise InputError("the inventory is outside the project", path=source)
    if not source.is_dir():
        return [source]
    found: list[Path] = []
    for entry in sorted(source.iterdir()):
        if inventory_manager.IGNORED.search(os.fsencode(entry.name)):
            continue
        found.extend(_source_files(project, entry))
    return found


def read_inventory(project: Project, path: Path | Sequence[Path] | None) -> Inventory:
    """What Ansible reads of an inventory (a file, a folder, or several): groups, hosts, files.

    Raises:
        InputError: a source outside the project, or one Ansible cannot parse.
    """
    sources = (() if path is None else (path,) if isinstance(path, Path) else tuple(path))
    for source in sources:
        if not project.inside(source):
            raise InputError("the inventory is outside the project", path=source)
    # Ansible's answer, kept on disk when the inventory is static (inventory_answers.py).
    found = answers.answer(project, sources, QUIET, ["inventory"], lambda: answers.inventory_fields(
        _read(project, sources, _stamp(sources, project))))
    return Inventory(sources, tuple(map(Path, found["files"])), frozenset(found["groups"]),
                     frozenset(found["hosts"]))


def membership(project: Project, spec: ImageSpec) -> Membership | None:
    """The target's host name and groups, or None when the spec gives no `groups:`.

    Raises:
        InputError: the inventory cannot be read, or the host is named like a group.
    """
    own = settings_of(spec)
    if own.groups is None:
        return None
    sources = inventory_sources(project, own.inventory, own.playbook)
    inventory = read_inventory(project, sources)
    host = host_name(spec)
    if host in inventory.groups:
        raise InputError(f"host name {host!r} is also a group of the inventory; Ansible "
                         "would confuse them (give `host:` another name)",
                         path=spec.path, line=spec.line_of("host") or spec.line_of("groups"))
    declared = tuple(own.groups)
    groups = tuple(answers.answer(project, sources, QUIET, ["groups", host, *declared], lambda: (
        _groups(project, inventory, host, declared, _stamp(sources, project)))))
    return Membership(host=host, groups=groups, inventory=inventory, named=own.host is not None,
                      declared=declared, project=project)


@functools.lru_cache(maxsize=256)
def _groups(project: Project, inventory: Inventory, host: str, groups: tuple[str, ...],
            stamp: tuple[Any, ...]) -> tuple[str, ...]:
    del stamp
    with _ansible(project):
        target = _add_target(_manager(project, inventory.sources), host, groups)
        names = {g.name for g in target.get_groups()}
    return ("all", *sorted(names - {"all"}))


def inventory_sources(project: Project, given: Path | None,
                      playbook: Path | None) -> tuple[Path, ...]:
    """`given`, else ansible.cfg's `inventory` (every entry), else a default name.

    The default names are looked for at the root, then beside the playbook.

    Raises:
        InputError: the cfg names an inventory outside the project, or none there.
    """
    if given is not None:
        return (given,)
    config = read_config(project)
    entries = config.paths("inventory")
    if entries and config.path is not None:
        found: list[Path] = []
        for entry in entries:
            path = Path(entry)
            if not project.inside(path):
                raise InputError(f"inventory = {config.get('inventory')}: {path} is outside "
                                 "the project; rolebake reads nothing from outside it",
                                 path=config.path, line=config.line("inventory"))
            if not path.exists():
                raise InputError(f"inventory = {config.get('inventory')}: {path} not found",
                                 path=config.path, line=config.line("inventory"))
            found.append(path)
        return tuple(found)
    folders = [project.root]
    if playbook is not None:
        folders.append(playbook.parent)
    for folder in folders:
        for name in DEFAULT_NAMES:
            if (folder / name).exists() and project.inside(folder / name):
                return (folder / name,)
    return ()


def target_variables(project: Project, member: Membership,
                     playbook: Path | None = None) -> dict[str, Any]:
    """The target's inventory variables, as Ansible's VariableManager gives them to a play.

    Inventory vars, group_vars/ and host_vars/ beside the inventory and (when
    given) beside the playbook, with Ansible's precedence; no facts, no play
    vars, no magic variables.

    Raises:
        InputError: a vaulted vars file (no vault password is used here).
    """
    from ansible.vars.manager import VariableManager

    with _ansible(project):
        manager = _manager(project, member.inventory.sources)
        target = _add_target(manager, member.host, member.declared)
        loader = manager._loader
        if playbook is not None:
            loader.set_basedir(str(playbook.parent))
        found = VariableManager(loader=loader, inventory=manager).get_vars(
            host=target, include_hostvars=False)
        return {k: _plain(v) for k, v in found.items() if k not in ansible_api.MAGIC_VARS}


def _plain(value: Any) -> Any:
    """Ansible's tagged values as plain JSON data (a vaulted value stays a marker)."""
    return json.loads(json.dumps(value, default=lambda v: f"<{type(v).__name__}>"))


# Host patterns ------------------------------------------------------------------------------

def split_pattern(hosts: Any) -> list[str] | None:
    """A play's `hosts:` as Ansible splits it into terms; None when templated."""
    ansible_api.ready()
    from ansible.inventory.manager import split_host_pattern

    text = _texts(hosts)
    return None if _templated(text) else [str(t) for t in split_host_pattern(text)]


def _texts(hosts: Any) -> list[str]:
    return ["" if t is None else str(t) for t in (hosts if isinstance(hosts, list) else [hosts])]


def _templated(text: list[str]) -> bool:
    return any("{{" in t or "{%" in t for t in text)


def matches(hosts: Any, member: Membership | None) -> bool | None:
    """Whether a play with this `hosts:` applies to the target; None when templated.

    Without a membership (a spec with no `groups:`), every play applies.
    """
    return verdicts([hosts], member)[0]


def verdicts(patterns: Sequence[Any], member: Membership | None) -> list[bool | None]:
    """For each pattern, whether Ansible's `get_hosts` names the target; None when templated.

    Raises:
        InputError: a pattern Ansible refuses.
    """
    if member is None or member.project is None:
        return [None if _templated(_texts(p)) else True for p in patterns]
    project, sources = member.project, member.inventory.sources
    return list(answers.answer(project, sources, QUIET, [
        "verdicts", member.host, *member.declared, None, *map(_texts, patterns)],
        lambda: _verdicts(project, member, tuple(None if t is None else tuple(t) for t in map(
            split_pattern, patterns)), _stamp(sources, project))))


@functools.lru_cache(maxsize=256)
def _verdicts(project: Project, member: Membership,
              patterns: tuple[tuple[str, ...] | None, ...],
              stamp: tuple[Any, ...]) -> tuple[bool | None, ...]:
    del stamp
    from ansible.errors import AnsibleError

    found: list[bool | None] = []
    with _ansible(project):
        manager = _manager(project, member.inventory.sources)
        target = _add_target(manager, member.host, member.declared)
        for terms in patterns:
            if terms is None:
                found.append(None)
                continue
            try:
                named = manager.get_hosts(list(terms))
            except AnsibleError as exc:
                raise InputError(f"hosts: {','.join(terms)}: {_message(exc)}") from None
            found.append(target in named)
    return tuple(found)


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

    Raises:
        InputError: a play's pattern Ansible refuses (file and line).
    """
    every = plays(playbook)
    patterns = [p.hosts for p in every]
    try:
        mine = verdicts(patterns, member)
        theirs = [verdicts(patterns, parent) for parent in parents]
    except InputError as exc:
        play = next((p for p in every if p.hosts in exc.message), None)
        raise InputError(exc.message, path=play.path if play else playbook,
                         line=play.line if play else None) from None
    applied: list[Play] = []
    skipped: list[Play] = []
    undecided: list[Play] = []
    for index, play in enumerate(every):
        verdict = mine[index]
        if verdict is None:
            undecided.append(play)
        elif verdict and any(parent[index] for parent in theirs):
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
    target_vars: Mapping[str, Any] = field(default_factory=dict)  # the target's alone, forced


def prepare(project: Project, spec: ImageSpec, playbook: Path | None,
            connection: Mapping[str, Any]) -> RunInventory:
    """The inventory, limit, extra vars and playbook wrapper of one layer's run.

    The connection settings are the target's host vars in the generated
    inventory and, through rolebake's vars plugin (`target_vars`), over any
    host_vars/ file of a real host of that name; never extra vars, which
    would apply to every host of the inventory.

    Args:
        project: the project.
        spec: the layer's spec (its `groups:`, `host:`, `inventory:`).
        playbook: the layer's playbook, None for roles.
        connection: the target's host vars (how Ansible reaches it, secrets).
    """
    host = host_name(spec)
    member = membership(project, spec)
    if member is None:
        groups = legacy_groups(playbook) if playbook is not None else set()
        inventory: dict[str, Any] = {"all": {"hosts": {host: dict(connection)}}}
        if groups:
            inventory["all"]["children"] = {g: {"hosts": {host: {}}} for g in sorted(groups)}
        return RunInventory(host, inventory, (), {}, None, dict(connection))
    inventory = {"all": {"hosts": {member.host: dict(connection)}}}
    children = [g for g in member.declared if g not in ("all", "ungrouped")]
    if children:
        inventory["all"]["children"] = {g: {"hosts": {member.host: {}}} for g in children}
    extravars: dict[str, Any] = {}
    wrapper = None
    if playbook is not None:
        selection = select_plays(playbook, member, parent_memberships(project, spec, playbook))
        if selection.skipped:
            extravars[SKIP_VAR] = selection.skip_names
            wrapper = [{"name": "rolebake: the plays a parent layer did not apply",
                        "import_playbook": str(playbook.resolve()),
                        "when": f"ansible_play_name not in {SKIP_VAR}"}]
    return RunInventory(member.host, inventory, member.inventory.sources, extravars, wrapper,
                        dict(connection))


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
