"""How rolebake looks to people: progress while it works, tables when it is done.

`progress` shows build events (plain timestamped lines for logs, a live status
line on a terminal); `tables` renders the build summary, the plan and the
parity report; `html` renders the parity report as a page; `text` holds what
the tables and progress share: redaction, the palette, rendering with rich.
Nothing here decides where text goes: the CLI does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rolebake.report.progress import LiveProgress, PlainProgress, progress_for
from rolebake.report.tables import (
    build_summary,
    parity_table,
    plan_table,
    tests_side_by_side,
    vm_layer_lines,
)
from rolebake.report.text import Redact

if TYPE_CHECKING:
    from rolebake.report.html import parity_html

__all__ = [
    "LiveProgress",
    "PlainProgress",
    "Redact",
    "build_summary",
    "parity_html",
    "parity_table",
    "plan_table",
    "progress_for",
    "tests_side_by_side",
    "vm_layer_lines",
]


def __getattr__(name: str) -> Any:
    # jinja2 is for `parity --html` only: a build does not import it.
    if name == "parity_html":
        from rolebake.report.html import parity_html

        return parity_html
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
