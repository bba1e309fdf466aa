"""`rolebake parity --html FILE`: the parity report as one self-contained page.

The page is rendered from the same data `--json` prints (`ParityResult.to_dict()`), after
the installed Redactor has gone through it, with a Jinja2 template that autoescapes
everything: package names, task names and test messages come from roles and must never be
read as markup. No network: the CSS is inline, there are no scripts, fonts or images.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import jinja2
import markupsafe

from rolebake import redact
from rolebake.report.tables import vm_layer_line

__all__ = ["parity_html"]

# Folded sections, in page order: the classes that do not fail the run (as configured).
_FOLDED = (
    ("recommends", "Recommends-only packages (accepted with --accept-recommends)"),
    ("ids-shifted", "System ids shifted (names agree; --strict-ids counts them)"),
    ("expected", "Expected differences (a VM boots, a container does not)"),
    ("equal", "Equal"),
)
_STEP_NAMES = {
    "build": "image build",
    "vm_boot": "VM boot",
    "provision_vm": "provisioning the VM",
    "container_checks": "checks: container",
    "vm_checks": "checks: VM",
    "vm_layers_lookup": "VM layers: lookup",
}


def parity_html(result: Mapping[str, Any], *,
                redact_data: Callable[[Any], Any] = redact.data) -> str:
    """Render a parity run as an HTML page.

    Args:
        result: `ParityResult.to_dict()` (what `--json` prints), or a recorded copy of it.
        redact_data: Hides secrets in every string of `result` (default: the installed
            Redactor, as for `--json`).

    Returns:
        The page, one self-contained document.
    """
    data = redact_data(dict(result))
    state = data["state"]
    counted = {"different"}
    if state.get("strict_ids"):
        counted.add("ids-shifted")
    if not state.get("accept_recommends"):
        counted.add("recommends")
    items = state["items"]
    folded = [
        {"status": status, "title": title, "items": [i for i in items if i["status"] == status]}
        for status, title in _FOLDED if status not in counted
    ]
    return _environment().get_template("parity.html.j2").render(
        data=data,
        state=state,
        status=data.get("status") or ("ok" if data.get("ok") else "different"),
        differences=[i for i in items if i["status"] in counted],
        folded=[group for group in folded if group["items"]],
        hints=state.get("hints", {}),
        tests=_tests(data.get("tests", {})),
        timeline=_timeline(data.get("steps", {})),
        vm_layers=[vm_layer_line(row) for row in data.get("vm_layers") or ()],
    )


def _environment() -> jinja2.Environment:
    # Autoescape always (the file is not named .html): every value is text, never markup.
    env = jinja2.Environment(loader=jinja2.PackageLoader("rolebake.report", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["code_spans"] = _code_spans
    return env


_BACKTICKED = re.compile(r"`([^`]+)`")


def _code_spans(text: str) -> markupsafe.Markup:
    """`install_recommends: false` in a hint as <code>: escaped first, then marked up."""
    escaped = str(markupsafe.escape(text))
    return markupsafe.Markup(_BACKTICKED.sub(r"<code>\1</code>", escaped))


def _tests(tests: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per test: its outcome on each side, and whether the two differ."""
    on_c = {c["name"].split("[")[0]: c for c in tests.get("container", [])}
    on_v = {c["name"].split("[")[0]: c for c in tests.get("vm", [])}
    differ = set(tests.get("differ", []))
    return [{"name": name, "container": on_c.get(name), "vm": on_v.get(name),
             "differ": name in differ}
            for name in [*on_c, *(n for n in on_v if n not in on_c)]]


def _timeline(steps: Mapping[str, Mapping[str, float]]) -> list[dict[str, Any]]:
    """Each step with its offset and width in percent of the whole run."""
    if not steps:
        return []
    total = max(step["end"] for step in steps.values()) or 1.0
    rows = []
    for name, step in sorted(steps.items(), key=lambda kv: (kv[1]["start"], kv[1]["end"])):
        start, end = float(step["start"]), float(step["end"])
        label = (f"VM: {name.partition(':')[2]}" if name.startswith("vm_layer:")
                 else _STEP_NAMES.get(name, name.replace("_", " ")))
        rows.append({"name": label, "start": start,
                     "end": end, "seconds": end - start,
                     "left": round(100 * start / total, 2),
                     "width": max(round(100 * (end - start) / total, 2), 0.5)})
    return rows
