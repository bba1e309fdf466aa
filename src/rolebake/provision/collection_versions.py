"""Which collections a layer names, where each one Ansible will load lives, its version.

Names come from a module's FQCN, a `collections:` keyword, and filters, tests
and lookups named by FQCN inside templates and vars.

Ansible looks in the collection paths it is given (beside the playbook, the
project cfg's `collections_path`) and then on its Python's path, where the
`ansible` package installs community.docker and the rest. The first match
wins, as it does for Ansible.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from rolebake.spec import Project

# Every container build reaches its container through this collection's connection.
ALWAYS_USED = ("community.docker",)
SCAN_LIMIT = 1 << 20  # bytes of a file searched for collection names
_MODULE_FQCN = re.compile(r"^([a-z][a-z0-9_]*\.[a-z][a-z0-9_]*)\.[a-z_][a-z0-9_.]*$")
# A filter or lookup named by FQCN inside a Jinja expression. The lookahead names the
# first character either alternative can start with, so the scanner skips to those
# (twice as fast over a collection's Python files); it matches exactly what it did without.
_JINJA_FQCN = re.compile(
    r"(?=[|lq])(?:\|\s*|\b(?:lookup|query|q)\(\s*['\"])"
    r"([a-z][a-z0-9_]*\.[a-z][a-z0-9_]*)\.[a-z_][a-z0-9_]*")
# Text holding none of these cannot match _JINJA_FQCN (most files): no scan at all.
_NEEDLES = ("|", "lookup(", "query(", "q(")
_BUILTIN = ("ansible.builtin", "ansible.legacy")


def named_in_module(action: str) -> set[str]:
    """The collection of a task's module named by FQCN (`community.general.ufw`)."""
    module = _MODULE_FQCN.match(action)
    return {module.group(1)} if module and module.group(1) not in _BUILTIN else set()


def named_in_keyword(value: Any) -> set[str]:
    """The collections a play's or role's `collections:` keyword lists."""
    return {name for name in (value if isinstance(value, list) else [])
            if isinstance(name, str) and name.count(".") == 1 and name not in _BUILTIN}


def named_in_file(path: Path) -> set[str]:
    """Collections whose filters, tests and lookups a template or vars file names by FQCN."""
    try:
        with path.open("rb") as stream:
            text = stream.read(SCAN_LIMIT).decode("utf-8", errors="replace")
    except OSError:
        return set()
    return named_in_text(text)


def named_in_text(text: str) -> set[str]:
    """Collections whose filters, tests and lookups `text` names by FQCN (not ansible.*)."""
    if not any(needle in text for needle in _NEEDLES):
        return set()
    return {m.group(1) for m in _JINJA_FQCN.finditer(text) if m.group(1) not in _BUILTIN}


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
