"""File locks that serialise work on one shared thing (a rootfs, a VM disk, a layer, a slot).

A lock file can also hold a short record (who last changed the shared thing),
read and written only by the lock's holder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from rolebake.errors import BuildFailed

LOCK_DIR_ENV = "ROLEBAKE_LOCK_DIR"


class Held:
    """A lock this process holds; its file carries a one-line record."""

    def __init__(self, fd: int) -> None:
        """Wrap the locked file's descriptor."""
        self._fd = fd

    def read(self) -> str:
        """The record the last holder wrote ('' when none)."""
        os.lseek(self._fd, 0, os.SEEK_SET)
        return os.read(self._fd, 4096).decode("utf-8", "replace").strip()

    def write(self, record: str) -> None:
        """Replace the record."""
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, record.encode("utf-8"), 0)


def host_lock_dir() -> Path:
    """The folder for locks every rolebake on this host shares, whatever checkout it runs in.

    `$ROLEBAKE_LOCK_DIR`, else `/run/lock/rolebake` (a tmpfs every user may
    write on Debian and most distributions), else one below the temp folder.
    The folder is sticky and world-writable so builds by different users of
    one engine (everyone who may use the engine is root on it anyway) share it.
    """
    configured = os.environ.get(LOCK_DIR_ENV)
    if configured:
        return Path(configured)
    run_lock = Path("/run/lock")
    base = run_lock if os.access(run_lock, os.W_OK | os.X_OK) else Path(tempfile.gettempdir())
    return base / "rolebake"


def host_lock(name: str, *identity: str) -> Path:
    """The host-wide lock file for a thing known by `identity` (readable `name` in front)."""
    digest = hashlib.sha256("\0".join(identity).encode("utf-8")).hexdigest()[:32]
    return host_lock_dir() / f"{name}-{digest}.lock"


@contextlib.contextmanager
def exclusive(path: Path, *, on_busy: Callable[[], None] | None = None,
              check: Callable[[], None] | None = None, poll_s: float = 0.2) -> Iterator[Held]:
    """Hold an exclusive lock on `path` (created if needed) for a `with` block, waiting for it.

    Args:
        path: the lock file.
        on_busy: called once when another holder has the lock (to say we wait).
        check: called between polls while waiting; raise from it to stop waiting
            (a cancelled build must not sit on a lock forever).
        poll_s: seconds between polls when `check` is given; without it, block.

    Raises:
        BuildFailed: the lock file cannot be made or opened.
    """
    fd = _open(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_busy is not None:
                on_busy()
            if check is None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            else:
                while True:
                    check()
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        time.sleep(poll_s)
        try:
            yield Held(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def try_exclusive(path: Path) -> Iterator[Held | None]:
    """The lock on `path` for a `with` block if it is free right now, else None (no waiting)."""
    try:
        fd = _open(path)
    except BuildFailed:
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        try:
            yield Held(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def attempt(path: Path) -> Iterator[bool]:
    """Try to take an exclusive lock on `path` without waiting; yields whether it was taken.

    The lock is the kernel's (flock), so a process that dies loses it: nothing stale stays.
    """
    with try_exclusive(path) as held:
        yield held is not None


def _open(path: Path) -> int:
    shared = path.parent == host_lock_dir()
    try:
        if shared and not path.parent.is_dir():
            path.parent.mkdir(parents=True, exist_ok=True)
            # Sticky and writable by all: another user's build must be able to
            # make its lock files here too. Only the folder's maker may chmod it.
            with contextlib.suppress(PermissionError):
                path.parent.chmod(0o1777)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 if shared else 0o600)
    except OSError as exc:
        raise BuildFailed(f"cannot open the lock file {path}: {exc.strerror}",
                          hint=f"make the folder writable, or set {LOCK_DIR_ENV}") from None
    if shared:
        # The umask must not keep another user's build from opening it.
        with contextlib.suppress(PermissionError):
            os.fchmod(fd, 0o666)
    return fd
