"""SSHTarget parsing and rendering, the qemu command line, VM image reuse (no qemu, no root)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from rolebake.errors import VMError
from rolebake.parity import qemu
from rolebake.parity.qemu import kvm_works, qemu_argv
from rolebake.provision.target import SSHTarget
from rolebake.rootfs import vm_disk
from rolebake.rootfs.vm_disk import VMImage, prepare_vm_image


@pytest.mark.parametrize(
    ("url", "host", "port", "user"),
    [
        ("ssh://root@10.0.0.5:22", "10.0.0.5", 22, "root"),
        ("ssh://deploy@web1.example.org:2222", "web1.example.org", 2222, "deploy"),
        ("ssh://web1", "web1", 22, "root"),
        ("ssh://web1/", "web1", 22, "root"),
        ("  ssh://admin@[fd00::5]:2200 ", "fd00::5", 2200, "admin"),
    ],
)
def test_parse(url: str, host: str, port: int, user: str) -> None:
    target = SSHTarget.parse(url)
    assert (target.host, target.port, target.user) == (host, port, user)
    assert target.check_host_key is True
    assert SSHTarget.parse(target.url) == target


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("root@host:22", "not an ssh:// URL"),
        ("http://host", "not an ssh:// URL"),
        ("ssh://", "no host"),
        ("ssh://root@:22", "no host"),
        ("ssh://root@host:99999", "port must be a number"),
        ("ssh://root@host:ssh", "port must be a number"),
        ("ssh://root@host:0", "port must be a number"),
        ("ssh://root:hunter2@host", "passwords are not accepted"),
        ("ssh://root@host/srv", "unexpected path"),
        ("ssh://root@host?x=1", "unexpected path"),
        ("ssh://@host", "empty user"),
    ],
)
def test_parse_rejects(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SSHTarget.parse(url)


def _local_vm_target(tmp_path: Path) -> SSHTarget:
    return SSHTarget(
        host="127.0.0.1",
        port=40022,
        identity_file=tmp_path / "id key",
        ssh_config=tmp_path / "ssh_config",
        check_host_key=False,
    )


def test_ssh_argv_quotes_the_remote_command(tmp_path: Path) -> None:
    argv = _local_vm_target(tmp_path).ssh_argv(["sh", "-c", "echo 'a b' > /tmp/x"])
    assert argv[0] == "ssh"
    assert shlex.split(argv[-1]) == ["sh", "-c", "echo 'a b' > /tmp/x"]
    assert argv[argv.index("-p") + 1] == "40022"
    assert argv[argv.index("-i") + 1] == str(tmp_path / "id key")
    assert "StrictHostKeyChecking=no" in argv and "BatchMode=yes" in argv


def test_existing_vm_keeps_host_key_checking() -> None:
    target = SSHTarget.parse("ssh://root@10.0.0.5")
    argv = target.ssh_argv(["true"])
    assert "StrictHostKeyChecking=no" not in argv and "-i" not in argv
    assert target.testinfra_kwargs() == {}
    assert "ansible_ssh_common_args" not in target.ansible_host_vars()


def test_ansible_inventory(tmp_path: Path) -> None:
    target = _local_vm_target(tmp_path)
    hostvars = target.ansible_inventory("parity-vm")["all"]["hosts"]["parity-vm"]
    assert hostvars["ansible_host"] == "127.0.0.1"
    assert hostvars["ansible_port"] == 40022
    assert hostvars["ansible_user"] == "root"
    assert hostvars["ansible_ssh_private_key_file"] == str(tmp_path / "id key")
    common = shlex.split(str(hostvars["ansible_ssh_common_args"]))
    assert common[:2] == ["-F", str(tmp_path / "ssh_config")]
    assert "UserKnownHostsFile=/dev/null" in common
    json.dumps(target.ansible_inventory())  # ansible-runner takes it as JSON/YAML
    line = shlex.split(target.inventory_line("parity-vm"))
    assert line[0] == "parity-vm"
    assert f"ansible_ssh_private_key_file={tmp_path / 'id key'}" in line


def test_testinfra_arguments(tmp_path: Path) -> None:
    target = _local_vm_target(tmp_path)
    assert target.url == "ssh://root@127.0.0.1:40022"
    assert target.testinfra_kwargs() == {
        "ssh_config": str(tmp_path / "ssh_config"),
        "ssh_identity_file": str(tmp_path / "id key"),
    }
    assert target.pytest_args() == [
        "--hosts=ssh://root@127.0.0.1:40022",
        f"--ssh-config={tmp_path / 'ssh_config'}",
        f"--ssh-identity-file={tmp_path / 'id key'}",
    ]


def _fake_image(out: Path) -> VMImage:
    for name, data in (
        ("vmlinuz", b"k"),
        ("initrd.img", b"i"),
        ("disk.img", b"d" * 4096),
        ("id_ed25519", b"key"),
    ):
        (out / name).write_bytes(data)
    manifest = {
        "format": vm_disk._IMAGE_FORMAT,
        "kernel": "vmlinuz",
        "initrd": "initrd.img",
        "disk": "disk.img",
        "disk_size": 4096,
        "private_key": "id_ed25519",
        "added_packages": ["openssh-server", "systemd"],
        "added_users": ["sshd"],
        "added_groups": ["_ssh"],
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    image = VMImage.load(out)
    assert image is not None
    return image


def test_qemu_argv(tmp_path: Path) -> None:
    image = _fake_image(tmp_path)
    argv = qemu_argv(
        image,
        overlay=tmp_path / "a,b" / "overlay.qcow2",
        console_log=tmp_path / "console.log",
        ssh_port=40022,
        memory_mb=2048,
    )
    assert argv[0] == "qemu-system-x86_64"
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert argv[argv.index("-m") + 1] == "2048"
    assert argv[argv.index("-kernel") + 1] == str(tmp_path / "vmlinuz")
    assert "user,id=n0,hostfwd=tcp:127.0.0.1:40022-:22" in argv
    drive = argv[argv.index("-drive") + 1]
    assert drive.startswith(f"file={tmp_path}/a,,b/overlay.qcow2,")
    assert "root=/dev/vda" in argv[argv.index("-append") + 1]


def test_qemu_argv_with_kvm(tmp_path: Path) -> None:
    argv = qemu_argv(_fake_image(tmp_path), overlay=tmp_path / "o.qcow2",
                     console_log=tmp_path / "c.log", ssh_port=1, accel="kvm")
    assert argv[argv.index("-accel") + 1] == "kvm"
    assert argv[argv.index("-cpu") + 1] == "host"


@pytest.mark.parametrize(("prints", "works", "why"), [
    ("[    0.9] Kernel panic - not syncing: No working init found", True, ""),
    ("qemu: error: failed to set MSR 0x10a to 0x69", False,
     "qemu: error: failed to set MSR 0x10a to 0x69"),
])
def test_kvm_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prints: str, works: bool,
                   why: str) -> None:
    fake = tmp_path / "qemu"
    fake.write_text(f"#!/bin/sh\necho '{prints}'\n")
    fake.chmod(0o755)
    monkeypatch.setattr(qemu.os, "access", lambda path, mode: True)
    monkeypatch.setattr(qemu, "_kvm_verdict", {})
    assert kvm_works(_fake_image(tmp_path), str(fake)) == (works, why)
    fake.write_text("#!/bin/sh\nexit 9\n")  # asked once per process: the verdict stays
    assert kvm_works(_fake_image(tmp_path), str(fake)) == (works, why)


def test_kvm_probe_without_dev_kvm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qemu.os, "access", lambda path, mode: False)
    monkeypatch.setattr(qemu, "_kvm_verdict", {})
    assert kvm_works(_fake_image(tmp_path), "/nonexistent/qemu") == (False, "no usable /dev/kvm")


def test_image_load(tmp_path: Path) -> None:
    image = _fake_image(tmp_path)
    assert image.added_packages == frozenset({"openssh-server", "systemd"})
    assert image.added_users == frozenset({"sshd"})
    # A disk of another size than recorded: a build was interrupted while writing it.
    (tmp_path / "disk.img").write_bytes(b"d")
    assert VMImage.load(tmp_path) is None


@pytest.mark.parametrize("broken", ["no manifest", "bad json", "old format", "no kernel"])
def test_incomplete_image_is_not_loaded(tmp_path: Path, broken: str) -> None:
    _fake_image(tmp_path)
    manifest = tmp_path / "manifest.json"
    if broken == "no manifest":
        manifest.unlink()
    elif broken == "bad json":
        manifest.write_text("{")
    elif broken == "old format":
        manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "format": 0}))
    else:
        (tmp_path / "vmlinuz").unlink()
    assert VMImage.load(tmp_path) is None


def _fake_rootfs(root: Path) -> Path:
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text(
        "Package: dpkg\nStatus: install ok installed\nVersion: 1.21.22\n\n"
        "Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n"
    )
    (root / "etc").mkdir()
    (root / "etc/os-release").write_text('PRETTY_NAME="Debian"\nVERSION_CODENAME=bookworm\n')
    return root


def test_complete_image_with_same_inputs_is_reused(tmp_path: Path) -> None:
    rootfs = _fake_rootfs(tmp_path / "rootfs")
    out = tmp_path / "vm"
    out.mkdir()
    expected = _fake_image(out)
    mirror = "http://mirror.example.invalid/debian"
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["inputs"] = vm_disk._inputs_key(rootfs.resolve(), mirror)
    (out / "manifest.json").write_text(json.dumps(manifest))
    lines: list[str] = []
    # Reuse must not build: the fake rootfs could not be chrooted into.
    assert prepare_vm_image(rootfs, out, mirror=mirror, log=lines.append) == expected
    assert lines == [f"reusing VM image in {out}"]


def test_inputs_key_follows_rootfs_packages_and_mirror(tmp_path: Path) -> None:
    rootfs = _fake_rootfs(tmp_path / "rootfs")
    key = vm_disk._inputs_key(rootfs, "http://a/debian")
    assert key == vm_disk._inputs_key(rootfs, "http://a/debian")
    assert key != vm_disk._inputs_key(rootfs, "http://b/debian")
    with (rootfs / "var/lib/dpkg/status").open("a") as status:
        status.write("\nPackage: curl\nStatus: install ok installed\nVersion: 7\n")
    assert key != vm_disk._inputs_key(rootfs, "http://a/debian")


def test_installed_packages_reads_dpkg_status(tmp_path: Path) -> None:
    rootfs = _fake_rootfs(tmp_path / "rootfs")
    assert vm_disk._installed_packages(rootfs) == {"dpkg": "1.21.22"}


def test_not_a_debian_rootfs(tmp_path: Path) -> None:
    with pytest.raises(VMError, match="not a Debian rootfs"):
        prepare_vm_image(tmp_path, tmp_path / "out", mirror="http://x/debian")


def test_vm_error_carries_details() -> None:
    err = VMError("qemu exited", details="console tail")
    assert err.message == "qemu exited" and err.details == "console tail"
    assert str(err) == "qemu exited\nconsole tail"


def test_qemu_argv_has_qmp_and_a_named_drive_for_checkpoints(tmp_path: Path) -> None:
    argv = qemu_argv(_fake_image(tmp_path), overlay=tmp_path / "o.qcow2",
                     console_log=tmp_path / "c.log", ssh_port=1, qmp_socket=tmp_path / "q,s")
    assert argv[argv.index("-qmp") + 1] == f"unix:{tmp_path}/q,,s,server=on,wait=off"
    assert argv[argv.index("-drive") + 1].endswith(",id=root")
    assert "-qmp" not in qemu_argv(_fake_image(tmp_path), overlay=tmp_path / "o.qcow2",
                                   console_log=tmp_path / "c.log", ssh_port=1)
