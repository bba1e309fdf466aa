"""The example project as the repository holds it, copied for a benchmark run."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

# What of the repository is rolebake's own code and tests, not the example project.
NOT_PROJECT = ("src/", "bench/", "docs/", "tests/unit/", "tests/integration/", "tests/vm/",
               ".ci/", "scripts/", "tests/conftest.py")


def copy_project(repo: Path, dest: Path) -> None:
    """Copy the example project as the repository holds it: every file git tracks (or
    would: untracked, not ignored) outside rolebake's own code, links kept as links.

    A list of folders to copy went stale once (the playbooks, inventory and group_vars
    the specs name were missing); asking git what the project is cannot.
    """
    listed = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], capture_output=True, check=True).stdout
    for name in sorted(set(filter(None, listed.decode().split("\0")))):
        if name.startswith(NOT_PROJECT):
            continue
        source, target = repo / name, dest / name
        if not source.is_symlink() and not source.exists():
            continue  # deleted in the work tree, not yet in the index
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, target)
