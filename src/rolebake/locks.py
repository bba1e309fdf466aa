"""File locks that serialise work on one shared thing (a rootfs, a VM disk, a layer, a slot).

A lock file can also hold a short record (who last changed the shared thing),
read and written only by the lock's holder.

Lock files live in places other users may write to (`/run/lock/rolebake`), and
rolebake often runs as root, so nothing here follows a link or trusts a folder
it did not check (DESIGN.md invariant 7): the host-wide folder is made with a
known mode and refused when it is writable by others without the sticky bit
or owned by another user (root excepted); a lock file is opened with
O_NOFOLLOW, never truncated on open, never chmod-ed, and must be a regular
file with one link. A planted link or hard link is an error that names it;
its target is never opened.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from rolebake.errors import BuildFailed

LOCK_DIR_ENV = "ROLEBAKE_LOCK_DIR"


class Held:
    """A lock this process holds; its file carries a one-line record."""

    def __init__(self, fd: int, path: Path | None = None) -> None:
        """Wrap the locked file's descriptor (opened from `path`)."""
        self._fd = fd
        self.path = path

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
    rolebake makes the folder sticky and world-writable (as /tmp) so builds by
    different users of one engine share it; one another user made is refused
    (see `check_lock_dir`) unless root made it.
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
            yield Held(fd, path)
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
            yield Held(fd, path)
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


SHARED_DIR_MODE = 0o1777  # as /tmp: anyone may add a lock, only its owner may remove it
SHARED_FILE_MODE = 0o644  # readable (waiting is a read), written by its maker only
PRIVATE_FILE_MODE = 0o600


def _open(path: Path) -> int:
    shared = path.parent == host_lock_dir()
    try:
        if shared:
            check_lock_dir(path.parent)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
        # O_NOFOLLOW: a link planted where the lock file goes is refused, never
        # followed; no O_TRUNC: an existing file is a lock, not ours to empty.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     SHARED_FILE_MODE if shared else PRIVATE_FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BuildFailed(f"the lock file {path} is a symbolic link; refusing to follow it",
                              hint="remove the link (someone planted it), or set "
                                   f"{LOCK_DIR_ENV} to a folder only you can write") from None
        raise BuildFailed(f"cannot open the lock file {path}: {exc.strerror}",
                          hint=f"make the folder writable, or set {LOCK_DIR_ENV}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        what = "not a regular file" if not stat.S_ISREG(info.st_mode) else \
            "a hard link to another file"
        raise BuildFailed(f"the lock file {path} is {what}; refusing to use it",
                          hint=f"remove it, or set {LOCK_DIR_ENV} to a folder only you can write")
    return fd


def check_lock_dir(folder: Path) -> None:
    """Make the host-wide lock folder if it is missing; refuse one that others could turn.

    Made here, it is SHARED_DIR_MODE and ours. Found, it must be a real folder
    (not a link), owned by this user or root, and not writable by the group or
    others unless it has the sticky bit (without it, anyone could swap a lock
    file for a link between two builds).

    Raises:
        BuildFailed: the folder is unsafe or cannot be made; naming it and why.
    """
    hint = f"remove it and let rolebake make it, or set {LOCK_DIR_ENV} to a folder only you own"
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    except FileNotFoundError:
        folder.parent.mkdir(parents=True, exist_ok=True)
        return check_lock_dir(folder)
    else:
        # Only the folder made just now is given its mode, through its own descriptor.
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            os.fchmod(fd, SHARED_DIR_MODE)
        finally:
            os.close(fd)
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode):
        raise BuildFailed(f"the lock folder {folder} is not a folder (a link?); refusing it",
                          hint=hint)
    if info.st_uid not in (os.geteuid(), 0):
        raise BuildFailed(f"the lock folder {folder} belongs to another user (uid "
                          f"{info.st_uid}); refusing it", hint=hint)
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not info.st_mode & stat.S_ISVTX:
        raise BuildFailed(f"the lock folder {folder} is writable by others without the sticky "
                          "bit; refusing it", hint=hint)
    return None
