"""Engines of the tests' own, next to the shared one: an empty dockerd, a Podman API service,
and the loopback registry `make registry` starts.

The shared dockerd is never stopped or reconfigured. A second dockerd gets its own data
root, exec root, pidfile and socket, no bridge and no iptables rules (nothing is built
there: a container would have no network); a Podman service gets its own storage root.
Both are stopped and their directories removed when the `with` block ends. The bench
(bench/fleet.py) uses the same helpers, so they are plain context managers.
"""

from __future__ import annotations

import contextlib
import os
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

import docker

REGISTRY = os.environ.get("ROLEBAKE_TEST_REGISTRY", "127.0.0.1:5000")


def registry_answers(address: str = REGISTRY) -> bool:
    """Whether a registry answers the distribution API on `address` (plain HTTP)."""
    try:
        with urllib.request.urlopen(f"http://{address}/v2/", timeout=3) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def registry_tags(repository: str, address: str = REGISTRY) -> list[str] | None:
    """The registry's tag list of `repository` (`path`, no host), or None when it has none."""
    try:
        with urllib.request.urlopen(f"http://{address}/v2/{repository}/tags/list",
                                    timeout=10) as response:
            import json

            return sorted(json.load(response).get("tags") or [])
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def registry_config_digest(repository: str, tag: str, address: str = REGISTRY) -> str:
    """The config digest (the image id) of `repository:tag` in the registry."""
    import json

    request = urllib.request.Request(
        f"http://{address}/v2/{repository}/manifests/{tag}",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json, "
                           "application/vnd.oci.image.manifest.v1+json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(json.load(response)["config"]["digest"])


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


def _short_tmp(prefix: str) -> Path:
    # A unix socket path must stay under 108 bytes: pytest's tmp_path can be longer.
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def _wait_for(client: docker.DockerClient, proc: subprocess.Popen[bytes], log: Path,
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


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def _kill_mentioning(text: str) -> None:
    """Kill, by pid, the processes whose command line names `text` (our own root dir)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if text.encode() in (entry / "cmdline").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)


@contextlib.contextmanager
def empty_dockerd() -> Iterator[OwnEngine]:
    """A second, empty Docker engine of our own, stopped and removed afterwards."""
    root = _short_tmp("rb-dockerd-")
    sock = root / "docker.sock"
    log = root / "dockerd.log"
    argv = ["dockerd", "--data-root", str(root / "data"), "--exec-root", str(root / "exec"),
            "--pidfile", str(root / "dockerd.pid"), "-H", f"unix://{sock}",
            "--bridge=none", "--iptables=false", "--ip-masq=false"]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    # A fixed API version: the client must not ask the engine before it listens.
    client = docker.DockerClient(base_url=f"unix://{sock}", version="1.41", timeout=600)
    try:
        _wait_for(client, proc, log)
        yield OwnEngine(host=f"unix://{sock}", client=client, root=root)
    finally:
        client.close()
        _stop(proc)
        # Its overlay mounts go with the daemon; anything left is unmounted before removal.
        subprocess.run(["sh", "-c", f"grep -o ' {root}/[^ ]*' /proc/mounts | sort -r | "
                        "xargs -r -n1 umount -l"], check=False)
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def podman_service() -> Iterator[OwnEngine]:
    """Podman's Docker-compatible API on a socket of our own, with its own storage."""
    if shutil.which("podman") is None:
        raise FileNotFoundError("podman is not installed (make podman)")
    root = _short_tmp("rb-podman-")
    sock = root / "podman.sock"
    log = root / "podman.log"
    storage = ["--root", str(root / "storage"), "--runroot", str(root / "run")]
    with log.open("wb") as out:
        proc = subprocess.Popen(["podman", *storage, "system", "service", "--time=0",
                                 f"unix://{sock}"], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    client = docker.DockerClient(base_url=f"unix://{sock}", version="1.41", timeout=600)
    try:
        _wait_for(client, proc, log)
        yield OwnEngine(host=f"unix://{sock}", client=client, root=root)
    finally:
        client.close()
        _stop(proc)
        # Each exec leaves a conmon waiting five minutes to clean up after it; the
        # service and its containers are gone, so those of this storage root go now.
        _kill_mentioning(str(root))
        subprocess.run(["podman", *storage, "system", "reset", "--force"],
                       capture_output=True, check=False, timeout=300)
        subprocess.run(["sh", "-c", f"grep -o ' {root}/[^ ]*' /proc/mounts | sort -r | "
                        "xargs -r -n1 umount -l"], check=False)
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def registry_with_login(user: str, password: str) -> Iterator[str]:
    """A second loopback registry that wants a login (htpasswd, bcrypt), on a free port.

    Yields its address. The same docker-registry binary `make registry` runs.
    """
    import socket
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # bcrypt through the C library: what htpasswd files hold

        hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    root = _short_tmp("rb-authreg-")
    (root / "htpasswd").write_text(f"{user}:{hashed}\n")
    (root / "config.yml").write_text("\n".join([
        "version: 0.1", "log: {level: warn}",
        f"storage: {{filesystem: {{rootdirectory: {root}/data}}}}",
        f"http: {{addr: 127.0.0.1:{port}}}",
        f"auth: {{htpasswd: {{realm: rolebake-test, path: {root}/htpasswd}}}}", ""]))
    with (root / "registry.log").open("wb") as out:
        proc = subprocess.Popen(["docker-registry", "serve", str(root / "config.yml")],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://{address}/v2/", timeout=2)
            except urllib.error.HTTPError:
                break  # 401: it answers, and wants a login
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the registry with a login did not start:\n"
                                       + (root / "registry.log").read_text()[-2000:]) from None
                time.sleep(0.2)
            else:
                break
        yield address
    finally:
        _stop(proc)
        shutil.rmtree(root, ignore_errors=True)


def docker_config(folder: Path, registry: str | None, user: str = "",
                  password: str = "") -> dict[str, str]:
    """A docker client config (as `docker login` writes it); env for runs that use it."""
    import base64
    import json

    folder.mkdir(parents=True, exist_ok=True)
    auths = {registry: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
             } if registry else {}
    (folder / "config.json").write_text(json.dumps({"auths": auths}))
    return {"DOCKER_CONFIG": str(folder)}
