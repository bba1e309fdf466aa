"""The unit tier keeps rolebake's machine-wide cache folder (locks, releases) to itself."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _own_cache_dir(tmp_path_factory: pytest.TempPathFactory,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLEBAKE_CACHE", str(Path(tmp_path_factory.mktemp("cache"))))
