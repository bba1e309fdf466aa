"""The qemu side of `rolebake parity`: a throwaway local VM booted from the prepared VM disk.

`QemuVM` boots a `rolebake.rootfs.VMImage` under qemu on a copy-on-write overlay, so every
parity run starts from the same clean state and the cached disk is never written to; it hands
out an `SSHTarget` for the running VM. qemu runs in a process group of its own and never
outlives rolebake. KVM is used when it works here (`kvm_works` boots the VM's kernel once to
see: nested KVM often fails with emulation errors); otherwise TCG, with a notice.
"""

from __future__ import annotations

import contextlib
import ctypes
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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from rolebake.errors import VMError
from rolebake.procgroup import TAIL_LINES, Log, kill_group, run_logged
from rolebake.provision.target import SSHTarget
from rolebake.rootfs.vm_disk import VMImage

__all__ = ["QemuVM", "kvm_works", "qemu_argv"]

# Backgrounded so that ssh returns before the guest tears sshd down.
_POWEROFF = "(sleep 1; systemctl poweroff) >/dev/null 2>&1 &"


def qemu_argv(
    image: VMImage,
    *,
    overlay: Path,
    console_log: Path,
    ssh_port: int,
    memory_mb: int = 1024,
    cpus: int = 2,
    binary: str = "qemu-system-x86_64",
    accel: str = "tcg",
    qmp_socket: Path | None = None,
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
        accel: `kvm` (the host's CPU model) or `tcg` (emulated, works everywhere).
        qmp_socket: A unix socket for QMP (how `QemuVM.checkpoint` freezes the disk).

    Returns:
        The argv.
    """

    def opt(value: Path | str) -> str:
        # qemu's option parser splits on commas; a literal comma is written twice.
        return str(value).replace(",", ",,")

    qmp = ["-qmp", f"unix:{opt(qmp_socket)},server=on,wait=off"] if qmp_socket else []
    return [
        binary,
        "-accel", accel,
        "-machine", "q35",
        "-cpu", "host" if accel == "kvm" else "max",
        "-m", str(memory_mb),
        "-smp", str(cpus),
        "-nodefaults",
        "-no-user-config",
        "-display", "none",
        "-monitor", "none",
        *qmp,
        "-serial", f"file:{opt(console_log)}",
        # A guest reboot or poweroff ends qemu: nothing should come back up unnoticed.
        "-no-reboot",
        "-kernel", str(image.kernel),
        "-initrd", str(image.initrd),
        "-append", "root=/dev/vda rw console=ttyS0 panic=-1",
        # id=root: the drive QMP's blockdev-snapshot-sync names.
        "-drive", f"file={opt(overlay)},if=virtio,format=qcow2,cache=unsafe,id=root",
        "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22",
        "-device", "virtio-net-pci,netdev=n0",
        "-device", "virtio-rng-pci",
    ]  # fmt: skip


_kvm_verdict: dict[tuple[str, str], tuple[bool, str]] = {}


def kvm_works(image: VMImage, binary: str = "qemu-system-x86_64",
              timeout: float = 30.0) -> tuple[bool, str]:
    """Whether KVM runs this VM's kernel here, and why not (asked once per process).

    /dev/kvm being there is not enough: under nested virtualisation qemu may
    abort on the first MSR it sets, or the guest may hang on emulation errors.
    The probe boots the kernel with an init that does not exist, so a working
    KVM ends in a kernel panic within seconds.
    """
    key = (binary, str(image.kernel))
    if key in _kvm_verdict:
        return _kvm_verdict[key]
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        verdict = (False, "no usable /dev/kvm")
    else:
        argv = [binary, "-accel", "kvm", "-cpu", "host", "-machine", "q35", "-m", "256",
                "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none",
                "-monitor", "none", "-serial", "stdio", "-no-reboot",
                "-kernel", str(image.kernel), "-initrd", str(image.initrd),
                "-append", "console=ttyS0 panic=-1 rdinit=/rolebake-kvm-probe"]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, errors="replace",
                                  timeout=timeout, stdin=subprocess.DEVNULL, check=False)
            output = done.stdout + done.stderr
            ok = "Kernel panic" in output
            last = next((ln for ln in reversed(output.splitlines()) if ln.strip()), "")
            verdict = (ok, "" if ok else last.strip()[:200] or f"qemu exit {done.returncode}")
        except subprocess.TimeoutExpired:
            verdict = (False, f"the kernel did not get far in {timeout:.0f} s")
        except OSError as exc:
            verdict = (False, str(exc))
    _kvm_verdict[key] = verdict
    return verdict


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (qemu may still lose it to a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """Have the kernel SIGKILL qemu if rolebake itself dies without running cleanup."""
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def _tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last lines of a log file; empty when it cannot be read (yet)."""
    try:
        with path.open(errors="replace") as handle:
            return "".join(deque(handle, maxlen=lines)).rstrip()
    except OSError:
        return ""


def _qmp_reply(stream: Any, *, greeting: bool = False) -> dict[str, object]:
    """The next reply on a QMP stream (events skipped); VMError for an `error` reply."""
    while True:
        line = stream.readline()
        if not line:
            raise VMError("qemu closed the QMP socket")
        message = json.loads(line)
        if greeting and "QMP" in message:
            return dict(message)
        if "error" in message:
            error = message["error"]
            raise VMError(f"QMP: {error.get('desc', error)}")
        if "return" in message:
            value = message["return"]
            return dict(value) if isinstance(value, dict) else {}


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
        accel: str | None = None,
        boot_from: Path | None = None,
        overlay: Path | None = None,
    ) -> None:
        self.image = image
        #: A qcow2 VM layer snapshot to boot from instead of the image's raw disk.
        self.boot_from = boot_from
        #: Where the run's overlay goes (the caller keeps it); None: the run's temp dir.
        self._overlay_path = overlay
        self._top: Path | None = None
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.boot_timeout = boot_timeout
        self.poweroff_timeout = poweroff_timeout
        self.qemu_binary = qemu_binary
        self._say = log or (lambda _line: None)
        #: `kvm` or `tcg`; None: KVM when `kvm_works`, else TCG.
        self.accel = accel
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

    def console_tail(self, lines: int = TAIL_LINES) -> str:
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
            output = (done.stdout + done.stderr).splitlines()[-TAIL_LINES:]
            raise VMError(
                f"{shlex.join(command)} on the VM failed (exit {done.returncode})",
                details="\n".join(output),
            )
        return done

    def checkpoint(self, new_top: Path, *, backing_name: str) -> Path:
        """Freeze the disk as it is now; the running VM goes on writing to `new_top`.

        The guest's `sync` puts its dirty pages on the disk, then QMP's
        `blockdev-snapshot-sync` (mode `existing`) makes `new_top` the active image, with the
        old one as its read-only backing: qemu drains and flushes the old image first and
        never writes to it again. ext4's journal makes the frozen image consistent as after
        a power cut taken right after a sync; no reboot is needed (under TCG a reboot costs
        the ~20 s of a boot per layer).

        Args:
            new_top: The new overlay (created here, on the same file system as the old).
            backing_name: The backing file written in its header: where the frozen image will
                live once it is kept (the running qemu holds the old image open meanwhile).

        Returns:
            The frozen image (no longer written by qemu).

        Raises:
            VMError: the guest's sync or the QMP command failed.
        """
        if self._top is None or self._tmp is None:
            raise VMError("the VM is not running")
        self.run(["sync"], timeout=300)
        size = self.image.disk.stat().st_size
        run_logged(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-F", "qcow2",
                    "-b", backing_name, str(new_top), str(size)], say=None)
        self._qmp("blockdev-snapshot-sync", {"device": "root", "snapshot-file": str(new_top),
                                             "format": "qcow2", "mode": "existing"})
        old, self._top = self._top, new_top
        return old

    # -- internals

    def _qmp(self, command: str, arguments: dict[str, object]) -> dict[str, object]:
        """Run one QMP command on the running qemu; its `return` value."""
        assert self._tmp is not None
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(120)
                sock.connect(str(self._tmp / "qmp.sock"))
                stream = sock.makefile("rwb")
                _qmp_reply(stream, greeting=True)
                for message in ({"execute": "qmp_capabilities"},
                                {"execute": command, "arguments": arguments}):
                    stream.write(json.dumps(message).encode() + b"\n")
                    stream.flush()
                    reply = _qmp_reply(stream)
                return reply
        except (OSError, ValueError) as exc:
            raise VMError(f"QMP {command} failed: {exc}") from None

    def _start(self) -> None:
        for path in (self.image.kernel, self.image.initrd, self.image.disk, self.image.private_key):
            if not path.is_file():
                raise VMError(f"VM image incomplete: {path} is missing")
        if shutil.which(self.qemu_binary) is None:
            raise VMError(f"{self.qemu_binary} not found; install qemu-system-x86")
        self._tmp = Path(tempfile.mkdtemp(prefix="rolebake-vm-"))
        overlay = self._overlay_path or self._tmp / "overlay.qcow2"
        backing, backing_format = ((self.boot_from.resolve(), "qcow2") if self.boot_from
                                   else (self.image.disk.resolve(), "raw"))
        run_logged(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", backing_format,
             "-b", str(backing), str(overlay)],
            say=None,
        )  # fmt: skip
        self._top = overlay
        # ssh refuses keys other users can read; the cached key may have been copied around.
        key = self._tmp / "id_ed25519"
        shutil.copyfile(self.image.private_key, key)
        key.chmod(0o600)
        if self.accel is None:
            works, why = kvm_works(self.image, self.qemu_binary)
            self.accel = "kvm" if works else "tcg"
            if not works:
                self._say(f"notice: KVM does not work here ({why}); the VM runs on TCG")
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
            accel=self.accel or "tcg",
            qmp_socket=self._tmp / "qmp.sock",
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
                    kill_group(boot.process)
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
