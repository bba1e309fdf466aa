"""Ansible's answers about a static inventory, kept on disk keyed by everything Ansible read.

Asking Ansible what an inventory holds (`ansible_inventory`) costs a no-op build
most of its time: ansible-core's imports and InventoryManager's parse, every
run, although the answer changes only when what Ansible reads changes. So the
answer Ansible gave is kept under `.rolebake/answers/`, keyed by:

- the bytes and mode of every file below each inventory source (a folder:
  every entry, also those Ansible ignores: a wider key, never a narrower one),
  and the sources as Ansible gets them;
- the project's ansible.cfg bytes, the ANSIBLE_* settings rolebake gives
  Ansible (`ansible_config.settings`), the inventory plugins enabled;
- ansible-core's release (its `release.py`) and rolebake's version;
- the question (host, groups, patterns).

Nothing else reaches these answers: vars are not read for them
(`ANSIBLE_RUN_VARS_PLUGINS=demand`), and the host's environment is not
Ansible's. An answer is kept only when it is a function of those files alone:
every enabled inventory plugin is a static parser (`ini`, `yaml`, `toml`), and
every file is a plain file, not executable and not a script (`#!`). An
inventory script, a plugin that asks elsewhere (a cloud, `constructed` over
vars), a link out of the project, a FIFO: never kept, Ansible is asked every
time. A failed question (InputError) is never kept either. A kept answer that
cannot be read (partial, corrupt, another key or question) is ignored and
asked again.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import stat
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from rolebake.provision.ansible_config import inventory_plugins, read_config, settings
from rolebake.spec import Project
from rolebake.state import private_dir, replace_private

FORMAT = "rolebake-inventory-answers/1"
STATIC_PLUGINS = frozenset({"ini", "yaml", "toml", "ansible.builtin.ini", "ansible.builtin.yaml",
                            "ansible.builtin.toml"})
FOLDER = "answers"


def inputs_key(project: Project, sources: Sequence[Path],
               quiet: dict[str, str]) -> str | None:
    """The digest of everything Ansible reads to answer about `sources`; None: never keep.

    Args:
        project: the project.
        sources: the inventory sources, as Ansible gets them.
        quiet: the settings rolebake adds for its questions (`ansible_inventory.QUIET`).
    """
    config = read_config(project)
    if not set(inventory_plugins(config)) <= STATIC_PLUGINS:
        return None
    digest = hashlib.sha256()

    def part(*values: object) -> None:
        digest.update(json.dumps([str(v) for v in values]).encode("utf-8") + b"\n")

    part(FORMAT, _versions())
    env = {**settings(config, project.root / ".rolebake" / "ansible-home"), **quiet}
    part("env", json.dumps(env, sort_keys=True))
    cfg = config.path
    cfg_digest = _file_digest(cfg) if cfg is not None else "none"
    if cfg_digest is None:
        return None
    part("cfg", cfg, cfg_digest)
    part("sources", *sources)
    for source in sources:
        files = _files(project, source)
        if files is None:
            return None
        for path in files:
            found = _file_digest(path, plain=True)
            if found is None:
                return None
            part("file", path, found)
    return digest.hexdigest()


def _versions() -> str:
    """ansible-core's release.py (its version) and rolebake's, without importing Ansible."""
    from rolebake import __version__

    spec = importlib.util.find_spec("ansible")
    release = ""
    if spec is not None and spec.origin is not None:
        with contextlib.suppress(OSError):
            release = hashlib.sha256(
                (Path(spec.origin).parent / "release.py").read_bytes()).hexdigest()
    return f"{__version__} {release}"


def _files(project: Project, source: Path) -> list[Path] | None:
    """Every file below a source (links followed inside the project); None: do not keep."""
    if not project.inside(source):
        return None  # Ansible's path refuses it, every time
    try:
        if not source.is_dir():
            return [source]
        found: list[Path] = []
        for entry in sorted(source.iterdir()):
            below = _files(project, entry)
            if below is None:
                return None
            found.extend(below)
        return found
    except OSError:
        return None


def _file_digest(path: Path, *, plain: bool = False) -> str | None:
    """`mode:sha256` of a file; with `plain`, None unless plain, not executable, no script."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # a FIFO would block the read: never opened
            return None
        with path.open("rb") as handle:
            data = handle.read()
    except OSError:
        return None
    if plain and (info.st_mode & 0o111 or data.startswith(b"#!")):
        return None
    return f"{stat.S_IMODE(info.st_mode):o}:{hashlib.sha256(data).hexdigest()}"


def _path(project: Project, key: str, question: Iterable[Any]) -> tuple[Path, str]:
    asked = json.dumps(list(question), sort_keys=True, default=str)
    name = hashlib.sha256(f"{key}\n{asked}".encode()).hexdigest()
    return project.root / ".rolebake" / FOLDER / f"{name}.json", asked


def recall(project: Project, key: str | None, question: Iterable[Any]) -> Any | None:
    """The answer kept for `question` under `key`, or None (none kept, or unreadable)."""
    if key is None:
        return None
    path, asked = _path(project, key, question)
    try:
        with path.open(encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != key or data.get("question") != asked:
        return None
    return data.get("answer")


def keep(project: Project, key: str | None, question: Iterable[Any], answer: Any) -> None:
    """Keep Ansible's `answer` to `question` under `key` (written whole, or not at all)."""
    if key is None:
        return
    path, asked = _path(project, key, question)
    text = json.dumps({"key": key, "question": asked, "answer": answer}, sort_keys=True)
    with contextlib.suppress(OSError):  # a read-only checkout: Ansible is asked next time too
        private_dir(project.root / ".rolebake", FOLDER)
        replace_private(path, text)


def answer(project: Project, sources: Sequence[Path], quiet: dict[str, str],
           question: list[Any], ask: Callable[[], Any]) -> Any:
    """The kept answer to `question` about `sources`, else `ask()`'s (JSON data), then kept.

    Args:
        project: the project.
        sources: the inventory sources the question is about.
        quiet: the settings rolebake adds for its questions.
        question: what is asked (its every input besides the inventory): part of the key.
        ask: asks Ansible; an error it raises goes on, and nothing is kept.
    """
    key = inputs_key(project, sources, quiet)
    found = recall(project, key, question)
    if found is None:
        found = ask()
        keep(project, key, question, found)
    return found


def inventory_fields(found: Any) -> dict[str, list[str]]:
    """An `ansible_inventory.Inventory`'s answers as JSON data (its sources are the question)."""
    return {"files": [str(p) for p in found.files], "groups": sorted(found.groups),
            "hosts": sorted(found.hosts)}
