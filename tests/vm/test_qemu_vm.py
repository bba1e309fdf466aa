"""Boot the parity VM for real: SSH, python3, a testinfra snapshot, and no qemu left behind."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import testinfra
from vm_support import ROOTFS, missing, require_tools

from rolebake.errors import VMError
from rolebake.parity import qemu as qemu_module
from rolebake.parity.qemu import QemuVM
from rolebake.parity.snapshot import take_snapshot
from rolebake.rootfs import VMImage, prepare_vm_image

pytestmark = pytest.mark.vm


def qemu_processes_using(path: Path) -> list[int]:
    """Pids of qemu processes whose command line mentions `path` (our run dir)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and b"qemu" in cmdline[0] and any(str(path).encode() in a for a in cmdline):
            pids.append(int(entry.name))
    return pids


def assert_gone(pid: int | None, run_dir: Path) -> None:
    assert pid is not None
    assert not Path(f"/proc/{pid}").exists(), f"qemu {pid} outlived the context manager"
    assert qemu_processes_using(run_dir) == []
    assert not run_dir.exists(), "the overlay and run dir must be removed"


def test_boot_ssh_python_and_snapshot(vm_image: VMImage) -> None:
    started = time.monotonic()
    with QemuVM(vm_image, boot_timeout=300) as vm:
        pid, run_dir = vm.pid, vm.run_dir
        print(f"boot to SSH: {vm.boot_seconds} s")
        assert vm.run(["true"]).returncode == 0
        assert vm.run(["python3", "-c", "import sys; print(sys.version_info[0])"]).stdout == "3\n"
        # The disk has room for the roles' packages.
        free_kib = int(vm.run(["df", "--output=avail", "-k", "/"]).stdout.split()[-1])
        assert free_kib > 1024 * 1024

        target = vm.ssh_target
        host = testinfra.get_host(target.url, **target.testinfra_kwargs())
        assert host.file("/etc/hostname").content_string.strip() == "rolebake-vm"
        snapshot = take_snapshot(host, ["/etc/ssh/sshd_config", "/etc/nope"])
        ssh = snapshot.services["ssh.service"]
        assert ssh.enabled_by == ("multi-user.target.wants",)
        assert ssh.package == "openssh-server"
        assert snapshot.running_services is not None and "ssh.service" in snapshot.running_services
        assert snapshot.failed_units == ()
        assert snapshot.facts["init"] == "systemd"
        assert snapshot.paths["/etc/ssh/sshd_config"].type == "file"
        assert not snapshot.paths["/etc/nope"].exists
        assert vm_image.added_packages <= set(snapshot.packages)
    print(f"boot + checks + shutdown: {time.monotonic() - started:.1f} s")
    assert_gone(pid, run_dir)


def test_exception_inside_with_stops_qemu(
    vm_image: VMImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Also: the first port handed to qemu is taken (a race with another process); qemu
    # refuses it and the VM comes up on the next one.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        ports = iter([busy.getsockname()[1]])
        real_free_port = qemu_module._free_port
        monkeypatch.setattr(qemu_module, "_free_port",
                            lambda: next(ports, None) or real_free_port())
        with pytest.raises(RuntimeError, match="role failed"), QemuVM(vm_image) as vm:
            pid, run_dir = vm.pid, vm.run_dir
            assert vm.ssh_target.port != busy.getsockname()[1]
            raise RuntimeError("role failed")
    assert_gone(pid, run_dir)


def test_keyboard_interrupt_inside_with_stops_qemu(vm_image: VMImage) -> None:
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt), QemuVM(vm_image, boot_timeout=300) as vm:
        pid, run_dir = vm.pid, vm.run_dir
        up = time.monotonic()
        raise KeyboardInterrupt
    # No polite poweroff on an interrupt: qemu is terminated right away.
    assert time.monotonic() - up < 10, time.monotonic() - started
    assert_gone(pid, run_dir)


def test_boot_timeout_reports_console_and_cleans_up(vm_image: VMImage) -> None:
    lines: list[str] = []
    vm = QemuVM(vm_image, boot_timeout=8, log=lines.append)
    with pytest.raises(VMError, match="did not accept SSH within 8 s") as err, vm:
        pass
    # The serial console shows how far the boot got: the kernel's log, or systemd's unit
    # lines (`[  OK  ] Started ...`) when the boot got further in 8 s on a quiet machine.
    assert "serial console" in err.value.details
    assert re.search(r"^\[(?: *\d+\.\d+\] |\S{0,12}\s+OK\s)", err.value.details,
                     re.MULTILINE), err.value.details
    started = next(line for line in lines if line.startswith("starting "))
    match = re.search(r"file:(/\S+)/console\.log", started)
    assert match is not None
    run_dir = Path(match.group(1))
    assert vm.pid is None
    assert qemu_processes_using(run_dir) == []
    assert not run_dir.exists()


def test_qemu_dies_with_a_killed_rolebake(vm_image: VMImage) -> None:
    # SIGKILL runs no cleanup at all; PR_SET_PDEATHSIG must still take qemu down.
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, pathlib\n"
            "from rolebake.parity.qemu import QemuVM\n"
            "from rolebake.rootfs import VMImage\n"
            "image = VMImage.load(pathlib.Path(sys.argv[1]))\n"
            "with QemuVM(image, log=lambda line: print(line, flush=True)):\n"
            "    pass\n",
            str(vm_image.disk.parent),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert child.stdout is not None
        started = child.stdout.readline()
        while started.startswith("notice:"):  # KVM does not work here: TCG, and why
            started = child.stdout.readline()
        match = re.search(r"file:(/\S+)/console\.log", started)
        assert match is not None, started
        run_dir = Path(match.group(1))
        deadline = time.monotonic() + 20
        while not qemu_processes_using(run_dir) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert qemu_processes_using(run_dir), "qemu did not start"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        deadline = time.monotonic() + 10
        while qemu_processes_using(run_dir) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert qemu_processes_using(run_dir) == []
    finally:
        child.kill()
        child.wait()
        # Nothing could remove it: the process that owned it was killed.
        if "run_dir" in locals():
            shutil.rmtree(run_dir, ignore_errors=True)


def test_failed_prepare_leaves_no_mounts(tmp_path: Path) -> None:
    require_tools("chroot", "mount", "mkfs.ext4")
    if os.geteuid() != 0 or not (ROOTFS / "var/lib/dpkg/status").is_file():
        missing(f"root and a debootstrap rootfs at {ROOTFS}")
    out = tmp_path / "vm"
    # Nothing listens on port 9: apt fails while /proc, /sys and /dev are mounted.
    with pytest.raises(VMError, match="failed") as err:
        prepare_vm_image(ROOTFS, out, mirror="http://127.0.0.1:9/debian")
    assert "127.0.0.1" in err.value.details
    with open("/proc/self/mounts") as mounts:
        assert str(tmp_path) not in mounts.read()
    assert not list(out.glob(".build-*")), "the build tree must be removed"
    assert not (out / "manifest.json").exists()
    assert VMImage.load(out) is None
