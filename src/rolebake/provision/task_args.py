"""A task's arguments as Ansible reads them, for the static walk of what a layer reads."""

from __future__ import annotations

import re
import shlex
from typing import Any

_TEMPLATED = re.compile(r"\{\{|\{%")


def task_args(value: Any, extra: Any) -> dict[str, Any]:
    """A task's arguments: a mapping, or the `k=v` / free-form string Ansible also accepts.

    Args:
        value: what the task gives its action (`copy: {src: a}` or `copy: src=a`).
        extra: the task's `args:`, if any.
    """
    args: dict[str, Any] = dict(extra) if isinstance(extra, dict) else {}
    if isinstance(value, dict):
        args.update(value)
    elif isinstance(value, str):
        if _TEMPLATED.search(value):
            # Jinja spaces would split it; only a k=v form with templated values is lost.
            return {**args, "_raw_params": value}
        try:
            words = shlex.split(value)
        except ValueError:
            words = value.split()
        free = [w for w in words if "=" not in w]
        for word in words:
            if "=" in word:
                option, _, given = word.partition("=")
                args[option] = given
        if free:
            args["_raw_params"] = " ".join(free)
    return args
