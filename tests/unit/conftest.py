"""Unit-tier plumbing: layer locks and rolebake's machine-wide cache folder stay the test's own."""

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


@pytest.fixture(autouse=True)
def _own_cache_dir(tmp_path_factory: pytest.TempPathFactory,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLEBAKE_CACHE", str(Path(tmp_path_factory.mktemp("cache"))))
