"""The connection to the engine: which engine answers, and noticing when it goes away.

DOCKER_HOST is an input like any other (DESIGN.md invariant 7): it is read
here, once, by `engine_address`, before anything connects. An `ssh://` URL
whose user or host looks like an option, or whose port is not a number, is
refused in one line (the ssh client would take `-oX` as an option); a
`tcp://` URL without TLS is marked `insecure`, for the CLI to name it on
stderr and to refuse a build with secrets over it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Self

import docker
import docker.errors
import requests.exceptions

from rolebake.engine.sdk import ssh_transport
from rolebake.errors import EngineUnavailable

DEFAULT_HOST = "unix:///var/run/docker.sock"
# A host name, an IPv4 address or a bracketed IPv6 one: nothing an ssh client
# could read as an option or a second argument.
_HOST = re.compile(r"^(?:[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?|\[[0-9A-Fa-f:.]+\])$")
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class EngineAddress:
    """Where the engine is, as DOCKER_HOST says, checked before anything connects."""

    url: str
    scheme: str  # unix | tcp | ssh | npipe | fd
    tls: bool = False  # tcp:// with DOCKER_TLS_VERIFY or DOCKER_CERT_PATH

    @property
    def insecure(self) -> bool:
        """True for tcp:// without TLS: the API, and any secret sent through it, in clear."""
        return self.scheme == "tcp" and not self.tls


def engine_address(environ: Mapping[str, str] | None = None) -> EngineAddress:
    """The engine DOCKER_HOST names (the default socket without it), checked.

    Args:
        environ: the environment to read (default: this process's).

    Raises:
        EngineUnavailable: a malformed DOCKER_HOST, in one line (exit 4).
    """
    env = os.environ if environ is None else environ
    url = (env.get("DOCKER_HOST") or DEFAULT_HOST).strip()
    scheme, sep, _rest = url.partition("://")
    if not sep:
        # `host:2375` is tcp to the docker SDK and CLI alike.
        scheme, url = "tcp", f"tcp://{url}"
    scheme = scheme.lower()
    if scheme == "ssh":
        _check_ssh(url)
    elif scheme in ("tcp", "http", "https"):
        _port(url, urllib.parse.urlsplit(url))
    # docker-py's own rule (`kwargs_from_env`): TLS when a cert path is given, or when
    # DOCKER_TLS_VERIFY is set to anything but the empty string.
    tls = bool(env.get("DOCKER_CERT_PATH")) or bool(env.get("DOCKER_TLS_VERIFY"))
    return EngineAddress(url=url, scheme="tcp" if scheme == "http" else scheme,
                         tls=tls or scheme == "https")


def _check_ssh(url: str) -> None:
    """Refuse an ssh:// URL the ssh client could read as options, or with a bad port."""
    parts = urllib.parse.urlsplit(url)
    user, at, host = parts.netloc.rpartition("@")
    host = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    if at and (not user or not _USER.match(user)):
        raise EngineUnavailable(f"DOCKER_HOST {url!r}: {user!r} is not a user name "
                                "(letters, digits, `_`, `.`, `-`; not starting with `-`)")
    if not host or not _HOST.match(host):
        raise EngineUnavailable(f"DOCKER_HOST {url!r}: {host!r} is not a host name "
                                "(letters, digits, `.`, `-`; not starting with `-`)")
    _port(url, parts)


def _port(url: str, parts: urllib.parse.SplitResult) -> None:
    try:
        parts.port  # noqa: B018 - parsing it is the check
    except ValueError:
        raise EngineUnavailable(f"DOCKER_HOST {url!r}: the port is not a number from 1 to "
                                "65535") from None
    if parts.port == 0:
        raise EngineUnavailable(f"DOCKER_HOST {url!r}: the port is not a number from 1 to "
                                "65535")


class Connection:
    """A docker SDK client, the engine it reaches, and whether that engine went away."""

    def __init__(self, client: Any) -> None:
        """Wrap a docker SDK client (a fake one in unit tests)."""
        self.client = client
        self._went_away = threading.Event()
        self._identity: str | None = None
        self.address = EngineAddress(DEFAULT_HOST, "unix")

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
            EngineUnavailable: a malformed DOCKER_HOST, or no engine answers.
        """
        address = engine_address()
        where = address.url
        over_ssh = address.scheme == "ssh"
        if over_ssh:
            _tolerate_ssh_exit()
        try:
            # ssh:// goes through the ssh client, as the docker CLI does: the user's
            # ssh config, keys and agent apply.
            # No ping after: the SDK asks the engine its API version as it connects
            # (GET /version), an answer as good as a ping's, one round trip fewer.
            client = docker.from_env(timeout=timeout, use_ssh_client=over_ssh)
        except (docker.errors.DockerException, requests.exceptions.RequestException,
                ValueError, OSError) as exc:  # the SDK's own URL parsing raises ValueError
            raise EngineUnavailable(
                f"no container engine answers at {where}",
                details=str(exc),
                hint="start one with `make engine`, or point DOCKER_HOST at a running engine",
            ) from None
        connection = cls(client)
        connection.address = address
        return connection

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
        if self._identity is not None:
            return self._identity
        info = self.client.info()
        parts = (str(info.get("ID", "")), str(info.get("Name", "")),
                 str(info.get("DockerRootDir", "")))
        # Kept for the process: GET /info is the engine's slowest lookup (tens of ms,
        # it counts every container and image) and the locks and the tag journal
        # ask for it per layer; none of its parts changes while the engine runs, and
        # an engine that restarted is noticed by `watch`, not by this.
        self._identity = hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()[:32]
        return self._identity

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

    ssh_transport()
    original = sshconn.SSHSocket.close
    if getattr(original, "rolebake_tolerant", False):
        return

    def close(self: Any) -> None:
        with contextlib.suppress(BrokenPipeError):
            original(self)

    close.rolebake_tolerant = True  # type: ignore[attr-defined]
    sshconn.SSHSocket.close = close
