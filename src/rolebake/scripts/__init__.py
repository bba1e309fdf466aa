"""The shell scripts rolebake runs inside build containers, and their fingerprint.

They shape every image (prepare, bootstrap, clean), so their digest is part of
every layer's cache key.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import resources


def script(name: str) -> str:
    """The text of one of rolebake's container scripts (e.g. `clean.sh`)."""
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


@functools.cache
def digest() -> str:
    """A short sha256 over every script's name and bytes."""
    folder = resources.files(__name__)
    hashed = hashlib.sha256()
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sh"):
            hashed.update(entry.name.encode() + b"\0" + entry.read_bytes() + b"\0")
    return hashed.hexdigest()[:12]
