"""rolebake's session, its agent, the relay and the Ansible connection plugin, run locally.

The agent is plain python reading frames on stdin and writing them on stdout,
so it runs here as a subprocess in place of the engine exec; the session, the
relay and an ansible-playbook run through the `rolebake_agent` plugin then go
the whole path Ansible takes in a build.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rolebake.engine import ContainerSession, SessionError
from rolebake.engine.session import agent_argv, agent_session
from rolebake.provision.agent import CONNECTION, PLUGINS, AgentRelay
from rolebake.scripts import agent as wire


class LocalStream:
    """What Engine.exec_stream gives, over a local process."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.stderr = bytearray()
        self._write = threading.Lock()

    def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def read(self, size: int) -> bytes:
        assert self.proc.stdout is not None
        return self.proc.stdout.read(size)

    def close(self) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.close()
        finally:
            self.proc.wait(timeout=10)


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


def _wait_gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def stream() -> Iterator[LocalStream]:
    served = LocalStream(agent_argv(sys.executable))
    yield served
    if served.proc.poll() is None:
        served.close()


@pytest.fixture
def session(stream: LocalStream) -> Iterator[ContainerSession]:
    with agent_session(stream, sys.executable) as served:
        yield served
    assert stream.proc.returncode == 0  # it ended when its stdin closed


def test_run_gives_rc_stdout_stderr_apart(session: ContainerSession) -> None:
    done = session.run(["/bin/sh", "-c", "cat; echo err >&2; exit 3"], stdin=b"\x00binary\xff")
    assert (done.rc, done.stdout, done.stderr, done.timed_out) == (3, b"\x00binary\xff",
                                                                   b"err\n", False)
    assert session.shell('printf "%s" "$1"', "quoted 'arg'").stdout == b"quoted 'arg'"
    # a command that does not read a large stdin neither blocks nor ends the agent
    assert session.run(["true"], stdin=b"x" * (3 * wire.CHUNK)).rc == 0
    with pytest.raises(SessionError, match="FileNotFoundError"):
        session.run(["/no/such/program"])
    assert session.run(["echo", "still"]).stdout == b"still\n"


def test_commands_run_side_by_side(session: ContainerSession) -> None:
    slow = threading.Thread(target=session.run, args=(["sleep", "3"],))
    started = time.monotonic()
    slow.start()
    time.sleep(0.2)
    assert session.run(["echo", "quick"]).stdout == b"quick\n"
    assert time.monotonic() - started < 2.0  # not behind the sleep
    slow.join()


def test_timeout_kills_the_whole_process_group(session: ContainerSession,
                                               tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    started = time.monotonic()
    done = session.shell('sleep 300 & echo $! > "$1"; sleep 300', str(pids), timeout=1)
    assert done.timed_out and done.rc == -9
    assert time.monotonic() - started < 5
    assert _wait_gone(int(pids.read_text()))  # the background child too


def test_a_killed_channel_and_a_closed_session_leave_nothing(
        stream: LocalStream, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    with agent_session(stream, sys.executable) as session:
        channel = session.open({"op": "exec", "argv": ["/bin/sh", "-c",
                                                       f"echo $$ > {pid_file}; exec sleep 300"]})
        channel.end()
        while not pid_file.exists() or not pid_file.read_text().strip():
            time.sleep(0.05)
        channel.kill()
        answer = next(json.loads(p) for k, p in channel.frames() if k == wire.DONE)
        assert answer["rc"] == -9
        assert _wait_gone(int(pid_file.read_text()))
        # rolebake going away (the agent's stdin closes) kills what still runs
        pid_file.unlink()
        channel = session.open({"op": "exec", "argv": ["/bin/sh", "-c",
                                                       f"echo $$ > {pid_file}; exec sleep 300"]})
        channel.end()
        while not pid_file.exists() or not pid_file.read_text().strip():
            time.sleep(0.05)
    assert _wait_gone(int(pid_file.read_text()))
    with pytest.raises(SessionError, match="gone"):
        session.run(["true"])


def test_files_travel_in_chunks(session: ContainerSession, tmp_path: Path) -> None:
    data = os.urandom(3 * wire.CHUNK + 17)
    target = tmp_path / "put.bin"
    session.put(io.BytesIO(data), str(target))
    assert target.read_bytes() == data
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    assert not list(tmp_path.glob("*.rolebake-partial"))
    back = tmp_path / "fetched.bin"
    session.fetch(str(target), back)
    assert back.read_bytes() == data
    with pytest.raises(SessionError, match="FileNotFoundError"):
        session.fetch(str(tmp_path / "missing"), tmp_path / "never")
    with pytest.raises(SessionError, match="could not copy a file"):
        session.put(io.BytesIO(b"x"), str(tmp_path / "no" / "dir" / "file"))


def test_the_agent_answers_a_bad_request_and_keeps_serving(session: ContainerSession) -> None:
    channel = session.open({"op": "format-disk"})
    answer = next(json.loads(p) for k, p in channel.frames() if k == wire.DONE)
    assert answer["rc"] == 255 and "format-disk" in answer["error"]
    assert session.run(["true"]).rc == 0


def test_a_worker_hanging_up_kills_its_command(session: ContainerSession,
                                               tmp_path: Path) -> None:
    relay = AgentRelay(session, tmp_path / "agent.sock")
    pid_file = tmp_path / "pid"
    try:
        worker = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        worker.connect(str(relay.socket_path))
        request = {"op": "exec", "shell": "/bin/sh", "cmd": f"echo $$ > {pid_file}; exec sleep 300"}
        worker.sendall(wire.frame(7, wire.OPEN, json.dumps(request).encode())
                       + wire.frame(7, wire.EOF))
        while not pid_file.exists() or not pid_file.read_text().strip():
            time.sleep(0.05)
        worker.close()  # what Ansible's task timeout does to its worker
        assert _wait_gone(int(pid_file.read_text()))
        assert session.run(["true"]).rc == 0
    finally:
        relay.close()


def test_ansible_playbook_through_the_plugin(session: ContainerSession, tmp_path: Path) -> None:
    relay = AgentRelay(session, tmp_path / "agent.sock")
    out = tmp_path / "out"
    (tmp_path / "t.j2").write_text("hello {{ who }}\n")
    (tmp_path / "big").write_bytes(os.urandom(5 * wire.CHUNK + 3))
    pid_file = tmp_path / "sleep.pid"
    (tmp_path / "site.yml").write_text(f"""
- hosts: all
  gather_facts: true
  tasks:
    - ansible.builtin.file: {{path: "{out}", state: directory}}
    - ansible.builtin.copy: {{dest: "{out}/copied", content: "copied\\n"}}
    - ansible.builtin.copy: {{dest: "{out}/big", src: "{tmp_path}/big"}}
    - ansible.builtin.template: {{src: "{tmp_path}/t.j2", dest: "{out}/templated"}}
    - ansible.builtin.command: cat {out}/templated
      register: shown
    - ansible.builtin.fetch: {{src: "{out}/copied", dest: "{tmp_path}/fetched/", flat: true}}
    - ansible.builtin.assert: {{that: ["shown.stdout == 'hello agent'",
                                      "ansible_facts.python.executable is string"]}}
    - name: async, polled (the job leaves the command's process group)
      ansible.builtin.command: sleep 1
      async: 30
      poll: 1
    - name: hangs
      ansible.builtin.shell: echo $$ > {pid_file}; exec sleep 300
      timeout: 3
      ignore_errors: true
    - name: next
      ansible.builtin.command: date +%s.%N
      register: next_started
    - ansible.builtin.copy: {{dest: "{tmp_path}/next", content: "{{{{ next_started.stdout }}}}"}}
""")
    env = {**os.environ, "ANSIBLE_CONNECTION_PLUGINS": str(PLUGINS / "connection"),
           "ANSIBLE_PIPELINING": "True", "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"), "ANSIBLE_REMOTE_TMP": str(tmp_path / "rt")}
    playbook = Path(sys.executable).parent / "ansible-playbook"
    try:
        done = subprocess.run(
            [str(playbook), "-i", "box,", "-c", CONNECTION, "-e", "who=agent",
             "-e", f"ansible_rolebake_socket={relay.socket_path}",
             "-e", f"ansible_python_interpreter={sys.executable}", str(tmp_path / "site.yml")],
            env=env, capture_output=True, text=True, timeout=300, check=False)
    finally:
        relay.close()
    assert done.returncode == 0, done.stdout + done.stderr
    assert (out / "copied").read_text() == "copied\n"
    assert (out / "big").read_bytes() == (tmp_path / "big").read_bytes()
    assert (out / "templated").read_text() == "hello agent\n"
    assert (tmp_path / "fetched" / "copied").read_text() == "copied\n"
    assert "Timed out after 3 second" in done.stdout, done.stdout
    # the timed-out command is gone, and the next task did not wait for it
    assert _gone(int(pid_file.read_text()))
    started = pid_file.stat().st_mtime
    assert float((tmp_path / "next").read_text()) - started < 3 + 5
