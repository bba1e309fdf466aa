"""Which cookbooks and role files a run list pulls in, read from the project.

Resolution happens before any container exists, so a missing cookbook, recipe,
role or environment is an InputError naming the file and line that asked for
it; the result is also what the cache key covers and what gets mounted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from rolebake.errors import InputError
from rolebake.provision.base import tree_files
from rolebake.provision.chef.options import RUN_LIST_RE, ChefOptions
from rolebake.spec import Project

_DEPENDS_RE = re.compile(r"""^[ \t]*depends[ \t(]+['"]([^'"]+)['"]""", re.MULTILINE)
_NAME_RE = re.compile(r"""^[ \t]*name[ \t(]+['"]([^'"]+)['"]""", re.MULTILINE)
_RUN_LIST_ITEM_RE = re.compile(r"""['"]((?:recipe|role)\[[^\]'"]+\])['"]""")


@dataclass(frozen=True)
class Resolved:
    """What a run list pulls in: cookbooks (with their dependencies) and role files."""

    cookbooks: Mapping[str, Path]  # name -> folder, in the order first needed
    roles: tuple[Path, ...]
    environment: Path | None = None

    def files(self, project: Project) -> list[Path]:
        """Every file chef will read from the project (a link leading out of it is refused)."""
        found: list[Path] = []
        for folder in self.cookbooks.values():
            found.extend(tree_files(folder, project))
        found.extend(self.roles)
        if self.environment is not None:
            found.append(self.environment)
        return found


def cookbook_index(cookbooks_dir: Path) -> dict[str, Path]:
    """Cookbooks in a folder by their metadata name (folders without metadata are not cookbooks)."""
    index: dict[str, Path] = {}
    if not cookbooks_dir.is_dir():
        return index
    for folder in sorted(p for p in cookbooks_dir.iterdir() if p.is_dir()):
        name = _metadata_name(folder)
        if name is not None:
            index.setdefault(name, folder)
    return index


def _metadata_name(folder: Path) -> str | None:
    if (folder / "metadata.json").is_file():
        try:
            data = json.loads((folder / "metadata.json").read_text(encoding="utf-8"))
        except ValueError:
            return folder.name
        return str(data.get("name") or folder.name) if isinstance(data, dict) else folder.name
    if (folder / "metadata.rb").is_file():
        match = _NAME_RE.search((folder / "metadata.rb").read_text(encoding="utf-8"))
        return match.group(1) if match else folder.name
    return None


def cookbook_depends(folder: Path) -> list[tuple[str, Path, int]]:
    """The cookbooks a cookbook `depends` on: (name, metadata file, line)."""
    found: list[tuple[str, Path, int]] = []
    meta_json = folder / "metadata.json"
    if meta_json.is_file():
        try:
            data = json.loads(meta_json.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise InputError(f"metadata.json is not JSON: {exc}", path=meta_json,
                             line=getattr(exc, "lineno", 1)) from None
        deps = data.get("dependencies") if isinstance(data, dict) else None
        text = meta_json.read_text(encoding="utf-8")
        for name in deps or {}:
            found.append((str(name), meta_json, _line_of_text(text, f'"{name}"')))
        return found
    meta_rb = folder / "metadata.rb"
    if meta_rb.is_file():
        text = meta_rb.read_text(encoding="utf-8")
        for match in _DEPENDS_RE.finditer(text):
            found.append((match.group(1), meta_rb, text.count("\n", 0, match.start()) + 1))
    return found


def resolve(project: Project, options: ChefOptions, run_list: Sequence[str],
            where: tuple[Path, Sequence[int]] | None = None,
            environment_line: int | None = None) -> Resolved:
    """Expand a run list into the cookbooks (plus dependencies) and role files it uses.

    Args:
        project: the project.
        options: the chef settings (folders, environment).
        run_list: items like recipe[web], web::server, role[web].
        where: the spec file and the line of each run-list item, for errors.
        environment_line: the line of `environment:` in the spec, for errors.

    Raises:
        InputError: a cookbook, recipe, role or environment that is not there,
            naming the file and line that asked for it.
    """
    cookbooks_dir = project.root / options.cookbooks
    roles_dir = project.root / options.roles
    index = cookbook_index(cookbooks_dir)
    cookbooks: dict[str, Path] = {}
    roles: list[Path] = []
    environment = None
    if options.environment is not None:
        environment = _named_file(project.root / options.environments, options.environment)
        if environment is None:
            raise InputError(
                f"environment {options.environment!r} not found: no "
                f"{options.environments}/{options.environment}.json or .rb",
                path=where[0] if where else None, line=environment_line)

    def need_cookbook(name: str, path: Path | None, line: int | None) -> Path:
        if name not in index:
            known = ", ".join(sorted(index)) or "none"
            raise InputError(f"cookbook {name!r} not found in {options.cookbooks}/ "
                             f"(known: {known})", path=path, line=line)
        return index[name]

    def visit_recipe(item: str, path: Path | None, line: int | None) -> None:
        cookbook, _, recipe = item.partition("::")
        folder = need_cookbook(cookbook, path, line)
        recipe_file = folder / "recipes" / f"{recipe or 'default'}.rb"
        if not recipe_file.is_file():
            raise InputError(f"recipe {cookbook}::{recipe or 'default'} not found: "
                             f"{project.relative(recipe_file)} does not exist",
                             path=path, line=line)
        stack = [cookbook]
        while stack:
            name = stack.pop()
            if name in cookbooks:
                continue
            cookbooks[name] = index[name]
            for dep, meta, dep_line in cookbook_depends(index[name]):
                need_cookbook(dep, meta, dep_line)
                stack.append(dep)

    def visit(item: str, path: Path | None, line: int | None, chain: list[str]) -> None:
        match = RUN_LIST_RE.match(item)
        if match is None:
            raise InputError(f"{item!r} is not a run-list item (recipe[name], role[name])",
                             path=path, line=line)
        if match.group("role"):
            name = match.group("role")
            if name in chain:
                raise InputError(f"role {name!r} includes itself: {' -> '.join([*chain, name])}",
                                 path=path, line=line)
            role_file = _named_file(roles_dir, name)
            if role_file is None:
                known = ", ".join(sorted({p.stem for p in roles_dir.glob("*.json")} |
                                         {p.stem for p in roles_dir.glob("*.rb")})) or "none"
                raise InputError(f"role {name!r} not found in {options.roles}/ (known: {known})",
                                 path=path, line=line)
            if role_file not in roles:
                roles.append(role_file)
            for sub, sub_line in role_run_list(role_file, options.environment):
                visit(sub, role_file, sub_line, [*chain, name])
        else:
            visit_recipe(match.group("recipe") or match.group("bare"), path, line)

    for index_no, item in enumerate(run_list):
        spec_path = where[0] if where else None
        line = where[1][index_no] if where and index_no < len(where[1]) else None
        visit(item, spec_path, line, [])
    return Resolved(cookbooks=cookbooks, roles=tuple(roles), environment=environment)


def _named_file(folder: Path, name: str) -> Path | None:
    for suffix in (".json", ".rb"):
        candidate = folder / f"{name}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def role_run_list(role_file: Path, environment: str | None = None) -> list[tuple[str, int]]:
    """The run-list items of a Chef role file (JSON, or the Ruby DSL), with their lines."""
    text = role_file.read_text(encoding="utf-8")
    if role_file.suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InputError(f"role file is not JSON: {exc}", path=role_file,
                             line=getattr(exc, "lineno", 1)) from None
        if not isinstance(data, dict):
            raise InputError("a role file holds a JSON object", path=role_file, line=1)
        items = data.get("run_list") or []
        env_lists = data.get("env_run_lists") or {}
        if environment is not None and isinstance(env_lists, dict) and environment in env_lists:
            items = env_lists[environment] or []
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise InputError("run_list must be a list of strings", path=role_file,
                             line=_line_of_text(text, '"run_list"'))
        return [(item, _line_of_text(text, f'"{item}"')) for item in items]
    # Ruby roles: the run list is a call with string arguments; pick the items out.
    return [(m.group(1), text.count("\n", 0, m.start()) + 1)
            for m in _RUN_LIST_ITEM_RE.finditer(text)]


def _line_of_text(text: str, needle: str) -> int:
    at = text.find(needle)
    return text.count("\n", 0, at) + 1 if at >= 0 else 1

