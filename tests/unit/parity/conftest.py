"""Fixtures for the parity unit tests."""

from __future__ import annotations

import pytest
from parity_recorded import RECORDED_PATHS, RecordedHost

from rolebake.parity import snapshot as snap


@pytest.fixture
def container_snapshot() -> snap.Snapshot:
    return snap.take_snapshot(RecordedHost("container"), RECORDED_PATHS)


@pytest.fixture
def vm_snapshot() -> snap.Snapshot:
    return snap.take_snapshot(RecordedHost("vm"), RECORDED_PATHS)
