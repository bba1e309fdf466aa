"""The base container image `rolebake/debian:<suite>`, imported from the debootstrap rootfs.

No registry is needed: the rootfs (see `rolebake.rootfs.debootstrap`) is packed into a tar
and `docker import`ed through the engine. The rootfs stays in the cache directory, because the
parity VM disk is made from it, so the VM and the container start from the very same bytes.
With a cache repo, the base goes through it: an engine without one pulls the repo's (same id
everywhere, so cache keys line up across a fleet), and one that has one shares it.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rolebake.engine import ROLE_LABEL, Engine, ImageInfo
from rolebake.errors import BuildFailed
from rolebake.events import EventSink, LogEvent
from rolebake.locks import exclusive
from rolebake.registry import CacheRepo
from rolebake.release import RELEASE_LABEL, Release
from rolebake.rootfs.debootstrap import (
    COMPLETE_STAMP,
    default_mirror,
    make_rootfs,
    parse_base_name,
    rootfs_dir,
    timestamp,
)

__all__ = ["BASE_REPOSITORY", "BaseImage", "ensure_base"]

BASE_REPOSITORY = "rolebake/debian"


@dataclass(frozen=True)
class BaseImage:
    """A base image and the rootfs it was made from."""

    ref: str
    image_id: str
    rootfs: Path
    suite: str
    mirror: str
    reused: bool
    source: str = "made"  # made | reused | pulled from the cache repo
    shared: str = ""  # what was put in the cache repo, if anything


def ensure_base(engine: Engine, name: str = "debian:bookworm", *, mirror: str | None = None,
                events: EventSink, rebuild: bool = False,
                repo: CacheRepo | None = None) -> BaseImage:
    """Make (or reuse, or pull from the cache repo) the base image `rolebake/debian:<suite>`.

    Args:
        engine: the engine to import into.
        name: `debian:<suite>`.
        mirror: a Debian mirror URL; the machine's apt mirror by default.
        events: progress sink (debootstrap is long work).
        rebuild: make it again even when it exists (and replace the cache repo's).
        repo: the cache repo the base goes through, if any.

    Returns:
        The base image and where its rootfs is kept.

    Raises:
        RegistryError: the cache repo could not be read or written.
    """
    _, suite = parse_base_name(name)
    mirror = mirror or default_mirror()
    ref = f"{BASE_REPOSITORY}:{suite}"
    rootfs = rootfs_dir(suite)
    existing = engine.image(ref)
    if existing is not None and not rebuild and existing.labels.get("rolebake.base.suite") == suite:
        events(LogEvent("base", f"{ref} exists ({existing.short_id}); reusing it"))
        # The image alone is not enough: the parity VM disk is made from the rootfs.
        if not (rootfs / COMPLETE_STAMP).exists():
            make_rootfs(rootfs, suite, mirror, events)
        return BaseImage(ref, existing.id, rootfs, suite, existing.labels.get(
            "rolebake.base.mirror", mirror), reused=True, source="reused",
            shared=_share(existing.id, ref, repo, events, replace=False))
    if existing is None and not rebuild and repo is not None:
        remote = repo.find(repo.base_ref(ref))
        if remote is not None and remote.labels.get("rolebake.base.suite") == suite:
            events(LogEvent("base", f"pulling {ref} from the cache repo ({remote.ref})"))
            image = repo.pull(remote, ref, lambda line: events(LogEvent("base", line)))
            # No rootfs is made here: `rolebake parity --vm qemu` makes one when it needs it.
            return BaseImage(ref, image.id, rootfs, suite, image.labels.get(
                "rolebake.base.mirror", mirror), reused=True, source="pulled from the cache repo")
    with exclusive(rootfs.parent / f".{rootfs.name}.lock"):
        if rebuild or not (rootfs / COMPLETE_STAMP).exists():
            make_rootfs(rootfs, suite, mirror, events, replace=rebuild)
        image = _import(engine, rootfs, ref, suite, mirror, events)
    return BaseImage(ref, image.id, rootfs, suite, mirror, reused=False,
                     shared=_share(image.id, ref, repo, events, replace=rebuild))


def _share(image_id: str, ref: str, repo: CacheRepo | None, events: EventSink, *,
           replace: bool) -> str:
    """Put the base in the cache repo unless it holds one already (or `replace`)."""
    if repo is None:
        return ""
    target = repo.base_ref(ref)
    there = repo.find(target)
    if there is not None and not replace:
        return ("" if there.image_id == image_id else
                f"the cache repo holds another {ref} ({there.image_id[7:19]}); builds on "
                "engines without one start from that")
    events(LogEvent("base", f"pushing {ref} to the cache repo as {target}"))
    repo.push(image_id, target, lambda line: events(LogEvent("base", line)))
    return f"pushed to the cache repo as {target}"


def _import(engine: Engine, rootfs: Path, ref: str, suite: str, mirror: str,
            events: EventSink) -> ImageInfo:
    """Pack the rootfs and import it into the engine as `ref`, labelled with its origin."""
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
            f"LABEL rolebake.base.date={timestamp()}",
        ]
        os_release = rootfs / "usr" / "lib" / "os-release"
        release = Release.parse(os_release.read_text(encoding="utf-8", errors="replace")) \
            if os_release.is_file() else None
        if release is not None:
            # Layers built on it know its release without reading the file again.
            changes.append(f"LABEL {RELEASE_LABEL}={release.label}")
        image = engine.import_rootfs(tarball, ref, changes)
    events(LogEvent("base", f"{ref} is {image.short_id}"))
    return image
