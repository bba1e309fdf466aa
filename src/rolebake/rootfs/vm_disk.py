"""The parity VM disk: a bootable ext4 image, kernel and initrd made from the debootstrap rootfs.

`prepare_vm_image` turns a copy of the same debootstrap rootfs the base container image is
imported from into a raw ext4 disk plus kernel and initrd, with what a container never needs
but a booted, reachable machine does (BOOT_PACKAGES, networking, key-only root SSH). A manifest
written last marks an image complete and records what it was made from, so an image is reused
only while its inputs are unchanged. Booting it is `rolebake.parity.qemu`'s job.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rolebake.errors import VMError
from rolebake.locks import exclusive
from rolebake.procgroup import Log, run_logged

__all__ = [
    "BOOT_PACKAGES",
    "VM_HOSTNAME",
    "VMImage",
    "prepare_vm_image",
    "vm_disk_identities",
]

#: What a container never needs but a VM cannot boot or be reached without. Their
#: dependencies come too; `VMImage.added_packages` holds the full list actually installed.
#: dbus is here because hostnamectl/timedatectl (and Ansible modules built on them) fail
#: without it on a real server, and parity should compare against a realistic server.
#: python3-apt is what Ansible's apt module needs: in a build container rolebake's
#: bootstrap adds and removes it; on the VM it would otherwise be installed by the
#: module itself and show up as a difference the roles never asked for.
BOOT_PACKAGES: tuple[str, ...] = (
    "linux-image-cloud-amd64",
    "systemd-sysv",
    "udev",
    "dbus",
    "openssh-server",
    "python3",
    "python3-apt",
)

VM_HOSTNAME = "rolebake-vm"

# Bump when the recipe below changes, so images cached by an older rolebake are rebuilt.
_IMAGE_FORMAT = 1
_MANIFEST = "manifest.json"
_DISK = "disk.img"
_KERNEL = "vmlinuz"
_INITRD = "initrd.img"
_KEY = "id_ed25519"
# Roles install packages on the VM too; the disk must have room for them.
_HEADROOM_BYTES = 1536 * 1024 * 1024
# qemu user-mode networking: DHCP hands out 10.0.2.15, the built-in DNS forwarder is here.
_QEMU_USER_DNS = "10.0.2.3"


@dataclass(frozen=True)
class VMImage:
    """A bootable parity VM image, as made by `prepare_vm_image`.

    Attributes:
        kernel: The kernel to pass to qemu `-kernel`.
        initrd: The matching initramfs.
        disk: Raw ext4 root filesystem (read-only for us: runs use a qcow2 overlay).
        private_key: ed25519 key root's authorized_keys accepts.
        added_packages: Every package the VM preparation installed on top of the base rootfs
            (BOOT_PACKAGES and their dependencies): the VM has them only because it boots.
        added_users: Users those packages created.
        added_groups: Groups those packages created.
    """

    kernel: Path
    initrd: Path
    disk: Path
    private_key: Path
    added_packages: frozenset[str] = frozenset()
    added_users: frozenset[str] = frozenset()
    added_groups: frozenset[str] = frozenset()

    @classmethod
    def load(cls, out_dir: Path) -> VMImage | None:
        """The complete image in `out_dir`, or None when there is none or it is incomplete."""
        try:
            manifest = json.loads((out_dir / _MANIFEST).read_text())
            image = cls(
                kernel=out_dir / manifest["kernel"],
                initrd=out_dir / manifest["initrd"],
                disk=out_dir / manifest["disk"],
                private_key=out_dir / manifest["private_key"],
                added_packages=frozenset(manifest["added_packages"]),
                added_users=frozenset(manifest["added_users"]),
                added_groups=frozenset(manifest["added_groups"]),
            )
            if manifest["format"] != _IMAGE_FORMAT:
                return None
            if image.disk.stat().st_size != manifest["disk_size"]:
                return None
            if not (image.kernel.is_file() and image.initrd.is_file()):
                return None
            if not image.private_key.is_file():
                return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return image

    @property
    def identity(self) -> str:
        """Which disk this is, for VM layer snapshots on top of it.

        A qcow2 snapshot is only valid on the very bytes it was made on: the inputs key of
        the manifest says what the disk was made from, the disk file's inode, size and
        modification time say which making of it this is (a rebuilt disk with the same
        inputs differs: a new ssh key, new timestamps).
        """
        st = self.disk.stat()
        inputs = _manifest_key(self.disk.parent) or ""
        return hashlib.sha256(
            f"{inputs}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}".encode()
        ).hexdigest()[:32]


def vm_disk_identities(root: Path) -> set[str]:
    """The identities of the complete VM images below `root` (one folder per suite)."""
    found: set[str] = set()
    if root.is_dir():
        for folder in root.iterdir():
            image = VMImage.load(folder) if folder.is_dir() else None
            if image is not None:
                found.add(image.identity)
    return found


def prepare_vm_image(
    rootfs: Path, out_dir: Path, *, mirror: str, log: Log | None = None
) -> VMImage:
    """Make (or reuse) a bootable VM image from a debootstrap rootfs.

    The rootfs is copied, never modified. In the copy, BOOT_PACKAGES are installed from
    `mirror` in a chroot, networking (DHCP on the qemu NIC via systemd-networkd), hostname,
    fstab and key-only root SSH are configured; the result becomes `disk.img` with
    `mkfs.ext4 -d`, and kernel and initrd are copied next to it. A manifest written last marks
    the directory complete, so an interrupted build is never mistaken for an image and is
    simply redone. An image built from the same rootfs packages, mirror and recipe is reused.

    Args:
        rootfs: The base rootfs (same one the base container image is imported from).
        out_dir: Where the image lives; created if missing.
        mirror: Debian mirror URL to install the boot packages from.
        log: Receives progress lines and the output of apt and friends.

    Returns:
        The image.

    Raises:
        VMError: A step failed (the error carries the tail of its output), or the rootfs is
            not a Debian rootfs.
    """
    say = log or (lambda _line: None)
    rootfs = rootfs.resolve()
    if not (rootfs / "var/lib/dpkg/status").is_file():
        raise VMError(f"{rootfs} is not a Debian rootfs (no var/lib/dpkg/status)")
    out_dir.mkdir(parents=True, exist_ok=True)
    inputs_key = _inputs_key(rootfs, mirror)
    with exclusive(out_dir / ".lock"):
        image = VMImage.load(out_dir)
        if image is not None and _manifest_key(out_dir) == inputs_key:
            say(f"reusing VM image in {out_dir}")
            return image
        # Remove the manifest first: from here on the directory is not a valid image.
        (out_dir / _MANIFEST).unlink(missing_ok=True)
        started = time.monotonic()
        build = Path(tempfile.mkdtemp(prefix=".build-", dir=out_dir))
        try:
            manifest = _build(rootfs, build, out_dir, mirror=mirror, say=say)
        finally:
            _remove_build_dir(build)
        manifest["inputs"] = inputs_key
        manifest["prepare_seconds"] = round(time.monotonic() - started, 1)
        tmp = out_dir / f".{_MANIFEST}.tmp"
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        tmp.replace(out_dir / _MANIFEST)
        say(f"VM image ready in {out_dir} ({manifest['prepare_seconds']} s)")
    image = VMImage.load(out_dir)
    if image is None:  # pragma: no cover - would be a bug in _build
        raise VMError(f"VM image in {out_dir} is incomplete right after building it")
    return image


def _build(rootfs: Path, build: Path, out_dir: Path, *, mirror: str, say: Log) -> dict[str, Any]:
    """Build all artefacts from a copy of `rootfs` under `build`, move them into `out_dir`."""
    root = build / "rootfs"
    say(f"copying {rootfs} to {root}")
    run_logged(["cp", "-a", "--", str(rootfs), str(root)], say=None)

    before_pkgs = _installed_packages(root)
    before_users = _names(root / "etc/passwd")
    before_groups = _names(root / "etc/group")

    codename = _os_release(root).get("VERSION_CODENAME", "")
    if not codename:
        raise VMError(f"{rootfs}/etc/os-release names no VERSION_CODENAME")
    # A list of our own for the install only, so the VM keeps the base rootfs's apt sources
    # (the container has those; parity would otherwise diff them).
    (root / "etc/apt/rolebake-vm.list").write_text(f"deb {mirror} {codename} main\n")
    apt = [
        "apt-get",
        "-o", "Dir::Etc::SourceList=/etc/apt/rolebake-vm.list",
        "-o", "Dir::Etc::SourceParts=-",
        "-o", "Acquire::Retries=3",
    ]  # fmt: skip
    # Keep services from starting inside the chroot (they would hold the mounts busy).
    policy = root / "usr/sbin/policy-rc.d"
    original_policy = policy.read_bytes() if policy.exists() else None
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    shutil.copyfile("/etc/resolv.conf", root / "etc/resolv.conf", follow_symlinks=True)
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "DEBIAN_FRONTEND": "noninteractive",
        "LC_ALL": "C.UTF-8",
        "HOME": "/root",
    }
    with _chroot_mounts(root):
        say("apt-get update (VM boot packages)")
        run_logged(["chroot", str(root), *apt, "update", "--error-on=any"], say=say, env=env)
        say(f"installing {' '.join(BOOT_PACKAGES)}")
        run_logged(
            ["chroot", str(root), *apt, "install", "-y", "--no-install-recommends",
             *BOOT_PACKAGES],
            say=say,
            env=env,
        )  # fmt: skip
        run_logged(["chroot", str(root), "systemctl", "enable", "systemd-networkd"], say=say,
                   env=env)
        run_logged(["chroot", str(root), "apt-get", "clean"], say=say, env=env)
    if original_policy is None:
        policy.unlink()
    else:
        policy.write_bytes(original_policy)
    (root / "etc/apt/rolebake-vm.list").unlink()
    added_pkgs = sorted(set(_installed_packages(root)) - set(before_pkgs))
    added_users = sorted(_names(root / "etc/passwd") - before_users)
    added_groups = sorted(_names(root / "etc/group") - before_groups)

    _configure_system(root)
    say("generating the VM's ssh key")
    key = build / _KEY
    run_logged(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "rolebake-parity", "-f",
                str(key)], say=None)  # fmt: skip
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text((build / f"{_KEY}.pub").read_text())
    (ssh_dir / "authorized_keys").chmod(0o600)

    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise VMError(f"expected one kernel in the VM rootfs /boot, found {len(kernels)}")
    release = kernels[0].name.removeprefix("vmlinuz-")
    initrd = root / "boot" / f"initrd.img-{release}"
    if not initrd.is_file():
        raise VMError(f"no initramfs for kernel {release} in the VM rootfs")
    shutil.copyfile(kernels[0], build / _KERNEL)
    shutil.copyfile(initrd, build / _INITRD)

    size = _tree_bytes(root) + _HEADROOM_BYTES
    size_mib = -(-size // (1024 * 1024))
    say(f"making {_DISK} ({size_mib} MiB ext4)")
    disk = build / _DISK
    run_logged(["mkfs.ext4", "-q", "-F", "-L", "rolebake-root", "-d", str(root), str(disk),
                f"{size_mib}M"], say=say)  # fmt: skip

    for name in (_DISK, _KERNEL, _INITRD, _KEY, f"{_KEY}.pub"):
        (build / name).replace(out_dir / name)
    return {
        "format": _IMAGE_FORMAT,
        "kernel": _KERNEL,
        "initrd": _INITRD,
        "disk": _DISK,
        "disk_size": (out_dir / _DISK).stat().st_size,
        "private_key": _KEY,
        "kernel_release": release,
        "boot_packages": list(BOOT_PACKAGES),
        "added_packages": added_pkgs,
        "added_users": added_users,
        "added_groups": added_groups,
    }


def _configure_system(root: Path) -> None:
    """Hostname, fstab, network, DNS and sshd settings a booted VM needs."""
    (root / "etc/hostname").write_text(f"{VM_HOSTNAME}\n")
    (root / "etc/hosts").write_text(
        f"127.0.0.1\tlocalhost\n127.0.1.1\t{VM_HOSTNAME}\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
    )
    (root / "etc/fstab").write_text("/dev/vda\t/\text4\tdefaults,errors=remount-ro\t0\t1\n")
    # qemu's user-mode DNS forwarder; there is no resolved or DHCP client rewriting it.
    (root / "etc/resolv.conf").write_text(f"nameserver {_QEMU_USER_DNS}\n")
    # The NIC's name depends on the PCI slot (enp0s2, ens3, eth0): match them all.
    (root / "etc/systemd/network/80-rolebake-dhcp.network").write_text(
        "[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\n"
    )
    sshd = root / "etc/ssh/sshd_config.d/rolebake.conf"
    sshd.write_text(
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        # Under TCG a reverse DNS lookup on every login costs seconds.
        "UseDNS no\n"
    )
    # Empty, not absent: systemd fills it in at boot (from qemu's SMBIOS UUID), the way a
    # freshly installed machine gets its id; a copied-in id would be the base rootfs's.
    (root / "etc/machine-id").write_text("")


def _installed_packages(root: Path) -> dict[str, str]:
    """Installed packages of a rootfs, read from dpkg's status file (no chroot needed)."""
    packages: dict[str, str] = {}
    for stanza in (root / "var/lib/dpkg/status").read_text().split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line[:1] not in (" ", "\t") and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            packages[fields["Package"]] = fields.get("Version", "")
    return packages


def _names(path: Path) -> set[str]:
    """First field of each line of a passwd/group style file."""
    return {line.split(":", 1)[0] for line in path.read_text().splitlines() if line}


def _os_release(root: Path) -> dict[str, str]:
    """Key/values of the rootfs's os-release."""
    values: dict[str, str] = {}
    for name in ("etc/os-release", "usr/lib/os-release"):
        path = root / name
        if path.is_file():
            for line in path.read_text().splitlines():
                key, sep, value = line.partition("=")
                if sep:
                    values[key.strip()] = value.strip().strip('"')
            break
    return values


def _inputs_key(rootfs: Path, mirror: str) -> str:
    """What an image depends on: recipe version, mirror, boot packages and the rootfs's packages.

    The dpkg status file stands for the rootfs: hashing 200 MB of files on every parity
    run would cost more than it protects against.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps([_IMAGE_FORMAT, mirror, BOOT_PACKAGES]).encode())
    digest.update((rootfs / "var/lib/dpkg/status").read_bytes())
    return digest.hexdigest()


def _manifest_key(out_dir: Path) -> str | None:
    """The inputs key a cached image was built from, or None when it records none."""
    try:
        return str(json.loads((out_dir / _MANIFEST).read_text())["inputs"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _tree_bytes(root: Path) -> int:
    """Apparent size of a tree, counted per block like the ext4 image will need it."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            total += max(st.st_size, 4096)
    return total


@contextlib.contextmanager
def _chroot_mounts(root: Path) -> Iterator[None]:
    """/proc, /sys and /dev inside the chroot, unmounted again whatever happens."""
    mounted: list[Path] = []
    try:
        for argv_tail, target in (
            (["-t", "proc", "proc"], root / "proc"),
            (["-t", "sysfs", "sysfs"], root / "sys"),
            (["--bind", "/dev"], root / "dev"),
        ):
            run_logged(["mount", *argv_tail, str(target)], say=None)
            mounted.append(target)
        yield
    finally:
        failures = []
        for target in reversed(mounted):
            umount = subprocess.run(["umount", str(target)], check=False, capture_output=True)
            if umount.returncode != 0:
                # Something in the chroot still holds it; detach it so that removing the
                # build directory can never reach through into the host's /dev.
                lazy = subprocess.run(
                    ["umount", "--lazy", str(target)], check=False, capture_output=True
                )
                if lazy.returncode != 0:
                    failures.append(f"{target}: {lazy.stderr.decode(errors='replace').strip()}")
        if failures:
            raise VMError("could not unmount the VM build chroot", details="\n".join(failures))


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path`, as the kernel lists them now."""
    prefix = str(path.resolve()).rstrip("/") + "/"
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1].replace("\\040", " ") for line in mounts]
    return [p for p in points if (p + "/").startswith(prefix)]


def _remove_build_dir(build: Path) -> None:
    """Remove the build tree, refusing while anything is mounted below it."""
    leftover = _mounts_under(build)
    if leftover:
        # rm -r through a bind mount of /dev would wipe the host's device nodes.
        raise VMError(f"refusing to remove {build}: still mounted", details="\n".join(leftover))
    shutil.rmtree(build, ignore_errors=True)

