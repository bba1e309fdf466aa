"""rolebake's agent: one long-lived python in a build container that runs what Ansible asks.

Started once per build container with one engine exec (`python3 -c <this file>`),
it reads requests on stdin and answers on stdout, so a task costs a message
instead of a container exec (which starts runc, joins namespaces and cgroups).
Each message is one JSON line, then the byte payloads its `lens` announce.

Requests:  {"op": "exec", "shell": "/bin/sh", "cmd": "...", "lens": [stdin]}
           {"op": "put", "path": "/tmp/x", "lens": [content]}
           {"op": "fetch", "path": "/etc/x", "lens": []}
Answers:   {"rc": 0, "lens": [stdout, stderr]}  (put: [], fetch: [content])
           {"rc": 255, "error": "...", "lens": []} when the request itself failed

Standard library only, and python 3.6 compatible: it may run on a bootstrapped
python3 of an old release as well as on the lent one.
"""

import json
import os
import subprocess
import sys


def _read(stream, size):  # type: ignore[no-untyped-def]
    chunks = []
    while size > 0:
        chunk = stream.read(size)
        if not chunk:
            raise EOFError("the request ended early")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _answer(out, head, *parts):  # type: ignore[no-untyped-def]
    head["lens"] = [len(p) for p in parts]
    out.write(json.dumps(head).encode("utf-8") + b"\n")
    for part in parts:
        out.write(part)
    out.flush()


def _handle(request, payloads):  # type: ignore[no-untyped-def]
    op = request.get("op")
    if op == "exec":
        stdin = payloads[0] if payloads else b""
        done = subprocess.run(  # noqa: UP022 - capture_output is python 3.7+
            [request.get("shell") or "/bin/sh", "-c", request["cmd"]],
            input=stdin if stdin else None,
            stdin=None if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
        return {"rc": done.returncode}, (done.stdout, done.stderr)
    if op == "put":
        path = request["path"]
        partial = path + ".rolebake-partial"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(payloads[0] if payloads else b"")
        os.rename(partial, path)
        return {"rc": 0}, ()
    if op == "fetch":
        with open(request["path"], "rb") as handle:
            return {"rc": 0}, (handle.read(),)
    raise ValueError(f"unknown op {op!r}")


def main():  # type: ignore[no-untyped-def]
    """Serve requests until stdin closes."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        line = stdin.readline()
        if not line:
            return
        try:
            request = json.loads(line.decode("utf-8"))
            payloads = [_read(stdin, size) for size in request.get("lens") or []]
        except (ValueError, EOFError) as exc:
            _answer(stdout, {"rc": 255, "error": f"bad request: {exc}"})
            return
        try:
            head, parts = _handle(request, payloads)
        except Exception as exc:  # the caller gets the reason; the agent keeps serving
            head, parts = {"rc": 255, "error": f"{type(exc).__name__}: {exc}"}, ()
        _answer(stdout, head, *parts)


if __name__ == "__main__":
    main()
