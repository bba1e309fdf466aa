"""Which distribution release an image is (its /etc/os-release), read once and labelled.

The lent Ansible runtime and the shared apt caches are both per release: a
python built against one release's libapt-pkg must not run in another, and
one release's package lists mean nothing to the next. Images rolebake commits
carry the release as a label, so a child layer knows it without reading a
file; other images (a pulled base) are read once, through a created, never
started container, and what was found is kept on this machine by image id
(an id names the image's content), so a cached build creates no container.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import threading
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path

from rolebake.engine import Engine, ImageInfo

RELEASE_LABEL = "rolebake.os-release"

# What each engine's images were found to be, by image id (ids are per engine).
_memo: weakref.WeakKeyDictionary[Engine, dict[str, Release | None]] = weakref.WeakKeyDictionary()
_memo_lock = threading.Lock()


@dataclass(frozen=True)
class Release:
    """A distribution release, as os-release(5) names it."""

    id: str  # debian, ubuntu
    version: str  # 12, 22.04; empty for testing/unstable
    codename: str  # bookworm
    like: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """A name for volumes, tags and cache keys: `debian-12`, `debian-trixie`."""
        return re.sub(r"[^a-z0-9_.-]+", "-", f"{self.id}-{self.version or self.codename}".lower())

    @property
    def uses_apt(self) -> bool:
        """Debian or a derivative: apt, dpkg and libapt-pkg are there."""
        return self.id == "debian" or "debian" in self.like

    @property
    def label(self) -> str:
        """The label value: `id:version:codename[:like,...]`."""
        return ":".join((self.id, self.version, self.codename, ",".join(self.like)))

    @classmethod
    def from_label(cls, text: str | None) -> Release | None:
        """Read a label back; None when absent or not ours."""
        parts = (text or "").split(":")
        if len(parts) != 4 or not parts[0]:
            return None
        return cls(parts[0], parts[1], parts[2], tuple(p for p in parts[3].split(",") if p))

    @classmethod
    def parse(cls, text: str) -> Release | None:
        """Parse os-release(5) text; None without an ID."""
        fields: dict[str, str] = {}
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep and re.fullmatch(r"[A-Z_]+", key.strip()):
                fields[key.strip()] = value.strip().strip("\"'")
        if not fields.get("ID"):
            return None
        codename = fields.get("VERSION_CODENAME", "")
        if not codename:
            # Debian testing says `PRETTY_NAME="Debian GNU/Linux trixie/sid"` and no codename.
            match = re.search(r"\b([a-z]+)/sid\b", fields.get("PRETTY_NAME", ""))
            codename = match.group(1) if match else ""
        like = tuple(fields.get("ID_LIKE", "").split())
        return cls(fields["ID"].lower(), fields.get("VERSION_ID", ""), codename,
                   tuple(x.lower() for x in like))

    def __str__(self) -> str:
        """`debian 12 (bookworm)`."""
        name = f"{self.id} {self.version}".strip()
        return f"{name} ({self.codename})" if self.codename else name


def release_of(engine: Engine, image: ImageInfo, memo: Path | None = None) -> Release | None:
    """The release of an image: its label, else its /etc/os-release (read once).

    Args:
        engine: the engine holding the image.
        image: the image.
        memo: a folder keeping what unlabelled images were found to be, by image id.

    Returns:
        The release, or None when the image has no os-release (scratch, busybox).
    """
    labelled = Release.from_label(image.labels.get(RELEASE_LABEL))
    if labelled is not None:
        return labelled
    with _memo_lock:
        known = _memo.setdefault(engine, {})
        if image.id in known:
            return known[image.id]
    kept = memo / image.id.replace(":", "-") if memo is not None else None
    if kept is not None and kept.is_file():
        found = Release.from_label(kept.read_text(encoding="utf-8").strip())
    else:
        files = engine.read_files(image.id, ["/etc/os-release", "/usr/lib/os-release"],
                                  name=f"rolebake-release-{uuid.uuid4().hex[:12]}")
        text = files.get("/etc/os-release") or files.get("/usr/lib/os-release")
        found = Release.parse(text.decode("utf-8", "replace")) if text else None
        if kept is not None:
            _keep(kept, found.label if found is not None else "none")
    with _memo_lock:
        known[image.id] = found
    return found


def _keep(path: Path, text: str) -> None:
    with contextlib.suppress(OSError):  # only a shortcut: reading the image again is fine
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".release-")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
        os.replace(tmp, path)
