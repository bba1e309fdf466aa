"""The project's private state folder `.rolebake/`: folders 0700, files 0600, scratch swept.

Logs, locks, the sensitive-value salt, scaffold records and the provisioners'
scratch folders (ansible-runner's private data dir with its artifacts, which
hold the run's full output and environment) are traces of secrets, so nothing
below `.rolebake/` is readable by other users, whatever the umask.

A scratch folder belongs to the process that made it for as long as that
process holds a lock on the OWNER file inside it. The kernel drops the lock
when the process dies, however it dies (SIGKILL, out of memory), so the next
scratch folder made beside it, and `rolebake clean`, can tell an orphan from
a folder in use and remove it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

OWNER = ".owner"
# A folder that never got its OWNER file: its maker died between mkdtemp and the
# lock (a few microseconds), or it is not ours. Left alone while this young.
_UNOWNED_GRACE_S = 600


def private_dir(root: Path, *parts: str) -> Path:
    """`root/parts...`, every folder from `root` down made (or tightened to) mode 0700.

    Args:
        root: the state folder (`.rolebake`); made private too.
        parts: the sub-folders below it.

    Returns:
        The innermost folder.
    """
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    _tighten(root)
    path = root
    for part in parts:
        path = path / part
        path.mkdir(mode=0o700, exist_ok=True)
        _tighten(path)
    return path


def _tighten(path: Path) -> None:
    # A folder made by an older rolebake, or by mkdir(parents=True), may be 0755.
    with contextlib.suppress(PermissionError):
        if path.stat().st_mode & 0o777 != 0o700:
            path.chmod(0o700)


def open_private(path: Path, *, append: bool = False) -> IO[str]:
    """Open `path` for writing as a 0600 file (created so, or tightened if it was not)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    with contextlib.suppress(PermissionError):
        os.fchmod(fd, 0o600)
    return os.fdopen(fd, "a" if append else "w", encoding="utf-8")


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` as a 0600 file."""
    with open_private(path) as handle:
        handle.write(text)


def replace_private(path: Path, text: str) -> None:
    """Put `text` at `path` whole: written aside in its folder (0600), then renamed over it.

    A reader beside this (another layer, another build) sees the old file or the
    new one, never half of it; a write that fails leaves nothing aside.
    """
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".new-")  # 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def append_private(path: Path, text: str) -> None:
    """Append `text` to the 0600 file `path`; its folder is made 0700 when missing."""
    if not path.parent.is_dir():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open_private(path, append=True) as handle:
        handle.write(text)


@contextlib.contextmanager
def scratch_dir(base: Path, prefix: str) -> Iterator[Path]:
    """A private folder below `base` for one run of a tool, removed when the block ends.

    Orphans of dead processes beside it are swept first, so a crashed run's
    folder (with its secrets) does not outlive the next run.
    """
    sweep(base)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))  # mode 0700
    # Locked under another name, then renamed: a sweeper never sees an unlocked OWNER.
    fd = os.open(path / (OWNER + ".new"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(path / (OWNER + ".new"), path / OWNER)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)


def sweep(base: Path, *, dry_run: bool = False) -> list[Path]:
    """Remove the scratch folders below `base` whose owner process is gone.

    Args:
        base: the folder scratch folders are made in (`.rolebake/tmp`).
        dry_run: only list them.

    Returns:
        The folders removed (or that would be).
    """
    if not base.is_dir():
        return []
    found: list[Path] = []
    for path in sorted(base.iterdir()):
        if path.is_symlink() or not path.is_dir():
            continue
        if _orphaned(path):
            found.append(path)
            if not dry_run:
                shutil.rmtree(path, ignore_errors=True)
    return found


def _orphaned(path: Path) -> bool:
    owner = path / OWNER
    try:
        fd = os.open(owner, os.O_RDWR)
    except FileNotFoundError:
        try:
            return time.time() - path.stat().st_mtime > _UNOWNED_GRACE_S
        except FileNotFoundError:
            return False  # its owner just removed it
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # its owner is alive and holds the lock
    finally:
        os.close(fd)
    return True
