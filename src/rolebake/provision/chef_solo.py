"""Chef cookbooks and roles, applied with chef-solo (or cinc-solo) inside the build container.

Chef never enters the image. As kitchen-dokken does, the toolchain comes from
a toolchain image (chef/chef, cincproject/cinc or your own) that declares
`VOLUME /opt/chef` or `VOLUME /opt/cinc`: a created, never started, container
of it lends that volume to the build container (`volumes_from`). Or the parent
image already has chef-solo (`chef.path`).

Everything else chef needs lives on a tmpfs at /mnt, which the engine never
commits: the read-only cookbooks, roles and environments, the solo.rb and
node JSON rolebake writes, and chef's cache, backups and local-mode state.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rolebake.engine import ROLE_LABEL, Engine, ExecResult
from rolebake.errors import BuildFailed, InputError, RolebakeError
from rolebake.events import LogEvent, TaskEvent
from rolebake.plan import tree_files
from rolebake.provision.base import (
    ContainerOptions,
    ProvisionContext,
    Provisioner,
    ProvisionResult,
    TaskResult,
)
from rolebake.spec import Fields, ImageSpec, Project, is_image_reference
from rolebake.yamlfile import YamlList, plain

TOOLCHAIN_ENV = "ROLEBAKE_CHEF_IMAGE"
# The omnibus packages hard-code their prefix, so the volume must be mounted
# exactly there; the binary follows from which one the image declares.
TOOLCHAIN_DIRS = {"/opt/chef": "/opt/chef/bin/chef-solo", "/opt/cinc": "/opt/cinc/bin/cinc-solo"}

# /mnt exists in Debian-style images and is meant for temporary mounts; a tmpfs
# there leaves nothing in the layer (mount points made below it live on the
# tmpfs too, where a directory made in /tmp would be committed).
TMPFS = "/mnt"
WORKSPACE = f"{TMPFS}/rolebake-chef"
CONFIG_DIR = f"{WORKSPACE}/config"
COOKBOOKS_DIR = f"{WORKSPACE}/cookbooks"
ROLES_DIR = f"{WORKSPACE}/roles"
ENVIRONMENTS_DIR = f"{WORKSPACE}/environments"
STATE_DIR = f"{WORKSPACE}/state"
OUTPUT_FILE = f"{WORKSPACE}/state/chef-solo.out"
NODE_NAME = "rolebake-build"

# Where chef keeps state when a cookbook or a stray default sends it there;
# removed in `clean` unless the parent image already had them.
STATE_PATHS = (
    "/var/chef", "/var/cache/chef", "/etc/chef", "/root/.chef",
    "/var/cinc", "/var/cache/cinc", "/etc/cinc", "/root/.cinc",
    # apt_update's stamp says the apt lists are fresh; the lists are removed
    # before commit, so a child layer would trust a stamp with no lists behind it.
    "/var/lib/apt/periodic/update-success-stamp",
)

DEFAULTS = {"cookbooks": "cookbooks", "roles": "cookbooks/roles",
            "environments": "cookbooks/environments"}
SECTION_KEYS = {"image", "path", "cookbooks", "roles", "environments", "run_list", "attributes",
                "environment"}
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
RUN_LIST_RE = re.compile(
    r"^(?:recipe\[(?P<recipe>[A-Za-z0-9_.-]+(?:::[A-Za-z0-9_.-]+)?)(?:@[0-9][0-9.]*)?\]"
    r"|role\[(?P<role>[A-Za-z0-9_.-]+)\]"
    r"|(?P<bare>[A-Za-z0-9_.-]+(?:::[A-Za-z0-9_.-]+)?))$"
)
_DEPENDS_RE = re.compile(r"""^[ \t]*depends[ \t(]+['"]([^'"]+)['"]""", re.MULTILINE)
_NAME_RE = re.compile(r"""^[ \t]*name[ \t(]+['"]([^'"]+)['"]""", re.MULTILINE)
_RUN_LIST_ITEM_RE = re.compile(r"""['"]((?:recipe|role)\[[^\]'"]+\])['"]""")
POLL_SECONDS = 1.0


# Options ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChefOptions:
    """The spec's `chef:` section, validated (stored in the spec as a plain dict)."""

    run_list: tuple[str, ...]
    attributes: Mapping[str, Any] = field(default_factory=dict)
    image: str | None = None
    image_from: str | None = None  # "chef.image" or the environment variable's name
    path: str | None = None
    cookbooks: str = DEFAULTS["cookbooks"]
    roles: str = DEFAULTS["roles"]
    environments: str = DEFAULTS["environments"]
    environment: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The plain form kept in ImageSpec.provisioner_options (and hashed into the key)."""
        return {
            "run_list": list(self.run_list),
            "attributes": dict(self.attributes),
            "image": self.image,
            "image_from": self.image_from,
            "path": self.path,
            "cookbooks": self.cookbooks,
            "roles": self.roles,
            "environments": self.environments,
            "environment": self.environment,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChefOptions:
        """Read the plain form back."""
        return cls(
            run_list=tuple(data.get("run_list") or ()),
            attributes=dict(data.get("attributes") or {}),
            image=data.get("image"),
            image_from=data.get("image_from"),
            path=data.get("path"),
            cookbooks=data.get("cookbooks") or DEFAULTS["cookbooks"],
            roles=data.get("roles") or DEFAULTS["roles"],
            environments=data.get("environments") or DEFAULTS["environments"],
            environment=data.get("environment"),
        )


def parse_section(section: Fields | None, spec: ImageSpec, project: Project,
                  environ: Mapping[str, str] | None = None) -> ChefOptions:
    """Validate a spec's `chef:` mapping (InputError with file and line on any problem).

    Args:
        section: the `chef:` mapping, or None when the spec has none.
        spec: the spec (for its path and the lines of its top-level keys).
        project: the project the paths are relative to.
        environ: where ROLEBAKE_CHEF_IMAGE is looked up (default: os.environ).

    Returns:
        The options; `image` falls back to ROLEBAKE_CHEF_IMAGE.
    """
    environ = os.environ if environ is None else environ
    if section is None:
        raise InputError("provisioner chef-solo needs a `chef:` section with a `run_list:`",
                         path=spec.path, line=spec.line_of("provisioner") or 1)
    section.reject_unknown(SECTION_KEYS)
    run_list = section.text_list("run_list", pattern=RUN_LIST_RE,
                                what="a run-list item (recipe[name], role[name])")
    if not run_list:
        raise InputError("chef: missing `run_list:` (e.g. [\"role[web]\"])",
                         path=section.path, line=section.line)
    attributes = _attributes(section)
    image = section.text("image", what="an image reference")
    if image is not None and not is_image_reference(image):
        raise section.fail("image", f"{image!r} is not an image reference")
    path = section.text("path", what="an absolute path to chef-solo in the parent image")
    if path is not None and not path.startswith("/"):
        raise section.fail("path", f"{path!r} must be an absolute path (e.g. "
                                   "/opt/cinc/bin/cinc-solo)")
    if image is not None and path is not None:
        raise section.fail("path", "give either `image:` (a toolchain image) or `path:` "
                                   "(chef-solo in the parent image), not both")
    image_from = "chef.image" if image is not None else None
    if image is None and path is None and environ.get(TOOLCHAIN_ENV, "").strip():
        image = environ[TOOLCHAIN_ENV].strip()
        image_from = TOOLCHAIN_ENV
        if not is_image_reference(image):
            raise InputError(f"{TOOLCHAIN_ENV}={image!r} is not an image reference",
                             path=spec.path, line=spec.line_of("chef"))
    dirs = {key: _project_dir(project, section, key) for key in DEFAULTS}
    environment = section.text("environment", pattern=NAME_RE, what="an environment name")
    return ChefOptions(
        run_list=run_list,
        attributes=attributes,
        image=image,
        image_from=image_from,
        path=path,
        cookbooks=dirs["cookbooks"],
        roles=dirs["roles"],
        environments=dirs["environments"],
        environment=environment,
    )


def _attributes(section: Fields) -> dict[str, Any]:
    attrs = section.mapping("attributes")
    if attrs is None:
        return {}
    for key in attrs.data:
        if not isinstance(key, str) or not key:
            raise InputError(f"chef.attributes: {key!r} is not an attribute name",
                             path=attrs.path, line=attrs.line_of(str(key)))
        if key in ("run_list", "recipes"):
            raise attrs.fail(key, "is not an attribute: the run list is `chef.run_list`")
    value: dict[str, Any] = plain(attrs.data)
    return value


def _project_dir(project: Project, section: Fields, key: str) -> str:
    raw = section.text(key, what="a folder inside the project") or DEFAULTS[key]
    path = Path(raw) if Path(raw).is_absolute() else project.root / raw
    if not project.inside(path):
        raise section.fail(key, f"{raw!r} is outside the project")
    if section.has(key) and not path.is_dir():
        raise section.fail(key, f"{raw!r} is not a folder")
    return project.relative(path)


def require_toolchain(options: ChefOptions, spec: ImageSpec) -> None:
    """Fail (exit 2, one line) when no chef toolchain is named at all.

    Whether a named toolchain image is on the engine is checked when the
    toolchain is set up, still before any container is made.
    """
    if options.image is None and options.path is None:
        raise InputError(
            "no chef toolchain: set ROLEBAKE_CHEF_IMAGE or `chef.image:` to a toolchain image "
            "with /opt/chef or /opt/cinc (e.g. cincproject/cinc), or `chef.path:` to the "
            "chef-solo the parent image has",
            path=spec.path, line=spec.line_of("chef") or spec.line_of("provisioner"),
        )


# Cookbooks, roles and their closure -------------------------------------------------------


@dataclass(frozen=True)
class Resolved:
    """What a run list pulls in: cookbooks (with their dependencies) and role files."""

    cookbooks: Mapping[str, Path]  # name -> folder, in the order first needed
    roles: tuple[Path, ...]
    environment: Path | None = None

    def files(self) -> list[Path]:
        """Every file chef will read from the project."""
        found: list[Path] = []
        for folder in self.cookbooks.values():
            found.extend(tree_files(folder))
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


def layer_run_list(options: ChefOptions, roles: Sequence[str], variant: str | None) -> list[str]:
    """The run list of a layer: the spec's, or a variant's `roles_append` as Chef roles."""
    if variant is not None:
        return [f"role[{name}]" for name in roles]
    return list(options.run_list)


# What rolebake writes --------------------------------------------------------------------


def _ruby(value: str) -> str:
    # Single quotes: no interpolation, only \\ and \' are escapes.
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def solo_rb(*, environment: str | None = None, workspace: str = WORKSPACE) -> str:
    """The solo.rb for one build: every path chef reads or writes is in the workspace.

    Args:
        environment: the Chef environment to converge in, if any.
        workspace: the folder (on the build container's tmpfs) chef works in.

    Returns:
        The file's text.
    """
    state = f"{workspace}/state"
    lines = [
        "# Written by rolebake for one image build; it never reaches the image.",
        "# Every path chef writes is on a tmpfs, so nothing of chef is committed.",
        f"chef_repo_path {_ruby(state + '/repo')}",
        f"cookbook_path [{_ruby(workspace + '/cookbooks')}]",
        f"role_path {_ruby(workspace + '/roles')}",
        f"environment_path {_ruby(workspace + '/environments')}",
        f"data_bag_path {_ruby(workspace + '/data_bags')}",
        f"node_path {_ruby(state + '/nodes')}",
        f"client_path {_ruby(state + '/clients')}",
        f"cache_path {_ruby(state + '/cache')}",
        f"file_cache_path {_ruby(state + '/cache')}",
        f"file_backup_path {_ruby(state + '/backup')}",
        f"node_name {_ruby(NODE_NAME)}",
        "log_location STDOUT",
    ]
    if environment is not None:
        lines.append(f"environment {_ruby(environment)}")
    return "\n".join(lines) + "\n"


def node_json(run_list: Sequence[str], attributes: Mapping[str, Any]) -> str:
    """The JSON given to `chef-solo -j`: normal attributes plus the run list."""
    return json.dumps({**dict(attributes), "run_list": list(run_list)}, indent=2,
                      sort_keys=True) + "\n"


def chef_argv(binary: str, workspace: str = WORKSPACE) -> list[str]:
    """The chef-solo command line: the doc formatter, forced, so each resource gets a line."""
    return [binary, "--config", f"{workspace}/config/solo.rb",
            "--json-attributes", f"{workspace}/config/node.json",
            "--format", "doc", "--force-formatter", "--no-color", "--log_level", "warn"]


def chef_env() -> dict[str, str]:
    """Environment for the run: accept Chef's license for this run only (Cinc ignores it)."""
    return {"CHEF_LICENSE": "accept-no-persist", "LANG": "C.UTF-8"}


def toolchain_dir(volumes: Mapping[str, Any] | None) -> str | None:
    """Which toolchain folder an image declares as a VOLUME (None: neither)."""
    for folder in TOOLCHAIN_DIRS:
        if folder in (volumes or {}) or f"{folder}/" in (volumes or {}):
            return folder
    return None


def container_options(*, cookbooks: Mapping[str, Path], roles_dir: Path | None,
                      environments_dir: Path | None, config_dir: Path,
                      toolchain_container: str | None) -> ContainerOptions:
    """The build container's mounts: a tmpfs workspace, the inputs read-only, the toolchain.

    Only the cookbooks the run list uses are mounted, one by one, so chef sees
    exactly the files the cache key covers.
    """
    mounts: list[dict[str, Any]] = [{"target": TMPFS, "source": None, "type": "tmpfs"}]

    def bind(source: Path, target: str) -> None:
        mounts.append({"target": target, "source": str(source.resolve()), "type": "bind",
                       "read_only": True})

    bind(config_dir, CONFIG_DIR)
    for name, folder in cookbooks.items():
        bind(folder, f"{COOKBOOKS_DIR}/{name}")
    if roles_dir is not None and roles_dir.is_dir():
        bind(roles_dir, ROLES_DIR)
    if environments_dir is not None and environments_dir.is_dir():
        bind(environments_dir, ENVIRONMENTS_DIR)
    return ContainerOptions(mounts=tuple(mounts),
                            volumes_from=(toolchain_container,) if toolchain_container else ())


# Reading chef's output -------------------------------------------------------------------

_RECIPE_LINE = re.compile(r"^\s*Recipe: (?P<recipe>\S+)\s*$")
_RESOURCE_LINE = re.compile(
    r"^(?P<indent> *)\* (?P<resource>[A-Za-z_][\w:]*\[.*\]) action (?P<action>\w+)(?P<rest>.*)$")
_UPDATE_LINE = re.compile(r"^(?P<indent> *)- (?P<text>.*)$")
_STATUS_ONLY = re.compile(r"^\s*\((up to date|skipped due to [^)]*|Skipped: [^)]*)\)\s*$")
_VERSION_LINE = re.compile(r"^(?:Starting )?(?P<product>(?:Chef|Cinc)(?: Infra)? Client), "
                           r"version (?P<version>\S+)")
_END_LINES = re.compile(r"^(?:Running handlers:|(?:Chef|Cinc)(?: Infra)? Client "
                        r"(?:finished|failed)|Infra Phase (?:complete|failed))")
_ERROR_EXECUTING = re.compile(
    r"Error executing action `(?P<action>\w+)` on resource '(?P<resource>.+)'\s*$")
_FATAL_RESOURCE = re.compile(
    r"FATAL: (?P<exception>[\w:]+): (?P<resource>\S+\[.*?\]) \((?P<recipe>[\w.-]+::[\w.-]+) "
    r"line (?P<line>\d+)\) had an error: (?P<message>.*)$")
_FATAL = re.compile(r"FATAL: (?P<message>(?!Stacktrace dumped)(?!-{5})(?!PLEASE PROVIDE).+)$")
_COMPILE_ERROR = re.compile(r"^\s*(?P<what>\w[\w ]*?Compile Error) in (?P<path>\S+)\s*$")
_DECLARED_IN = re.compile(r"#\s*Declared in (?P<path>\S+?):(?P<line>\d+)")
_TRACE_LINE = re.compile(r"^\s+(?P<path>/\S+?):(?P<line>\d+):in ")
_SECTION_HEADS = ("Resource Declaration:", "Compiled Resource:", "System Info:", "Platform:",
                  "Cookbook Trace:", "Relevant File Content:", "Additional information:",
                  "Cookbook Trace: (most recent call first)")


@dataclass(frozen=True)
class ResourceEvent:
    """A resource started or finished, as chef's doc formatter printed it."""

    status: str  # started | ok | changed | skipped | failed
    task: TaskResult


@dataclass
class _Open:
    name: str
    action: str
    recipe: str | None
    indent: int
    updates: list[str] = field(default_factory=list)
    parent: str | None = None


class DocOutputParser:
    """Reads chef-solo's doc-formatter output line by line into per-resource results.

    Feed complete lines as they arrive; `finish` closes what is still open.
    """

    def __init__(self) -> None:
        """Start with no recipe and no open resource."""
        self.recipe: str | None = None
        self.version: str | None = None
        self.results: list[TaskResult] = []
        self._open: list[_Open] = []
        self._peeked: str | None = None

    def feed(self, line: str) -> list[ResourceEvent]:
        """Take one line of output (without its newline); return what finished or started."""
        line = line.rstrip("\r\n")
        events: list[ResourceEvent] = []
        if self.version is None and (m := _VERSION_LINE.match(line)):
            self.version = f"{m.group('product')} {m.group('version')}"
        if m := _RECIPE_LINE.match(line):
            events += self._close(0)
            self.recipe = m.group("recipe")
            return events
        if m := _RESOURCE_LINE.match(line):
            indent = len(m.group("indent"))
            events += self._close(indent)
            opened = _Open(name=m.group("resource"), action=m.group("action"),
                           recipe=self.recipe, indent=indent,
                           parent=self._open[-1].name if self._open else None)
            self._open.append(opened)
            if not (self._peeked and line.startswith(self._peeked)):
                events.append(ResourceEvent("started", self._task(opened, "started")))
            self._peeked = None
            rest = m.group("rest").strip()
            if rest:
                events += self._status(rest)
            return events
        if m := _ERROR_EXECUTING.search(line):
            return events + self._fail(m.group("resource"), m.group("action"))
        if m := _STATUS_ONLY.match(line):
            return events + self._status(m.group(0).strip())
        if (m := _UPDATE_LINE.match(line)) and self._open:
            indent = len(m.group("indent"))
            for opened in reversed(self._open):
                if opened.indent < indent:
                    opened.updates.append(m.group("text"))
                    break
            return events
        if _END_LINES.match(line) or _COMPILE_ERROR.match(line):
            events += self._close(0)
        return events

    def peek(self, partial: str) -> list[ResourceEvent]:
        """Look at an unfinished last line: the formatter ends a resource's line only when done."""
        m = _RESOURCE_LINE.match(partial)
        if m is None or m.group("rest").strip() or partial.rstrip() == self._peeked:
            return []
        self._peeked = partial.rstrip()
        opened = _Open(name=m.group("resource"), action=m.group("action"), recipe=self.recipe,
                       indent=len(m.group("indent")))
        return [ResourceEvent("started", self._task(opened, "started"))]

    def finish(self) -> list[ResourceEvent]:
        """Close every resource still open (end of output)."""
        return self._close(0)

    def _status(self, rest: str) -> list[ResourceEvent]:
        # A parent's status may follow its nested resources' lines, so it
        # belongs to the innermost resource still open.
        if not self._open:
            return []
        opened = self._open.pop()
        if "up to date" in rest:
            status = "ok"
        elif rest.lower().startswith(("(skipped", "skipped")):
            status = "skipped"
        else:
            status = "changed" if opened.updates else "ok"
        reason = rest.strip("() ")
        return [self._finish(opened, status, {"reason": reason} if status == "skipped" else {})]

    def _fail(self, resource: str, action: str) -> list[ResourceEvent]:
        events: list[ResourceEvent] = []
        for position in range(len(self._open) - 1, -1, -1):
            if self._open[position].name == resource:
                # Resources nested in the failed one were finished by now.
                inner = self._open[position + 1:]
                del self._open[position + 1:]
                for opened in reversed(inner):
                    events.append(self._finish(opened, "changed" if opened.updates else "ok"))
                failed = self._open.pop()
                events.append(self._finish(failed, "failed"))
                return events
        return [self._finish(_Open(name=resource, action=action, recipe=self.recipe, indent=0),
                             "failed")]

    def _close(self, indent: int) -> list[ResourceEvent]:
        events: list[ResourceEvent] = []
        while self._open and self._open[-1].indent >= indent:
            opened = self._open.pop()
            events.append(self._finish(opened, "changed" if opened.updates else "ok"))
        return events

    def _finish(self, opened: _Open, status: str,
                extra: Mapping[str, Any] | None = None) -> ResourceEvent:
        task = self._task(opened, status, extra)
        self.results.append(task)
        return ResourceEvent(status, task)

    @staticmethod
    def _task(opened: _Open, status: str, extra: Mapping[str, Any] | None = None) -> TaskResult:
        result: dict[str, Any] = {}
        if opened.updates:
            result["updates"] = opened.updates[:20]
        if opened.parent:
            result["within"] = opened.parent
        result.update(extra or {})
        return TaskResult(name=opened.name, role=opened.recipe, action=opened.action,
                          status=status, result=result)


def parse_chef_output(lines: Iterable[str]) -> list[TaskResult]:
    """Every resource chef-solo reported, in the order they finished."""
    parser = DocOutputParser()
    for line in lines:
        parser.feed(line)
    parser.finish()
    return parser.results


@dataclass(frozen=True)
class ChefError:
    """What chef printed about a failure, picked out of its output."""

    kind: str  # resource | compile | resolve | other
    resource: str | None = None
    action: str | None = None
    recipe: str | None = None
    exception: str | None = None
    message: str = ""
    block: tuple[str, ...] = ()
    path: str | None = None
    line: int | None = None


def find_error(text: str) -> ChefError | None:
    """Pick the error report out of chef-solo's output (None when there is none)."""
    lines = text.splitlines()
    fatal = _fatal_line(lines)
    for index, line in enumerate(lines):
        if m := _ERROR_EXECUTING.search(line):
            exception, message, block = _error_block(lines, index + 1)
            path, line_no = _declared_at(lines, index + 1)
            recipe = None
            if fatal and (fm := _FATAL_RESOURCE.search(fatal)):
                recipe = fm.group("recipe")
                line_no = line_no or int(fm.group("line"))
            recipe = recipe or _recipe_before(lines, index)
            return ChefError(kind="resource", resource=m.group("resource"),
                             action=m.group("action"), recipe=recipe, exception=exception,
                             message=message, block=block, path=path, line=line_no)
        if m := _COMPILE_ERROR.match(line):
            exception, message, block = _error_block(lines, index + 1)
            trace = next((t for t in (_TRACE_LINE.match(x) for x in lines[index + 1:]) if t),
                         None)
            return ChefError(kind="compile", exception=exception, message=message, block=block,
                             path=trace.group("path") if trace else m.group("path"),
                             line=int(trace.group("line")) if trace else None,
                             recipe=m.group("what"))
        if line.strip().startswith("Error Resolving Cookbooks for Run List"):
            _exception, message, block = _error_block(lines, index + 1, heads=False)
            return ChefError(kind="resolve", message=message or "cookbooks missing",
                             block=block)
    if fatal:
        return ChefError(kind="other", message=fatal)
    return None


def _fatal_line(lines: Sequence[str]) -> str | None:
    # The line naming the resource is the best; past it, chef's last word.
    found = None
    for line in lines:
        if m := _FATAL.search(line):
            if _FATAL_RESOURCE.search(line):
                return m.group("message").strip()
            if "ChildConvergeError" not in line or found is None:
                found = m.group("message").strip()
    return found


def _error_block(lines: Sequence[str], start: int, *,
                 heads: bool = True) -> tuple[str | None, str, tuple[str, ...]]:
    """The exception name, its first message line, and the whole block up to the next section."""
    block: list[str] = []
    for line in lines[start:]:
        stripped = line.strip()
        if stripped in _SECTION_HEADS or _END_LINES.match(stripped) or "FATAL:" in line:
            break
        if stripped.startswith("=====") and not block:
            continue
        block.append(stripped)
    while block and not block[-1]:
        block.pop()
    while block and not block[0]:
        block.pop(0)
    exception = None
    body = [b for b in block if b and set(b) != {"-"}]
    if heads and len(block) >= 2 and block[1] and set(block[1]) == {"-"}:
        exception, body = block[0], body[1:]
    # Sub-headings ("Missing Cookbooks:") are not the message; the line under them is.
    message = next((b for b in body if not b.endswith(":")), body[0] if body else "")
    stderr = next((b[7:].strip() for b in body if b.startswith("STDERR:") and b[7:].strip()),
                  None)
    if stderr and stderr not in message:
        message = f"{message} (STDERR: {stderr})"
    return exception, message, tuple(block)


def _declared_at(lines: Sequence[str], start: int) -> tuple[str | None, int | None]:
    for line in lines[start:start + 200]:
        if m := _DECLARED_IN.search(line):
            return m.group("path"), int(m.group("line"))
        if "FATAL:" in line:
            break
    return None, None


def _recipe_before(lines: Sequence[str], index: int) -> str | None:
    for line in reversed(lines[:index]):
        if m := _RECIPE_LINE.match(line):
            return m.group("recipe")
    return None


def failure_from_output(text: str, *, host_paths: Mapping[str, Path] | None = None,
                        root: Path | None = None, log_path: Path | None = None,
                        rc: int | None = None) -> RolebakeError:
    """Turn a failed chef-solo run into one error naming the resource, recipe and chef's words.

    Args:
        text: everything chef-solo printed.
        host_paths: container folder -> project folder, to name files as the user knows them.
        root: the project root; file names in messages are shown relative to it.
        log_path: where the full output was written (for the hint).
        rc: chef-solo's exit status.

    Returns:
        BuildFailed for a resource that failed (exit 1); InputError for a
        cookbook that does not compile or a run list chef cannot resolve (exit 2).
    """
    hint = f"full chef-solo output: {log_path}" if log_path else ""
    error = find_error(text)
    if error is None:
        status = f" (exit {rc})" if rc is not None else ""
        return BuildFailed(f"chef-solo failed{status}", details=_tail(text, 20), hint=hint)
    path = _host_path(error.path, host_paths or {})
    where = ""
    if path is not None:
        shown = path
        if root is not None:
            with contextlib.suppress(ValueError):
                shown = str(Path(path).relative_to(root))
        where = f", {shown}:{error.line}" if error.line else f", {shown}"
    said = f"{error.exception}: {error.message}" if error.exception else error.message
    if error.kind == "resource":
        recipe = f"recipe {error.recipe}" if error.recipe else "an unknown recipe"
        return BuildFailed(
            f"chef resource {error.resource} ({recipe}{where}) failed to {error.action}: {said}",
            details="\n".join(error.block[:25]) or _tail(text, 20), hint=hint)
    if error.kind == "compile":
        return InputError(f"chef: {error.recipe.lower() if error.recipe else 'compile error'}: "
                          f"{said}", path=path, line=error.line, hint=hint)
    if error.kind == "resolve":
        return InputError(f"chef could not resolve the run list: {said}", hint=hint)
    return BuildFailed(f"chef-solo failed: {said}", details=_tail(text, 20), hint=hint)


def _host_path(path: str | None, host_paths: Mapping[str, Path]) -> str | None:
    if path is None:
        return None
    for prefix, folder in sorted(host_paths.items(), key=lambda kv: -len(kv[0])):
        if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
            rest = path[len(prefix.rstrip("/")):].lstrip("/")
            return str(folder / rest) if rest else str(folder)
    return path


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


# The provisioner --------------------------------------------------------------------------


class ChefSoloProvisioner(Provisioner):
    """Applies Chef cookbooks and roles with chef-solo, the toolchain mounted, never installed."""

    name = "chef-solo"
    section = "chef"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Bind to a layer; see Provisioner."""
        super().__init__(*args, **kwargs)
        self.options = ChefOptions.from_dict(self.layer.spec.provisioner_options)
        self.binary: str | None = self.options.path
        self.chef_version: str | None = None
        self.preexisting: tuple[str, ...] = ()

    @classmethod
    def version(cls) -> str:
        """Chef's version comes with the toolchain, whose reference is in the options."""
        return "toolchain"

    @classmethod
    def parse_options(cls, spec: ImageSpec, project: Project,
                      section: Fields | None) -> Mapping[str, Any]:
        """Validate the `chef:` section and reject the Ansible-only keys."""
        for key, why in (("roles", "Chef roles go in `chef.run_list` as role[name]"),
                         ("playbook", "give a `chef.run_list` instead"),
                         ("vars", "node attributes go in `chef.attributes`"),
                         ("sensitive_vars", "it applies to Ansible `vars:`")):
            if spec.line_of(key) is not None:
                raise InputError(f"`{key}:` is for the ansible provisioner, not chef-solo: {why}",
                                 path=spec.path, line=spec.line_of(key))
        for variant in spec.variants:
            if variant.vars:
                raise InputError(f"variants.{variant.name}: `vars:` is for Ansible; with "
                                 "chef-solo a variant only appends Chef roles (roles_append)",
                                 path=spec.path, line=variant.line)
        options = parse_section(section, spec, project)
        items = section.data.get("run_list") if section is not None else None
        lines = [items.line_of(i) for i in range(len(items))] if isinstance(
            items, YamlList) else []
        resolve(project, options, options.run_list, (spec.path, lines),
                environment_line=section.line_of("environment") if section else None)
        for variant in spec.variants:
            resolve(project, options, [f"role[{r}]" for r in variant.roles_append],
                    (spec.path, [variant.line] * len(variant.roles_append)))
        return options.to_dict()

    # Inputs --------------------------------------------------------------------------------

    def run_list(self) -> list[str]:
        """This layer's run list (a variant layer runs its appended roles)."""
        return layer_run_list(self.options, self.layer.roles, self.layer.variant)

    def resolved(self) -> Resolved:
        """The cookbooks and role files this layer's run list uses."""
        return resolve(self.project, self.options, self.run_list(), (self.layer.spec.path, []))

    def input_files(self) -> list[Path]:
        """Every file of the cookbooks used (with dependencies), the roles and environment."""
        return self.resolved().files()

    # Lifecycle -----------------------------------------------------------------------------

    def preflight(self, engine: Engine) -> None:
        """Check the toolchain is named and on the engine, without making anything."""
        require_toolchain(self.options, self.layer.spec)
        if self.options.image is not None:
            self._toolchain_image(engine)

    @contextlib.contextmanager
    def toolchain(self, engine: Engine) -> Iterator[ContainerOptions]:
        """Lend the toolchain volume and mount the inputs; remove the toolchain container after.

        Raises:
            InputError: the toolchain image is not on the engine (and cannot be
                pulled) or declares neither /opt/chef nor /opt/cinc. Raised
                before any container exists.
        """
        image_id = None
        if self.options.image is not None:
            image_id, folder = self._toolchain_image(engine)
            self.binary = TOOLCHAIN_DIRS[folder]
        resolved = self.resolved()
        base = self.project.state_dir / "tmp"
        base.mkdir(parents=True, exist_ok=True)
        config_dir = Path(tempfile.mkdtemp(prefix="chef-", dir=base))
        name = f"rolebake-chef-{self.layer.id.replace(':', '.')}-{uuid.uuid4().hex[:8]}"
        source: str | None = None
        try:
            config_dir.chmod(0o755)
            _write(config_dir / "solo.rb", solo_rb(environment=self.options.environment))
            _write(config_dir / "node.json", node_json(self.run_list(), self.options.attributes))
            if image_id is not None:
                try:
                    source = engine.create_stopped(
                        image_id, name=name,
                        labels={ROLE_LABEL: "build", "rolebake.toolchain": "chef"})
                except RolebakeError:
                    raise
                except Exception as exc:  # the engine's own error; engine.py does not wrap it
                    raise BuildFailed(f"could not create the chef toolchain container from "
                                      f"{self.options.image}: {exc}") from None
            yield container_options(
                cookbooks=resolved.cookbooks,
                roles_dir=self.project.root / self.options.roles if resolved.roles else None,
                environments_dir=(self.project.root / self.options.environments
                                  if resolved.environment else None),
                config_dir=config_dir,
                toolchain_container=source,
            )
        finally:
            if image_id is not None:
                engine.remove_container(source or name)
            shutil.rmtree(config_dir, ignore_errors=True)

    def _toolchain_image(self, engine: Engine) -> tuple[str, str]:
        image = self.options.image
        assert image is not None
        given = f"`chef.image: {image}`" if self.options.image_from == "chef.image" else \
            f"{TOOLCHAIN_ENV}={image}"
        info = engine.image(image)
        if info is None:
            try:
                info = engine.pull(image)
            except InputError:
                raise InputError(
                    f"chef toolchain image {image!r} ({given}) is not on the engine and could "
                    f"not be pulled: load it (`docker load`/`docker pull {image}`) or name "
                    "another one", path=self.layer.spec.path,
                    line=self.layer.spec.line_of("chef")) from None
        folder = toolchain_dir(info.config.get("Volumes"))
        if folder is None:
            raise InputError(
                f"chef toolchain image {image!r} ({given}) declares no VOLUME /opt/chef or "
                "/opt/cinc, so it cannot lend chef to the build container (chef/chef and "
                "cincproject/cinc do)", path=self.layer.spec.path,
                line=self.layer.spec.line_of("chef"))
        return info.id, folder

    def bootstrap(self, ctx: ProvisionContext) -> None:
        """Check chef-solo runs in the build container; note which chef state dirs exist."""
        binary = self.binary
        if binary is None:
            raise BuildFailed("the chef toolchain was not set up (no chef.image or chef.path)")
        checked = ctx.engine.shell(ctx.container, 'test -x "$1" && "$1" --version', binary,
                                   env=chef_env())
        if checked.rc != 0:
            if self.options.path is not None:
                raise InputError(f"chef.path {binary} is not an executable chef-solo in the "
                                 f"parent image ({ctx.layer.parent})", path=ctx.layer.spec.path,
                                 line=ctx.layer.spec.line_of("chef"))
            raise BuildFailed(f"{binary} from toolchain image {self.options.image} does not run "
                              "in the build container", details=checked.tail())
        self.chef_version = checked.output.strip().splitlines()[-1] if checked.output.strip() \
            else binary
        existing = ctx.engine.shell(
            ctx.container, 'for p in "$@"; do [ -e "$p" ] && echo "$p"; done; exit 0',
            *STATE_PATHS)
        self.preexisting = tuple(p for p in existing.output.split() if p in STATE_PATHS)
        ctx.events(LogEvent(ctx.layer.id, f"chef toolchain: {self.chef_version} ({binary}, "
                            + (f"lent by {self.options.image})" if self.options.image
                               else "from the parent image)")))

    def provision(self, ctx: ProvisionContext, *, idempotence: bool = False) -> ProvisionResult:
        """Run chef-solo once, reporting each resource as the doc formatter prints it."""
        assert self.binary is not None
        title = "idempotence check" if idempotence else "provision"
        parser = DocOutputParser()
        watcher = _Progress(ctx)
        result = _run_streaming(ctx, chef_argv(self.binary), chef_env(), parser, watcher)
        output = result.output
        if ctx.secrets is not None:
            output = ctx.secrets.redact(output)
        _append_log(ctx.log_path, title, output)
        if ctx.cancel.is_set():
            raise BuildFailed("provisioning was cancelled")
        if result.rc != 0:
            raise failure_from_output(output, host_paths=self._host_paths(),
                                      root=self.project.root, log_path=ctx.log_path,
                                      rc=result.rc)
        return ProvisionResult(tasks=tuple(parser.results))

    def clean(self, ctx: ProvisionContext) -> None:
        """Remove chef's state and cache folders (the workspace tmpfs is never committed)."""
        created = [p for p in STATE_PATHS if p not in self.preexisting]
        result = ctx.engine.shell(
            ctx.container,
            'ws="$1"; shift; rm -rf "$ws/state" "$@" 2>/dev/null; '
            'for h in /home/*; do rm -rf "$h/.chef" "$h/.cinc"; done; exit 0',
            WORKSPACE, *created)
        if result.rc != 0:
            raise BuildFailed("could not remove chef's state from the build container",
                              details=result.tail())

    def _host_paths(self) -> dict[str, Path]:
        paths = {f"{COOKBOOKS_DIR}/{name}": folder
                 for name, folder in self.resolved().cookbooks.items()}
        paths[ROLES_DIR] = self.project.root / self.options.roles
        paths[ENVIRONMENTS_DIR] = self.project.root / self.options.environments
        return paths


@dataclass
class _Progress:
    """Turns parser events into TaskEvents with running counts (as the Ansible watcher does)."""

    ctx: ProvisionContext
    counts: dict[str, int] = field(default_factory=lambda: {"ok": 0, "changed": 0, "failed": 0})

    def __call__(self, events: Iterable[ResourceEvent]) -> None:
        for event in events:
            if event.status in ("ok", "changed"):
                self.counts["ok"] += 1
            if event.status in ("changed", "failed"):
                self.counts[event.status] += 1
            self.ctx.events(TaskEvent(layer=self.ctx.layer.id, task=event.task.name,
                                      role=event.task.role, status=event.status,
                                      ok=self.counts["ok"], changed=self.counts["changed"],
                                      failed=self.counts["failed"]))


def _run_streaming(ctx: ProvisionContext, argv: Sequence[str], env: Mapping[str, str],
                   parser: DocOutputParser, progress: _Progress) -> ExecResult:
    """Run chef-solo, reporting resources while it runs.

    The engine's exec returns only at the end, so chef writes to a file on the
    workspace tmpfs as well, and a second exec reads the new lines every second.
    """
    script = ('out="$1"; shift; mkdir -p "${out%/*}"; "$@" > "$out" 2>&1; rc=$?; '
              'cat "$out"; exit $rc')
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = ctx.engine.shell(ctx.container, script, OUTPUT_FILE, *argv, env=env)
        except BaseException as exc:  # handed to the calling thread
            box["error"] = exc

    thread = threading.Thread(target=run, name="rolebake-chef-solo", daemon=True)
    thread.start()
    consumed = 0
    while thread.is_alive():
        thread.join(POLL_SECONDS)
        if not thread.is_alive() or ctx.cancel.is_set():
            break
        try:
            polled = ctx.engine.shell(ctx.container, 'tail -n "+$1" "$2" 2>/dev/null; exit 0',
                                      str(consumed + 1), OUTPUT_FILE)
        except RolebakeError:
            continue
        complete, newline, partial = polled.output.rpartition("\n")
        if newline:
            for line in complete.split("\n"):
                progress(parser.feed(line))
                consumed += 1
        progress(parser.peek(partial))
    thread.join()
    if "error" in box:
        raise box["error"]
    result: ExecResult = box["result"]
    remaining = result.output.split("\n")
    if remaining and remaining[-1] == "":
        remaining.pop()
    for line in remaining[consumed:]:
        progress(parser.feed(line))
    progress(parser.finish())
    return result


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    path.chmod(0o644)  # read by root in the container through a read-only bind mount


def _append_log(log_path: Path, title: str, text: str) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", encoding="utf-8") as log:
        log.write(f"===== chef-solo {title} =====\n{text}\n")


__all__ = [
    "ChefError",
    "ChefOptions",
    "ChefSoloProvisioner",
    "DocOutputParser",
    "Resolved",
    "ResourceEvent",
    "chef_argv",
    "chef_env",
    "container_options",
    "cookbook_depends",
    "cookbook_index",
    "failure_from_output",
    "find_error",
    "layer_run_list",
    "node_json",
    "parse_chef_output",
    "parse_section",
    "require_toolchain",
    "resolve",
    "role_run_list",
    "solo_rb",
    "toolchain_dir",
]
