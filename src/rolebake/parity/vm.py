"""The VM side of `rolebake parity`: a bootable disk from the base rootfs, and a throwaway VM.

`prepare_vm_image` turns a copy of the same debootstrap rootfs the base container image is
imported from into a raw ext4 disk plus kernel and initrd. `QemuVM` boots that disk under qemu
(always TCG: nested KVM is not something we can rely on) on a copy-on-write overlay, so every
parity run starts from the same clean state and the cached disk is never written to.
`SSHTarget` describes how to reach either that VM or an existing one given as `ssh://...`.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from rolebake.errors import BuildFailed
from rolebake.locks import exclusive

__all__ = [
    "BOOT_PACKAGES",
    "VM_HOSTNAME",
    "QemuVM",
    "SSHTarget",
    "VMError",
    "VMImage",
    "prepare_vm_image",
    "qemu_argv",
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
_TAIL_LINES = 40
# Backgrounded so that ssh returns before the guest tears sshd down.
_POWEROFF = "(sleep 1; systemctl poweroff) >/dev/null 2>&1 &"

Log = Callable[[str], None]


class VMError(BuildFailed):
    """Preparing, booting or reaching a parity VM failed (exit 1).

    `details` carries the evidence: the tail of a command's output or of the
    serial console. An interrupt still surfaces as the CLI's Interrupted.
    """


# --------------------------------------------------------------------------- SSH target


@dataclass(frozen=True)
class SSHTarget:
    """How to reach a machine over SSH, for ssh(1), Ansible and testinfra alike.

    Attributes:
        host: Host name or address (IPv6 without brackets).
        port: TCP port of sshd.
        user: Login user; parity needs root (or a user Ansible can become root with).
        identity_file: Private key to offer, or None to let ssh use its defaults/agent.
        ssh_config: An ssh_config file to use instead of ~/.ssh/config, or None.
        check_host_key: False for throwaway VMs, whose host key and forwarded port change
            every run and must not pollute known_hosts; True for machines the user names.
    """

    host: str
    port: int = 22
    user: str = "root"
    identity_file: Path | None = None
    ssh_config: Path | None = None
    check_host_key: bool = True

    @classmethod
    def parse(cls, url: str) -> SSHTarget:
        """Parse `ssh://[user@]host[:port]` as given to `rolebake parity --vm`.

        Args:
            url: The URL; user defaults to root and port to 22.

        Returns:
            The target, checking host keys as the user's ssh would.

        Raises:
            ValueError: The URL is not of that form; the message says what is wrong.
        """
        example = "expected ssh://[user@]host[:port], e.g. ssh://root@10.0.0.5:22"
        parts = urlsplit(url.strip())
        if parts.scheme != "ssh":
            raise ValueError(f"{url!r}: not an ssh:// URL; {example}")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"{url!r}: unexpected path, query or fragment; {example}")
        if parts.password is not None:
            # A password on the command line ends up in shell history and process lists.
            raise ValueError(f"{url!r}: passwords are not accepted; use a key or ssh-agent")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"{url!r}: port must be a number from 1 to 65535") from None
        if not parts.hostname:
            raise ValueError(f"{url!r}: no host; {example}")
        if port == 0:
            raise ValueError(f"{url!r}: port must be a number from 1 to 65535")
        if parts.username == "":
            raise ValueError(f"{url!r}: empty user name; {example}")
        return cls(host=parts.hostname, port=port or 22, user=parts.username or "root")

    @property
    def url(self) -> str:
        """`ssh://user@host:port`, also the host spec testinfra's ssh backend takes."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ssh://{self.user}@{host}:{self.port}"

    def ssh_options(self) -> list[str]:
        """Options for ssh(1) that make it non-interactive and use this target's key/config."""
        opts: list[str] = []
        if self.ssh_config is not None:
            opts += ["-F", str(self.ssh_config)]
        opts += ["-o", "BatchMode=yes"]
        if self.identity_file is not None:
            opts += ["-i", str(self.identity_file), "-o", "IdentitiesOnly=yes"]
        if not self.check_host_key:
            opts += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        return opts

    def ssh_argv(self, command: Sequence[str], *, connect_timeout: int = 10) -> list[str]:
        """An argv running `command` on the target.

        Args:
            command: The remote command as argv; it is quoted here, because sshd hands the
                joined string to the remote user's shell.
            connect_timeout: Seconds for the TCP connect and handshake.

        Returns:
            The full `ssh ...` argv.
        """
        return [
            "ssh",
            *self.ssh_options(),
            "-o",
            f"ConnectTimeout={connect_timeout}",
            "-p",
            str(self.port),
            "-l",
            self.user,
            self.host,
            shlex.join(command),
        ]

    def testinfra_kwargs(self) -> dict[str, str]:
        """Keyword arguments for `testinfra.get_host(target.url, **kwargs)`.

        The pytest CLI equivalents are `--hosts=<url> --ssh-config=... --ssh-identity-file=...`.
        """
        kwargs: dict[str, str] = {}
        if self.ssh_config is not None:
            kwargs["ssh_config"] = str(self.ssh_config)
        if self.identity_file is not None:
            kwargs["ssh_identity_file"] = str(self.identity_file)
        if not self.check_host_key and self.ssh_config is None:
            kwargs["ssh_extra_args"] = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
        return kwargs

    def pytest_args(self) -> list[str]:
        """Arguments for a pytest-testinfra run against this target."""
        args = [f"--hosts={self.url}"]
        if self.ssh_config is not None:
            args.append(f"--ssh-config={self.ssh_config}")
        if self.identity_file is not None:
            args.append(f"--ssh-identity-file={self.identity_file}")
        return args

    def ansible_host_vars(self) -> dict[str, str | int]:
        """Inventory variables for Ansible's ssh connection plugin."""
        hostvars: dict[str, str | int] = {
            "ansible_connection": "ssh",
            "ansible_host": self.host,
            "ansible_port": self.port,
            "ansible_user": self.user,
            # Debian 12 ships only python3; naming it skips interpreter discovery warnings.
            "ansible_python_interpreter": "/usr/bin/python3",
        }
        if self.identity_file is not None:
            hostvars["ansible_ssh_private_key_file"] = str(self.identity_file)
        common: list[str] = []
        if self.ssh_config is not None:
            common += ["-F", str(self.ssh_config)]
        if not self.check_host_key:
            common += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        if common:
            hostvars["ansible_ssh_common_args"] = shlex.join(common)
        return hostvars

    def ansible_inventory(self, name: str = "parity-vm") -> dict[str, Any]:
        """A YAML/JSON-style inventory (the dict form ansible-runner's `inventory=` takes)."""
        return {"all": {"hosts": {name: self.ansible_host_vars()}}}

    def inventory_line(self, name: str = "parity-vm") -> str:
        """The same inventory as one INI line, values quoted for Ansible's INI parser."""
        fields = [name] + [
            f"{key}={shlex.quote(str(value))}" for key, value in self.ansible_host_vars().items()
        ]
        return " ".join(fields)


# --------------------------------------------------------------------------- image


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
    _run(["cp", "-a", "--", str(rootfs), str(root)], say=None)

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
        _run(["chroot", str(root), *apt, "update", "--error-on=any"], say=say, env=env)
        say(f"installing {' '.join(BOOT_PACKAGES)}")
        _run(
            ["chroot", str(root), *apt, "install", "-y", "--no-install-recommends",
             *BOOT_PACKAGES],
            say=say,
            env=env,
        )  # fmt: skip
        _run(["chroot", str(root), "systemctl", "enable", "systemd-networkd"], say=say, env=env)
        _run(["chroot", str(root), "apt-get", "clean"], say=say, env=env)
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
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "rolebake-parity", "-f",
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
    _run(["mkfs.ext4", "-q", "-F", "-L", "rolebake-root", "-d", str(root), str(disk),
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
            _run(["mount", *argv_tail, str(target)], say=None)
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


def _run(argv: Sequence[str], *, say: Log | None, env: dict[str, str] | None = None) -> str:
    """Run a command, stream its output to `say`, raise VMError with its tail on failure.

    It runs in its own session so that a terminal Ctrl-C reaches only us; we then kill its
    whole process group (apt's dpkg children included), which is what lets the chroot
    mounts be released before we unmount them.
    """
    tail: deque[str] = deque(maxlen=_TAIL_LINES)
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            tail.append(line)
            if say is not None:
                say(line)
        rc = proc.wait()
    except BaseException:
        _kill_group(proc)
        raise
    if rc != 0:
        raise VMError(f"{shlex.join(argv)} failed (exit {rc})", details="\n".join(tail))
    return "\n".join(tail)


def _kill_group(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, a process group we started with start_new_session; reap it.

    The leader is reaped only after the group's SIGKILL: until then its pid (at worst a
    zombie) keeps the group id ours, so the kill cannot hit an unrelated, reused group.
    """
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and not _exited(proc.pid):
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _exited(pid: int) -> bool:
    """Whether a child has exited, without reaping it."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


# --------------------------------------------------------------------------- qemu


def qemu_argv(
    image: VMImage,
    *,
    overlay: Path,
    console_log: Path,
    ssh_port: int,
    memory_mb: int = 1024,
    cpus: int = 2,
    binary: str = "qemu-system-x86_64",
) -> list[str]:
    """The qemu command line for a parity VM (pure; exposed for tests and `--debug`).

    Args:
        image: The prepared image (kernel, initrd; the disk is reached through the overlay).
        overlay: qcow2 overlay backed by the image's disk.
        console_log: File receiving the serial console.
        ssh_port: Host port on 127.0.0.1 forwarded to the guest's port 22.
        memory_mb: Guest memory.
        cpus: Guest vCPUs.
        binary: The qemu system emulator.

    Returns:
        The argv.
    """

    def opt(value: Path | str) -> str:
        # qemu's option parser splits on commas; a literal comma is written twice.
        return str(value).replace(",", ",,")

    return [
        binary,
        # Nested KVM is not dependable on CI runners; TCG works everywhere.
        "-accel", "tcg",
        "-machine", "q35",
        "-cpu", "max",
        "-m", str(memory_mb),
        "-smp", str(cpus),
        "-nodefaults",
        "-no-user-config",
        "-display", "none",
        "-monitor", "none",
        "-serial", f"file:{opt(console_log)}",
        # A guest reboot or poweroff ends qemu: nothing should come back up unnoticed.
        "-no-reboot",
        "-kernel", str(image.kernel),
        "-initrd", str(image.initrd),
        "-append", "root=/dev/vda rw console=ttyS0 panic=-1",
        "-drive", f"file={opt(overlay)},if=virtio,format=qcow2,cache=unsafe",
        "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22",
        "-device", "virtio-net-pci,netdev=n0",
        "-device", "virtio-rng-pci",
    ]  # fmt: skip


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """Have the kernel SIGKILL qemu if rolebake itself dies without running cleanup."""
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def _tail(path: Path, lines: int = _TAIL_LINES) -> str:
    try:
        with path.open(errors="replace") as handle:
            return "".join(deque(handle, maxlen=lines)).rstrip()
    except OSError:
        return ""


@dataclass(frozen=True)
class _Boot:
    """One running qemu process and the port it forwards."""

    process: subprocess.Popen[bytes]
    port: int


class QemuVM:
    """A throwaway local VM for one parity run; use as a context manager.

    `with QemuVM(image) as vm:` boots the image on a fresh qcow2 overlay and returns once
    root can log in over SSH with the image's key. Leaving the block stops the VM (a
    `poweroff` first when the block ended normally; straight to SIGTERM/SIGKILL on an
    exception, Ctrl-C or the CLI's SIGTERM exception), makes sure the qemu process is gone
    and removes the overlay and everything else in the run's temp dir.

    qemu runs in its own session so a terminal Ctrl-C reaches rolebake, not qemu, and the
    cleanup below decides how it ends; it is also tied to rolebake's lifetime with
    PR_SET_PDEATHSIG, so even a SIGKILLed rolebake leaves no VM behind. Enter the context
    from the thread that will also leave it (PDEATHSIG follows the starting thread).
    """

    def __init__(
        self,
        image: VMImage,
        *,
        memory_mb: int = 1024,
        cpus: int = 2,
        boot_timeout: float = 180.0,
        poweroff_timeout: float = 15.0,
        qemu_binary: str = "qemu-system-x86_64",
        log: Log | None = None,
    ) -> None:
        self.image = image
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.boot_timeout = boot_timeout
        self.poweroff_timeout = poweroff_timeout
        self.qemu_binary = qemu_binary
        self._say = log or (lambda _line: None)
        self._tmp: Path | None = None
        self._boot: _Boot | None = None
        self._target: SSHTarget | None = None
        #: Seconds from starting qemu until SSH accepted the key.
        self.boot_seconds: float | None = None

    # -- lifecycle

    def __enter__(self) -> QemuVM:
        try:
            self._start()
        except BaseException:
            self._stop(graceful=False)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Only a normal exit powers the guest off politely. After a failure, Ctrl-C or the
        # CLI's SIGTERM exception the user wants out now, and a clean guest shutdown buys
        # nothing for a disk that is about to be deleted.
        self._stop(graceful=exc_type is None)

    @property
    def ssh_target(self) -> SSHTarget:
        """How to reach the running VM (root, key-only, host key not checked)."""
        if self._target is None:
            raise VMError("the VM is not running")
        return self._target

    @property
    def run_dir(self) -> Path:
        """This run's temp dir (overlay, console log, ssh_config)."""
        if self._tmp is None:
            raise VMError("the VM is not running")
        return self._tmp

    @property
    def pid(self) -> int | None:
        """The qemu process id while it runs."""
        return self._boot.process.pid if self._boot is not None else None

    def console_tail(self, lines: int = _TAIL_LINES) -> str:
        """The last lines of the serial console (kernel and systemd messages, login prompt)."""
        return _tail(self.run_dir / "console.log", lines) if self._tmp is not None else ""

    def run(
        self, command: Sequence[str], *, timeout: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a command on the VM as root over SSH.

        Args:
            command: argv to run remotely.
            timeout: Seconds before giving up.
            check: Raise VMError (with the output's tail) on a non-zero exit.

        Returns:
            The completed process with text stdout/stderr.

        Raises:
            VMError: The command failed or timed out.
        """
        argv = self.ssh_target.ssh_argv(command)
        try:
            done = subprocess.run(
                argv,
                check=False,
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as err:
            raise VMError(
                f"{shlex.join(command)} on the VM timed out after {timeout:.0f} s"
            ) from err
        if check and done.returncode != 0:
            output = (done.stdout + done.stderr).splitlines()[-_TAIL_LINES:]
            raise VMError(
                f"{shlex.join(command)} on the VM failed (exit {done.returncode})",
                details="\n".join(output),
            )
        return done

    # -- internals

    def _start(self) -> None:
        for path in (self.image.kernel, self.image.initrd, self.image.disk, self.image.private_key):
            if not path.is_file():
                raise VMError(f"VM image incomplete: {path} is missing")
        if shutil.which(self.qemu_binary) is None:
            raise VMError(f"{self.qemu_binary} not found; install qemu-system-x86")
        self._tmp = Path(tempfile.mkdtemp(prefix="rolebake-vm-"))
        overlay = self._tmp / "overlay.qcow2"
        _run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
             "-b", str(self.image.disk.resolve()), str(overlay)],
            say=None,
        )  # fmt: skip
        # ssh refuses keys other users can read; the cached key may have been copied around.
        key = self._tmp / "id_ed25519"
        shutil.copyfile(self.image.private_key, key)
        key.chmod(0o600)
        started = time.monotonic()
        deadline = started + self.boot_timeout
        for _attempt in range(3):
            port = _free_port()
            self._launch(overlay, port)
            if self._wait_for_ssh(key, port, deadline):
                self.boot_seconds = round(time.monotonic() - started, 1)
                self._say(f"VM up, SSH on 127.0.0.1:{port} after {self.boot_seconds} s")
                return
            # qemu exited early: another process took the port between our probe and
            # qemu binding it. Anything else is a real failure.
            if "host forwarding" not in self._qemu_output():
                break
        assert self._boot is not None
        rc = self._boot.process.poll()
        raise VMError(
            f"qemu exited with status {rc} before the VM came up",
            details=(self._qemu_output() + "\n" + self.console_tail()).strip(),
        )

    def _launch(self, overlay: Path, port: int) -> None:
        assert self._tmp is not None
        argv = qemu_argv(
            self.image,
            overlay=overlay,
            console_log=self._tmp / "console.log",
            ssh_port=port,
            memory_mb=self.memory_mb,
            cpus=self.cpus,
            binary=self.qemu_binary,
        )
        self._say(f"starting {shlex.join(argv)}")
        with (self._tmp / "qemu.log").open("wb") as qemu_log:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=qemu_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # Not thread-safe in general; it only calls prctl, which is.
                preexec_fn=_die_with_parent,  # noqa: PLW1509
            )
        self._boot = _Boot(process=process, port=port)

    def _wait_for_ssh(self, key: Path, port: int, deadline: float) -> bool:
        """Poll until SSH accepts the key; False if qemu exits, VMError on timeout."""
        assert self._tmp is not None and self._boot is not None
        config = self._tmp / "ssh_config"
        config.write_text(
            "Host *\n"
            f"  User root\n  Port {port}\n  IdentityFile {key}\n  IdentitiesOnly yes\n"
            "  BatchMode yes\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
            "  LogLevel ERROR\n"
            # Every new SSH handshake costs a second or more under TCG; testinfra and our
            # own helpers reuse one connection. Ansible brings its own ControlPath.
            f"  ControlMaster auto\n  ControlPath {self._tmp}/cm-%C\n  ControlPersist 120\n"
        )
        target = SSHTarget(
            host="127.0.0.1",
            port=port,
            user="root",
            identity_file=key,
            ssh_config=config,
            check_host_key=False,
        )
        probe = target.ssh_argv(["true"], connect_timeout=5)
        while time.monotonic() < deadline:
            if self._boot.process.poll() is not None:
                return False
            try:
                done = subprocess.run(
                    probe, check=False, capture_output=True, timeout=20, stdin=subprocess.DEVNULL
                )
                if done.returncode == 0:
                    self._target = target
                    return True
            except subprocess.TimeoutExpired:
                pass
            time.sleep(2)
        raise VMError(
            f"the VM did not accept SSH within {self.boot_timeout:.0f} s",
            details="serial console (last lines):\n" + self.console_tail(),
        )

    def _qemu_output(self) -> str:
        return _tail(self._tmp / "qemu.log") if self._tmp is not None else ""

    def _stop(self, *, graceful: bool) -> None:
        """Stop the VM and remove the run's files; qemu is gone when this returns."""
        boot, self._boot = self._boot, None
        target, self._target = self._target, None
        try:
            if boot is not None and graceful and target is not None and boot.process.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                    subprocess.run(
                        target.ssh_argv(["sh", "-c", _POWEROFF], connect_timeout=5),
                        check=False,
                        capture_output=True,
                        timeout=10,
                        stdin=subprocess.DEVNULL,
                    )
                    boot.process.wait(timeout=self.poweroff_timeout)
        finally:
            try:
                if boot is not None:
                    _kill_group(boot.process)
            finally:
                if target is not None and target.ssh_config is not None:
                    # The ControlPersist master would otherwise linger for its timeout.
                    with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                        subprocess.run(
                            ["ssh", "-F", str(target.ssh_config), "-O", "exit", target.host],
                            check=False,
                            capture_output=True,
                            timeout=5,
                            stdin=subprocess.DEVNULL,
                        )
                tmp, self._tmp = self._tmp, None
                if tmp is not None:
                    shutil.rmtree(tmp, ignore_errors=True)
