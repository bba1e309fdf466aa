"""File locks that serialise work on one shared thing (a rootfs, a VM disk, a layer, a slot)."""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def exclusive(path: Path, *, on_busy: Callable[[], None] | None = None,
              check: Callable[[], None] | None = None, poll_s: float = 0.2) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if needed) for a `with` block, waiting for it.

    Args:
        path: the lock file.
        on_busy: called once when another holder has the lock (to say we wait).
        check: called between polls while waiting; raise from it to stop waiting
            (a cancelled build must not sit on a lock forever).
        poll_s: seconds between polls when `check` is given; without it, block.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_busy is not None:
                on_busy()
            if check is None:
                fcntl.flock(handle, fcntl.LOCK_EX)
            else:
                while True:
                    check()
                    try:
                        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        time.sleep(poll_s)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def attempt(path: Path) -> Iterator[bool]:
    """Try to take an exclusive lock on `path` without waiting; yields whether it was taken.

    The lock is the kernel's (flock), so a process that dies loses it: nothing stale stays.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
