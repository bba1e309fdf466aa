"""The VM tier: real qemu boots of the parity VM image.

The image is built once per machine from a debootstrap rootfs and reused (a few minutes the
first time, nothing after) from the rootfs `make base` keeps; ROLEBAKE_VM_TEST_ROOTFS and
ROLEBAKE_VM_TEST_DIR move them.
With CI=true a missing prerequisite fails the run instead of skipping it (STYLE.md).
"""

from __future__ import annotations

import os

import pytest
from vm_support import IMAGE_DIR, MIRROR, ROOTFS, missing, require_tools

from rolebake.rootfs import VMImage, prepare_vm_image


@pytest.fixture(scope="session")
def vm_image() -> VMImage:
    require_tools("qemu-system-x86_64", "qemu-img", "ssh", "ssh-keygen")
    if os.geteuid() == 0 and (ROOTFS / "var/lib/dpkg/status").is_file():
        # Through prepare_vm_image even when cached, so that reuse is exercised too.
        require_tools("mkfs.ext4", "chroot", "mount")
        return prepare_vm_image(ROOTFS, IMAGE_DIR, mirror=MIRROR)
    # Booting a ready image needs neither root nor the rootfs.
    image = VMImage.load(IMAGE_DIR)
    if image is None:
        missing(f"root and a debootstrap rootfs at {ROOTFS} to build the VM image")
    assert image is not None
    return image
