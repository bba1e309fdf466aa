"""The debootstrap Debian rootfs and where it is kept: the bytes the base image and VM disk share.

`make_rootfs` debootstraps a minbase tree into the cache directory; a stamp file written last
marks it complete, so a half-made tree is never used. The base container image is imported
from it and the parity VM disk is made from a copy of it.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from rolebake.errors import BuildFailed, InputError
from rolebake.events import EventSink, LogEvent

__all__ = [
    "COMPLETE_STAMP",
    "SUPPORTED",
    "cache_dir",
    "default_mirror",
    "make_rootfs",
    "parse_base_name",
    "rootfs_dir",
    "timestamp",
]

SUPPORTED = {"debian": ("bookworm", "trixie", "bullseye")}
COMPLETE_STAMP = ".rolebake-rootfs-complete"
_DEB_LINE = re.compile(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)")


def cache_dir() -> Path:
    """Where rolebake keeps root filesystems and VM disks (ROLEBAKE_CACHE overrides)."""
    configured = os.environ.get("ROLEBAKE_CACHE")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rolebake"


def rootfs_dir(suite: str) -> Path:
    """Where the debootstrap rootfs of a Debian suite is kept."""
    return cache_dir() / "rootfs" / f"debian-{suite}"


def parse_base_name(name: str) -> tuple[str, str]:
    """Split `debian:bookworm` into its distribution and suite, checking both."""
    distribution, _, suite = name.partition(":")
    suite = suite or "bookworm"
    if distribution not in SUPPORTED:
        raise InputError(f"cannot make a base image for {distribution!r}; supported: "
                         f"{', '.join(f'debian:{s}' for s in SUPPORTED['debian'])}")
    if suite not in SUPPORTED[distribution]:
        raise InputError(f"unknown {distribution} suite {suite!r}; known: "
                         f"{', '.join(SUPPORTED[distribution])}")
    return distribution, suite


def default_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt uses (sources.list and sources.list.d)."""
    candidates: list[str] = []
    files = [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*.list")),
             *sorted((sources / "sources.list.d").glob("*.sources"))]
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
                suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
                if uris and suites and "security" not in suites.group(1):
                    candidates.append(uris.group(1))
        else:
            for line in text.splitlines():
                match = _DEB_LINE.match(line)
                if match and "security" not in match.group(2):
                    candidates.append(match.group(1))
    for uri in candidates:
        if uri.startswith(("http://", "https://", "file:/")):
            return uri.rstrip("/")
    raise InputError("no Debian mirror found in /etc/apt/sources.list*",
                     hint="pass one with --mirror URL")


def make_rootfs(rootfs: Path, suite: str, mirror: str, events: EventSink, *,
                replace: bool = False) -> Path:
    """Debootstrap a minbase rootfs; a half-made one is never left where it would be used.

    Args:
        rootfs: Where the finished tree goes (the work happens next to it).
        suite: The Debian suite, e.g. `bookworm`.
        mirror: The Debian mirror URL to debootstrap from.
        events: Progress sink; gets debootstrap's main steps.
        replace: Accepted for callers that rebuild; an existing tree is always replaced.

    Returns:
        `rootfs`, now complete (it holds COMPLETE_STAMP).

    Raises:
        BuildFailed: debootstrap is missing or failed (with the tail of its output).
    """
    if shutil.which("debootstrap") is None:
        raise BuildFailed("debootstrap is not installed", hint="apt-get install debootstrap")
    rootfs.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{rootfs.name}-", dir=rootfs.parent))
    argv = ["debootstrap", "--variant=minbase", suite, str(work), mirror]
    events(LogEvent("base", "running " + " ".join(argv)))
    try:
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) as proc:
            assert proc.stdout is not None
            tail: list[str] = []
            for line in proc.stdout:
                tail = [*tail[-19:], line.rstrip()]
                if line.startswith(("I: Retrieving", "I: Validating", "I: Extracting",
                                    "I: Installing", "I: Configuring", "I: Base system")):
                    events(LogEvent("base", line.strip()))
            if proc.wait() != 0:
                raise BuildFailed(f"debootstrap {suite} from {mirror} failed",
                                  details="\n".join(tail))
        (work / COMPLETE_STAMP).write_text(
            f"suite={suite}\nmirror={mirror}\ndate={timestamp()}\n", encoding="utf-8")
        if rootfs.exists():
            shutil.rmtree(rootfs)
        work.rename(rootfs)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return rootfs


def timestamp() -> str:
    """The current UTC time as the stamp file and the base image's labels record it."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
