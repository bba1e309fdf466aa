"""Commands run inside a container: waited for, or long-lived over stdin and stdout."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import docker.errors
import docker.utils.socket

from rolebake.engine.connection import Connection
from rolebake.engine.failures import api_message, engine_failure
from rolebake.engine.records import ContainerHandle, ExecResult
from rolebake.engine.session import ContainerSession, SessionResult, agent_argv, agent_session
from rolebake.errors import BuildFailed


class Commands(Connection):
    """Commands in the engine's containers."""

    def exec(
        self,
        container: ContainerHandle,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        user: str = "root",
    ) -> ExecResult:
        """Run a command in a container and wait for it."""
        try:
            rc, output = self.client.containers.get(container.id).exec_run(
                list(argv), environment=dict(env or {}), user=user, demux=False
            )
        except docker.errors.APIError as exc:
            raise engine_failure(f"could not run {argv[0]} in container {container.name}",
                                 exc) from None
        return ExecResult(rc=int(rc if rc is not None else -1),
                          output=(output or b"").decode("utf-8", "replace"))

    def exec_stream(self, container: ContainerHandle, argv: Sequence[str], *,
                    env: Mapping[str, str] | None = None) -> ExecStream:
        """Start a long-lived command in a container, talking to it over its stdin and stdout."""
        try:
            created = self.client.api.exec_create(container.id, list(argv), stdin=True,
                                                  stdout=True, stderr=True, user="root",
                                                  environment=dict(env or {}))
            sock = self.client.api.exec_start(created["Id"], socket=True)
        except docker.errors.APIError as exc:
            raise BuildFailed(f"could not start {argv[0]} in container {container.name}: "
                              f"{api_message(exc)}") from None
        return ExecStream(sock)

    def exec_demuxed(self, container: ContainerHandle, argv: Sequence[str], *,
                     user: str = "root") -> SessionResult:
        """Run a command and wait for it, its stdout and stderr apart (no stdin)."""
        try:
            rc, (out, err) = self.client.containers.get(container.id).exec_run(
                list(argv), user=user, demux=True)
        except docker.errors.APIError as exc:
            raise engine_failure(f"could not run {argv[0]} in container {container.name}",
                                 exc) from None
        return SessionResult(rc=int(rc if rc is not None else -1), stdout=out or b"",
                             stderr=err or b"")

    @contextlib.contextmanager
    def session(self, container: ContainerHandle, python: str, *,
                env: Mapping[str, str] | None = None) -> Iterator[ContainerSession]:
        """A session: rolebake's agent started with `python` in the container, for a `with` block.

        Raises:
            SessionError: the agent did not start (no such python, a broken one).
        """
        stream = self.exec_stream(container, agent_argv(python), env=env)
        with agent_session(stream, python) as served:
            yield served

    def shell(self, container: ContainerHandle, script: str, *args: str,
              env: Mapping[str, str] | None = None) -> ExecResult:
        """Run a POSIX shell script inside a container; the script is one argv item."""
        return self.exec(container, ["/bin/sh", "-c", script, "rolebake", *args], env=env)


class ExecStream:
    """A running exec's stdin (write) and stdout (read); its stderr is kept for errors."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buffer = bytearray()
        self.stderr = bytearray()

    def write(self, data: bytes) -> None:
        """Send bytes to the command's stdin."""
        getattr(self._sock, "_sock", self._sock).sendall(data)

    def readline(self) -> bytes:
        """One line of stdout, with its newline; EOFError when the command ended."""
        while b"\n" not in self._buffer:
            self._fill()
        end = self._buffer.index(b"\n") + 1
        line = bytes(self._buffer[:end])
        del self._buffer[:end]
        return line

    def read(self, size: int) -> bytes:
        """Exactly `size` bytes of stdout; EOFError when the command ended first."""
        while len(self._buffer) < size:
            self._fill()
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def close(self) -> None:
        """Close stdin (the command sees end of input) and the connection."""
        raw = getattr(self._sock, "_sock", self._sock)
        with contextlib.suppress(OSError):
            raw.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):
            self._sock.close()

    def _fill(self) -> None:
        # Without a tty the engine frames the output: 1 byte stream, 3 zero, 4 size.
        kind, size = docker.utils.socket.next_frame_header(self._sock)
        if size <= 0:
            raise EOFError("the command in the container ended")
        data = docker.utils.socket.read_exactly(self._sock, size)
        (self.stderr if kind == docker.utils.socket.STDERR else self._buffer).extend(data)
