"""rolebake's agent: one long-lived python in a container that runs commands and moves files.

Started once per container with one engine exec (`python3 -c <this file>`), it
reads frames on stdin and answers with frames on stdout, so a command costs a
message instead of a container exec (which starts runc, joins namespaces and
cgroups). This file is also the wire format's one definition: rolebake's
session (engine/session.py), its relay and the Ansible connection plugin
import HEADER, the kinds and `read_frame` from here.

A frame is a 9-byte header (channel id, kind, payload size) and its payload,
at most CHUNK bytes, so a file of any size travels in pieces and nothing is
held whole. Many channels share the stream; each is one command or one file:

  client -> agent   OPEN  {"op": "exec", "argv": [...] | "shell"+"cmd", "timeout": s}
                          {"op": "put", "path": ..., "mode": 0o600}
                          {"op": "fetch", "path": ...}
                    DATA  stdin of a command, bytes of a put file
                    EOF   no more DATA (every exec and put gets one)
                    KILL  kill the command's process group / abandon the file
  agent -> client   OUT   stdout of a command, bytes of a fetched file
                    ERR   stderr of a command
                    DONE  {"rc": n, "timed_out": bool} or {"rc": 255, "error": "..."}

Each command runs in a session (process group) of its own; its timeout, a
KILL, or the end of stdin (rolebake went away) kill that whole group.

Standard library only, and python 3.6 compatible: it may run on a bootstrapped
python3 of an old release, on an image's own python, or on the lent one.
"""

import contextlib
import json
import os
import queue
import signal
import struct
import subprocess
import sys
import threading

HEADER = struct.Struct("!IcI")  # channel, kind, payload size
CHUNK = 64 * 1024
OPEN, DATA, EOF, KILL = b"O", b"I", b"E", b"K"
OUT, ERR, DONE = b"o", b"e", b"D"


def read_exactly(stream, size):  # type: ignore[no-untyped-def]
    """`size` bytes from a binary stream; EOFError when it ends first."""
    chunks = []
    while size > 0:
        chunk = stream.read(size)
        if not chunk:
            raise EOFError("the stream ended")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def read_frame(stream):  # type: ignore[no-untyped-def]
    """One frame (channel, kind, payload) from a binary stream; EOFError at its end."""
    channel, kind, size = HEADER.unpack(read_exactly(stream, HEADER.size))
    return channel, kind, read_exactly(stream, size) if size else b""


def frame(channel, kind, payload=b""):  # type: ignore[no-untyped-def]
    """The bytes of one frame."""
    return HEADER.pack(channel, kind, len(payload)) + payload


class Agent:
    """Serves the channels of one stream until its input ends."""

    def __init__(self, inp, out):  # type: ignore[no-untyped-def]
        self.inp, self.out = inp, out
        self.lock = threading.Lock()
        self.channels = {}  # id -> _Exec | _Put | _Fetch

    def send(self, channel, kind, payload=b""):  # type: ignore[no-untyped-def]
        """Write one frame; frames of many channels interleave, never their bytes."""
        with self.lock:
            self.out.write(frame(channel, kind, payload))
            self.out.flush()

    def done(self, channel, answer):  # type: ignore[no-untyped-def]
        """End a channel with its answer."""
        self.channels.pop(channel, None)
        self.send(channel, DONE, json.dumps(answer).encode("utf-8"))

    def serve(self):  # type: ignore[no-untyped-def]
        """Read and dispatch frames until the input ends; then kill every command left."""
        try:
            while True:
                channel, kind, payload = read_frame(self.inp)
                self._dispatch(channel, kind, payload)
        except EOFError:
            pass
        finally:
            # rolebake went away: nothing it started may outlive it.
            for handler in list(self.channels.values()):
                handler.kill()

    def _dispatch(self, channel, kind, payload):  # type: ignore[no-untyped-def]
        if kind == OPEN:
            try:
                request = json.loads(payload.decode("utf-8"))
                op = request.get("op")
                handler = {"exec": _Exec, "put": _Put, "fetch": _Fetch}[op]
                self.channels[channel] = handler(self, channel, request)
            except Exception as exc:  # the caller gets the reason; the agent keeps serving
                self.done(channel, _error(exc))
            return
        handler = self.channels.get(channel)
        if handler is None:
            return  # a channel that already ended: late input is dropped
        if kind == DATA:
            handler.data(payload)
        elif kind == EOF:
            handler.eof()
        elif kind == KILL:
            handler.kill()


def _error(exc):  # type: ignore[no-untyped-def]
    return {"rc": 255, "error": f"{type(exc).__name__}: {exc}"}


class _Exec:
    def __init__(self, agent, channel, request):  # type: ignore[no-untyped-def]
        self.agent, self.channel = agent, channel
        argv = request.get("argv") or [request.get("shell") or "/bin/sh", "-c", request["cmd"]]
        env = dict(os.environ, **request.get("env", {}))
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env,
                                     start_new_session=True)  # its own process group
        self.timeout = request.get("timeout")
        self.timed_out = False
        self.inputs = queue.Queue()  # never blocks the reader: see DATA
        self.pumps = [threading.Thread(target=self._pump, args=(self.proc.stdout, OUT)),
                      threading.Thread(target=self._pump, args=(self.proc.stderr, ERR))]
        for thread in [*self.pumps, threading.Thread(target=self._feed),
                       threading.Thread(target=self._wait)]:
            thread.daemon = True
            thread.start()

    def data(self, payload):  # type: ignore[no-untyped-def]
        self.inputs.put(payload)

    def eof(self):  # type: ignore[no-untyped-def]
        self.inputs.put(None)

    def kill(self):  # type: ignore[no-untyped-def]
        with contextlib.suppress(OSError):  # already gone
            os.killpg(self.proc.pid, signal.SIGKILL)

    def _feed(self):  # type: ignore[no-untyped-def]
        stdin = self.proc.stdin
        while True:
            chunk = self.inputs.get()
            if chunk is None:
                break
            try:
                stdin.write(chunk)
                stdin.flush()
            except OSError:
                pass  # the command does not read its stdin: the rest is dropped
        with contextlib.suppress(OSError):
            stdin.close()

    def _pump(self, stream, kind):  # type: ignore[no-untyped-def]
        while True:
            chunk = stream.read1(CHUNK) if hasattr(stream, "read1") else stream.read(CHUNK)
            if not chunk:
                return
            self.agent.send(self.channel, kind, chunk)

    def _wait(self):  # type: ignore[no-untyped-def]
        try:
            rc = self.proc.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.timed_out = True
            self.kill()
            rc = self.proc.wait()
        # A child that left the process group may hold the output open: after a
        # kill, the answer does not wait for it.
        for pump in self.pumps:
            pump.join(2 if self.timed_out else None)
        self.inputs.put(None)
        self.agent.done(self.channel, {"rc": rc, "timed_out": self.timed_out})


class _Put:
    def __init__(self, agent, channel, request):  # type: ignore[no-untyped-def]
        self.agent, self.channel = agent, channel
        self.path = request["path"]
        self.partial = self.path + ".rolebake-partial"
        self.error = None
        self.handle = os.fdopen(os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                                        request.get("mode", 0o600)), "wb")

    def data(self, payload):  # type: ignore[no-untyped-def]
        if self.error is None:
            try:
                self.handle.write(payload)
            except OSError as exc:
                self.error = exc

    def eof(self):  # type: ignore[no-untyped-def]
        try:
            self.handle.close()
            if self.error is not None:
                raise self.error
            os.rename(self.partial, self.path)
            answer = {"rc": 0}
        except OSError as exc:
            self._discard()
            answer = _error(exc)
        self.agent.done(self.channel, answer)

    def kill(self):  # type: ignore[no-untyped-def]
        self.handle.close()
        self._discard()
        self.agent.channels.pop(self.channel, None)

    def _discard(self):  # type: ignore[no-untyped-def]
        with contextlib.suppress(OSError):
            os.unlink(self.partial)


class _Fetch:
    def __init__(self, agent, channel, request):  # type: ignore[no-untyped-def]
        self.agent, self.channel = agent, channel
        self.handle = open(request["path"], "rb")  # noqa: SIM115 - closed by _send
        self.stopped = False
        thread = threading.Thread(target=self._send)
        thread.daemon = True
        thread.start()

    def data(self, payload):  # type: ignore[no-untyped-def]
        pass

    def eof(self):  # type: ignore[no-untyped-def]
        pass

    def kill(self):  # type: ignore[no-untyped-def]
        self.stopped = True

    def _send(self):  # type: ignore[no-untyped-def]
        try:
            with self.handle:
                while not self.stopped:
                    chunk = self.handle.read(CHUNK)
                    if not chunk:
                        break
                    self.agent.send(self.channel, OUT, chunk)
            answer = {"rc": 0} if not self.stopped else {"rc": 255, "error": "killed"}
        except OSError as exc:
            answer = _error(exc)
        self.agent.done(self.channel, answer)


def main():  # type: ignore[no-untyped-def]
    """Serve frames until stdin closes."""
    Agent(sys.stdin.buffer, sys.stdout.buffer).serve()


if __name__ == "__main__":
    main()
