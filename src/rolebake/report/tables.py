"""The tables rolebake prints when it is done: build summary, plan, parity state and tests.

Each is a `rich.table.Table` without box drawing, rendered to plain lines
(colour only when the caller says it writes to a terminal) for the CLI to print.
Rows are one line each, so logs stay greppable.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rich.table import Column, Table
from rich.text import Text

from rolebake.parity.diff import IDS_SHIFTED_HINT, RECOMMENDS_HINT, Status
from rolebake.report.text import (
    DIM,
    LAYER_STYLE,
    Redact,
    cell,
    duration,
    installed,
    render_lines,
    style_of,
    styled,
)

if TYPE_CHECKING:
    from rolebake.builder import BuildReport, LayerResult
    from rolebake.parity.diff import ParityItem, ParityReport
    from rolebake.verify import TestCase

__all__ = ["build_summary", "parity_table", "plan_table", "tests_side_by_side"]

_PARITY_HEADER = ("RESOURCE", "CONTAINER", "VM", "STATUS")
# Room the old fixed-width table left for RESOURCE's gaps and the STATUS column
# when sharing the line width between the two value columns.
_STATUS_ROOM = 40
_MIN_VALUE_WIDTH = 12
_TEST_NAME_WIDTH = 48


def build_summary(report: BuildReport, *, redact: Redact = installed,
                  color: bool = False) -> list[str]:
    """One line per layer (status, image, time, tags), then the total time.

    Args:
        report: The finished build.
        redact: Hides secrets (a tag or a failure's name could carry one).
        color: Colour the status words; only when writing to a terminal.

    Returns:
        The lines, without newlines.
    """
    table = _table(Column(), Column(), Column(), Column(justify="right"), Column(),
                   show_header=False)
    for result in report.results.values():
        table.add_row(*_layer_row(result, redact))
    lines = render_lines(table, color=color, redact=redact) if report.results else []
    # The build id finds what a build killed outright left: rolebake clean --label.
    build = [("  build ", DIM), (report.build_id, "")] if report.build_id else []
    total = styled([("total ", DIM), (duration(report.seconds), ""), *build], redact)
    return [*lines, *render_lines(total, color=color, redact=redact)]


def _layer_row(result: LayerResult, redact: Redact) -> list[Text]:
    image = result.image_id.split(":")[-1][:12] if result.image_id else "-"
    status = "cached" if result.cached else result.status.value
    tags = cell(", ".join(result.tags), redact)
    if result.failed_tag:
        kept = f"kept as {result.failed_tag}"
        tags.append(redact(f"  {kept}" if result.tags else kept), style=style_of("failed"))
    return [cell(result.layer, redact, LAYER_STYLE), cell(status, redact, style_of(status)),
            cell(image, redact), cell(duration(result.seconds), redact), tags]


def plan_table(rows: Iterable[Mapping[str, Any]], *, redact: Redact = installed,
               color: bool = False) -> list[str]:
    """`rolebake plan` output: the layer DAG, HIT or MISS, and the reasons of each miss.

    Args:
        rows: `PlanRow.to_dict()` of every layer, parents first (layer, parent, depth,
            status, image, reasons, notes, source).
        redact: Hides secrets.
        color: Colour HIT and MISS; only when writing to a terminal.

    Returns:
        One aligned line per layer, indented by its depth, each followed by its
        `- reason` lines, its `note:` lines (why its key covers more than it needs)
        and what it does with each play of its playbook (`applies play ...`).
    """
    rows = list(rows)
    table = _table(Column(), Column(), Column(), Column(), show_header=False)
    for row in rows:
        indent = "  " * row["depth"]
        status = str(row["status"])
        image = row["image"].split(":")[-1][:12] if row.get("image") else ""
        table.add_row(cell(indent + row["layer"], redact, LAYER_STYLE),
                      cell(f"[{status}]", redact, style_of(status)), cell(image, redact),
                      cell(f"<- {row['parent']}", redact))
    layer_lines = render_lines(table, color=color, redact=redact) if rows else []
    lines: list[str] = []
    # A reason is as wide as the whole row and rich has no column spans: the
    # reasons go between the rendered rows, one row being one line.
    for row, line in zip(rows, layer_lines, strict=True):
        lines.append(line)
        indent = "  " * row["depth"]
        # A hit from the cache repo says so: a build would pull it, not find it here.
        notes = ["HIT, from the cache repo"] if row.get("source") == "cache repo" else []
        for reason in [*notes, *row.get("reasons", [])]:
            text = styled([(f"{indent}    - ", ""), (reason, DIM)], redact)
            lines += render_lines(text, color=color, redact=redact)
        for note in row.get("notes", []):
            text = styled([(f"{indent}    note: ", ""), (note, DIM)], redact)
            lines += render_lines(text, color=color, redact=redact)
        for play in row.get("plays", []):
            text = styled([(f"{indent}    ", ""), (play, "")], redact)
            lines += render_lines(text, color=color, redact=redact)
    return lines


def parity_table(report: ParityReport, *, show_equal: bool = False, width: int = 120,
                 redact: Redact = installed, color: bool = False) -> str:
    """The parity report side by side, then a `parity OK:`/`parity FAILED:` summary line.

    Args:
        report: The parity report.
        show_equal: Also list equal items (they are always counted in the summary line).
        width: Target line width; long values are shortened with an ellipsis, the resource,
            the status and its reason never are.
        redact: Hides secrets (file owners, user names, versions are shown as found).
        color: Colour the status words; only when writing to a terminal.

    Returns:
        The table and its summary line, without a trailing newline.
    """
    shown = [i for i in report.items if show_equal or i.status is not Status.EQUAL]
    lines = []
    if shown:
        first = max(len(_PARITY_HEADER[0]), *(len(redact(i.resource)) for i in shown))
        cap = max((width - first - _STATUS_ROOM) // 2, _MIN_VALUE_WIDTH)
        resource, container, vm, status = _PARITY_HEADER
        table = _table(Column(resource), Column(container, max_width=cap),
                       Column(vm, max_width=cap), Column(status), show_header=True)
        for item in shown:
            table.add_row(cell(item.resource, redact), cell(_value(item.container), redact),
                          cell(_value(item.vm), redact), _status_cell(item, redact))
        lines = render_lines(table, color=color, redact=redact)
    shifted, recommends = len(report.ids_shifted), len(report.recommends)
    summary = (f"{report.equal_count} equal, {len(report.expected)} expected, "
               + (f"{shifted} ids shifted{' (--strict-ids)' if report.strict_ids else ''}, "
                  if shifted else "")
               + (f"{recommends} recommends"
                  f"{' (accepted: --accept-recommends)' if report.accept_recommends else ''}, "
                  if recommends else "")
               + f"{len(report.differences)} different")
    if recommends:
        lines += render_lines(styled([("recommends: ", style_of("recommends")),
                                      (RECOMMENDS_HINT, "")], redact),
                              color=color, redact=redact)
    if shifted:
        # Said once under the table, not on every row: what the class means, what to do.
        lines += render_lines(styled([("ids-shifted: ", style_of("ids-shifted")),
                                      (IDS_SHIFTED_HINT, "")], redact),
                              color=color, redact=redact)
    verdict = ("parity OK: ", style_of("ok")) if report.ok else ("parity FAILED: ",
                                                               style_of("FAILED"))
    lines += render_lines(styled([verdict, (summary, "")], redact), color=color, redact=redact)
    return "\n".join(lines)


def _value(value: str | None) -> str:
    if value is None:
        return "-"
    return value or "(empty)"


def _status_cell(item: ParityItem, redact: Redact) -> Text:
    status = item.status.value
    reason = f": {item.reason}" if item.reason else ""
    return styled([(status, style_of(status)), (reason, "")], redact)


def tests_side_by_side(container: Sequence[TestCase], vm: Sequence[TestCase], *,
                       redact: Redact = installed, color: bool = False) -> list[str]:
    """The suite's outcome on each target, one line per test.

    Args:
        container: The suite's results against a container of the image.
        vm: The suite's results against the VM.
        redact: Hides secrets.
        color: Colour the outcomes; only when writing to a terminal.

    Returns:
        A header line and one line per test (the container's tests first, then any the
        VM alone ran), `-` where a target has no result.
    """
    # Parametrised cases (test_x[docker://...]) carry the host in their id: compare by name.
    on_container = {c.name.split("[")[0]: c for c in container}
    on_vm = {c.name.split("[")[0]: c for c in vm}
    table = _table(Column("test", max_width=_TEST_NAME_WIDTH), Column("container"),
                   Column("vm"), show_header=True)
    for name in [*on_container, *(n for n in on_vm if n not in on_container)]:
        cases = (on_container.get(name), on_vm.get(name))
        table.add_row(cell(name, redact), *(_outcome_cell(c, redact) for c in cases))
    return render_lines(table, color=color, redact=redact)


def _outcome_cell(case: TestCase | None, redact: Redact) -> Text:
    """The outcome; a test marked for the other side says why it was skipped."""
    if case is None:
        return cell("-", redact)
    text = case.outcome
    if case.outcome == "skipped" and case.only:
        text += f" ({case.only} only)"
    return cell(text, redact, style_of(case.outcome))


def _table(*columns: Column, show_header: bool) -> Table:
    """A borderless table, two spaces between columns, no cell ever wrapped."""
    for column in columns:
        # Cut (with an ellipsis) only where a column has a max_width; never wrap.
        column.no_wrap = True
        column.overflow = "ellipsis"
    return Table(*columns, box=None, pad_edge=False, show_edge=False,
                 show_header=show_header, header_style="bold", highlight=False)


def vm_layer_line(row: Mapping[str, Any]) -> str:
    """One layer of the parity VM: taken from a kept snapshot, or applied (and kept or not)."""
    layer, snapshot, note = row["layer"], row.get("snapshot"), row.get("note") or ""
    if row["source"] == "snapshot":
        return f"{layer}: from snapshot {snapshot}" + (f" ({note})" if note else "")
    seconds = f"{float(row.get('seconds') or 0):.0f} s"
    if row.get("kept"):
        return f"{layer}: applied, kept as {snapshot} ({seconds})"
    return f"{layer}: applied ({seconds}" + (f"; {note})" if note else ")")


def vm_layer_lines(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """The VM layers of a parity run, bottom up, as `VM layers:` lines (redacted)."""
    return [installed("VM layer " + vm_layer_line(row)) for row in rows]
