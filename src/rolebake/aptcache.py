"""apt's lists and downloaded packages, shared by build containers on volumes, never committed.

As BuildKit users do with `RUN --mount=type=cache`, a build container gets two
engine volumes mounted over /var/lib/apt/lists and /var/cache/apt/archives:
what one layer downloads, the next layer (and the next build) finds. A mount
is not part of a commit, so no list or package reaches a layer.

The caches are keyed by distribution release (one release's lists mean nothing
to another). Two builds never share a volume at the same time: each claims a
*slot* (a pair of volumes) with a file lock on this machine, so apt's own locks
and its clean-up of lists it does not know never meet another build's files;
a second concurrent build takes the next slot. Lists older than
$ROLEBAKE_APT_LISTS_MAX_AGE seconds (default 3600), or made for other apt
sources, are refreshed before the roles run (scripts/prepare.sh).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rolebake.engine import Engine
from rolebake.errors import InputError
from rolebake.locks import attempt
from rolebake.release import Release
from rolebake.rootfs import cache_dir

CACHE_ENV = "ROLEBAKE_APT_CACHE"  # off | on (default) | a volume name prefix
DEFAULT_PREFIX = "rolebake-apt"
MAX_AGE_ENV = "ROLEBAKE_APT_LISTS_MAX_AGE"
DEFAULT_MAX_AGE = 3600
LISTS_DIR = "/var/lib/apt/lists"
ARCHIVES_DIR = "/var/cache/apt/archives"
RELEASE_LABEL = "rolebake.apt-cache"  # on the volumes: the release they hold
SLOTS = 8


@dataclass(frozen=True)
class AptCache:
    """One claimed slot of a release's apt cache: two volumes, this build's alone for now."""

    release: str  # Release.key
    slot: int
    max_age: int = DEFAULT_MAX_AGE
    prefix: str = DEFAULT_PREFIX

    @property
    def name(self) -> str:
        """`debian-12#0`, for messages."""
        return f"{self.release}#{self.slot}"

    @property
    def lists_volume(self) -> str:
        """The volume mounted over /var/lib/apt/lists."""
        return volume_name(self.release, self.slot, "lists", self.prefix)

    @property
    def archives_volume(self) -> str:
        """The volume mounted over /var/cache/apt/archives."""
        return volume_name(self.release, self.slot, "archives", self.prefix)

    def mounts(self) -> tuple[dict[str, str], ...]:
        """The build container's mounts (both folders exist in any image with apt)."""
        return ({"target": LISTS_DIR, "source": self.lists_volume, "type": "volume"},
                {"target": ARCHIVES_DIR, "source": self.archives_volume, "type": "volume"})

    def env(self) -> dict[str, str]:
        """What prepare.sh and clean.sh read: the cache is mounted, and the lists' max age."""
        return {"ROLEBAKE_APT_CACHE": "1", "ROLEBAKE_APT_MAX_AGE": str(self.max_age)}


def volume_name(release: str, slot: int, kind: str, prefix: str = DEFAULT_PREFIX) -> str:
    """`rolebake-apt-debian-12-0-lists`."""
    return f"{prefix}-{release}-{slot}-{kind}"


def enabled() -> bool:
    """False when $ROLEBAKE_APT_CACHE says off."""
    return os.environ.get(CACHE_ENV, "").strip().lower() not in ("off", "0", "no", "false")


def prefix() -> str:
    """The volumes' name prefix: $ROLEBAKE_APT_CACHE when it names one (a cache of one's own).

    Raises:
        InputError: the value cannot start a volume name.
    """
    text = os.environ.get(CACHE_ENV, "").strip()
    if text.lower() in ("", "on", "1", "yes", "true"):
        return DEFAULT_PREFIX
    if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,60}", text):
        raise InputError(f"{CACHE_ENV}={text!r}: expected on, off or a volume name prefix")
    return text


def max_age() -> int:
    """Seconds after which shared lists are refreshed ($ROLEBAKE_APT_LISTS_MAX_AGE).

    Raises:
        InputError: the variable is set to something other than a whole number >= 0.
    """
    text = os.environ.get(MAX_AGE_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_AGE
    if not text.isdigit():
        raise InputError(f"{MAX_AGE_ENV}={text!r}: expected a number of seconds, e.g. 3600")
    return int(text)


@contextlib.contextmanager
def claim(engine: Engine, release: Release | None) -> Iterator[AptCache | None]:
    """Hold one free slot of the release's cache for a `with` block (None: no cache).

    There is no cache when it is turned off, for an image without apt, or when
    every slot is busy (more than SLOTS builds of one release at once).
    """
    if not enabled() or release is None or not release.uses_apt:
        yield None
        return
    age, names = max_age(), prefix()
    for slot in range(SLOTS):
        with attempt(_lock_path(f"{names}-{release.key}", slot)) as mine:
            if not mine:
                continue
            cache = AptCache(release.key, slot, age, names)
            for volume in (cache.lists_volume, cache.archives_volume):
                engine.ensure_volume(volume, {RELEASE_LABEL: release.key})
            yield cache
            return
    yield None


def archive_volumes(engine: Engine, release: str) -> list[str]:
    """Every archives volume of a release's cache (read by the parity VM's package proxy)."""
    names = prefix()
    return [name for name in engine.volumes({RELEASE_LABEL: release})
            if name.startswith(f"{names}-{release}-") and name.endswith("-archives")]


def parse_downloads(output: str) -> tuple[int, int] | None:
    """(packages, bytes) from clean.sh's `apt cache: N packages downloaded (B bytes)` line."""
    for line in output.splitlines():
        if line.startswith("apt cache: ") and "downloaded" in line:
            words = line.split()
            try:
                return int(words[2]), int(words[5].lstrip("("))
            except (IndexError, ValueError):
                return None
    return None


def human(size: int) -> str:
    """Bytes as people read them: `12.4 MB`."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def _lock_path(release: str, slot: int) -> Path:
    # Slots are per engine: the same volume names on another engine are other volumes.
    engine = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    tag = hashlib.sha256(engine.encode()).hexdigest()[:12]
    return cache_dir() / "locks" / f"apt-{tag}-{release}-{slot}.lock"
