"""Ansible connection plugin: commands and files go to rolebake's agent in a build container.

Loaded by the ansible-playbook rolebake starts (ANSIBLE_CONNECTION_PLUGINS);
it talks to rolebake's relay over a unix socket on this machine, and the relay
to the agent in the container (see rolebake/provision/agent.py), in the
agent's own frames (rolebake/scripts/agent.py, standard library only, so a
worker imports no docker SDK). Files travel in chunks. When Ansible gives up
on a task (its `timeout:`), the worker process ends and its socket closes; the
relay then kills the command in the container. It has no use outside a
rolebake build.
"""

from __future__ import annotations

import json
import socket
from typing import Any, BinaryIO

from ansible.errors import AnsibleConnectionFailure, AnsibleError
from ansible.module_utils.common.text.converters import to_bytes, to_text
from ansible.plugins.connection import ConnectionBase

from rolebake.scripts import agent as wire

DOCUMENTATION = """
name: rolebake_agent
short_description: run tasks through rolebake's agent in a build container
description:
  - One long-lived python in the container runs every command; this plugin
    reaches it through rolebake's relay socket.
author: rolebake
options:
  socket:
    description: The relay's unix socket on this machine.
    type: str
    required: true
    vars:
      - name: ansible_rolebake_socket
  remote_addr:
    description: The container (for messages only).
    type: str
    default: inventory_hostname
    vars:
      - name: inventory_hostname
      - name: ansible_host
"""


class Connection(ConnectionBase):
    """A connection to the relay; one per Ansible worker."""

    transport = "rolebake_agent"
    has_pipelining = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sock: socket.socket | None = None
        self._reader: Any = None
        self._channel = 0

    def _connect(self) -> Connection:
        if not self._connected:  # type: ignore[has-type]
            try:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._sock.connect(self.get_option("socket"))
            except OSError as exc:
                raise AnsibleConnectionFailure(f"rolebake agent relay: {exc}") from exc
            self._reader = self._sock.makefile("rb")
            self._connected = True
        return self

    def _call(self, request: dict[str, Any], source: BinaryIO | bytes | None = None,
              sink: BinaryIO | None = None) -> tuple[dict[str, Any], bytes, bytes]:
        """One channel: its request, its input in chunks, then what comes back until DONE.

        Output goes to `sink` when given (a fetched file), else it is returned.
        """
        self._connect()
        assert self._sock is not None
        self._channel += 1
        number, out, err = self._channel, bytearray(), bytearray()
        try:
            self._sock.sendall(wire.frame(number, wire.OPEN, json.dumps(request).encode()))
            if isinstance(source, bytes):
                for start in range(0, len(source), wire.CHUNK):
                    self._sock.sendall(wire.frame(number, wire.DATA,
                                                  source[start:start + wire.CHUNK]))
            elif source is not None:
                while chunk := source.read(wire.CHUNK):
                    self._sock.sendall(wire.frame(number, wire.DATA, chunk))
            if request["op"] != "fetch":
                self._sock.sendall(wire.frame(number, wire.EOF))
            while True:
                channel, kind, payload = wire.read_frame(self._reader)
                if channel != number:
                    continue  # the tail of a channel given up on
                if kind == wire.DONE:
                    return json.loads(payload), bytes(out), bytes(err)
                if kind == wire.OUT and sink is not None:
                    sink.write(payload)
                else:
                    (out if kind == wire.OUT else err).extend(payload)
        except (OSError, EOFError, ValueError) as exc:
            self.close()
            raise AnsibleConnectionFailure(f"rolebake agent: {exc}") from exc
        except BaseException:
            # Ansible's task timeout (an alarm) interrupts us mid-answer: hang up,
            # so the relay kills the command and the next call starts clean.
            self.close()
            raise

    def exec_command(self, cmd: str, in_data: bytes | None = None,
                     sudoable: bool = True) -> tuple[int, bytes, bytes]:
        """Run a shell command in the container; its stdin is `in_data` (pipelining)."""
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        answer, out, err = self._call({"op": "exec", "shell": self._play_context.executable,
                                       "cmd": to_text(cmd)}, to_bytes(in_data or b""))
        if "error" in answer:
            raise AnsibleConnectionFailure(answer["error"])
        return int(answer["rc"]), out, err

    def put_file(self, in_path: str, out_path: str) -> None:
        """Copy a file from this machine into the container, in chunks."""
        super().put_file(in_path, out_path)
        with open(to_bytes(in_path), "rb") as handle:
            answer, _, _ = self._call({"op": "put", "path": to_text(out_path)}, handle)
        if "error" in answer:
            raise AnsibleError(f"could not put {out_path}: {answer['error']}")

    def fetch_file(self, in_path: str, out_path: str) -> None:
        """Copy a file from the container to this machine, in chunks."""
        super().fetch_file(in_path, out_path)
        with open(to_bytes(out_path), "wb") as handle:
            answer, _, _ = self._call({"op": "fetch", "path": to_text(in_path)}, sink=handle)
        if "error" in answer:
            raise AnsibleError(f"could not fetch {in_path}: {answer['error']}")

    def close(self) -> None:
        """Hang up on the relay (the agent keeps running for the next task)."""
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._reader = None
        self._connected = False
