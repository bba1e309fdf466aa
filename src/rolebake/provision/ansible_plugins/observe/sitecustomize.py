"""rolebake: record the files this Ansible process reads (see rolebake/provision/observed.py).

Python imports `sitecustomize` at start-up; rolebake puts this folder first on
the PYTHONPATH of the ansible-playbook it runs, with ROLEBAKE_OBSERVE_FILE
naming where to write. Only then is an audit hook (PEP 578) installed: it sees
every `open` (lookups, templates, `copy: src`, vars files, the cfg, plugins)
and every folder listing (`fileglob`, vars folders) of this process and of the
workers Ansible forks, which inherit it.

The hook is on every open of the run, Python's imports included, so it does
as little as it can: a prefix test drops Python's and Ansible's installation
and rolebake's own scratch, a set drops what was seen already (for the same
task), and only a first sight is written, as one line appended to the file
(O_APPEND: the forked workers share it; they leave through os._exit, so a
buffer flushed at exit would be lost). The current task (`file:line`) is set
by rolebake's callback plugin (callback/rolebake_observe.py) through
`sys.modules[STATE]`. Any other sitecustomize on the path still runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

STATE = "_rolebake_observe"


class _State:
    task = ""  # "file:line" of the task (or play) running now; set by the callback


def _install(out: str) -> None:
    state = _State()
    sys.modules[STATE] = state  # type: ignore[assignment]
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                os.path.dirname(os.path.abspath(__file__)), "/dev", "/proc", "/sys"}
    prefixes.update(p for p in os.environ.get("ROLEBAKE_OBSERVE_SKIP", "").split(os.pathsep)
                    if p)
    skip = tuple(sorted(p.rstrip("/") + "/" for p in prefixes if p))
    # Opened before the hook exists: its own open is not an event it sees.
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    seen: set[tuple[str, str, str]] = set()
    dumps, write, fspath, getcwd, normpath = json.dumps, os.write, os.fspath, os.getcwd, \
        os.path.normpath

    def hook(event: str, args: tuple[object, ...]) -> None:
        if event == "open":
            path, flags = args[0], args[2]
            if isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR):
                return  # written, not read
            kind = "read"
        elif event in ("os.listdir", "os.scandir"):
            path, kind = (args[0] if args[0] is not None else "."), "list"
        else:
            return
        if not isinstance(path, str):
            if isinstance(path, int):
                return  # an fd: its open was seen
            try:
                path = os.fsdecode(fspath(path))  # type: ignore[call-overload]
            except TypeError:
                return
        if path.startswith(skip):
            return
        if not path.startswith("/"):
            path = normpath(os.path.join(getcwd(), path))
            if path.startswith(skip):
                return
        key = (kind, path, state.task)
        if key in seen:
            return
        seen.add(key)
        write(fd, (dumps({"kind": kind, "path": path, "task": state.task}) + "\n").encode())

    sys.addaudithook(hook)


def _chain() -> None:
    """Run the next sitecustomize on the path, as Python would have without this one."""
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        if os.path.abspath(entry or ".") == here:
            continue
        candidate = os.path.join(entry or ".", "sitecustomize.py")
        if os.path.isfile(candidate):
            spec = importlib.util.spec_from_file_location("_sitecustomize_next", candidate)
            if spec is not None and spec.loader is not None:
                spec.loader.exec_module(importlib.util.module_from_spec(spec))
            return


if os.environ.get("ROLEBAKE_OBSERVE_FILE"):
    _install(os.environ["ROLEBAKE_OBSERVE_FILE"])
with contextlib.suppress(Exception):  # another package's start-up hook must not stop Ansible
    _chain()
