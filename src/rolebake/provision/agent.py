"""One agent per build container for every task: the relay from Ansible's workers to the session.

With the engine's exec API (community.docker.docker_api) every command Ansible
runs is a new container exec: runc starts, joins the container's namespaces
and cgroups, and a `template` task needs four or five of them. The build
container's session (engine/session.py) runs one agent for the whole layer;
Ansible's `rolebake_agent` connection plugin (in ansible_plugins/) reaches it
through this relay, a private unix socket on this machine. The plugin speaks
the agent's own frames (scripts/agent.py); the relay only renumbers channels,
so commands of parallel workers run side by side and files pass in chunks.

A worker that goes away (Ansible's task `timeout:` ends it, a cancelled run)
closes its socket; the relay then kills whatever that worker still had
running, process group and all, so the next task does not wait behind it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from rolebake.engine import Channel, ContainerHandle, ContainerSession, Engine, SessionError
from rolebake.scripts import agent as wire

PLUGINS = Path(__file__).resolve().parent / "ansible_plugins"
CONNECTION = "rolebake_agent"


class AgentRelay:
    """Serves one container's session on a unix socket, to any number of Ansible workers."""

    def __init__(self, session: ContainerSession, socket_path: Path) -> None:
        """Relay the workers connecting to `socket_path` to `session`."""
        self.session = session
        self.socket_path = socket_path
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(socket_path))
        self._server.listen(16)
        self._thread = threading.Thread(target=self._serve, name="rolebake-agent-relay",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving (the session is the caller's to close)."""
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return  # closed
            threading.Thread(target=_Worker(self.session, conn).serve, daemon=True,
                             name="rolebake-agent-worker").start()


class _Worker:
    """One Ansible worker's connection: its channels, renumbered onto the session."""

    def __init__(self, session: ContainerSession, conn: socket.socket) -> None:
        self.session = session
        self.conn = conn
        self.lock = threading.Lock()
        self.channels: dict[int, Channel] = {}

    def serve(self) -> None:
        with self.conn, self.conn.makefile("rb") as reader:
            try:
                while True:
                    number, kind, payload = wire.read_frame(reader)
                    self._forward(number, kind, payload)
            except (EOFError, OSError, ValueError, SessionError):
                pass
            finally:
                # The worker hung up (a task timeout ends its process): what it
                # left running in the container is killed, not waited for.
                for channel in list(self.channels.values()):
                    if not channel.done.is_set():
                        channel.kill()

    def _forward(self, number: int, kind: bytes, payload: bytes) -> None:
        if kind == wire.OPEN:
            self.channels[number] = self.session.open(
                json.loads(payload), sink=functools.partial(self._back, number))
            return
        channel = self.channels.get(number)
        if channel is not None:
            self.session.send(channel.number, kind, payload)

    def _back(self, number: int, kind: bytes, payload: bytes) -> None:
        if kind == wire.DONE:
            self.channels.pop(number, None)
        try:
            with self.lock:
                self.conn.sendall(wire.frame(number, kind, payload))
        except OSError:
            pass  # the worker is gone; serve() kills its channels


@contextlib.contextmanager
def relay(engine: Engine, container: ContainerHandle, python: str,
          env: dict[str, str]) -> Iterator[AgentRelay]:
    """Start the container's session with `python` and relay to it for a `with` block.

    Raises:
        SessionError: the agent did not answer (no such python, a broken one).
    """
    folder = Path(tempfile.mkdtemp(prefix="rolebake-agent-"))  # 0700; short for AF_UNIX
    try:
        with engine.session(container, python, env=env) as session:
            served = AgentRelay(session, folder / "agent.sock")
            try:
                yield served
            finally:
                served.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
