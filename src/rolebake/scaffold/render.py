"""Rendering a recording into the source of a testinfra file, through a Jinja2 template.

The text lives in templates/test_scaffold.py.j2; this module only folds the
recording into facts, names each check, and supplies the filters that turn
values into Python source. Rendering is pure: the same recording always gives
the same text, so it is unit-tested with recorded task results.
"""

from __future__ import annotations

import functools
import json
import re
from typing import TYPE_CHECKING

import jinja2

from rolebake.scaffold.facts import facts_from

if TYPE_CHECKING:
    from rolebake.scaffold.record import Recording

TEMPLATE = "test_scaffold.py.j2"


def render(recording: Recording) -> str:
    """The source of a testinfra file checking what the recorded tasks did.

    Pure: the same recording always gives the same text.

    Args:
        recording: the task results (and static-file digests) of one layer.

    Returns:
        Python source, ending in exactly one newline.
    """
    facts = facts_from(recording.tasks, recording.provisioner)
    for path in recording.host_bound:
        if path in facts.files:
            facts.files[path].unpin()
    names = _Names()
    # Names are handed out files, then groups, then users: the order the checks appear in,
    # so a collision's `_2` suffix lands on the later check.
    files = [(names.make("test_file", f.path), f,
              recording.digests.get(f.path) if f.static else None)
             for f in facts.files.values()]
    groups = [(names.make("test_group", g.name), g) for g in facts.groups.values()]
    users = [(names.make("test_user", u.name), u) for u in facts.users.values()]
    return _environment().get_template(TEMPLATE).render(
        image=recording.image,
        provisioner=recording.provisioner,
        installed=[n for n, ok in facts.packages.items() if ok],
        removed=[n for n, ok in facts.packages.items() if not ok],
        files=files,
        groups=groups,
        users=users,
        services=list(facts.services.items()),
        nothing_recorded=not (facts.packages or facts.files or facts.users or facts.groups
                              or facts.services),
    )


@functools.cache
def _environment() -> jinja2.Environment:
    """The one Jinja2 environment, loading templates from this package's data."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("rolebake.scaffold", "templates"),
        autoescape=False,  # Python source, not HTML: `py` does the quoting
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["py"] = _py
    env.filters["comment"] = _comment
    env.filters["octal"] = _octal
    return env


class _Names:
    """Unique, readable test function names."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def make(self, prefix: str, subject: str) -> str:
        """`prefix_subject` as an identifier, numbered if already handed out."""
        stem = re.sub(r"[^0-9a-zA-Z]+", "_", subject).strip("_").lower() or "item"
        name, n = f"{prefix}_{stem}", 2
        while name in self.used:
            name, n = f"{prefix}_{stem}_{n}", n + 1
        self.used.add(name)
        return name


def _py(value: str) -> str:
    """A Python string literal for `value`: JSON's double quotes when it reads as text."""
    return json.dumps(value) if value.isprintable() else repr(value)


def _comment(text: str) -> str:
    """`text` on one line and short enough for a `# task:` comment."""
    return " ".join(text.split())[:90]


def _octal(mode: str) -> str:
    """A file mode as a Python octal literal: `0644` -> `0o644`."""
    return f"0o{int(mode, 8):o}"
