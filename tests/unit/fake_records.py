"""The records the fake engine (fakes.py) keeps: images, containers, calls, fault hooks."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rolebake.engine import ContainerInfo, ImageInfo


def normalize(ref: str) -> str:
    """A reference as the engine stores it: `name` means `name:latest`."""
    return ref if ":" in ref.rsplit("/", 1)[-1] else f"{ref}:latest"


@dataclass
class FakeImage:
    """One image the fake engine holds."""

    id: str
    tags: list[str]
    labels: dict[str, str]
    config: dict[str, Any]
    created: str
    parent: str | None = None
    files: dict[str, bytes] = field(default_factory=dict)  # what read_files finds

    def info(self) -> ImageInfo:
        """The record the real engine would return."""
        return ImageInfo(id=self.id, tags=tuple(self.tags), labels=dict(self.labels),
                         created=self.created, config=copy.deepcopy(self.config))


@dataclass
class FakeContainer:
    """One container the fake engine holds."""

    id: str
    name: str
    image: str
    labels: dict[str, str]
    running: bool = True
    options: dict[str, Any] = field(default_factory=dict)
    created: str = "2024-01-01T00:00:00Z"  # long ago, as `rolebake clean` sees it

    def info(self) -> ContainerInfo:
        """The record the real engine would return."""
        return ContainerInfo(id=self.id, name=self.name, labels=dict(self.labels),
                             created=self.created,
                             status="running" if self.running else "exited")


@dataclass(frozen=True)
class Call:
    """One call the fake engine received."""

    method: str
    args: tuple[Any, ...]


@dataclass
class _Hook:
    method: str
    action: Callable[..., Any]
    match: Callable[..., bool] | None
    after: bool
    times: int | None
