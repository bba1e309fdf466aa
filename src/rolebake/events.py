"""The pipeline as data, and what a build tells whoever is watching it.

`PIPELINE` is the ordered list of steps one layer goes through; the builder
iterates it, `rolebake plan` prints it, and every step reports a `StepStatus`.
The core only emits these records; the CLI decides how they look.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum


class Step(StrEnum):
    """The ordered steps of one layer's build."""

    CACHE = "cache"
    CREATE = "create"
    BOOTSTRAP = "bootstrap"
    PROVISION = "provision"
    IDEMPOTENCE = "idempotence"
    CLEAN = "clean"
    COMMIT = "commit"
    SCAN = "scan"
    VERIFY = "verify"
    ATTEST = "attest"
    TAG = "tag"
    PUSH = "push"


PIPELINE: tuple[Step, ...] = tuple(Step)

# A cache hit is reused as it is: its SBOM and provenance (kept by image id), its
# tags, and a push where asked.
HIT_STEPS: tuple[Step, ...] = (Step.CACHE, Step.ATTEST, Step.TAG, Step.PUSH)

# The steps that run inside the build container, from its creation to its commit.
CONTAINER_STEPS: tuple[Step, ...] = PIPELINE[PIPELINE.index(Step.CREATE):
                                              PIPELINE.index(Step.COMMIT) + 1]


class StepStatus(StrEnum):
    """The status every step reports."""

    PENDING = "pending"
    RUNNING = "running"
    OK = "ok"
    CACHED = "cached"
    SKIPPED = "skipped"
    FAILED = "failed"


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
