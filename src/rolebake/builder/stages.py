"""Pipelined layers: what a child layer waits on while its parent is still being verified.

A layer's image exists once its commit (and secret scan) is done; its children
may start their build containers on it then, while it is verified, attested and
tagged. Each layer has a `Stage` that says how far it got: `built` (its image
id, children may start on it), `verified` (it passed verification, or had none
to pass: children may verify and attest), `done` (it finished: children may
move their tags and push). A child waits at those two gates, so nothing of it is
tagged, cached, attested or pushed before its parent passed (DESIGN.md
invariants 2 and 5).

A layer that fails after its children started cancels them and waits until
each one has removed what it made (container, committed image) before it
removes its own image: an engine refuses to remove an image another image or a
container still stands on.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, wait
from typing import Any

from rolebake.engine import ImageInfo
from rolebake.errors import BuildFailed

# How often a waiting child looks at its cancel flag while its parent goes on.
POLL_S = 0.1


class LayerCancel(threading.Event):
    """Set when this layer is to stop: its parent failed, or the whole build was cancelled.

    It is what the provisioner polls (`ProvisionContext.cancel`), so a cancel of
    the build reaches every layer without anyone setting each layer's flag.
    """

    def __init__(self, build: threading.Event) -> None:
        """Tie the layer's flag to the build's."""
        super().__init__()
        self._build = build

    def is_set(self) -> bool:
        """True once this layer or the whole build was cancelled."""
        return super().is_set() or self._build.is_set()

    def own(self) -> bool:
        """True when this layer alone was cancelled (its parent failed)."""
        return super().is_set()


class ParentFailed(BuildFailed):
    """A parent layer failed after its child started: the child stops and keeps nothing."""


class Stage:
    """How far one layer got, for its children (set by the layer's own thread)."""

    def __init__(self, layer: str, build_cancel: threading.Event) -> None:
        """A stage for `layer`, cancelled with the build too."""
        self.layer = layer
        self.cancel = LayerCancel(build_cancel)
        self.built: Future[ImageInfo] = Future()
        self.verified: Future[None] = Future()
        self.done: Future[None] = Future()
        self.ended = threading.Event()  # its thread has removed what it had to
        # Its image is tagged, kept or going anyway: a child may remove its own image
        # (an engine removing an image takes its untagged parent with it).
        self.settled = threading.Event()
        self._lock = threading.Lock()
        self._children: list[Stage] = []
        self._failed = False

    # The layer's own thread ------------------------------------------------------------

    def reach_built(self, image: ImageInfo) -> None:
        """The image is committed and scanned: children may build on it."""
        _settle(self.built, image)

    def reach_verified(self) -> None:
        """The image passed verification (or had none): children may verify and attest."""
        _settle(self.verified, None)

    def finish(self, image: ImageInfo) -> None:
        """Every step passed: children may tag and push."""
        _settle(self.built, image)
        _settle(self.verified, None)
        _settle(self.done, None)
        self.settled.set()

    def fail(self, error: BaseException) -> list[Stage]:
        """The layer failed: no child may start on it from now on; the children already on it.

        The caller cancels those and waits for them (`Stage.ended`) before it
        removes its own image.
        """
        with self._lock:
            self._failed = True
            children = list(self._children)
        for future in (self.built, self.verified, self.done):
            if not future.done():
                future.set_exception(ParentFailed(f"parent {self.layer} failed",
                                                  details=str(error)))
        return children

    # A child's thread ------------------------------------------------------------------

    def adopt(self, child: Stage) -> None:
        """Register `child` as building on this layer's image; raises when this layer failed."""
        with self._lock:
            if self._failed:
                child.cancel.set()
                raise ParentFailed(f"parent {self.layer} failed")
            self._children.append(child)

    def children(self) -> list[Stage]:
        """The layers that started on this layer's image."""
        with self._lock:
            return list(self._children)

    def pending(self, future: Future[Any], child: Stage) -> bool:
        """True while `future` of this stage has not settled; raises as `wait` does."""
        if not future.done():
            return True
        if future.exception() is None:
            return False
        child.cancel.set()
        raise ParentFailed(f"parent {self.layer} failed")

    def wait(self, future: Future[Any], child: Stage) -> None:
        """Block until `future` of this stage settled well.

        Raises:
            ParentFailed: this layer failed (the child's own flag is then set).
            BuildFailed: the child, or the whole build, was cancelled meanwhile.
        """
        while self.pending(future, child):
            if child.cancel.is_set():
                raise BuildFailed("cancelled")
            wait([future], timeout=POLL_S)


def _settle(future: Future[Any], value: object) -> None:
    if not future.done():
        future.set_result(value)
