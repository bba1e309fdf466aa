"""Where the VM tier finds its rootfs and image cache, and how it reports missing tools."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from rolebake.rootfs import cache_dir, default_mirror

# The rootfs `rolebake base debian:bookworm` (make base) keeps, and the VM image
# `rolebake parity --vm qemu` makes from it: the tests share both with the tool.
ROOTFS = Path(os.environ.get("ROLEBAKE_VM_TEST_ROOTFS",
                             cache_dir() / "rootfs" / "debian-bookworm"))
IMAGE_DIR = Path(os.environ.get("ROLEBAKE_VM_TEST_DIR", cache_dir() / "vm" / "debian-bookworm"))
MIRROR = os.environ.get("ROLEBAKE_VM_TEST_MIRROR") or default_mirror()


def missing(reason: str) -> None:
    """Skip locally, fail in CI: a CI job without qemu must not pass by testing nothing."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"VM tests need {reason} (CI=true, so this is a failure, not a skip)")
    pytest.skip(f"needs {reason}")


def require_tools(*tools: str) -> None:
    absent = [t for t in tools if shutil.which(t) is None]
    if absent:
        missing(", ".join(absent))


def qemu_processes() -> list[str]:
    """Every qemu-system process on the machine, as `pgrep -af` lists it."""
    out = subprocess.run(["pgrep", "-af", "qemu-system"], capture_output=True, text=True,
                         check=False).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]
