"""Reading YAML files: a cap on their size, and each parsed once per command.

A spec, playbook or vars file larger than MAX_FILE_BYTES is refused from its
size, before a byte of it is read: a 50 MB spec would otherwise take PyYAML's
pure-Python loader minutes and hundreds of MB. Within `parsed_once()` (the
CLI runs each command in one) a file is parsed once per loader while its
stat stays the same: the spec, the playbook and each task file are read by
several checks and by every layer that uses them.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rolebake.errors import InputError

# Far above any real spec, playbook or vars file (tens of KB), low enough that a
# file at the cap still parses in seconds; above it nothing of the file is read.
MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_FILE_BYTES_ENV = "ROLEBAKE_MAX_YAML_BYTES"


def max_file_bytes() -> int:
    """The size cap on YAML files: MAX_FILE_BYTES, or $ROLEBAKE_MAX_YAML_BYTES when set.

    Raises:
        InputError: the variable is set to something that is not a positive whole number.
    """
    raw = os.environ.get(MAX_FILE_BYTES_ENV)
    if raw is None or not raw.strip():
        return MAX_FILE_BYTES
    if not raw.strip().isdigit() or int(raw) <= 0:
        raise InputError(f"{MAX_FILE_BYTES_ENV}={raw!r} is not a number of bytes")
    return int(raw)


def check_size(path: Path) -> None:
    """Refuse a YAML file over the cap from its size alone; one that cannot be stat'ed passes.

    Raises:
        InputError: naming the file, its size and the cap.
    """
    try:
        size = path.stat().st_size
    except OSError:
        return  # whoever reads it says what is wrong
    _refuse_size(path, size, max_file_bytes())


def read_capped(path: Path) -> bytes:
    """A YAML file's bytes, refusing it from its size before reading, and past the cap while read.

    The second check covers what stat cannot size (a device, a file that grows).

    Raises:
        OSError: it cannot be opened or read.
        InputError: over the cap.
    """
    cap = max_file_bytes()
    with path.open("rb") as handle:
        _refuse_size(path, os.fstat(handle.fileno()).st_size, cap)
        data = handle.read(cap + 1)
    _refuse_size(path, len(data), cap)
    return data


def _refuse_size(path: Path, size: int, cap: int) -> None:
    if size > cap:
        shown = f"{_bytes(size)}, over" if size > cap + 1 else "more than"
        raise InputError(f"{shown} the {_bytes(cap)} cap on YAML files rolebake reads "
                         f"(set {MAX_FILE_BYTES_ENV} to raise it)", path=path)


def _bytes(size: int) -> str:
    for unit, scale in (("MB", 1 << 20), ("KB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} bytes"


class _Parsed:
    """Documents (or the InputError) by loader and file stat, while a command runs."""

    def __init__(self) -> None:
        self.documents: dict[tuple[Any, ...], Any] = {}
        self.lock = threading.Lock()
        self.scopes = 0


_PARSED = _Parsed()
_ABSENT = object()


@contextlib.contextmanager
def parsed_once() -> Iterator[None]:
    """Within the block, a file is parsed once per loader while its stat stays the same.

    Commands run in one (the CLI, `load.plan_build`); the documents are dropped
    when the outermost block ends, so a library caller that edits files between
    commands always reads them afresh.
    """
    with _PARSED.lock:
        _PARSED.scopes += 1
    try:
        yield
    finally:
        with _PARSED.lock:
            _PARSED.scopes -= 1
            if not _PARSED.scopes:
                _PARSED.documents.clear()


def _stat_key(path: Path) -> tuple[Any, ...] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (os.path.abspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
            st.st_ctime_ns)


def cached(loader: str, path: Path, parse: Callable[[], Any]) -> Any:
    """`parse()`'s document (or InputError) for `path`, parsed once within `parsed_once`.

    Args:
        loader: which loader `parse` uses (`lines`: the strict one; `ansible`).
        path: the file.
        parse: reads and parses it.
    """
    key = _stat_key(path) if _PARSED.scopes else None
    if key is None:
        return parse()
    with _PARSED.lock:
        found = _PARSED.documents.get((loader, *key), _ABSENT)
        if found is _ABSENT and loader == "ansible":
            # What the strict loader read is the same document for Ansible's reading.
            strict = _PARSED.documents.get(("lines", *key), _ABSENT)
            found = _ABSENT if isinstance(strict, InputError) else strict
    if found is _ABSENT:
        try:
            found = parse()
        except InputError as exc:
            found = exc
        with _PARSED.lock:
            _PARSED.documents[(loader, *key)] = found
    if isinstance(found, InputError):
        raise found
    return found
