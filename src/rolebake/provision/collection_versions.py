"""Where a collection Ansible will load lives, and which version it is.

Ansible looks in the collection paths it is given (beside the playbook, the
project cfg's `collections_path`) and then on its Python's path, where the
`ansible` package installs community.docker and the rest. The first match
wins, as it does for Ansible.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import yaml

from rolebake.spec import Project


def find_collection(name: str, roots: Sequence[Path], project: Project) -> Path | None:
    """The folder of collection `namespace.name`, searching `roots` then Python's path."""
    namespace, _, collection = name.partition(".")
    for root in [*roots, *_python_roots(project)]:
        base = root if root.name == "ansible_collections" else root / "ansible_collections"
        folder = base / namespace / collection
        if folder.is_dir():
            return folder
    return None


def collection_version(folder: Path) -> str:
    """The version a collection's MANIFEST.json (built) or galaxy.yml (source) gives."""
    manifest = folder / "MANIFEST.json"
    try:
        if manifest.is_file():
            info = json.loads(manifest.read_text(encoding="utf-8")).get("collection_info") or {}
            return str(info.get("version") or "unversioned")
        galaxy = folder / "galaxy.yml"
        if galaxy.is_file():
            data = yaml.safe_load(galaxy.read_text(encoding="utf-8")) or {}
            return str(data.get("version") or "unversioned") if isinstance(data, dict) \
                else "unversioned"
    except (OSError, ValueError, yaml.YAMLError, AttributeError):
        return "unreadable"
    return "unversioned"


def _python_roots(project: Project) -> Iterable[Path]:
    # Not the project root: `python -m rolebake` run there puts it on the path, and
    # ansible-playbook, a script of its own, would not see it.
    for entry in sys.path:
        if entry and Path(entry).is_dir() and Path(entry).resolve() != project.root.resolve():
            yield Path(entry)
