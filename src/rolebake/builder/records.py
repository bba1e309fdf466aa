"""What a build is asked to do (`BuildOptions`) and what it did (`LayerResult`, `BuildReport`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rolebake.errors import RolebakeError
from rolebake.events import StepStatus
from rolebake.provision.base import ProvisionResult
from rolebake.registry import Repository
from rolebake.secrets import SecretSet
from rolebake.verify import VerifyResult


@dataclass(frozen=True)
class BuildOptions:
    """How to build (the CLI's flags)."""

    no_cache: bool = False
    jobs: int = 1
    keep_failed: bool = False
    idempotence: bool = False
    verify: bool = True
    secrets: SecretSet | None = None
    push: bool = False  # push every tag of each verified image the user named
    cache_repo: Repository | None = None  # share verified layers through this repository
    record_inputs: bool = False  # key what Ansible read but the key missed, instead of failing
    attest_dir: Path | None = None  # --attest: each layer's SBOM and provenance also go here
    # SOURCE_DATE_EPOCH: each committed layer is normalised to it (normalise.py); None: not
    source_date_epoch: int | None = None


@dataclass
class LayerResult:
    """What happened to one layer."""

    layer: str
    status: StepStatus = StepStatus.PENDING
    image_id: str | None = None
    cache_key: str | None = None
    cached: bool = False
    reasons: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    source: str | None = None  # of a cached layer: "local" or "cache repo"
    pushed: tuple[str, ...] = ()
    attested: tuple[str, ...] = ()  # where its SBOM and provenance went (store, registry)
    failed_tag: str | None = None
    seconds: float = 0.0
    log_path: str | None = None
    steps: dict[str, str] = field(default_factory=dict)
    step_seconds: dict[str, float] = field(default_factory=dict)
    step_started: dict[str, float] = field(default_factory=dict)  # from the build's start
    verify: VerifyResult | None = None
    provision: ProvisionResult | None = None
    error: RolebakeError | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form, for --json."""
        return {
            "layer": self.layer,
            "status": self.status.value,
            "image_id": self.image_id,
            "cache_key": self.cache_key,
            "cached": self.cached,
            "reasons": list(self.reasons),
            "tags": list(self.tags),
            "source": self.source,
            "pushed": list(self.pushed),
            "attested": list(self.attested),
            "failed_tag": self.failed_tag,
            "seconds": round(self.seconds, 2),
            "log": self.log_path,
            "steps": dict(self.steps),
            "step_seconds": {k: round(v, 2) for k, v in self.step_seconds.items()},
            "step_started": {k: round(v, 2) for k, v in self.step_started.items()},
            "tests": self.verify.to_dict() if self.verify else None,
            "tasks": self.provision.counts() if self.provision else None,
            "error": ({"message": self.error.message, "exit_code": self.error.exit_code,
                       "details": self.error.details} if self.error else None),
        }


@dataclass
class BuildReport:
    """Every layer's result, in plan order."""

    results: dict[str, LayerResult]
    seconds: float = 0.0
    build_id: str = ""

    @property
    def error(self) -> RolebakeError | None:
        """The first error, which decides the exit code."""
        for result in self.results.values():
            if result.error is not None:
                return result.error
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON form, for --json."""
        error = self.error
        return {
            "ok": error is None,
            "exit_code": error.exit_code if error else 0,
            "build_id": self.build_id,
            "seconds": round(self.seconds, 2),
            "layers": [r.to_dict() for r in self.results.values()],
        }
