"""The engine's records and labels: what the rest of rolebake holds instead of SDK objects."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

LABEL_PREFIX = "rolebake."
ROLE_LABEL = "rolebake.role"  # build | verify | image: what a container or image is for
BUILD_ID_LABEL = "rolebake.build-id"
LEFTOVER_ROLES = ("build", "verify", "scan")

# Receives one line per step of a pull or push (a blob done, some progress, the digest).
Progress = Callable[[str], None]


@dataclass(frozen=True)
class ContainerHandle:
    """A container rolebake created."""

    id: str
    name: str

    @property
    def short_id(self) -> str:
        """The first 12 hex digits of the id."""
        return self.id[:12]


@dataclass(frozen=True)
class ExecResult:
    """What one command run inside a container returned."""

    rc: int
    output: str

    def tail(self, lines: int = 15) -> str:
        """The last lines of the output, for error messages."""
        return "\n".join(self.output.rstrip().splitlines()[-lines:])


@dataclass(frozen=True)
class ImageInfo:
    """An image the engine holds."""

    id: str
    tags: tuple[str, ...]
    labels: Mapping[str, str]
    created: str
    config: Mapping[str, Any] = field(default_factory=dict)
    size: int = 0

    @property
    def short_id(self) -> str:
        """The id without its algorithm, first 12 hex digits."""
        return self.id.split(":")[-1][:12]


@dataclass(frozen=True)
class ContainerInfo:
    """A container the engine holds, as `rolebake clean` and the tests see it."""

    id: str
    name: str
    labels: Mapping[str, str]
    created: str
    status: str
