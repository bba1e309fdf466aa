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

GATE `tag:moved` holds inside the tag step instead, once the first tag of an
image has moved (the engine the build is handed is wrapped, not the Builder's
events): a kill there lands halfway through an all-or-nothing move.
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
    """Wrap every Builder's events (or its engine's tag) with the gate; SIGUSR1 releases it."""
    after = gate.startswith("after:")
    step = gate.removeprefix("after:")
    release = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: release.set())
    real = builder.Builder

    class Gated(real):  # type: ignore[misc, valid-type]
        def __init__(self, engine: Any, *args: Any, **kwargs: Any) -> None:
            if gate == "tag:moved":
                engine = _TagGate(engine, lambda: self._hold(gate, seconds, release))
            super().__init__(engine, *args, **kwargs)
            inner = self.events

            def gated(event: Event) -> None:
                inner(event)
                wanted = StepStatus.OK if after else StepStatus.RUNNING
                if (isinstance(event, StepEvent) and event.step.value == step
                        and event.status == wanted):
                    self._hold(gate, seconds, release)

            self.events = gated

        def _hold(self, gate: str, seconds: float, release: threading.Event) -> None:
            print(f"{HELD} {gate}", file=sys.stderr, flush=True)
            deadline = time.monotonic() + seconds
            while not (self.cancel.is_set() or release.is_set()) \
                    and time.monotonic() < deadline:
                release.wait(0.05)

    builder.Builder = Gated  # type: ignore[misc]
    return release


class _TagGate:
    """The build's engine, holding once after the first tag of each image moved."""

    def __init__(self, engine: Any, hold: Any) -> None:
        self._engine = engine
        self._hold = hold
        self._held: set[str] = set()

    def tag(self, image_id: str, ref: str) -> None:
        self._engine.tag(image_id, ref)
        if image_id not in self._held and not ref.startswith("rolebake-cache/"):
            self._held.add(image_id)
            self._hold()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


if __name__ == "__main__":
    install(sys.argv[1], float(sys.argv[2]))
    from rolebake.cli import main

    sys.argv = ["rolebake", *sys.argv[3:]]
    main()
