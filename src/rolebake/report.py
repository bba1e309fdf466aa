"""How builds look to people: live progress, summaries and plan tables.

Pure formatting. The writer functions are handed in by the CLI, the only
module that decides where text goes.
"""

from __future__ import annotations

import datetime as dt
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from rolebake.build import BuildReport, LayerResult
from rolebake.events import Event, LogEvent, StepEvent, TaskEvent
from rolebake.plan import StepStatus

Write = Callable[[str], None]

_MARK = {
    StepStatus.OK: "ok",
    StepStatus.CACHED: "cached",
    StepStatus.SKIPPED: "skipped",
    StepStatus.FAILED: "FAILED",
    StepStatus.RUNNING: "...",
    StepStatus.PENDING: "",
}


class PlainProgress:
    """Timestamped lines, one per event: for CI logs and pipes."""

    def __init__(self, write: Write, redact: Callable[[str], str] = lambda s: s) -> None:
        """Write lines with `write`, passing each through `redact` first."""
        self.write = write
        self.redact = redact
        self.lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        """Show one event."""
        line = _event_line(event)
        if line is None:
            return
        stamp = dt.datetime.now(dt.UTC).strftime("%H:%M:%SZ")
        with self.lock:
            self.write(self.redact(f"{stamp} {line}"))


class LiveProgress:
    """On a terminal: step lines stay, the current task is one line rewritten in place."""

    def __init__(self, write_raw: Callable[[str], None],
                 redact: Callable[[str], str] = lambda s: s) -> None:
        """`write_raw` writes without a newline: the status line is redrawn in place."""
        self.write_raw = write_raw
        self.redact = redact
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.status = ""

    def __call__(self, event: Event) -> None:
        """Show one event."""
        with self.lock:
            if isinstance(event, TaskEvent):
                elapsed = _duration(time.monotonic() - self.started)
                counts = f"ok={event.ok} changed={event.changed} failed={event.failed}"
                role = f"{event.role} : " if event.role and not event.task.startswith(
                    event.role) else ""
                self._status(f"[{event.layer}] {role}{event.task}  {counts}  {elapsed}")
                if event.status == "failed":
                    self._line(f"[{event.layer}] task failed: {role}{event.task}")
                return
            line = _event_line(event)
            if line is not None and not (isinstance(event, StepEvent)
                                         and event.status == StepStatus.RUNNING):
                self._line(line)

    def _status(self, text: str) -> None:
        width = shutil.get_terminal_size((100, 20)).columns - 1
        text = self.redact(text)[:width]
        self.write_raw("\r" + text.ljust(len(self.status)))
        self.status = text

    def _line(self, text: str) -> None:
        clear = "\r" + " " * len(self.status) + "\r" if self.status else ""
        self.status = ""
        self.write_raw(clear + self.redact(text) + "\n")

    def close(self) -> None:
        """Clear the status line."""
        with self.lock:
            if self.status:
                self.write_raw("\r" + " " * len(self.status) + "\r")
                self.status = ""


def _event_line(event: Event) -> str | None:
    if isinstance(event, StepEvent):
        if event.status == StepStatus.RUNNING:
            return f"[{event.layer}] {event.step.value} ..."
        mark = _MARK[event.status]
        message = f": {event.message}" if event.message else ""
        return f"[{event.layer}] {event.step.value} {mark}{message}"
    if isinstance(event, TaskEvent):
        if event.status != "started":
            return None if event.status != "failed" else (
                f"[{event.layer}] task failed: {event.task}")
        role = f"{event.role} : " if event.role and not event.task.startswith(event.role) else ""
        return (f"[{event.layer}] task {role}{event.task} "
                f"(ok={event.ok} changed={event.changed} failed={event.failed})")
    if isinstance(event, LogEvent):
        return f"[{event.layer}] {event.message}"
    return None


def build_summary(report: BuildReport) -> list[str]:
    """A short table: one line per layer with its status, image and time."""
    lines = []
    width = max((len(layer) for layer in report.results), default=5)
    for result in report.results.values():
        lines.append(_layer_line(result, width))
    lines.append(f"total {_duration(report.seconds)}")
    return lines


def _layer_line(result: LayerResult, width: int) -> str:
    image = result.image_id.split(":")[-1][:12] if result.image_id else "-"
    status = "cached" if result.cached else result.status.value
    tags = ", ".join(result.tags) if result.tags else ""
    extra = f"  kept as {result.failed_tag}" if result.failed_tag else ""
    return (f"{result.layer.ljust(width)}  {status:<8} {image:<12}  {_duration(result.seconds):>7}"
            f"  {tags}{extra}")


def plan_table(rows: Iterable[dict[str, Any]]) -> list[str]:
    """`rolebake plan` output: the DAG with HIT/MISS and the reasons of each miss."""
    lines = []
    for row in rows:
        indent = "  " * row["depth"]
        status = row["status"]
        image = f" {row['image'].split(':')[-1][:12]}" if row.get("image") else ""
        lines.append(f"{indent}{row['layer']}  [{status}]{image}  <- {row['parent']}")
        for reason in row.get("reasons", []):
            lines.append(f"{indent}    - {reason}")
    return lines


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"
