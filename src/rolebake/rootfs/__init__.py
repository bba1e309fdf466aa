"""The debootstrap Debian rootfs and the two things made from it: the base image and the VM disk.

`debootstrap` makes the rootfs and says where it is kept, `base_image` imports it into the
engine as `rolebake/debian:<suite>`, `vm_disk` turns a copy of it into the parity VM's
bootable disk. Sharing one rootfs is what makes the VM and the container start alike.
"""

from __future__ import annotations

from rolebake.rootfs.base_image import BASE_REPOSITORY, BaseImage, ensure_base
from rolebake.rootfs.debootstrap import (
    COMPLETE_STAMP,
    SUPPORTED,
    cache_dir,
    default_mirror,
    make_rootfs,
    parse_base_name,
    rootfs_dir,
)
from rolebake.rootfs.vm_disk import (
    BOOT_PACKAGES,
    VM_HOSTNAME,
    VMImage,
    prepare_vm_image,
    vm_disk_identities,
)

__all__ = [
    "BASE_REPOSITORY",
    "BOOT_PACKAGES",
    "COMPLETE_STAMP",
    "SUPPORTED",
    "VM_HOSTNAME",
    "BaseImage",
    "VMImage",
    "cache_dir",
    "default_mirror",
    "ensure_base",
    "make_rootfs",
    "parse_base_name",
    "prepare_vm_image",
    "rootfs_dir",
    "vm_disk_identities",
]
