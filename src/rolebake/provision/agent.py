"""One exec per build container instead of several per task: the relay to rolebake's agent.

With the engine's exec API (community.docker.docker_api) every command Ansible
runs is a new container exec: runc starts, joins the container's namespaces
and cgroups, and a `template` task needs four or five of them. rolebake starts
one python in the build container (scripts/agent.py) with a single exec and
keeps it for the layer; Ansible's `rolebake_agent` connection plugin (in
ansible_plugins/) hands each command to this relay over a private unix socket
on this machine, and the relay passes it to the agent over the exec's stdin
and stdout. Mitogen does the same for SSH. Progress and failure reports do not
change: Ansible still runs on this machine.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rolebake.engine import ContainerHandle, Engine, ExecStream
from rolebake.errors import BuildFailed
from rolebake.scripts import script

PLUGINS = Path(__file__).resolve().parent / "ansible_plugins"
CONNECTION = "rolebake_agent"


class AgentRelay:
    """Serves the agent of one build container on a unix socket, one request at a time."""

    def __init__(self, stream: ExecStream, socket_path: Path) -> None:
        """Relay requests arriving at `socket_path` to the agent behind `stream`."""
        self.stream = stream
        self.socket_path = socket_path
        self._lock = threading.Lock()
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(socket_path))
        self._server.listen(8)
        self._thread = threading.Thread(target=self._serve, name="rolebake-agent-relay",
                                        daemon=True)
        self._thread.start()

    def call(self, head: dict[str, Any], *payloads: bytes) -> tuple[dict[str, Any], list[bytes]]:
        """Send one request to the agent and read its answer (EOFError: the agent is gone)."""
        head = dict(head, lens=[len(p) for p in payloads])
        with self._lock:
            self.stream.write(json.dumps(head).encode("utf-8") + b"\n" + b"".join(payloads))
            answer = json.loads(self.stream.readline())
            parts = [self.stream.read(size) for size in answer.get("lens") or []]
        return answer, parts

    def close(self) -> None:
        """Stop serving; the agent ends when its stdin closes."""
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        self.stream.close()
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._client, args=(conn,), daemon=True,
                             name="rolebake-agent-client").start()

    def _client(self, conn: socket.socket) -> None:
        # One Ansible worker: requests in, answers out, until it hangs up.
        with conn, conn.makefile("rb") as reader:
            while True:
                line = reader.readline()
                if not line:
                    return
                try:
                    head = json.loads(line)
                    payloads = [_read(reader, size) for size in head.pop("lens", [])]
                    answer, parts = self.call(head, *payloads)
                except (ValueError, EOFError, OSError) as exc:
                    answer, parts = {"rc": 255, "error": f"rolebake agent: {exc}"}, []
                answer["lens"] = [len(p) for p in parts]
                try:
                    conn.sendall(json.dumps(answer).encode("utf-8") + b"\n" + b"".join(parts))
                except OSError:
                    return


@contextlib.contextmanager
def relay(engine: Engine, container: ContainerHandle, python: str,
          env: dict[str, str]) -> Iterator[AgentRelay]:
    """Start the agent with `python` in the container and relay to it for a `with` block.

    Raises:
        BuildFailed: the agent did not answer (no such python, a broken one).
    """
    folder = Path(tempfile.mkdtemp(prefix="rolebake-agent-"))  # 0700; short for AF_UNIX
    stream = engine.exec_stream(container, [python, "-c", script("agent.py")], env=env)
    try:
        served = AgentRelay(stream, folder / "agent.sock")
    except OSError:
        stream.close()
        shutil.rmtree(folder, ignore_errors=True)
        raise
    try:
        try:
            answer, _ = served.call({"op": "exec", "shell": "/bin/sh", "cmd": "true"})
        except (EOFError, OSError, ValueError) as exc:
            raise BuildFailed(f"rolebake's agent did not start with {python}",
                              details=f"{exc}\n{stream.stderr.decode('utf-8', 'replace')}"
                              ) from None
        if answer.get("rc") != 0:
            raise BuildFailed(f"rolebake's agent did not start with {python}",
                              details=str(answer.get("error", "")))
        yield served
    finally:
        served.close()
        shutil.rmtree(folder, ignore_errors=True)


def _read(reader: Any, size: int) -> bytes:
    data = reader.read(size)
    if len(data) != size:
        raise EOFError("the request ended early")
    return bytes(data)
