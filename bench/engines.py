"""Engines of a run's own, next to the shared one: a throwaway dockerd (tests and
benchmarks both start them), and whether the loopback registry `make registry`
starts answers.

Tests that must break an engine (restart it, fill its disk) or need a second,
empty one use a `ThrowawayEngine`, never the shared engine (which other builds
use at the same time, and which is never stopped or reconfigured). It runs as
root with its own `--data-root` (on a loop-mounted ext4 image of a fixed size
when the test fills the disk), its own `-H unix://…` socket, `--exec-root` and
`--pidfile` (so its managed containerd is its own too), and no iptables rules.

Its network is one of two, and never the host's `docker0`: a dockerd started
with `--bridge=none` in the host's network namespace deletes `docker0` at
start-up, which cuts every container of the shared engine off its network.
- `network="none"`: the dockerd runs in a network namespace of its own
  (`unshare --net`); its containers have no network, so builds on it use roles
  that need no apt, on a base image that already has python3.
- `network="bridge"`: the dockerd stays in the host's namespace (so it reaches
  the loopback registry) with a bridge of its own that the engine removes.
  Its containers have no route out (no masquerading).

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
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import docker
import docker.errors

REGISTRY = os.environ.get("ROLEBAKE_TEST_REGISTRY", "127.0.0.1:5000")

# dockerd writes its managed containerd's sockets below --exec-root: keep that path
# short (a unix socket path is at most 107 bytes; pytest's tmp paths are long).
_SHORT_TMP = Path("/tmp")


class ThrowawayEngine:
    """One dockerd of the test's own, started and stopped by the test."""

    def __init__(self, workdir: Path, *, size_mib: int | None = 1536,
                 network: Literal["none", "bridge"] = "none") -> None:
        """Prepare (without starting) an engine whose files live under `workdir`.

        Args:
            workdir: a folder of the test's own; the disk image is made here.
            size_mib: size of the ext4 filesystem that holds the data root; None keeps
                the data root in a plain folder under `workdir` (no disk of its own).
            network: "none" (a network namespace of its own) or "bridge" (the host's
                namespace, a bridge of its own; it reaches the host's loopback).
        """
        self.workdir = workdir
        self.size_mib = size_mib
        self.network = network
        self.image = workdir / "disk.ext4"
        self.mountpoint = workdir / "mnt"
        self.data_root = self.mountpoint / "docker"
        self.run_dir = Path(tempfile.mkdtemp(prefix="rbe-", dir=_SHORT_TMP))
        # A Linux interface name is at most 15 bytes.
        self.bridge = f"rbt{secrets.token_hex(4)}"
        self._bridge_made = False
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
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.size_mib is None:
            self.data_root = self.workdir / "data"
        elif not self._mounted:
            if not self.image.exists():
                with self.image.open("wb") as disk:
                    disk.truncate(self.size_mib * 1024 * 1024)
                _run(["mkfs.ext4", "-q", "-F", "-m", "0", str(self.image)])
            self.mountpoint.mkdir(exist_ok=True)
            _run(["mount", "-o", "loop", str(self.image), str(self.mountpoint)])
            self._mounted = True
        config = self.run_dir / "daemon.json"
        config.write_text("{}\n")  # not /etc/docker/daemon.json, whatever it says
        prefix, bridge = self._network()
        argv = [*prefix, "dockerd", "--config-file", str(config), f"--bridge={bridge}",
                "--data-root", str(self.data_root), "--exec-root", str(self.exec_root),
                "--pidfile", str(self.pidfile), "-H", self.host,
                "--iptables=false", "--ip-masq=false", "--ip-forward=false",
                "--storage-driver=overlay2", "--log-level=warn"]
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

    def _network(self) -> tuple[list[str], str]:
        """The command prefix and `--bridge` value: never `none` in the host's namespace."""
        if self.network == "none":
            # With --bridge=none dockerd deletes `docker0`: here, its own namespace's.
            return ["unshare", "--net", "--"], "none"
        if not self._bridge_made:
            octet = secrets.randbelow(200) + 20
            _run(["ip", "link", "add", self.bridge, "type", "bridge"])
            self._bridge_made = True
            _run(["ip", "addr", "add", f"10.213.{octet}.1/24", "dev", self.bridge])
            _run(["ip", "link", "set", self.bridge, "up"])
        return [], self.bridge

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
        # Overlay mounts go with the daemon; anything left is unmounted before removal.
        for root in (self.run_dir, self.workdir):
            subprocess.run(["sh", "-c", f"grep -o ' {root}/[^ ]*' /proc/mounts | sort -r | "
                            "xargs -r -n1 umount -l"], check=False)
        if self._bridge_made:
            subprocess.run(["ip", "link", "delete", self.bridge], capture_output=True,
                           check=False)
            self._bridge_made = False
        shutil.rmtree(self.run_dir, ignore_errors=True)
        if self.size_mib is None:
            shutil.rmtree(self.data_root, ignore_errors=True)
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
    for tool in ("dockerd", "mkfs.ext4", "mount", "unshare", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def registry_answers(address: str = REGISTRY) -> bool:
    """Whether a registry answers the distribution API on `address` (plain HTTP)."""
    try:
        with urllib.request.urlopen(f"http://{address}/v2/", timeout=3) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


@dataclass(frozen=True)
class OwnEngine:
    """An engine a test started: where it listens, and a client for it."""

    host: str  # a DOCKER_HOST value
    client: docker.DockerClient
    root: Path

    @property
    def env(self) -> dict[str, str]:
        """Environment for a CLI run against this engine."""
        return {"DOCKER_HOST": self.host}


def short_tmp(prefix: str) -> Path:
    # A unix socket path must stay under 108 bytes: pytest's tmp_path can be longer.
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def wait_for(client: docker.DockerClient, proc: subprocess.Popen[bytes], log: Path,
              seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the engine exited ({proc.returncode}):\n"
                               + log.read_text(errors="replace")[-3000:])
        with contextlib.suppress(Exception):
            client.ping()
            return
        time.sleep(0.25)
    raise RuntimeError("the engine did not answer within 60 s:\n"
                       + log.read_text(errors="replace")[-3000:])


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def kill_mentioning(text: str) -> None:
    """Kill, by pid, the processes whose command line names `text` (our own root dir)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if text.encode() in (entry / "cmdline").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)


@contextlib.contextmanager
def empty_dockerd() -> Iterator[OwnEngine]:
    """A second, empty Docker engine of our own that reaches the loopback registry."""
    root = short_tmp("rb-dockerd-")
    engine = ThrowawayEngine(root, size_mib=None, network="bridge")
    try:
        engine.start()
        yield OwnEngine(host=engine.host, client=engine.client, root=root)
    finally:
        engine.destroy()
        shutil.rmtree(root, ignore_errors=True)


