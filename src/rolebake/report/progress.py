"""How a running build looks: timestamped lines for logs, a live status line on a terminal.

Pure presentation of `rolebake.events` records. `progress_for` picks the view
from the stream the CLI hands in; the CLI still decides where text goes.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.text import Text

from rolebake.events import Event, LogEvent, StepEvent, StepStatus, TaskEvent
from rolebake.report.text import (
    DIM,
    LAYER_STYLE,
    Part,
    Redact,
    duration,
    installed,
    style_of,
    styled,
)

__all__ = ["LiveProgress", "PlainProgress", "event_parts", "progress_for"]

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

    def __init__(self, write: Write, redact: Redact = installed) -> None:
        """Write lines with `write`, passing each through `redact` first."""
        self.write = write
        self.redact = redact
        self.lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        """Show one event."""
        parts = event_parts(event)
        if parts is None:
            return
        line = "".join(text for text, _ in parts)
        stamp = dt.datetime.now(dt.UTC).strftime("%H:%M:%SZ")
        with self.lock:
            self.write(self.redact(f"{stamp} {line}"))

    def close(self) -> None:
        """Nothing to tidy: every line is already complete."""


class LiveProgress:
    """On a terminal: step lines scroll by above one status line kept up to date.

    The status line shows what a layer is doing now (its current task with the
    play's ok/changed/failed counts, or its running step) and the time since
    the view started, redrawn a few times a second by `rich.live.Live`. It is
    empty whenever no layer is busy, so text the CLI prints after the build is
    never mixed into it.
    """

    def __init__(self, console: Console | None = None, redact: Redact = installed, *,
                 refresh_per_second: float = 4.0) -> None:
        """Draw on `console` (default: stderr), passing all text through `redact`.

        Args:
            console: Where to draw; a terminal, or the view degrades to printing lines.
            redact: Hides secrets in every line and in the status line.
            refresh_per_second: How often the status line (its clock) is redrawn.
        """
        self.console = console if console is not None else Console(
            stderr=True, markup=False, emoji=False, highlight=False)
        self.redact = redact
        self.started = time.monotonic()
        self.lock = threading.Lock()
        # What each busy layer is doing, the most recently active last.
        self._busy: dict[str, list[Part]] = {}
        # The status parts the refresh thread reads. It is replaced, never changed in place,
        # so the refresh thread needs no lock: taking ours there could deadlock against
        # Live's own lock, which printing a line takes while we hold ours.
        self._shown: tuple[Part, ...] = ()
        self._spinner = Spinner("dots", style=LAYER_STYLE)
        self._live = Live(console=self.console, get_renderable=self._status,
                          refresh_per_second=refresh_per_second, transient=True,
                          redirect_stdout=False, redirect_stderr=False)
        self._live_started = False

    def __call__(self, event: Event) -> None:
        """Show one event."""
        with self.lock:
            if not self._live_started:
                # Started on the first event, not in __init__: the cursor is hidden
                # only while there is something to show.
                self._live.start()
                self._live_started = True
            if isinstance(event, TaskEvent):
                self._set_busy(event.layer, _task_parts(event))
                if event.status == "failed":
                    self._print([*_layer(event.layer), ("task failed: ", style_of("failed")),
                                 (_role_task(event), "")])
                return
            if isinstance(event, StepEvent):
                if event.status == StepStatus.RUNNING:
                    self._set_busy(event.layer, [*_layer(event.layer),
                                                 (f"{event.step.value} ", ""), ("...", DIM)])
                    return
                # The step ended: so did the task or the step the status line showed.
                self._busy.pop(event.layer, None)
                self._publish()
            parts = event_parts(event)
            if parts is not None:
                self._print(parts)

    def close(self) -> None:
        """Remove the status line and show the cursor again."""
        with self.lock:
            self._busy.clear()
            self._publish()
            if self._live_started:
                self._live.stop()
                self._live_started = False

    def __enter__(self) -> LiveProgress:
        """Use as a context manager that closes the view."""
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Close the view."""
        self.close()

    def _set_busy(self, layer: str, parts: list[Part]) -> None:
        self._busy.pop(layer, None)
        self._busy[layer] = parts
        self._publish()

    def _publish(self) -> None:
        if not self._busy:
            self._shown = ()
        else:
            *others, latest = self._busy.values()
            more = [(f"  (+{len(others)} more)", DIM)] if others else []
            self._shown = (*latest, *more)
        if self._live_started:
            # Redraw now: Live keeps drawing its last render, also below printed lines,
            # until its next timed refresh.
            self._live.refresh()

    def _print(self, parts: list[Part]) -> None:
        # Printed through the live console, the line lands above the status line.
        self.console.print(styled(parts, self.redact), markup=False, highlight=False,
                           emoji=False, soft_wrap=True)

    def _status(self) -> RenderableType:
        """The status line, built afresh at each refresh so the clock moves."""
        shown = self._shown
        if not shown:
            return Group()  # renders no line at all
        elapsed = duration(time.monotonic() - self.started)
        text = styled([*shown, (f"  {elapsed}", DIM)], self.redact)
        frame = self._spinner.render(self.console.get_time())
        # One line whatever the terminal's width: a wrapped status line would leave
        # its first half behind at every redraw.
        return Text.assemble(frame if isinstance(frame, Text) else "", " ", text,
                             no_wrap=True, overflow="ellipsis")


def progress_for(stream: TextIO, redact: Redact = installed) -> PlainProgress | LiveProgress:
    """The progress view that suits `stream`: live on a terminal, plain lines elsewhere.

    Args:
        stream: Where progress goes (the CLI passes stderr).
        redact: Hides secrets in everything shown.

    Returns:
        A callable event sink with a `close()` the caller runs when the command ends.
    """
    console = Console(file=stream, markup=False, emoji=False, highlight=False)
    # Only a real terminal gets the live view: CI logs must keep their plain lines
    # even where FORCE_COLOR makes rich believe in a terminal.
    if _isatty(stream) and not console.is_dumb_terminal:
        return LiveProgress(console, redact)

    def write(line: str) -> None:
        stream.write(line + "\n")
        stream.flush()

    return PlainProgress(write, redact)


def event_parts(event: Event) -> list[Part] | None:
    """The line an event shows as styled parts, or None for events shown no line.

    Joined, the parts are exactly the text of PlainProgress's lines (after the time).
    """
    if isinstance(event, StepEvent):
        if event.status == StepStatus.RUNNING:
            return [*_layer(event.layer), (f"{event.step.value} ", ""), ("...", DIM)]
        mark = _MARK[event.status]
        message = f": {event.message}" if event.message else ""
        return [*_layer(event.layer), (f"{event.step.value} ", ""), (mark, style_of(mark)),
                (message, "")]
    if isinstance(event, TaskEvent):
        if event.status == "failed":
            return [*_layer(event.layer), ("task failed: ", style_of("failed")), (event.task, "")]
        if event.status != "started":
            return None
        return [*_layer(event.layer), ("task ", ""), (_role_task(event), ""),
                (f" (ok={event.ok} changed={event.changed} failed={event.failed})", "")]
    if isinstance(event, LogEvent):
        return [*_layer(event.layer), (event.message, "")]
    return None


def _layer(layer: str) -> list[Part]:
    return [(f"[{layer}]", LAYER_STYLE), (" ", "")]


def _role_task(event: TaskEvent) -> str:
    """`role : task`, unless the task name already starts with its role."""
    if event.role and not event.task.startswith(event.role):
        return f"{event.role} : {event.task}"
    return event.task


def _task_parts(event: TaskEvent) -> list[Part]:
    return [*_layer(event.layer), (_role_task(event), ""), ("  ", ""),
            (f"ok={event.ok}", style_of("ok")), (" ", ""),
            (f"changed={event.changed}", style_of("changed") if event.changed else ""),
            (" ", ""),
            (f"failed={event.failed}", style_of("failed") if event.failed else "")]


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-like stream without a tty
        return False
