"""One session per container: commands and files through one long-lived agent.

A container exec costs runc a process, namespaces and cgroups. A session
starts rolebake's agent (scripts/agent.py) with a python in the container
once, over one exec's stdin and stdout, and multiplexes channels on it: each
command or file is a channel, so commands run side by side (no lock is held
across a command, only across the write of one frame), files travel in
chunks of `CHUNK` bytes (a file is never held whole, on either side), and a
command's timeout or `Channel.kill` kills its whole process group in the
container. Ansible's connection (through provision/agent.py's relay), the
verification backend (verify_session.py) and the provisioner's own scripts
all use it.

Without a python in the container (an image under test that has none) the
same `run` goes through one engine exec per command instead.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from rolebake.errors import BuildFailed
from rolebake.scripts import agent as wire
from rolebake.scripts import script

CHUNK = wire.CHUNK
Sink = Callable[[bytes, bytes], None]  # (kind, payload), called on the session's reader


class Stream(Protocol):
    """What a session talks over: an exec's stdin and stdout (engine.ExecStream)."""

    def write(self, data: bytes) -> None: ...  # noqa: D102
    def read(self, size: int) -> bytes: ...  # noqa: D102
    def close(self) -> None: ...  # noqa: D102


@dataclass(frozen=True)
class SessionResult:
    """One command's outcome; `timed_out` when its timeout killed it."""

    rc: int
    stdout: bytes
    stderr: bytes
    timed_out: bool = False

    @property
    def output(self) -> str:
        """The output, stdout then stderr, as text, as a waited-for exec gives them."""
        return (self.stdout + self.stderr).decode("utf-8", "replace")


class SessionError(BuildFailed):
    """The agent is gone, or a request failed."""


class Channel:
    """One command or file on a session; what arrives for it goes to its sink."""

    def __init__(self, session: ContainerSession, number: int, sink: Sink | None) -> None:
        """Bound to `session` as channel `number`; frames go to `sink`, else to a queue."""
        self.session = session
        self.number = number
        # Bounded: a slow reader holds the agent back instead of filling memory.
        self._queue: queue.Queue[tuple[bytes, bytes]] = queue.Queue(maxsize=64)
        self._sink = sink or self._enqueue
        self._discarded = False
        self.done = threading.Event()

    def send(self, data: bytes) -> None:
        """Stdin for a command, bytes for a put (cut into frames of at most CHUNK)."""
        view = memoryview(data)
        for start in range(0, len(view), CHUNK):
            self.session.send(self.number, wire.DATA, bytes(view[start:start + CHUNK]))

    def end(self) -> None:
        """No more input."""
        self.session.send(self.number, wire.EOF)

    def kill(self) -> None:
        """Kill the command's process group (a file: abandon it)."""
        with contextlib.suppress(OSError, EOFError, SessionError):
            self.session.send(self.number, wire.KILL)

    def frames(self) -> Iterator[tuple[bytes, bytes]]:
        """What arrives for this channel, up to and including its DONE frame."""
        while True:
            kind, payload = self._queue.get()
            yield kind, payload
            if kind == wire.DONE:
                return

    def discard(self) -> None:
        """Stop reading: what still arrives is dropped."""
        self._discarded = True
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()

    def _enqueue(self, kind: bytes, payload: bytes) -> None:
        self._queue.put((kind, payload))

    def deliver(self, kind: bytes, payload: bytes) -> None:
        """Called by the session's reader for each frame of this channel."""
        if kind == wire.DONE:
            self.done.set()
        if not self._discarded:
            self._sink(kind, payload)


class ContainerSession:
    """The agent in one container, and the channels open on it."""

    def __init__(self, stream: Stream, *, reader: BinaryIO | None = None) -> None:
        """Serve `stream` (the agent's stdin and stdout); `reader` reads its stdout if given."""
        self.stream = stream
        self._reader: Any = reader or stream
        self._write_lock = threading.Lock()
        self._channels: dict[int, Channel] = {}
        self._numbers = itertools.count(1)
        self._gone: str | None = None
        self._thread = threading.Thread(target=self._read, name="rolebake-session", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ channels

    def open(self, request: Mapping[str, Any], sink: Sink | None = None) -> Channel:
        """Open a channel (exec, put or fetch); see scripts/agent.py for the requests."""
        channel = Channel(self, next(self._numbers), sink)
        self._channels[channel.number] = channel
        self.send(channel.number, wire.OPEN, json.dumps(dict(request)).encode("utf-8"))
        return channel

    def send(self, number: int, kind: bytes, payload: bytes = b"") -> None:
        """Write one frame; SessionError when the agent is gone."""
        if self._gone is not None:
            raise SessionError(f"rolebake's agent is gone: {self._gone}")
        try:
            with self._write_lock:  # one frame, never a whole command
                self.stream.write(wire.frame(number, kind, payload))
        except OSError as exc:
            raise SessionError(f"rolebake's agent is gone: {exc}") from None

    # ------------------------------------------------------------------ the common uses

    def run(self, argv: Sequence[str], *, stdin: bytes = b"", timeout: float | None = None,
            env: Mapping[str, str] | None = None) -> SessionResult:
        """Run a command and wait for it; `timeout` kills its process group in the container."""
        request: dict[str, Any] = {"op": "exec", "argv": list(argv), "timeout": timeout}
        if env:
            request["env"] = dict(env)
        channel = self.open(request)
        try:
            channel.send(stdin)
            channel.end()
            out, err = bytearray(), bytearray()
            answer: dict[str, Any] = {}
            for kind, payload in channel.frames():
                if kind == wire.OUT:
                    out += payload
                elif kind == wire.ERR:
                    err += payload
                else:
                    answer = json.loads(payload)
        except BaseException:
            channel.kill()  # interrupted here: nothing may keep running there
            channel.discard()
            raise
        if "error" in answer:
            raise SessionError(f"could not run {argv[0]}: {answer['error']}")
        return SessionResult(rc=int(answer["rc"]), stdout=bytes(out), stderr=bytes(err),
                             timed_out=bool(answer.get("timed_out")))

    def shell(self, text: str, *args: str, timeout: float | None = None,
              env: Mapping[str, str] | None = None) -> SessionResult:
        """A POSIX shell script (one argv item), as Engine.shell runs it."""
        return self.run(["/bin/sh", "-c", text, "rolebake", *args], timeout=timeout, env=env)

    def put(self, source: Path | BinaryIO, path: str, *, mode: int = 0o600) -> None:
        """Copy a file into the container in chunks; it appears whole (renamed) or not at all."""
        with contextlib.ExitStack() as stack:
            handle: BinaryIO = (stack.enter_context(source.open("rb"))
                                if isinstance(source, Path) else source)
            channel = self.open({"op": "put", "path": path, "mode": mode})
            try:
                while chunk := handle.read(CHUNK):
                    self.send(channel.number, wire.DATA, chunk)
                channel.end()
                answer = self._answer(channel)
            except BaseException:
                channel.kill()
                channel.discard()
                raise
        if "error" in answer:
            raise SessionError(f"could not copy a file to {path}: {answer['error']}")

    def fetch(self, path: str, sink: Path | BinaryIO) -> None:
        """Copy a file out of the container in chunks."""
        with contextlib.ExitStack() as stack:
            handle: BinaryIO = (stack.enter_context(sink.open("wb"))
                                if isinstance(sink, Path) else sink)
            channel = self.open({"op": "fetch", "path": path})
            answer: dict[str, Any] = {}
            try:
                for kind, payload in channel.frames():
                    if kind == wire.OUT:
                        handle.write(payload)
                    elif kind == wire.DONE:
                        answer = json.loads(payload)
            except BaseException:
                channel.kill()
                channel.discard()
                raise
        if "error" in answer:
            raise SessionError(f"could not copy {path} from the container: {answer['error']}")

    def close(self) -> None:
        """End the agent: its stdin closes, and it kills what still runs."""
        self.stream.close()
        self._thread.join(timeout=5)

    # ------------------------------------------------------------------ reading

    @staticmethod
    def _answer(channel: Channel) -> dict[str, Any]:
        for kind, payload in channel.frames():
            if kind == wire.DONE:
                return dict(json.loads(payload))
        return {}

    def _read(self) -> None:
        why = "its output ended"
        try:
            while True:
                number, kind, payload = wire.read_frame(self._reader)
                channel = self._channels.get(number)
                if channel is None:
                    continue  # late output of a channel given up on
                if kind == wire.DONE:
                    del self._channels[number]
                channel.deliver(kind, payload)
        except (EOFError, OSError, ValueError) as exc:
            why = str(exc) or why
        finally:
            self._gone = why
            for channel in list(self._channels.values()):
                answer = json.dumps({"rc": 255, "error": f"rolebake's agent is gone: {why}"})
                channel.deliver(wire.DONE, answer.encode("utf-8"))
            self._channels.clear()


@contextlib.contextmanager
def agent_session(stream: Stream, python: str) -> Iterator[ContainerSession]:
    """A session over a started agent for a `with` block; checked with one command first.

    Raises:
        SessionError: the agent did not answer (no such python, a broken one).
    """
    session = ContainerSession(stream)
    try:
        try:
            checked = session.run(["true"], timeout=60)
        except SessionError as exc:
            stderr = bytes(getattr(stream, "stderr", b"")).decode("utf-8", "replace")
            raise SessionError(f"rolebake's agent did not start with {python}",
                               details=f"{exc.message}\n{stderr}".strip()) from None
        if checked.rc != 0:
            raise SessionError(f"rolebake's agent did not start with {python}")
        yield session
    finally:
        session.close()


def agent_argv(python: str) -> list[str]:
    """The command that starts the agent with `python`."""
    return [python, "-c", script("agent.py")]
