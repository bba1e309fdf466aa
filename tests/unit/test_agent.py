"""rolebake's agent, its relay and the Ansible connection plugin, with the agent run locally.

The agent is plain python reading stdin and writing stdout, so it runs here as a
subprocess in place of the engine exec; an ansible-playbook run through the
`rolebake_agent` plugin then proves the whole path Ansible uses in a build.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rolebake.provision.agent import CONNECTION, PLUGINS, AgentRelay
from rolebake.scripts import script


class LocalStream:
    """What Engine.exec_stream gives, over a local process."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.stderr = bytearray()

    def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def readline(self) -> bytes:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise EOFError("ended")
        return line

    def read(self, size: int) -> bytes:
        assert self.proc.stdout is not None
        data = self.proc.stdout.read(size)
        if len(data) < size:
            raise EOFError("ended")
        return data

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[AgentRelay]:
    stream = LocalStream([sys.executable, "-c", script("agent.py")])
    served = AgentRelay(stream, tmp_path / "agent.sock")  # type: ignore[arg-type]
    yield served
    served.close()
    assert stream.proc.returncode == 0  # it ended when its stdin closed


def test_exec_put_fetch(relay: AgentRelay, tmp_path: Path) -> None:
    head, parts = relay.call({"op": "exec", "shell": "/bin/sh",
                              "cmd": "cat; echo err >&2; exit 3"}, b"\x00binary\xff")
    assert head["rc"] == 3 and parts == [b"\x00binary\xff", b"err\n"]
    target = tmp_path / "put.bin"
    head, parts = relay.call({"op": "put", "path": str(target)}, b"payload")
    assert head["rc"] == 0 and target.read_bytes() == b"payload"
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    head, parts = relay.call({"op": "fetch", "path": str(target)})
    assert parts == [b"payload"]
    head, parts = relay.call({"op": "fetch", "path": str(tmp_path / "missing")})
    assert head["rc"] == 255 and "FileNotFoundError" in head["error"]
    # a failed request does not end the agent
    assert relay.call({"op": "exec", "cmd": "echo still"})[1][0] == b"still\n"


def test_ansible_playbook_through_the_plugin(relay: AgentRelay, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (tmp_path / "t.j2").write_text("hello {{ who }}\n")
    (tmp_path / "site.yml").write_text(f"""
- hosts: all
  gather_facts: true
  tasks:
    - ansible.builtin.file: {{path: "{out}", state: directory}}
    - ansible.builtin.copy: {{dest: "{out}/copied", content: "copied\\n"}}
    - ansible.builtin.template: {{src: "{tmp_path}/t.j2", dest: "{out}/templated"}}
    - ansible.builtin.command: cat {out}/templated
      register: shown
    - ansible.builtin.fetch: {{src: "{out}/copied", dest: "{tmp_path}/fetched/", flat: true}}
    - ansible.builtin.assert: {{that: ["shown.stdout == 'hello agent'",
                                      "ansible_facts.python.executable is string"]}}
""")
    env = {**os.environ, "ANSIBLE_CONNECTION_PLUGINS": str(PLUGINS / "connection"),
           "ANSIBLE_PIPELINING": "True", "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"), "ANSIBLE_REMOTE_TMP": str(tmp_path / "rt")}
    playbook = Path(sys.executable).parent / "ansible-playbook"
    done = subprocess.run(
        [str(playbook), "-i", "box,", "-c", CONNECTION, "-e", "who=agent",
         "-e", f"ansible_rolebake_socket={relay.socket_path}",
         "-e", f"ansible_python_interpreter={sys.executable}", str(tmp_path / "site.yml")],
        env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    assert (out / "copied").read_text() == "copied\n"
    assert (out / "templated").read_text() == "hello agent\n"
    assert (tmp_path / "fetched" / "copied").read_text() == "copied\n"
