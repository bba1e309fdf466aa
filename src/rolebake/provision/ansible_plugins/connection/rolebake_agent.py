"""Ansible connection plugin: commands and files go to rolebake's agent in a build container.

Loaded by the ansible-playbook rolebake starts (ANSIBLE_CONNECTION_PLUGINS);
it talks to rolebake's relay over a unix socket on this machine, and the relay
to the agent in the container (see rolebake/provision/agent.py). It has no
use outside a rolebake build.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from ansible.errors import AnsibleConnectionFailure, AnsibleError
from ansible.module_utils.common.text.converters import to_bytes, to_text
from ansible.plugins.connection import ConnectionBase

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

    def _call(self, head: dict[str, Any], *payloads: bytes) -> tuple[dict[str, Any], list[bytes]]:
        self._connect()
        assert self._sock is not None
        head = dict(head, lens=[len(p) for p in payloads])
        try:
            self._sock.sendall(json.dumps(head).encode("utf-8") + b"\n" + b"".join(payloads))
            line = self._reader.readline()
            if not line:
                raise EOFError("the relay hung up")
            answer = json.loads(line)
            parts = [self._reader.read(size) for size in answer.get("lens") or []]
        except (OSError, EOFError, ValueError) as exc:
            raise AnsibleConnectionFailure(f"rolebake agent: {exc}") from exc
        return answer, parts

    def exec_command(self, cmd: str, in_data: bytes | None = None,
                     sudoable: bool = True) -> tuple[int, bytes, bytes]:
        """Run a shell command in the container; its stdin is `in_data` (pipelining)."""
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        answer, parts = self._call({"op": "exec", "shell": self._play_context.executable,
                                    "cmd": to_text(cmd)}, to_bytes(in_data or b""))
        if "error" in answer:
            raise AnsibleConnectionFailure(answer["error"])
        out, err = [*parts, b"", b""][:2]
        return int(answer["rc"]), out, err

    def put_file(self, in_path: str, out_path: str) -> None:
        """Copy a file from this machine into the container."""
        super().put_file(in_path, out_path)
        with open(to_bytes(in_path), "rb") as handle:
            data = handle.read()
        answer, _ = self._call({"op": "put", "path": to_text(out_path)}, data)
        if "error" in answer:
            raise AnsibleError(f"could not put {out_path}: {answer['error']}")

    def fetch_file(self, in_path: str, out_path: str) -> None:
        """Copy a file from the container to this machine."""
        super().fetch_file(in_path, out_path)
        answer, parts = self._call({"op": "fetch", "path": to_text(in_path)})
        if "error" in answer:
            raise AnsibleError(f"could not fetch {in_path}: {answer['error']}")
        with open(to_bytes(out_path), "wb") as handle:
            handle.write(parts[0] if parts else b"")

    def close(self) -> None:
        """Hang up on the relay (the agent keeps running for the next task)."""
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._reader = None
        self._connected = False
