"""A throwaway Docker engine a test owns: its own dockerd, socket and data root on a small disk.

Tests that must break an engine (restart it, fill its disk) or need a second,
empty one use this, never the shared engine (which other builds use at the
same time). The engine runs as root with its own `--data-root` on a loop-mounted
ext4 image of a fixed size, its own `-H unix://…` socket, `--exec-root` and
`--pidfile` (so its managed containerd is its own too), and no networking
(`--bridge=none --iptables=false`): its containers have no network, so builds
on it use roles that need no apt, on a base image that already has python3.

It runs in a network namespace of its own (`unshare --net`): a dockerd started
with `--bridge=none` deletes the host's `docker0` bridge at start-up, which
cuts every container of the shared engine off its network.

    engine = ThrowawayEngine(workdir, size_mib=1536)
    engine.start()
    engine.load("rolebake/debian:bookworm", shared_client)   # docker save | docker load
    run_cli("build", ..., env=engine.env())
    engine.restart()                                            # the fault
    engine.destroy()                                            # stop, unmount, remove
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors

# dockerd writes its managed containerd's sockets below --exec-root: keep that path
# short (a unix socket path is at most 107 bytes; pytest's tmp paths are long).
_SHORT_TMP = Path("/tmp")


class ThrowawayEngine:
    """One dockerd of the test's own, started and stopped by the test."""

    def __init__(self, workdir: Path, *, size_mib: int = 1536) -> None:
        """Prepare (without starting) an engine whose files live under `workdir`.

        Args:
            workdir: a folder of the test's own; the disk image is made here.
            size_mib: size of the ext4 filesystem that holds the data root.
        """
        self.workdir = workdir
        self.size_mib = size_mib
        self.image = workdir / "disk.ext4"
        self.mountpoint = workdir / "mnt"
        self.data_root = self.mountpoint / "docker"
        self.run_dir = Path(tempfile.mkdtemp(prefix="rbe-", dir=_SHORT_TMP))
        self.socket = self.run_dir / "docker.sock"
        self.exec_root = self.run_dir / "exec"
        self.pidfile = self.run_dir / "docker.pid"
        self.log = workdir / "dockerd.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._client: docker.DockerClient | None = None
        self._mounted = False

    # What tests use --------------------------------------------------------------------

    @property
    def host(self) -> str:
        """The DOCKER_HOST value that reaches this engine."""
        return f"unix://{self.socket}"

    def env(self) -> dict[str, str]:
        """Environment entries that point rolebake (or the docker CLI) at this engine."""
        return {"DOCKER_HOST": self.host}

    @property
    def client(self) -> docker.DockerClient:
        """A docker SDK client for this engine."""
        if self._client is None:
            self._client = docker.DockerClient(base_url=self.host, timeout=120)
        return self._client

    def start(self, timeout: float = 60) -> None:
        """Make and mount the disk (first time only), start dockerd, wait until it answers."""
        if not self._mounted:
            self.workdir.mkdir(parents=True, exist_ok=True)
            if not self.image.exists():
                with self.image.open("wb") as disk:
                    disk.truncate(self.size_mib * 1024 * 1024)
                _run(["mkfs.ext4", "-q", "-F", "-m", "0", str(self.image)])
            self.mountpoint.mkdir(exist_ok=True)
            _run(["mount", "-o", "loop", str(self.image), str(self.mountpoint)])
            self._mounted = True
        config = self.run_dir / "daemon.json"
        config.write_text("{}\n")  # not /etc/docker/daemon.json, whatever it says
        # Its own network namespace: with --bridge=none, dockerd deletes `docker0`,
        # and in the host's namespace that is the shared engine's bridge.
        argv = ["unshare", "--net", "--", "dockerd", "--config-file", str(config),
                "--data-root", str(self.data_root), "--exec-root", str(self.exec_root),
                "--pidfile", str(self.pidfile),
                "-H", self.host, "--bridge=none", "--iptables=false", "--ip-masq=false",
                "--ip-forward=false", "--storage-driver=overlay2", "--log-level=warn"]
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"dockerd exited ({self._proc.returncode}):\n{self.log_tail()}")
            with contextlib.suppress(Exception):
                if self.client.ping():
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not answer within {timeout}s:\n{self.log_tail()}")
            time.sleep(0.2)

    def stop(self, *, kill: bool = False, timeout: float = 60) -> None:
        """Stop dockerd (SIGTERM, as a service restart does; SIGKILL with `kill`), wait for it.

        Its containers stop with it (no live-restore); the data root stays mounted.
        """
        proc, self._proc = self._proc, None
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if kill:
            # dockerd's managed containerd (and its shims) are in dockerd's session.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    def restart(self) -> None:
        """Stop dockerd and start it again on the same data root (an engine restart)."""
        self.stop()
        self.start()

    def destroy(self) -> None:
        """Stop dockerd, unmount and remove its disk and every file it made."""
        self.stop()
        if self._mounted:
            for attempt in range(10):
                if subprocess.run(["umount", str(self.mountpoint)],
                                  capture_output=True, check=False).returncode == 0:
                    break
                if attempt == 9:
                    subprocess.run(["umount", "-l", str(self.mountpoint)], check=False)
                time.sleep(0.5)
            self._mounted = False
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.image.unlink(missing_ok=True)

    def load(self, ref: str, source: docker.DockerClient) -> None:
        """Copy an image from another engine into this one (`docker save | docker load`)."""
        image = source.images.get(ref)
        with tempfile.TemporaryFile(dir=self.workdir) as spool:
            # Named by `ref` itself: the image's first tag may be another name of it.
            for chunk in image.save(named=ref if ref in image.tags else True):
                spool.write(chunk)
            spool.seek(0)
            self.client.images.load(spool.read())

    def free_mib(self) -> int:
        """Free space on the data root's filesystem, in MiB."""
        stat = os.statvfs(self.mountpoint)
        return stat.f_bavail * stat.f_frsize // (1024 * 1024)

    @contextlib.contextmanager
    def disk_filled(self, leave_mib: int = 0) -> Iterator[Path]:
        """Fill the data root's filesystem, leaving about `leave_mib` free, for a `with` block."""
        ballast = self.mountpoint / "ballast"
        size = max(0, self.free_mib() - leave_mib) * 1024 * 1024
        with ballast.open("wb") as handle, contextlib.suppress(OSError):
            os.posix_fallocate(handle.fileno(), 0, size)
        try:
            yield ballast
        finally:
            ballast.unlink(missing_ok=True)

    def leftovers(self) -> dict[str, list[Any]]:
        """Containers and images on this engine, for `nothing left` checks."""
        return {"containers": self.client.containers.list(all=True),
                "images": self.client.images.list(all=True)}

    def log_tail(self, lines: int = 30) -> str:
        """The end of dockerd's own log."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()}")


def can_run_engines() -> str | None:
    """Why this machine cannot start a throwaway engine, or None when it can."""
    if os.geteuid() != 0:
        return "a throwaway dockerd needs root (mount -o loop, dockerd)"
    for tool in ("dockerd", "mkfs.ext4", "mount", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None
