"""Unit-tier plumbing: layer locks and rolebake's machine-wide cache folder stay the test's own;
the fake engine and the `provisioner: fake` the Builder tests share."""

from __future__ import annotations

from pathlib import Path

import pytest

from rolebake import provision
from rolebake.locks import LOCK_DIR_ENV
from tests.unit.fakes import (
    BASE_IMAGE,
    FAKE_PROVISIONER,
    FakeEngine,
    FakeProvisioner,
    ProvisionerControl,
)


@pytest.fixture(autouse=True)
def private_lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Layer locks are host-wide: a unit test keeps its own, away from real builds."""
    folder = tmp_path / "host-locks"
    monkeypatch.setenv(LOCK_DIR_ENV, str(folder))
    return folder


@pytest.fixture(autouse=True)
def _own_cache_dir(tmp_path_factory: pytest.TempPathFactory,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLEBAKE_CACHE", str(Path(tmp_path_factory.mktemp("cache"))))


@pytest.fixture
def fake_provisioner(monkeypatch: pytest.MonkeyPatch) -> ProvisionerControl:
    """Register `provisioner: fake` with a fresh control (a module uses it with
    `pytestmark = pytest.mark.usefixtures("fake_provisioner")`)."""
    monkeypatch.setitem(provision.PROVISIONERS, "fake", FAKE_PROVISIONER)
    control = ProvisionerControl()
    monkeypatch.setattr(FakeProvisioner, "control", control)
    return control


@pytest.fixture
def engine() -> FakeEngine:
    """A fake engine holding only the base image."""
    fake = FakeEngine()
    fake.add_image(BASE_IMAGE, config={"Cmd": ["bash"], "Env": ["PATH=/usr/bin:/bin"]})
    return fake
