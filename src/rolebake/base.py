"""Base images without a registry: debootstrap a Debian rootfs, `docker import` it.

The same rootfs, kept in the cache directory, is what the local parity VM is
made from, so the VM and the container start from the very same bytes.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rolebake.engine import ROLE_LABEL, Engine, ImageInfo
from rolebake.errors import BuildFailed, InputError
from rolebake.events import EventSink, LogEvent
from rolebake.locks import exclusive

SUPPORTED = {"debian": ("bookworm", "trixie", "bullseye")}
BASE_REPOSITORY = "rolebake/debian"
COMPLETE_STAMP = ".rolebake-rootfs-complete"
_DEB_LINE = re.compile(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)")


@dataclass(frozen=True)
class BaseImage:
    """A base image and the rootfs it was made from."""

    ref: str
    image_id: str
    rootfs: Path
    suite: str
    mirror: str
    reused: bool


def cache_dir() -> Path:
    """Where rolebake keeps root filesystems and VM disks (ROLEBAKE_CACHE overrides)."""
    configured = os.environ.get("ROLEBAKE_CACHE")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rolebake"


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


def ensure_base(engine: Engine, name: str = "debian:bookworm", *, mirror: str | None = None,
                events: EventSink, rebuild: bool = False) -> BaseImage:
    """Make (or reuse) the base image `rolebake/debian:<suite>`.

    Args:
        engine: the engine to import into.
        name: `debian:<suite>`.
        mirror: a Debian mirror URL; the machine's apt mirror by default.
        events: progress sink (debootstrap is long work).
        rebuild: make it again even when it exists.

    Returns:
        The base image and where its rootfs is kept.
    """
    _, suite = parse_base_name(name)
    mirror = mirror or default_mirror()
    ref = f"{BASE_REPOSITORY}:{suite}"
    rootfs = cache_dir() / "rootfs" / f"debian-{suite}"
    existing = engine.image(ref)
    if existing is not None and not rebuild and existing.labels.get("rolebake.base.suite") == suite:
        events(LogEvent("base", f"{ref} exists ({existing.short_id}); reusing it"))
        if not (rootfs / COMPLETE_STAMP).exists():
            make_rootfs(rootfs, suite, mirror, events)
        return BaseImage(ref, existing.id, rootfs, suite, existing.labels.get(
            "rolebake.base.mirror", mirror), reused=True)
    with exclusive(rootfs.parent / f".{rootfs.name}.lock"):
        if rebuild or not (rootfs / COMPLETE_STAMP).exists():
            make_rootfs(rootfs, suite, mirror, events, replace=rebuild)
        image = _import(engine, rootfs, ref, suite, mirror, events)
    return BaseImage(ref, image.id, rootfs, suite, mirror, reused=False)


def make_rootfs(rootfs: Path, suite: str, mirror: str, events: EventSink, *,
                replace: bool = False) -> Path:
    """Debootstrap a minbase rootfs; a half-made one is never left where it would be used."""
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
            f"suite={suite}\nmirror={mirror}\ndate={_now()}\n", encoding="utf-8")
        if rootfs.exists():
            shutil.rmtree(rootfs)
        work.rename(rootfs)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return rootfs


def _import(engine: Engine, rootfs: Path, ref: str, suite: str, mirror: str,
            events: EventSink) -> ImageInfo:
    events(LogEvent("base", f"importing {rootfs} as {ref}"))
    with tempfile.TemporaryDirectory(prefix="rolebake-base-") as tmp:
        tarball = Path(tmp) / "rootfs.tar"
        # The downloaded .debs and apt lists are debootstrap's cache, not the system.
        argv = ["tar", "-C", str(rootfs), "--numeric-owner", "--xattrs",
                f"--exclude=./{COMPLETE_STAMP}", "--exclude=./var/cache/apt/archives/*.deb",
                "--exclude=./var/lib/apt/lists/*", "-cf", str(tarball), "."]
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise BuildFailed("could not pack the rootfs", details=result.stderr[-2000:])
        changes = [
            'CMD ["bash"]',
            f"LABEL {ROLE_LABEL}=base",
            f"LABEL rolebake.base.suite={suite}",
            f"LABEL rolebake.base.mirror={mirror}",
            f"LABEL rolebake.base.date={_now()}",
        ]
        image = engine.import_rootfs(tarball, ref, changes)
    events(LogEvent("base", f"{ref} is {image.short_id}"))
    return image


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
