"""The connection to the engine: which engine answers, and noticing when it goes away."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from typing import Any, Self

import docker
import docker.errors
import requests.exceptions

from rolebake.errors import EngineUnavailable


class Connection:
    """A docker SDK client, the engine it reaches, and whether that engine went away."""

    def __init__(self, client: Any) -> None:
        """Wrap a docker SDK client (a fake one in unit tests)."""
        self.client = client
        self._went_away = threading.Event()

    @functools.cached_property
    def kind(self) -> str:
        """`podman` or `docker`: which engine answers, for the few things they do differently."""
        components = self.client.version().get("Components") or []
        names = " ".join(str(c.get("Name", "")) for c in components).lower()
        return "podman" if "podman" in names else "docker"

    @classmethod
    def connect(cls, timeout: int = 600) -> Self:
        """Connect to the engine DOCKER_HOST names (or the default socket) and check it answers.

        Raises:
            EngineUnavailable: no engine answers.
        """
        where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        over_ssh = where.startswith("ssh://")
        if over_ssh:
            _tolerate_ssh_exit()
        try:
            # ssh:// goes through the ssh client, as the docker CLI does: the user's
            # ssh config, keys and agent apply.
            client = docker.from_env(timeout=timeout, use_ssh_client=over_ssh)
            client.ping()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise EngineUnavailable(
                f"no container engine answers at {where}",
                details=str(exc),
                hint="start one with `make engine`, or point DOCKER_HOST at a running engine",
            ) from None
        return cls(client)

    def version(self) -> str:
        """The engine's version, for provenance."""
        return str(self.client.version().get("Version", "unknown"))

    def identity(self) -> str:
        """A digest naming this engine's image store, the same from any checkout on the host.

        The daemon's ID alone is not enough (dockerd versions before 23 derive it
        from a key file that every engine started on a host shares), so its host
        name and data root go in too. DOCKER_HOST does not: two ways to reach one
        engine (a socket, tcp://localhost) must share its locks.
        """
        info = self.client.info()
        parts = (str(info.get("ID", "")), str(info.get("Name", "")),
                 str(info.get("DockerRootDir", "")))
        return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()[:32]

    # The engine going away -------------------------------------------------------------

    @contextlib.contextmanager
    def watch(self) -> Iterator[None]:
        """Notice, for a `with` block, when the engine stops or restarts (see `restarted`).

        A daemon closes every events stream when it shuts down, and only then:
        one quiet stream (daemon events only) held open is the witness.
        """
        self._went_away.clear()
        try:
            stream = self.client.api.events(decode=True, filters={"type": "daemon"})
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            self._went_away.set()
            yield
            return
        closing = threading.Event()

        def read() -> None:
            with contextlib.suppress(Exception):
                for _event in stream:
                    pass
            if not closing.is_set():
                self._went_away.set()

        reader = threading.Thread(target=read, name="rolebake-engine-watch", daemon=True)
        reader.start()
        try:
            yield
        finally:
            closing.set()
            with contextlib.suppress(Exception):
                stream.close()

    def restarted(self) -> bool:
        """Whether the engine stopped (and maybe came back) since `watch` began."""
        # Once the old daemon has exited its stream has ended: give the reader a moment.
        return self._went_away.wait(0.2)

    def answers(self, wait_s: float = 0.0) -> bool:
        """Whether the engine answers, waiting up to `wait_s` for it to come back."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                # On a new connection: a daemon that is shutting down still answers on
                # the ones it had, after its socket is gone.
                self.client.api.close()
                if self.client.ping():
                    return True
            except (docker.errors.DockerException, requests.exceptions.RequestException):
                self._went_away.set()  # it did not answer: whatever comes back has restarted
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)


def _tolerate_ssh_exit() -> None:
    """Let an ssh:// connection close after its `ssh` has exited (docker-py issue 3218).

    With `use_ssh_client`, each connection is an `ssh ... docker system dial-stdio`
    process. When an exec's output has been read, that process may already have
    ended, and the SDK's `SSHSocket.close` then fails writing to it with
    BrokenPipeError, which loses the exec's result. Nothing is left to close then.
    """
    from docker.transport import sshconn

    original = sshconn.SSHSocket.close
    if getattr(original, "rolebake_tolerant", False):
        return

    def close(self: Any) -> None:
        with contextlib.suppress(BrokenPipeError):
            original(self)

    close.rolebake_tolerant = True  # type: ignore[attr-defined]
    sshconn.SSHSocket.close = close
