"""What a play reads beside its playbook, for the static walk (`ansible_inputs`).

Play-level tasks find a relative `src:` or `lookup('file')` in `files/`
beside the playbook, a template in `templates/`, and a `with_fileglob`
pattern in `files/` or beside the playbook; `{{ role_path }}` and
`{{ playbook_dir }}` are names Ansible fills in without any var of the layer.
What the walk cannot see, the build's observed inputs catch (observed.py).
"""

from __future__ import annotations

import glob
import re
from pathlib import Path
from typing import Any

# Folders beside a playbook whose files play-level tasks read by a relative name.
CONTENT_DIRS = ("files", "templates")
# Folders beside a playbook whose plugins Ansible loads by itself.
PLUGIN_DIRS = (
    "library", "module_utils", "action_plugins", "become_plugins", "cache_plugins",
    "callback_plugins", "cliconf_plugins", "connection_plugins", "filter_plugins",
    "httpapi_plugins", "inventory_plugins", "lookup_plugins", "netconf_plugins",
    "strategy_plugins", "terminal_plugins", "test_plugins", "vars_plugins",
)


def keyed_folders(folder: Path) -> list[Path]:
    """The folders beside a playbook that Ansible reads by itself or by a relative name."""
    return [folder / sub for sub in (*PLUGIN_DIRS, *CONTENT_DIRS) if (folder / sub).is_dir()]


_MAGIC = re.compile(r"\{\{\s*(role_path|playbook_dir)\s*\}\}")


def special_vars(name: str, role: Path | None, playbook_dir: Path | None) -> str:
    """`name` with `{{ role_path }}` and `{{ playbook_dir }}` filled in where they are known."""
    known = {"role_path": role, "playbook_dir": playbook_dir}
    return _MAGIC.sub(lambda m: str(known[m.group(1)]) if known[m.group(1)] is not None
                      else m.group(0), name)


def fileglob_matches(task: dict[Any, Any], folder: Path) -> list[Path]:
    """The files a task's `with_fileglob` patterns match now, in `files/` and beside the playbook.

    A templated or absolute pattern matches nothing here (an absolute one is read
    from outside the project, which the build refuses unless the spec declares it).
    """
    value = task.get("with_fileglob")
    patterns = value if isinstance(value, list) else [value]
    found: list[Path] = []
    for pattern in patterns:
        if not isinstance(pattern, str) or "{{" in pattern or pattern.startswith("/"):
            continue
        for base in (folder / "files", folder):
            found.extend(Path(p) for p in sorted(glob.glob(str(base / pattern)))
                         if Path(p).is_file())
    return found
