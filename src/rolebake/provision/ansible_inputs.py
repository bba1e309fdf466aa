"""What Ansible reads for a layer, followed statically: roles, includes, vars, playbooks.

What `plan` can key before a build (a build's observed reads check it: observed.py),
found as Ansible would: each role's whole folder (links inside the project
followed), its meta dependencies, `include_role`/`import_role` (with their
`*_from`), `include_tasks`/`import_tasks`, `include_vars`, `vars_files`,
`import_playbook`, `group_vars`/`host_vars`, plugin and content folders beside
each playbook (ansible_playfiles.py), the project's `ansible.cfg` and what it
points at, and the collections named by FQCN or `collections:`.

A `{{ var }}` name is resolved from the layer's (extra) vars; any other
templated name keys the whole roles/ tree (or the playbook's folder), with a
note naming its file and line. A path or link out of the project is refused
at its file and line, and so is what Ansible would stop at: a task file that
is not a list, an import_playbook or meta dependency cycle.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rolebake.errors import InputError
from rolebake.provision.ansible_config import (
    COLLECTIONS_KEYS,
    content_paths,
    read_config,
    roles_path,
)
from rolebake.provision.ansible_inventory import Membership
from rolebake.provision.ansible_playfiles import fileglob_matches, keyed_folders, special_vars
from rolebake.provision.base import check_inside, tree_files
from rolebake.provision.collection_versions import (
    ALWAYS_USED,
    collection_version,
    find_collection,
    named_in_keyword,
    named_in_module,
)
from rolebake.provision.names_kept import kept_names
from rolebake.provision.requirements import Requirements, installed, pending_roles, used
from rolebake.provision.task_args import task_args
from rolebake.spec import Project
from rolebake.yamlfile import YamlList, YamlMap, check_size, kind, read_ansible_yaml

TASK_INCLUDES = frozenset({"include_tasks", "import_tasks", "include"})
ROLE_INCLUDES = frozenset({"include_role", "import_role"})
BLOCK_KEYS = ("block", "rescue", "always")
PLAY_TASKS = ("pre_tasks", "tasks", "post_tasks", "handlers")
VARS_SUFFIXES = ("", ".yml", ".yaml", ".json")  # how Ansible finds group_vars/<name>

_TEMPLATED = re.compile(r"\{\{|\{%")
_ONE_VAR = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


@dataclass(frozen=True)
class AnsibleInputs:
    """What one layer's Ansible run reads."""

    files: tuple[Path, ...]  # project files, by the path Ansible sees
    collections: Mapping[str, str]  # "namespace.name" -> version (or where it is)
    notes: tuple[str, ...]  # why the key covers more than the layer needs
    requirements: Mapping[str, str] = field(default_factory=dict)  # installed ones used
    vars_files: tuple[str, ...] | None = None  # group_vars/host_vars entries of a host's names


def read_inputs(project: Project, *, roles: Sequence[str], playbook: Path | None,
                variables: Mapping[str, Any], where: tuple[Path, int | None],
                inventory: Membership | None = None,
                not_applied: frozenset[tuple[str, int | None]] = frozenset()) -> AnsibleInputs:
    """Follow everything Ansible will read for a layer.

    Args:
        project: the project.
        roles: the roles the layer applies (when it has no playbook).
        playbook: the layer's playbook, if it has one.
        variables: the layer's vars that may resolve a templated name (never
            sensitive ones: a resolved name ends up in the inputs label).
        where: the spec file and the line of `roles:`, for errors about them.
        inventory: the target as a host of the inventory (spec `groups:`): its files, and
            only its groups' and host's group_vars/host_vars entries (else whole folders).
        not_applied: plays (real path, line) that do not apply: not followed.

    Raises:
        InputError: a path or link that leaves the project, an absolute role
            or include path, a meta dependency or play role that is nowhere.
    """
    walker = _Walker(project, variables, playbook, installed(project), not_applied=not_applied)
    walker.pending = pending_roles(project)
    if inventory is not None:
        walker.vars_names = {"group_vars": inventory.groups, "host_vars": (inventory.host,)}
    config = read_config(project)
    walker.roles_dirs = dict.fromkeys(roles_path(project, config, playbook))
    if walker.required is not None:  # last, as the run's roles_path has them
        walker.roles_dirs[walker.required.roles_dir] = None
    if config.path is not None:
        walker.add(config.path)
    for key, path in content_paths(project, config):
        if key in COLLECTIONS_KEYS:
            walker.collection_roots.append(path)
        else:
            walker.add_tree(path)
    if walker.required is not None:  # after the cfg's, as ANSIBLE_COLLECTIONS_PATH has it
        walker.collection_roots.append(walker.required.collections_dir)
    walker.collections.update(config.collections())
    if inventory is not None:
        for path in inventory.inventory.files:
            walker.add(path)
        for folder in inventory.inventory.vars_dirs:
            walker.vars_dirs(folder)
    if playbook is not None:
        walker.playbook(playbook, where=where)
    else:
        for role in roles:
            found = walker.find_role(role, where[0], where[1], base=None, required=True)
            if found is not None:
                walker.role(found)
    walker.finish()
    collections = walker.versions()  # keys the files of collections inside the project too
    kept_names(project).save()
    required = used(walker.required, walker.owners) if walker.required else {}
    for name in walker.pending_used:  # `plan` before the install: the pin as written
        required[f"requirement role {name}"] = \
            f"{walker.pending[name] or 'unversioned'} (not installed yet)"
    notes = [*walker.notes, *(f"{tool} (requirements.yml): keyed on its installed content"
                              for tool in required)]
    return AnsibleInputs(files=tuple(sorted(walker.files)), collections=collections,
                         notes=tuple(notes), requirements=required,
                         vars_files=tuple(walker.vars_found) if inventory is not None else None)


@dataclass(frozen=True)
class _Context:
    """Where a task file sits: in a role (its folder) or in a playbook's folder."""

    role: Path | None
    playbook_dir: Path | None


@dataclass
class _Walker:
    project: Project
    variables: Mapping[str, Any]
    top_playbook: Path | None
    required: Requirements | None  # installed from requirements.yml: keyed by their digest
    owners: dict[str, None] = field(default_factory=dict)  # of those, the ones used
    files: dict[Path, None] = field(default_factory=dict)
    collections: set[str] = field(default_factory=lambda: set(ALWAYS_USED))
    collection_roots: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seen_dirs: set[str] = field(default_factory=set)
    walked: set[tuple[str, ...]] = field(default_factory=set)
    whole_roles: bool = False
    lenient: bool = False  # walking every role for a templated name: a missing one is no error
    whole_folders: dict[Path, None] = field(default_factory=dict)
    roles_dirs: dict[Path, None] = field(default_factory=dict)  # as the run's (roles_path)
    vars_names: Mapping[str, tuple[str, ...]] | None = None  # group_vars/host_vars to key
    vars_found: dict[str, None] = field(default_factory=dict)
    not_applied: frozenset[tuple[str, int | None]] = frozenset()  # plays: (realpath, line)
    importing: list[str] = field(default_factory=list)  # playbooks being walked (realpaths)
    pending: Mapping[str, str] = field(default_factory=dict)  # requirements.yml, not installed
    pending_used: dict[str, None] = field(default_factory=dict)

    # Files -----------------------------------------------------------------------------

    def add(self, path: Path) -> None:
        """Key one file (a link inside the project is keyed by its target's bytes)."""
        check_inside(path, self.project)
        if self._required(path):
            return
        if path not in self.files:
            self.files[path] = None
            self.collections.update(kept_names(self.project).names(path))

    def add_tree(self, root: Path, *, capped: bool = False) -> None:
        """Key every file below a folder (or the file itself); `capped`: vars, size-capped."""
        if self._required(root):
            return
        for path in tree_files(root, self.project, seen=self.seen_dirs):
            if capped:
                check_size(path)
            if path not in self.files:
                self.files[path] = None
                self.collections.update(kept_names(self.project).names(path))

    def _required(self, path: Path) -> bool:
        """Note an installed requirement's file: its tree is keyed whole, by its digest."""
        owner = self.required.owner(path) if self.required is not None else None
        if owner is not None:
            self.owners[owner] = None
        return owner is not None

    # Names known only at run time ------------------------------------------------------------

    def resolve(self, value: str) -> str | None:
        """`value` with `{{ var }}` filled in from the layer's vars; None when it cannot be."""
        if not _TEMPLATED.search(value):
            return value
        missing = False

        def fill(match: re.Match[str]) -> str:
            nonlocal missing
            found = self.variables.get(match.group(1))
            if isinstance(found, bool) or not isinstance(found, str | int):
                missing = True
                return match.group(0)
            return str(found)

        filled = _ONE_VAR.sub(fill, value)
        return None if missing or _TEMPLATED.search(filled) else filled

    def unknown(self, *, in_role: bool, folder: Path | None, path: Path, line: int | None,
                what: str, name: str) -> None:
        """Key the whole tree a templated name may reach, and say so in a note.

        Args:
            in_role: the name is written in a role, or names a role: key every role.
            folder: otherwise, the playbook folder to key as a whole.
            path: the file with the name, and `line` in it.
            line: see `path`.
            what: what the name is for ("includes", "names role").
            name: the name as written.
        """
        where = f"{self.project.logical(path)}:{line}" if line else self.project.logical(path)
        if in_role or folder is None:
            self.whole_roles = True
            scope = "the whole roles/ tree"
        else:
            self.whole_folders[folder] = None
            scope = f"the whole {self.project.logical(folder)}/ folder"
        note = f"keyed on {scope}: {where} {what} {name!r}, a name known only at run time"
        if note not in self.notes:
            self.notes.append(note)

    # Roles -----------------------------------------------------------------------------

    def find_role(self, name: str, path: Path, line: int | None, *, base: Path | None,
                  required: bool, playbook_dir: Path | None = None) -> Path | None:
        """The folder of role `name` as Ansible searches for it, or None.

        Args:
            name: a role name, a path relative to the playbook, or a collection's role.
            path: the file naming the role, and `line` in it, for errors.
            line: see `path`.
            base: the folder of the role that names this one (its siblings are found).
            required: Ansible stops when this role is missing (a dependency, a play's role).
            playbook_dir: the folder of the playbook the role is applied from.
        """
        resolved = self.resolve(name)
        if resolved is None:
            self.unknown(in_role=True, folder=None, path=path, line=line, what="names role",
                         name=name)
            return None
        if Path(resolved).is_absolute():
            raise InputError(f"role {resolved!r} is an absolute path; name a role in roles/ "
                             "or give a path relative to the playbook", path=path, line=line)
        candidates: list[Path] = []
        if playbook_dir is not None:
            candidates.append(playbook_dir / "roles" / resolved)
        candidates.extend(folder / resolved for folder in self.roles_dirs)
        if base is not None:
            candidates.append(base.parent / resolved)
        if playbook_dir is not None:
            candidates.append(playbook_dir / resolved)
        for candidate in candidates:
            if candidate.is_dir():
                check_inside(candidate, self.project, where=path, line=line)
                # Reached through a linked folder (playbooks/roles -> ../roles): name the
                # role by the path with no link in it, when one of the others is that.
                real = os.path.realpath(candidate)
                return next((c for c in candidates if os.path.normpath(c) == real), candidate)
        if "/" not in resolved and resolved.count(".") >= 2:
            self.collections.add(resolved.rsplit(".", 1)[0])  # namespace.collection.role
            return None
        if any(not self.project.inside(c) for c in candidates):
            raise InputError(f"role {resolved!r} is outside the project", path=path, line=line)
        if resolved in self.pending:
            if resolved not in self.pending_used:
                self.pending_used[resolved] = None
                self.notes.append(f"role {resolved} (requirements.yml) is not installed yet: "
                                  "the build installs it first, then keys it")
            return None
        if required and not self.lenient:
            known = sorted(p.name for p in self.project.roles_dir.iterdir()
                           if p.is_dir()) if self.project.roles_dir.is_dir() else []
            raise InputError(f"role {resolved!r} not found in roles/ (known: "
                             f"{', '.join(known) or 'none'})", path=path, line=line)
        return None

    def role(self, folder: Path, *, tasks_from: str = "main", handlers_from: str = "main",
             vars_from: str = "main", defaults_from: str = "main",
             playbook_dir: Path | None = None, chain: tuple[str, ...] = ()) -> None:
        """Key a role's whole folder and follow what its entry points pull in.

        `chain`: the roles (realpaths) whose meta dependencies led here, for cycles.
        """
        key = ("role", os.path.realpath(folder), tasks_from, handlers_from, vars_from,
               defaults_from)
        if key in self.walked:
            return
        self.walked.add(key)
        self.add_tree(folder)
        ctx = _Context(role=folder, playbook_dir=playbook_dir)
        meta = _entry(folder / "meta", "main")
        if meta is not None:
            self._meta(meta, folder, ctx, (*chain, os.path.realpath(folder)))
        for sub, name in (("tasks", tasks_from), ("handlers", handlers_from)):
            entry = _entry(folder / sub, name)
            if entry is not None:
                self.tasks_file(entry, ctx)
        for sub, name in (("vars", vars_from), ("defaults", defaults_from)):
            entry = _entry(folder / sub, name)
            if entry is not None:
                check_size(entry)
                self.add(entry)

    def _meta(self, meta: Path, folder: Path, ctx: _Context, chain: tuple[str, ...]) -> None:
        data = read_ansible_yaml(meta)
        if not isinstance(data, dict):
            return
        self.collections.update(named_in_keyword(data.get("collections")))
        deps = data.get("dependencies") or []
        for index, dep in enumerate(deps if isinstance(deps, list) else []):
            line = deps.line_of(index) if isinstance(deps, YamlList) else None
            name = (dep.get("role") or dep.get("name")) if isinstance(dep, dict) else dep
            if not isinstance(name, str):
                continue
            found = self.find_role(name, meta, line, base=folder, required=True,
                                   playbook_dir=ctx.playbook_dir)
            if found is not None and os.path.realpath(found) in chain and not self.lenient:
                cycle = chain[chain.index(os.path.realpath(found)):]
                names = " -> ".join(Path(real).name for real in (*cycle, cycle[0]))
                raise InputError(f"meta dependencies make a cycle: {names}", path=meta, line=line)
            if found is not None:
                self.role(found, playbook_dir=ctx.playbook_dir, chain=chain)

    # Task files -------------------------------------------------------------------------

    def tasks_file(self, path: Path, ctx: _Context) -> None:
        """Key a task (or handler) file and follow its includes."""
        key = ("tasks", os.path.realpath(path), str(ctx.role))
        if key in self.walked:
            return
        self.walked.add(key)
        self.add(path)
        data = read_ansible_yaml(path)
        if isinstance(data, list):
            self.task_list(data, path, ctx)
        elif data is not None and not self.lenient:  # Ansible stops at it: "malformed block"
            raise InputError(f"a task file must be a list of tasks, got {kind(data)}",
                             path=path, line=getattr(data, "line", 1))

    def task_list(self, tasks: list[Any], path: Path, ctx: _Context) -> None:
        """Follow the includes of a list of tasks (blocks included)."""
        for index, task in enumerate(tasks):
            if not isinstance(task, dict):
                continue
            line = tasks.line_of(index) if isinstance(tasks, YamlList) else None
            for key in BLOCK_KEYS:
                if isinstance(task.get(key), list):
                    self.task_list(task[key], path, ctx)
            for raw_key, value in task.items():
                if not isinstance(raw_key, str):
                    continue
                action = raw_key.removeprefix("ansible.builtin.").removeprefix("ansible.legacy.")
                at = task.line_of(raw_key) if isinstance(task, YamlMap) else line
                args = task_args(value, task.get("args"))
                if raw_key == "with_fileglob" and ctx.playbook_dir is not None:
                    for found in fileglob_matches(task, ctx.playbook_dir):
                        self.add(found)
                elif action in TASK_INCLUDES:
                    self._include_tasks(args, path, at, ctx, raw_key)
                elif action in ROLE_INCLUDES:
                    self._include_role(args, path, at, ctx, raw_key)
                elif action == "include_vars":
                    self._include_vars(args, path, at, ctx)
                else:
                    self.collections.update(named_in_module(raw_key))

    def _include_tasks(self, args: Mapping[str, Any], path: Path, line: int | None,
                       ctx: _Context, keyword: str) -> None:
        name = args.get("file") or args.get("_raw_params")
        if not isinstance(name, str) or not name:
            return
        for found in self._relative(name, path, line, ctx, "includes", keyword,
                                    role_sub="tasks"):
            self.tasks_file(found, ctx)
            break  # Ansible takes the first; every candidate is keyed

    def _include_role(self, args: Mapping[str, Any], path: Path, line: int | None,
                      ctx: _Context, keyword: str) -> None:
        name = args.get("name") or args.get("role") or args.get("_raw_params")
        if not isinstance(name, str) or not name:
            return
        entries: dict[str, Any] = {}  # tasks_from and friends, as role() takes them
        for option in ("tasks_from", "vars_from", "defaults_from", "handlers_from"):
            value = args.get(option)
            if not isinstance(value, str):
                continue
            resolved = self.resolve(value)
            if resolved is None:
                self.unknown(in_role=True, folder=None, path=path, line=line,
                             what=f"gives {option}", name=value)
                return
            if Path(resolved).is_absolute():
                raise InputError(f"{keyword}: {option} {resolved!r} is an absolute path; give "
                                 "a file of the role", path=path, line=line)
            entries[option] = resolved
        found = self.find_role(name, path, line, base=ctx.role, required=False,
                               playbook_dir=ctx.playbook_dir)
        if found is None:
            return
        for option, value in entries.items():
            # tasks_from: x is tasks/x, vars_from: x is vars/x, and so on.
            target = found / option.removesuffix("_from") / value
            check_inside(target, self.project, where=path, line=line)
        self.role(found, playbook_dir=ctx.playbook_dir, **entries)

    def _include_vars(self, args: Mapping[str, Any], path: Path, line: int | None,
                      ctx: _Context) -> None:
        for option in ("file", "_raw_params", "dir"):
            name = args.get(option)
            if isinstance(name, str) and name:
                for found in self._relative(name, path, line, ctx, "loads vars from",
                                            "include_vars", role_sub="vars"):
                    self.add_tree(found)

    def _relative(self, name: str, path: Path, line: int | None, ctx: _Context, what: str,
                  keyword: str, *, role_sub: str) -> list[Path]:
        """The existing files a relative name can mean, keyed; [] when templated or missing."""
        resolved = self.resolve(special_vars(name, ctx.role, ctx.playbook_dir))
        if resolved is None:
            self.unknown(in_role=ctx.role is not None, folder=ctx.playbook_dir or path.parent,
                         path=path, line=line, what=what, name=name)
            return []
        if Path(resolved).is_absolute() and not name.startswith("{{"):
            raise InputError(f"{keyword}: {resolved!r} is an absolute path; give a path "
                             "inside the project, relative to the role or playbook",
                             path=path, line=line)
        candidates: list[Path] = []
        if ctx.role is not None:
            candidates += [ctx.role / role_sub / resolved, path.parent / resolved,
                           ctx.role / resolved]
        else:
            candidates.append(path.parent / resolved)
        if ctx.playbook_dir is not None:
            candidates.append(ctx.playbook_dir / resolved)
        found: list[Path] = []
        candidates = list(dict.fromkeys(Path(os.path.normpath(c)) for c in candidates))
        for candidate in candidates:
            if candidate.exists() or candidate.is_symlink():
                check_inside(candidate, self.project, where=path, line=line)
                found.append(candidate)
        if not found and not any(self.project.inside(c) for c in candidates):
            # Not there now, but it would be read from outside where it is.
            check_inside(candidates[0], self.project, where=path, line=line)
        for candidate in found:
            self.add_tree(candidate, capped=True)  # a task or vars file
        return found

    # Playbooks ------------------------------------------------------------------------

    def playbook(self, path: Path, *, where: tuple[Path, int | None]) -> None:
        """Key a playbook, what sits beside it, and everything its plays pull in."""
        key = ("playbook", os.path.realpath(path))
        if key in self.walked:
            return
        self.walked.add(key)
        check_inside(path, self.project, where=where[0], line=where[1])
        self.add(path)
        folder = path.parent
        self.vars_dirs(folder)
        for tree in keyed_folders(folder):
            self.add_tree(tree)
        if (folder / "collections").is_dir():
            self.collection_roots.insert(0, folder / "collections")
        if (folder / "roles").is_dir():
            self.roles_dirs[folder / "roles"] = None
        plays = read_ansible_yaml(path)
        ctx = _Context(role=None, playbook_dir=folder)
        self.importing.append(os.path.realpath(path))
        for index, play in enumerate(plays if isinstance(plays, list) else []):
            if not isinstance(play, dict):
                continue
            line = plays.line_of(index) if isinstance(plays, YamlList) else None
            self._play(play, path, line, ctx)
        self.importing.pop()

    def vars_dirs(self, folder: Path) -> None:
        """Key a folder's group_vars/ and host_vars/: whole, or the target's entries (and which)."""
        for sub in ("group_vars", "host_vars"):
            if (folder / sub).is_dir() and self.vars_names is None:
                self.add_tree(folder / sub, capped=True)
            for name in self.vars_names[sub] if self.vars_names is not None else ():
                for suffix in VARS_SUFFIXES:
                    entry = folder / sub / f"{name}{suffix}"
                    if entry.exists() or entry.is_symlink():
                        self.add_tree(entry, capped=True)
                        self.vars_found[self.project.logical(entry)] = None

    def _play(self, play: dict[Any, Any], path: Path, line: int | None, ctx: _Context) -> None:
        if (os.path.realpath(path), line) in self.not_applied:
            return  # not for the target's groups, or a parent layer applied it
        for keyword in ("import_playbook", "ansible.builtin.import_playbook"):
            name = play.get(keyword)
            if isinstance(name, str):
                self._import_playbook(name, path, _line(play, keyword, line), ctx)
        self.collections.update(named_in_keyword(play.get("collections")))
        self._vars_files(play.get("vars_files"), path, _line(play, "vars_files", line), ctx)
        roles = play.get("roles") or []
        for index, entry in enumerate(roles if isinstance(roles, list) else []):
            name = (entry.get("role") or entry.get("name")) if isinstance(entry, dict) else entry
            if not isinstance(name, str):
                continue
            at = roles.line_of(index) if isinstance(roles, YamlList) else line
            found = self.find_role(name, path, at, base=None, required=True,
                                   playbook_dir=ctx.playbook_dir)
            if found is not None:
                self.role(found, playbook_dir=ctx.playbook_dir)
        for key in PLAY_TASKS:
            if isinstance(play.get(key), list):
                self.task_list(play[key], path, ctx)

    def _import_playbook(self, name: str, path: Path, line: int | None, ctx: _Context) -> None:
        resolved = self.resolve(name)
        if resolved is None:
            self.unknown(in_role=False, folder=ctx.playbook_dir or path.parent, path=path,
                         line=line, what="imports playbook", name=name)
            return
        if Path(resolved).is_absolute():
            raise InputError(f"import_playbook: {resolved!r} is an absolute path; give a path "
                             "relative to the playbook", path=path, line=line)
        target = path.parent / resolved
        if not (target.exists() or target.is_symlink()) and "/" not in resolved \
                and resolved.count(".") >= 2:
            self.collections.add(".".join(resolved.split(".")[:2]))  # a collection's playbook
            return
        check_inside(target, self.project, where=path, line=line)
        if not target.is_file():
            raise InputError(f"import_playbook: {resolved!r} not found", path=path, line=line)
        if os.path.realpath(target) in self.importing:  # import_playbook is static: no end
            cycle = self.importing[self.importing.index(os.path.realpath(target)):]
            names = " -> ".join(self.project.relative(Path(p)) for p in (*cycle, cycle[0]))
            raise InputError(f"import_playbook makes a cycle: {names}", path=path, line=line)
        self.playbook(target, where=(path, line))

    def _vars_files(self, value: Any, path: Path, line: int | None, ctx: _Context) -> None:
        entries = value if isinstance(value, list) else [value] if isinstance(value, str) else []
        for index, entry in enumerate(entries):
            at = entries.line_of(index) if isinstance(entries, YamlList) else line
            # An entry that is a list names alternatives: the first one found is loaded.
            for name in entry if isinstance(entry, list) else [entry]:
                if isinstance(name, str):
                    self._relative(name, path, at, ctx, "loads vars file", "vars_files",
                                   role_sub="vars")

    # The end: whole trees, collections -------------------------------------------------------

    def finish(self) -> None:
        """Key the whole trees that templated names asked for."""
        if self.whole_roles:
            # Every role may be the one named: walk each (what it pulls in from
            # outside roles/ counts too), without failing on one nobody asked for.
            self.lenient = True
            for roles_dir in list(self.roles_dirs):
                if not roles_dir.is_dir():
                    continue
                check_inside(roles_dir, self.project)
                for folder in sorted(p for p in roles_dir.iterdir() if p.is_dir()):
                    self.role(folder)
                self.add_tree(roles_dir)
        for folder in list(self.whole_folders):
            self.add_tree(folder)

    def versions(self) -> dict[str, str]:
        """Each collection used, with its version (files of one inside the project are keyed)."""
        found: dict[str, str] = {}
        for name in sorted(self.collections):
            folder = find_collection(name, self.collection_roots, self.project)
            found[name] = collection_version(folder) if folder is not None else "not installed"
            if folder is not None and self._required(folder):
                found[name] += " (requirements.yml)"
            elif folder is not None and self.project.inside(folder):
                self.add_tree(folder)
                found[name] += " (in the project)"
        return found


def _entry(folder: Path, name: str) -> Path | None:
    """A role's entry file (`main` -> main.yml, main.yaml, main.json or main)."""
    return next((c for c in (folder / f"{name}{s}" for s in VARS_SUFFIXES) if c.is_file()), None)


def _line(data: Any, key: str, default: int | None) -> int | None:
    return data.line_of(key) if isinstance(data, YamlMap) else default

