"""A pytest plugin for verification: testinfra's checks through the container's session.

testinfra's docker backend starts the docker CLI for every command a check
runs (a shell, the CLI, its API calls, then an engine exec). Loaded with
`-p rolebake.verify_session`, this plugin adds the `rolebake://<container>`
backend: the same docker backend (NAME "docker", same results), whose commands
go through the container's session (engine/session.py): one agent for every
command when the image has a python, else one engine exec per command through
the SDK (no CLI). Either way stdout, stderr and the exit code come back apart
and exactly, binary output included.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import TYPE_CHECKING, Any

import testinfra.backend
from testinfra.backend import base
from testinfra.backend.docker import DockerBackend

if TYPE_CHECKING:
    from rolebake.engine import ContainerSession, Engine, SessionResult

SCHEME = "rolebake"
# Which python runs the agent in a container under test: the lent one (verify.py
# lends the build's), else the image's own, if any.
_FIND_PYTHON = ('for p in /mnt/rolebake-python/bin/python3 "$(command -v python3)"; do '
                '[ -x "$p" ] && { echo "$p"; exit 0; }; done; exit 1')

# Verification starts pytest while the container is still being made (verify.py): its
# imports and collection overlap the engine's work. It is then given the host
# `rolebake://pending`, and the container's id comes later, on the pipe whose
# descriptor this variable names, once the container is ready; an empty read (the
# pipe closed) means there will be none.
PENDING = "pending"
HOST_FD_ENV = "ROLEBAKE_VERIFY_HOST_FD"
_pending: dict[str, str] = {}
_pending_lock = threading.Lock()


def pending_container() -> str:
    """The container id verify.py sends once the container is ready (waits for it).

    Raises:
        RuntimeError: the pipe closed without an id (verification called off).
    """
    with _pending_lock:
        if "id" not in _pending:
            fd, data = int(os.environ[HOST_FD_ENV]), b""
            while not data.endswith(b"\n"):
                chunk = os.read(fd, 256)
                if not chunk:
                    break
                data += chunk
            _pending["id"] = data.decode("ascii", "replace").strip()
        if not _pending["id"]:
            raise RuntimeError("no container to verify: its start was called off")
        return _pending["id"]


class SessionBackend(DockerBackend):
    """testinfra's docker backend, with its commands run through the container's session."""

    NAME = "docker"  # suites that ask which backend they run on see no difference
    name: str  # the container (DockerBackend's)

    def __init__(self, name: str, *args: Any, **kwargs: Any) -> None:
        """Bind to the container `name` (an id), as the docker backend does."""
        super().__init__(name, *args, **kwargs)
        self._engine: Engine | None = None
        self._session: ContainerSession | None = None
        self._opened = False
        self._stack = contextlib.ExitStack()
        self._lock = threading.Lock()  # opening the session only; commands run side by side

    def run(self, command: str, *args: str, **kwargs: Any) -> base.CommandResult:
        """Run one command in the container; as the docker backend for users other than root."""
        if self.user not in (None, "root"):
            self._resolve()
            return super().run(command, *args, **kwargs)
        cmd = self.get_command(command, *args)
        done = self._run(["/bin/sh", "-c", cmd])
        result = self.result(done.rc, self.encode(cmd), done.stdout, done.stderr)
        result.command = self.encode(cmd)
        return result

    def _run(self, argv: list[str]) -> SessionResult:
        from rolebake.engine import ContainerHandle, SessionError

        session = self._open()
        if session is not None:
            try:
                return session.run(argv)
            except SessionError:
                self._close()  # the agent died: one exec per command from now on
        assert self._engine is not None
        return self._engine.exec_demuxed(ContainerHandle(self.name, self.name), argv)

    def _open(self) -> ContainerSession | None:
        with self._lock:
            if self._opened:
                return self._session
            # Imported on first use: a suite that runs no command pays no docker SDK import.
            from rolebake.engine import ContainerHandle, DockerEngine, SessionError

            self._opened = True
            # Connected first: with a pending host, that happens while the container starts.
            self._engine = engine = DockerEngine.connect(timeout=60)
            self._resolve()
            container = ContainerHandle(self.name, self.name)
            found = engine.exec_demuxed(container, ["/bin/sh", "-c", _FIND_PYTHON])
            python = found.stdout.decode("utf-8", "replace").strip()
            if found.rc == 0 and python:
                with contextlib.suppress(SessionError):
                    self._session = self._stack.enter_context(engine.session(container, python))
            return self._session

    def _resolve(self) -> None:
        """The pending host becomes the container verify.py sends (see `pending_container`)."""
        if self.name == PENDING and os.environ.get(HOST_FD_ENV):
            self.name = pending_container()

    def _close(self) -> None:
        self._session = None
        with contextlib.suppress(Exception):
            self._stack.close()


def register() -> None:
    """Make `rolebake://` hosts known to testinfra in this process."""
    testinfra.backend.BACKENDS[SCHEME] = f"{__name__}.SessionBackend"


def pytest_configure(config: Any) -> None:
    """Register the backend for a pytest run (`-p rolebake.verify_session`)."""
    del config
    register()
