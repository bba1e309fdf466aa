"""Unit-tier plumbing: builds take their layer locks in the test's own folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from rolebake.locks import LOCK_DIR_ENV


@pytest.fixture(autouse=True)
def private_lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Layer locks are host-wide: a unit test keeps its own, away from real builds."""
    folder = tmp_path / "host-locks"
    monkeypatch.setenv(LOCK_DIR_ENV, str(folder))
    return folder
