"""A registry's artifact API in memory, for the unit tier (the real one: test_attest.py)."""

from __future__ import annotations

from typing import Any, ClassVar

from rolebake.registry import Artifact


class FakeRegistryClient:
    """Stands in for `RegistryClient` where attestations are pushed: keeps what it is sent."""

    pushed: ClassVar[dict[str, Artifact]] = {}  # host/path:tag -> artifact

    def __init__(self, engine: Any, host: str, **_: Any) -> None:
        self.host = host

    def push_artifact(self, path: str, tag: str, artifact: Artifact) -> str:
        self.pushed[f"{self.host}/{path}:{tag}"] = artifact
        return "sha256:" + "0" * 64
