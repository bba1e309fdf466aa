"""What a build tells whoever is watching it: step changes and provisioner tasks.

The core only emits these records; the CLI decides how they look.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rolebake.plan import Step, StepStatus


@dataclass(frozen=True)
class StepEvent:
    """A layer's step changed status."""

    layer: str
    step: Step
    status: StepStatus
    message: str = ""
    at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class TaskEvent:
    """The provisioner started or finished one task (an Ansible task, a Chef resource)."""

    layer: str
    task: str
    role: str | None
    status: str  # started | ok | changed | failed | skipped | ignored
    ok: int = 0
    changed: int = 0
    failed: int = 0
    at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class LogEvent:
    """A line of note (where the log is written, what was bootstrapped)."""

    layer: str
    message: str
    at: float = field(default_factory=time.monotonic)


Event = StepEvent | TaskEvent | LogEvent
EventSink = Callable[[Event], None]


def discard(_event: Event) -> None:
    """An event sink that ignores everything (library use, tests)."""
