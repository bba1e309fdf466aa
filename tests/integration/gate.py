"""Run `rolebake` with a gate on its event stream: a test seam, not a hook in rolebake.

Usage: python tests/integration/gate.py GATE SECONDS ROLEBAKE-ARGS...

A build's step events are its public interface (the progress lines, --json).
This driver runs the real CLI with one thing added from outside: the
Builder's event sink is wrapped, and when a layer's step named by GATE starts
(`commit`) or has passed (`after:tag`, with no cancel check after it), the
sink holds that layer's thread there, as a slow step would, until the build is
cancelled (SIGINT, SIGTERM), the test sends SIGUSR1, or SECONDS pass. It says
`gate: held at GATE` on stderr when it starts holding, so a test acts on that
event, never after a fixed sleep. Fault tests use it to signal a build inside
steps that take milliseconds.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Any

from rolebake import builder
from rolebake.events import Event, StepEvent, StepStatus

HELD = "gate: held at"


def install(gate: str, seconds: float) -> threading.Event:
    """Wrap every Builder's events with the gate; SIGUSR1 releases it."""
    after = gate.startswith("after:")
    step = gate.removeprefix("after:")
    release = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: release.set())
    real = builder.Builder

    class Gated(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            inner = self.events

            def gated(event: Event) -> None:
                inner(event)
                wanted = StepStatus.OK if after else StepStatus.RUNNING
                if (isinstance(event, StepEvent) and event.step.value == step
                        and event.status == wanted):
                    print(f"{HELD} {gate}", file=sys.stderr, flush=True)
                    deadline = time.monotonic() + seconds
                    while not (self.cancel.is_set() or release.is_set()) \
                            and time.monotonic() < deadline:
                        release.wait(0.05)

            self.events = gated

    builder.Builder = Gated  # type: ignore[misc]
    return release


if __name__ == "__main__":
    install(sys.argv[1], float(sys.argv[2]))
    from rolebake.cli import main

    sys.argv = ["rolebake", *sys.argv[3:]]
    main()
