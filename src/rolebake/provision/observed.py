"""Observed inputs: what a provisioner's own process read, checked against the cache key.

The cache key comes from a static walk of what the provisioner will read
(`Provisioner.inputs`); it is what `plan` can say before a build. During the
build the provisioner's process records what it really opened (for Ansible:
ansible_observed.py). After the run:

- a project file that was read but is not in the key is a *cache hole*: the
  build fails (exit 2, an input the key cannot see), naming the file and the
  task that read it, unless the user asked to record inputs (`--record-inputs`,
  or `record_inputs: true` in the spec);
- a file read from outside the project is refused, naming the task, unless
  the spec declares it (`inputs: [...]`), which keys it by content;
- what the run read is kept in `.rolebake/inputs/<layer>.json`, and the next
  key folds in every recorded file and folder listing the static walk does not
  cover (like a compiler's depfile feeding make).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rolebake.errors import InputError
from rolebake.plan import Layer
from rolebake.spec import Project
from rolebake.state import write_private

# Host files a Python process reads for itself, whatever the roles do: time zones,
# certificates, name service, the OS's identity, MIME types. None is content a
# task can put in an image by naming it, so none needs declaring.
SYSTEM_READS = (
    "/etc/localtime", "/usr/share/zoneinfo/", "/etc/timezone", "/etc/mime.types",
    "/etc/ssl/", "/usr/lib/ssl/", "/usr/share/ca-certificates/", "/etc/pki/",
    "/etc/ca-certificates", "/etc/nsswitch.conf", "/etc/resolv.conf", "/etc/hosts",
    "/etc/host.conf", "/etc/gai.conf", "/etc/os-release", "/usr/lib/os-release",
    "/etc/passwd", "/etc/group", "/usr/lib/locale/", "/usr/share/locale/",
    "/etc/ld.so.cache", "/usr/lib/python3", "/usr/local/lib/python3",
)


def _engine_client_files() -> tuple[str, ...]:
    """The docker client's settings and TLS files, which the engine connection reads.

    Ansible's docker_api connection (the fallback when rolebake's agent cannot
    start) reads them to reach the engine; they are not content of the image.
    """
    found = [os.path.join(os.path.expanduser("~"), ".docker", "")]
    if os.environ.get("DOCKER_CERT_PATH"):
        found.append(os.path.join(os.environ["DOCKER_CERT_PATH"], ""))
    return tuple(found)


@dataclass(frozen=True)
class Read:
    """One file opened for reading (`read`) or folder listed (`list`), and by which task."""

    kind: str
    path: str  # absolute, as the process named it
    task: str  # "file:line" of the task or play running, or ""


@dataclass(frozen=True)
class Observed:
    """A run's reads, sorted: project files and folders (project paths), and host files."""

    files: Mapping[str, str] = field(default_factory=dict)  # project path -> first task
    lists: Mapping[str, str] = field(default_factory=dict)  # project folder -> first task
    outside: Mapping[str, str] = field(default_factory=dict)  # host path -> first task
    # What the layer's spec allows: host paths it declares (`inputs:`), and keying a
    # cache hole instead of failing (`record_inputs: true`).
    declared: tuple[str, ...] = ()
    record: bool = False


def sort_reads(project: Project, reads: Iterable[Read]) -> Observed:
    """Sort raw reads into project files, project folders listed and host files.

    Folders opened as files, files that are gone, the project's private state
    and the host's own plumbing (SYSTEM_READS) are left out; a project file is
    named by its project path (as opened: a link keeps its own name).
    """
    files: dict[str, str] = {}
    lists: dict[str, str] = {}
    outside: dict[str, str] = {}
    state = os.path.realpath(project.state_dir) + os.sep
    plumbing = (*SYSTEM_READS, *_engine_client_files())
    for read in reads:
        path = Path(read.path)
        task = _task(project, read.task)
        try:
            inside = project.inside(path)
        except InputError:
            continue
        if inside:
            if os.path.realpath(path).startswith(state) or _litter(path):
                continue
            name = project.logical(path)
            if read.kind == "list" and (path.is_dir() or not path.exists()):
                # A folder looked in and not there counts too (a fileglob's files/).
                lists.setdefault(name.rstrip("/") or ".", task)
            elif read.kind == "read" and path.is_file():
                files.setdefault(name, task)
        elif read.kind == "read" and path.is_file() and not read.path.startswith(plumbing):
            outside.setdefault(read.path, task)
    return Observed(files=dict(sorted(files.items())), lists=dict(sorted(lists.items())),
                    outside=dict(sorted(outside.items())))


def drop_loaded(observed: Observed, names: Iterable[str]) -> Observed:
    """Leave out files read while the playbook was loaded that only unapplied plays use.

    Ansible loads every play's roles with the playbook, also the plays that match
    no group of the target or that a parent layer applied; they shape nothing in
    the layer, and the key leaves them out on purpose (ansible_inventory.py).
    """
    drop = set(names)
    return Observed(files={p: t for p, t in observed.files.items() if t or p not in drop},
                    lists=observed.lists, outside=observed.outside)


# Folders that are never an input: the ones `base.tree_files` skips (base imports this
# module, so the list is repeated here). Python writes byte code into __pycache__
# beside a project's plugins as Ansible imports them.
LITTER_DIRS = frozenset({".git", ".rolebake", "__pycache__", ".pytest_cache", ".mypy_cache",
                         ".ruff_cache", ".tox", ".venv"})


def _litter(path: Path) -> bool:
    """Python's byte code, VCS and editor files: never an input."""
    return bool(LITTER_DIRS.intersection(path.parts)) or path.name.endswith((".pyc", ".swp"))


def _task(project: Project, where: str) -> str:
    """`file:line` with the file as a project path (a host path stays as it is)."""
    if not where:
        return ""
    file, sep, line = where.rpartition(":")
    if not sep or not line.isdigit():
        file, line = where, ""
    shown = project.logical(Path(file)) if file.startswith("/") else file
    return f"{shown}:{line}" if line else shown


def _at(task: str) -> str:
    return " by this task" if task else " while Ansible loaded the playbook"


def _location(project: Project, task: str, where: tuple[Path, int | None]) -> dict[str, Any]:
    """The task's file and line, for the error; the spec's when no task was running."""
    file, _, line = task.rpartition(":")
    if task and line.isdigit():
        return {"path": project.root / file if not file.startswith("/") else file,
                "line": int(line)}
    return {"path": where[0], "line": where[1]}


def check(project: Project, observed: Observed, *, keyed: Iterable[str],
          declared: Iterable[str], record: bool, where: tuple[Path, int | None]) -> list[str]:
    """Refuse reads the key does not cover; return the project files to key from now on.

    Args:
        project: the project.
        observed: what the run read (`sort_reads`).
        keyed: project paths the key covers (static walk and recorded inputs).
        declared: host paths the spec declares (`inputs: [...]`): a file
            or a folder and everything below it.
        record: key the unkeyed project files instead of failing.
        where: the spec file and line to point at for an outside read.

    Returns:
        The project files read but not in the key (kept only when `record`).

    Raises:
        InputError: a host file read that the spec does not declare, or (without
            `record`) a project file read that the key does not cover.
    """
    allowed = tuple(os.path.realpath(p).rstrip("/") for p in declared)
    for path, task in observed.outside.items():
        real = os.path.realpath(path)
        if not any(real == a or real.startswith(a + "/") for a in allowed):
            raise InputError(
                f"{path} is read from outside the project{_at(task)}; rolebake reads "
                "nothing from outside the project unless the spec declares it",
                **_location(project, task, where),
                hint=f"declare it in the spec (`inputs: [{path}]`, keyed by content) or copy "
                     "it into the project")
    real_keyed = {os.path.realpath(project.root / p) for p in keyed}
    holes = [p for p in observed.files if p not in set(keyed)
             and os.path.realpath(project.root / p) not in real_keyed]
    if holes and not record:
        first, task = holes[0], observed.files[holes[0]]
        more = f" (and {len(holes) - 1} more file(s))" if len(holes) > 1 else ""
        raise InputError(
            f"cache hole: {first} is read{_at(task)} but is not in the cache key{more}",
            **_location(project, task, where),
            hint="build with --record-inputs (or set `record_inputs: true` in the spec) to "
                 "key what Ansible reads from now on")
    return holes


# The record of the last build of a layer ------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    """What the last build of a layer read in the project, kept for the next key."""

    files: tuple[str, ...] = ()
    lists: tuple[str, ...] = ()
    tasks: Mapping[str, str] = field(default_factory=dict)  # path -> the task that read it


def record_path(project: Project, layer: Layer) -> Path:
    """`.rolebake/inputs/<layer>.json`."""
    return project.state_dir / "inputs" / f"{layer.file_stem}.json"


def load(project: Project, layer: Layer) -> Recorded:
    """The record of the last build of `layer` in this checkout; empty when there is none."""
    path = record_path(project, layer)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return Recorded()
    if not isinstance(data, dict):
        return Recorded()
    files, lists = ([p for p in value if isinstance(p, str)] if isinstance(
        value := data.get(key), list) else [] for key in ("files", "lists"))
    tasks = data.get("tasks") if isinstance(data.get("tasks"), dict) else {}
    return Recorded(files=tuple(files), lists=tuple(lists), tasks=dict(tasks or {}))


def save(project: Project, layer: Layer, observed: Observed) -> None:
    """Keep what a successful run read, for the next key of the layer."""
    project.private_dir("inputs")
    tasks = {**observed.lists, **observed.files}
    text = json.dumps({"layer": layer.id, "files": list(observed.files),
                       "lists": list(observed.lists), "tasks": tasks}, indent=1, sort_keys=True)
    write_private(record_path(project, layer), text + "\n")


def extra_inputs(project: Project, recorded: Recorded, static: Iterable[str],
                 file_digest: Callable[[Path], str]) -> dict[str, str]:
    """The recorded files the static walk does not key, and every recorded listing, digested.

    A listing is keyed by the names in the folder (`list:<sha>`), so a file
    added where a `fileglob` looks moves the key; a recorded file that is gone
    is keyed as missing (its coming back is a change too).
    """
    keyed = set(static)
    real = {os.path.realpath(project.root / p) for p in keyed}
    found: dict[str, str] = {}
    for name in recorded.files:
        path = project.root / name
        if name in keyed or os.path.realpath(path) in real or not project.inside(path):
            continue
        found[name] = file_digest(path)
    for name in recorded.lists:
        path = project.root / name
        if project.inside(path):
            found[name.rstrip("/") + "/"] = listing_digest(path)
    return found


def listing_digest(folder: Path) -> str:
    """`list:<sha>` of the sorted names in a folder (`list:missing` when it is gone)."""
    try:
        names = sorted(n for n in os.listdir(folder) if not _litter(Path(n)))
    except OSError:
        return "list:missing"
    return "list:" + hashlib.sha256("\0".join(names).encode()).hexdigest()[:32]
