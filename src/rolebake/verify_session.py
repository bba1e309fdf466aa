"""A pytest plugin for verification: testinfra's checks through one shell per container.

testinfra's docker backend starts the docker CLI for every command a check
runs (a shell, the CLI, its API calls, then an engine exec). Loaded with
`-p rolebake.verify_session`, this plugin adds the `rolebake://<container>`
backend: the same docker backend (NAME "docker", same results), whose commands
go to one `/bin/sh` started in the container with a single engine exec. Each
command's output is written to /dev/shm (the container's tmpfs, never part of
an image) and read back with its length, so binary output and exit codes come
back exactly as the CLI would give them.
"""

from __future__ import annotations

import secrets
import shlex
import threading
from typing import TYPE_CHECKING, Any

import testinfra.backend
from testinfra.backend import base
from testinfra.backend.docker import DockerBackend

if TYPE_CHECKING:
    from rolebake.engine import ExecStream

SCHEME = "rolebake"
_OUT, _ERR = "/dev/shm/.rolebake-verify.out", "/dev/shm/.rolebake-verify.err"


class SessionBackend(DockerBackend):
    """testinfra's docker backend, with its commands run by one long-lived shell."""

    NAME = "docker"  # suites that ask which backend they run on see no difference

    def __init__(self, name: str, *args: Any, **kwargs: Any) -> None:
        """Bind to the container `name` (an id), as the docker backend does."""
        super().__init__(name, *args, **kwargs)
        self._stream: ExecStream | None = None
        self._lock = threading.Lock()
        self._token = secrets.token_hex(8)

    def run(self, command: str, *args: str, **kwargs: Any) -> base.CommandResult:
        """Run one command in the container; as the docker backend for users other than root."""
        if self.user not in (None, "root"):
            return super().run(command, *args, **kwargs)
        cmd = self.get_command(command, *args)
        with self._lock:
            try:
                rc, out, err = self._run(cmd)
            except (EOFError, OSError, ValueError):
                self._close()
                return super().run(command, *args, **kwargs)
        result = self.result(rc, self.encode(cmd), out, err)
        result.command = self.encode(cmd)
        return result

    def _run(self, cmd: str) -> tuple[int, bytes, bytes]:
        stream = self._session()
        line = (f"sh -c {shlex.quote(cmd)} </dev/null >{_OUT} 2>{_ERR}; "
                f"printf '%s %s %s %s\\n' {self._token} \"$?\" \"$(wc -c <{_OUT})\" "
                f"\"$(wc -c <{_ERR})\"; cat {_OUT} {_ERR}\n")
        stream.write(line.encode("utf-8"))
        while True:
            words = stream.readline().decode("utf-8", "replace").split()
            if len(words) == 4 and words[0] == self._token:
                break
        rc, out_size, err_size = (int(w) for w in words[1:])
        return rc, stream.read(out_size), stream.read(err_size)

    def _session(self) -> ExecStream:
        if self._stream is None:
            # Imported on first use: a suite that runs no command pays no docker SDK import.
            from rolebake.engine import ContainerHandle, Engine

            engine = Engine.connect(timeout=60)
            self._stream = engine.exec_stream(ContainerHandle(self.name, self.name), ["/bin/sh"])
        return self._stream

    def _close(self) -> None:
        if self._stream is not None:
            self._stream.close()
        self._stream = None


def register() -> None:
    """Make `rolebake://` hosts known to testinfra in this process."""
    testinfra.backend.BACKENDS[SCHEME] = f"{__name__}.SessionBackend"


def pytest_configure(config: Any) -> None:
    """Register the backend for a pytest run (`-p rolebake.verify_session`)."""
    del config
    register()
