"""Engines of the tests' own: the throwaway dockerd (bench/engines.py, which benchmarks
use too), a Podman API service, a registry with a login, and the loopback registry's
API.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import docker
from bench.engines import (  # shared with the benchmarks, which may not import tests/
    REGISTRY,
    OwnEngine,
    ThrowawayEngine,
    can_run_engines,
    empty_dockerd,
    kill_mentioning,
    registry_answers,
    short_tmp,
    stop_process,
    wait_for,
)

__all__ = [
    "REGISTRY",
    "OwnEngine",
    "ThrowawayEngine",
    "can_run_engines",
    "docker_config",
    "empty_dockerd",
    "podman_service",
    "registry_answers",
    "registry_config_digest",
    "registry_tags",
    "registry_with_login",
]


def registry_tags(repository: str, address: str = REGISTRY) -> list[str] | None:
    """The registry's tag list of `repository` (`path`, no host), or None when it has none."""
    try:
        with urllib.request.urlopen(f"http://{address}/v2/{repository}/tags/list",
                                    timeout=10) as response:
            return sorted(json.load(response).get("tags") or [])
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def registry_config_digest(repository: str, tag: str, address: str = REGISTRY) -> str:
    """The config digest (the image id) of `repository:tag` in the registry."""
    request = urllib.request.Request(
        f"http://{address}/v2/{repository}/manifests/{tag}",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json, "
                           "application/vnd.oci.image.manifest.v1+json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(json.load(response)["config"]["digest"])


@contextlib.contextmanager
def podman_service() -> Iterator[OwnEngine]:
    """Podman's Docker-compatible API on a socket of our own, with its own storage."""
    if shutil.which("podman") is None:
        raise FileNotFoundError("podman is not installed (make podman)")
    root = short_tmp("rb-podman-")
    sock = root / "podman.sock"
    log = root / "podman.log"
    storage = ["--root", str(root / "storage"), "--runroot", str(root / "run")]
    with log.open("wb") as out:
        proc = subprocess.Popen(["podman", *storage, "system", "service", "--time=0",
                                 f"unix://{sock}"], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    client = docker.DockerClient(base_url=f"unix://{sock}", version="1.41", timeout=600)
    try:
        wait_for(client, proc, log)
        yield OwnEngine(host=f"unix://{sock}", client=client, root=root)
    finally:
        client.close()
        stop_process(proc)
        # Each exec leaves a conmon waiting five minutes to clean up after it; the
        # service and its containers are gone, so those of this storage root go now.
        kill_mentioning(str(root))
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
    root = short_tmp("rb-authreg-")
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
        stop_process(proc)
        shutil.rmtree(root, ignore_errors=True)


def docker_config(folder: Path, registry: str | None, user: str = "",
                  password: str = "") -> dict[str, str]:
    """A docker client config (as `docker login` writes it); env for runs that use it."""
    import base64

    folder.mkdir(parents=True, exist_ok=True)
    auths = {registry: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
             } if registry else {}
    (folder / "config.json").write_text(json.dumps({"auths": auths}))
    return {"DOCKER_CONFIG": str(folder)}
