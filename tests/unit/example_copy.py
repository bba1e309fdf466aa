"""The `project` fixture of the tests that read the example project: a copy of its roles,
images and playbooks (without the Chef image, whose cookbooks it does not copy)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rolebake.spec import Project
from tests.conftest import REPO


@pytest.fixture(name="project")
def example_copy(tmp_path: Path) -> Project:
    """A copy of the example project's roles, images and playbooks."""
    root = tmp_path / "project"
    for part in ("roles", "images", "playbooks"):
        shutil.copytree(REPO / part, root / part, symlinks=True)
    (root / "images" / "web-chef.yml").unlink()
    return Project(root)
