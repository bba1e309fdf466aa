"""Child processes in a session of their own: run one, stream its output, end its group.

Shared by the two pieces of parity VM code that start long-lived children: building the VM
disk (`rolebake.rootfs.vm_disk`: apt and dpkg in a chroot) and running it
(`rolebake.parity.qemu`). Both need the same guarantee: a terminal Ctrl-C reaches rolebake
only, and rolebake then takes down every process the child started, so that nothing keeps
chroot mounts busy or a VM running. Because only VM code uses it, a failure is a VMError.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from rolebake.errors import VMError

__all__ = ["TAIL_LINES", "Log", "kill_group", "run_logged"]

#: How many lines of a command's output (or of a console log) an error carries.
TAIL_LINES = 40

#: Receives progress lines and the output of the commands run.
Log = Callable[[str], None]


def run_logged(argv: Sequence[str], *, say: Log | None, env: dict[str, str] | None = None) -> str:
    """Run a command, stream its output to `say`, raise VMError with its tail on failure.

    It runs in its own session so that a terminal Ctrl-C reaches only us; we then kill its
    whole process group (apt's dpkg children included), which is what lets the chroot
    mounts be released before we unmount them.

    Args:
        argv: The command.
        say: Receives each output line (stdout and stderr merged), or None for silence.
        env: The child's whole environment, or None to inherit ours.

    Returns:
        The last TAIL_LINES lines of the output.

    Raises:
        VMError: The command exited non-zero; `details` holds the output's tail.
    """
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            tail.append(line)
            if say is not None:
                say(line)
        rc = proc.wait()
    except BaseException:
        kill_group(proc)
        raise
    if rc != 0:
        raise VMError(f"{shlex.join(argv)} failed (exit {rc})", details="\n".join(tail))
    return "\n".join(tail)


def kill_group(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, a process group we started with start_new_session; reap it.

    The leader is reaped only after the group's SIGKILL: until then its pid (at worst a
    zombie) keeps the group id ours, so the kill cannot hit an unrelated, reused group.

    Args:
        proc: The group's leader, started with `start_new_session=True`.
        grace: Seconds the group gets to exit after SIGTERM.
    """
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and not _exited(proc.pid):
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _exited(pid: int) -> bool:
    """Whether a child has exited, without reaping it."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None
