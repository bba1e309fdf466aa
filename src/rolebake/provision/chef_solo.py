"""Chef-solo provisioner (being written by a teammate; replaced wholesale)."""

from __future__ import annotations

from pathlib import Path

from rolebake.errors import InputError
from rolebake.provision.base import ProvisionContext, ProvisionResult, Provisioner
from rolebake.spec import ImageSpec, Project


class ChefSoloProvisioner(Provisioner):
    """Applies Chef cookbooks with chef-solo."""

    name = "chef-solo"
    section = "chef"

    @classmethod
    def version(cls) -> str:
        return "chef-solo"

    @classmethod
    def validate(cls, spec: ImageSpec, project: Project) -> None:
        raise InputError("chef-solo is not available yet", path=spec.path)

    def input_files(self) -> list[Path]:
        return []

    def bootstrap(self, ctx: ProvisionContext) -> None:
        raise NotImplementedError

    def provision(self, ctx: ProvisionContext, *, idempotence: bool = False) -> ProvisionResult:
        raise NotImplementedError

    def clean(self, ctx: ProvisionContext) -> None:
        raise NotImplementedError
