"""Facts once per parent image: Ansible's jsonfile fact cache, a folder per parent image id.

A parent image is immutable, so what Ansible gathers in a container of it
holds for every layer built on it. The first layer built on a parent gathers
as usual and its first gather is kept in `.rolebake/facts/<parent id>/<host>/`
(0700 folders, 0600 files, state.py), in whatever files Ansible's jsonfile
plugin writes (their names and format are Ansible's); the next layers on the same parent start with
a copy of it as their run's cache, and Ansible's `gathering = smart` skips the
gather. Ansible reads and writes the cache with its own `jsonfile` plugin;
rolebake's callback (ansible_plugins/callback/rolebake_facts.py) decides per
play whether the cached facts may answer it (the run's first gather, before
any task, when the cache holds the play's `gather_subset`).

The parent's folder is never Ansible's cache: a run works on a scratch copy,
so facts set during the layer (`set_fact: cacheable`, a gather after a change)
never reach it. Only the run's first gather, taken before any other task,
is stored back, and only when no secret is in it.

The layer's cache key does not change: facts are what Ansible finds in the
parent image, which is keyed by its id already.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rolebake import redact
from rolebake.state import replace_private

if TYPE_CHECKING:  # `rolebake clean` imports this module without Ansible
    from rolebake.provision.ansible_config import AnsibleConfig
    from rolebake.spec import Project

STATE = "facts"  # .rolebake/facts/<parent image id>/
PREFIX = "facts_"  # the jsonfile plugin's file prefix, over any the project's cfg sets
# The project's `gathering` that keeps the cache off: Ansible gathers as it says.
GATHERING_OFF = frozenset({"implicit", "explicit"})


@dataclass(frozen=True)
class FactsRun:
    """One Ansible run's share of the parent's fact cache.

    Attributes:
        parent: the parent image id (`sha256:...`).
        host: the inventory host name: the cache's key, and the container's host name.
        folder: the parent's cache folder for the host: `.rolebake/facts/<id>/<host>`.
        scratch: the run's own cache (Ansible's fact_caching_connection), removed with it.
        staging: where the callback has Ansible write the run's first gather.
        report: what the callback decided, one JSON object a line.
        every_play: later plays gather again (Ansible's `implicit`, the default).
    """

    parent: str
    host: str
    folder: Path
    scratch: Path
    staging: Path
    report: Path
    every_play: bool = True

    @property
    def short(self) -> str:
        """The parent's short id, as the progress output shows it."""
        return short_id(self.parent)


def short_id(image_id: str) -> str:
    """The first 12 hex digits of an image id."""
    return image_id.rsplit(":", 1)[-1][:12]


def folder_name(image_id: str) -> str:
    """The cache folder of an image id: its hex digits (no `sha256:`), never a path."""
    hexdigits = image_id.rsplit(":", 1)[-1]
    if not hexdigits or not all(c in "0123456789abcdef" for c in hexdigits):
        raise ValueError(f"not an image id: {image_id!r}")
    return hexdigits


def off_reason(config: AnsibleConfig) -> str | None:
    """Why the project's ansible.cfg keeps the cache off (its `gathering`), or None.

    A project that writes `gathering = implicit` or `explicit` says when Ansible
    gathers; rolebake keeps to it. Unset (Ansible's implicit default) or
    `smart`, the parent's cache answers the first gather.
    """
    value = (config.get("gathering") or "").strip().lower()
    if value in GATHERING_OFF:
        return f"{config.path and config.path.name}: gathering = {value}"
    return None


def for_run(project: Project, config: AnsibleConfig, parent: str | None, host: str | None,
            data_dir: Path, *, applies: bool) -> tuple[FactsRun | None, str | None]:
    """The run's share of the parent's cache, or None; and a line to show when it is off.

    Args:
        project: the project, whose `.rolebake/facts` holds the caches.
        config: the project's ansible.cfg (its `gathering`).
        parent: the parent image id; None for a target that is not a container of one.
        host: the inventory host name of the run's target.
        data_dir: the run's private folder.
        applies: a first pass on a build container (the idempotence pass and a VM
            over SSH gather as before).
    """
    if not applies or parent is None or host is None:
        return None, None
    off = off_reason(config)
    if off is not None:
        return None, f"facts: gathered (parent {short_id(parent)}): {off}, no cache"
    try:
        return prepare(project, config, parent, host, data_dir), None
    except ValueError:  # not an image id, or a host name that cannot name a folder
        return None, None


def prepare(project: Project, config: AnsibleConfig, parent: str, host: str,
            data_dir: Path) -> FactsRun:
    """The run's scratch cache, seeded with the parent's facts of `host` when there are some.

    Args:
        project: the project, whose `.rolebake/facts` holds the caches.
        config: the project's ansible.cfg (its `gathering`).
        parent: the parent image id.
        host: the inventory host name of the layer's target.
        data_dir: the run's private folder (removed after the run).
    """
    folder = project.state_dir / STATE / folder_name(parent) / host_folder(host)
    run = FactsRun(parent=parent, host=host, folder=folder, scratch=data_dir / "facts",
                   staging=data_dir / "facts-gathered", report=data_dir / "facts.jsonl",
                   every_play=(config.get("gathering") or "").strip().lower() != "smart")
    for path in (run.scratch, run.staging):  # inside the run's 0700 folder
        path.mkdir(mode=0o700, exist_ok=True)
    for cached in _files(folder):
        shutil.copyfile(cached, run.scratch / cached.name)
    return run


def host_folder(host: str) -> str:
    """The folder of `host`'s facts below the parent's: the inventory host name itself."""
    if not host or "/" in host or "\0" in host or host.startswith("."):
        raise ValueError(f"not a host name for a cache folder: {host!r}")
    return host


def _files(folder: Path) -> list[Path]:
    """The cache files Ansible wrote in `folder` (never a link, never a half-written one)."""
    if folder.is_symlink() or not folder.is_dir():
        return []
    return [p for p in sorted(folder.iterdir())
            if p.is_file() and not p.is_symlink() and not p.name.startswith(".")]


def environment(run: FactsRun) -> dict[str, str]:
    """Ansible's fact cache settings for the run, over any the project's ansible.cfg sets.

    The cache itself is ansible-runner's (`fact_cache_type: jsonfile`, its
    default, with `fact_cache` = `run.scratch`): the runner sets Ansible's
    cache plugin and its folder over the cfg's `fact_caching` and
    `fact_caching_connection`, as it always did. The cfg's other `fact_caching*`
    are overridden here too: a cache of the project's would carry one image's
    facts into a build of another, outside any cache key.
    """
    return {
        "ANSIBLE_GATHERING": "smart",
        "ANSIBLE_CACHE_PLUGIN_PREFIX": PREFIX,
        "ANSIBLE_CACHE_PLUGIN_TIMEOUT": "0",  # an image does not change: never stale
        "ROLEBAKE_FACTS_HOST": run.host,
        "ROLEBAKE_FACTS_REPORT": str(run.report),
        "ROLEBAKE_FACTS_STAGING": str(run.staging),
        "ROLEBAKE_FACTS_EVERY_PLAY": "1" if run.every_play else "0",
    }


def finish(project: Project, run: FactsRun, *, succeeded: bool) -> str | None:
    """Store the run's first gather for the parent; the line the progress output shows.

    Stored only after a successful run, and never when a secret is in it (the
    redactor would change its text): the run is then served by a fresh gather.

    Returns:
        `facts: from the cache of parent <id>` or `facts: gathered (parent <id>)...`;
        None when no play gathered facts.
    """
    records = _report(run.report)
    # One gather in the run is enough to say "gathered" (a play skipped by rolebake's
    # wrapper may have been answered from the cache before it).
    first = next((r for r in records if r.get("facts") == "gathered"), None) \
        or next((r for r in records if r.get("facts") == "cache"), None)
    if first is None:
        return None
    if first["facts"] == "cache":
        return f"facts: from the cache of parent {run.short}"
    line = f"facts: gathered (parent {run.short})"
    if first.get("why"):
        line += f": {first['why']}"
    gathered = {path.name: path.read_text(encoding="utf-8") for path in _files(run.staging)}
    if succeeded and gathered and any(r.get("facts") == "stored" for r in records):
        if any(redact.text(text) != text for text in gathered.values()):
            return line + "; not cached: a secret is in them"
        _store(project, run, gathered)
        line += "; cached for the next layers on it"
    return line


def _store(project: Project, run: FactsRun, files: dict[str, str]) -> None:
    folder = project.private_dir(STATE, run.folder.parent.name, run.folder.name)
    for name, text in files.items():
        replace_private(folder / name, text)  # a layer building beside this reads all or none


def _report(path: Path) -> list[dict[str, str]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    found: list[dict[str, str]] = []
    for line in lines:
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                found.append(record)
    return found


def stale(project: Project, exists: Callable[[str], bool]) -> list[Path]:
    """Cache folders of parent images the engine no longer has (`rolebake clean`)."""
    base = project.state_dir / STATE
    if not base.is_dir():
        return []
    return [path for path in sorted(base.iterdir())
            if path.is_dir() and not path.is_symlink() and not exists(f"sha256:{path.name}")]


def remove(folders: Iterable[Path]) -> None:
    """Remove fact cache folders (`stale`)."""
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
