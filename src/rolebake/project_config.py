"""The project's identity: `project:` in rolebake.yml at the root, else the root folder's name.

One engine is often shared by several projects (a CI runner, a team's build
host), and what rolebake names on it is global there: tags, the internal
cache tags, the images a miss is explained against, the host-wide layer
locks. Two repositories with a `web` group must not share them, so each of
those names carries the project's identity.

Chosen to be stable where a cache should be shared and nowhere else:

- `project:` in `rolebake.yml` at the project root (`rolebake init` writes
  it), the same in every clone and CI checkout, whatever the folder;
- else the root folder's name, normalised to a repository name component:
  a fresh clone into a folder of the repository's name (what `git clone` and
  CI runners do) is the same project. Rejected: a digest of the absolute path
  (every CI checkout would be a stranger to the cache of the last one) and the
  git remote (absent before the first push, and unlike between a fork and a
  mirror). The trade-off: two checkouts of unrelated repositories that share
  a folder name share an identity until one of them names itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from rolebake.errors import InputError
from rolebake.reference import CACHE_NAMESPACE, COMPONENT
from rolebake.yamlfile import Fields, load_yaml

CONFIG_FILE = "rolebake.yml"
# It becomes a repository path component (`<project>/web`, `rolebake-cache/<project>/web`):
# short enough that the longest spec and variant names still fit the 255-character name.
NAME_MAX = 32
NAME_RE = re.compile(rf"(?=.{{1,{NAME_MAX}}}\Z){COMPONENT}")
NAME_RULE = (f"lowercase letters and digits, with '.', '_' or '-' between them, up to "
             f"{NAME_MAX}")
FALLBACK = "project"
# A project of this name would put its default tags among rolebake's cache tags.
_RESERVED = CACHE_NAMESPACE.rstrip("/")
KEYS = {"project"}


@dataclass(frozen=True)
class ProjectIdentity:
    """Who the project is on a shared engine, and where that was decided."""

    name: str
    source: Path | None  # rolebake.yml when it names the project; None: the folder's name

    @property
    def explicit(self) -> bool:
        """Named in rolebake.yml (stable across folders), not derived from the folder."""
        return self.source is not None


def read_identity(root: Path) -> ProjectIdentity:
    """The identity of the project at `root`: rolebake.yml's `project:`, else the folder's name.

    Args:
        root: the project root.

    Returns:
        The identity.

    Raises:
        InputError: rolebake.yml cannot be read, is a link out of the project, has an
            unknown key or a name that cannot be a repository component (file and line).
    """
    path = root / CONFIG_FILE
    if not (path.exists() or path.is_symlink()):
        return ProjectIdentity(name_from_folder(root.resolve().name), None)
    try:
        path.resolve().relative_to(root.resolve())
    except (ValueError, OSError, RuntimeError):
        raise InputError("is a link out of the project; rolebake reads nothing from outside "
                         "it", path=path) from None
    data = load_yaml(path)
    if data is None:
        return ProjectIdentity(name_from_folder(root.resolve().name), None)
    fields = Fields(data, path, "", 1)
    fields.reject_unknown(KEYS)
    name = fields.text("project", what=f"a project name ({NAME_RULE})")
    if name is None:
        return ProjectIdentity(name_from_folder(root.resolve().name), None)
    if not NAME_RE.fullmatch(name):
        raise fields.fail("project", f"{name!r} is not a project name: use {NAME_RULE}")
    if name == _RESERVED:
        raise fields.fail("project", f"{name!r} is the namespace of rolebake's cache tags; "
                                     "choose another name")
    return ProjectIdentity(name, path)


def name_from_folder(folder: str) -> str:
    """A project name from a folder's name: lowercase, runs of other characters as `-`.

    `My_Ansible Repo` -> `my-ansible-repo`; a name with nothing usable in it
    (`/`, `___`) is `project`.
    """
    name = re.sub(r"[^a-z0-9]+", "-", folder.lower()).strip("-")[:NAME_MAX].strip("-")
    if not name:
        return FALLBACK
    return f"{name}-project" if name == _RESERVED else name
