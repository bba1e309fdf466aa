"""Find and remove what interrupted or failed builds left behind (`rolebake clean`).

On the engine: build, verify and scan containers, `:failed-` images, dangling
layers. In the project: scratch folders below `.rolebake/tmp` (ansible-runner's
private data and artifacts) whose process died before removing them, and the VM
layer snapshots of `rolebake parity` that no run can use any more (or, when
asked, those not used for a while).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from rolebake.engine import LEFTOVER_ROLES, ROLE_LABEL, Engine
from rolebake.spec import Project
from rolebake.state import sweep
from rolebake.vmlayers import STORE_DIR, SnapshotStore


@dataclass(frozen=True)
class Leftover:
    """A container or image rolebake made and nobody needs."""

    kind: str  # container | failed image | dangling image | toolchain volume
    id: str
    name: str
    age: str


def find_leftovers(engine: Engine, older_than: dt.timedelta,
                   labels: Mapping[str, str] | None = None,
                   in_flight: Collection[str] = ()) -> list[Leftover]:
    """Build/verify containers, `:failed-` images, untagged layers (by age), orphan volumes.

    With `labels`, only those that also carry every one of them (a shared
    engine: one CI job cleans up after its own builds, not its neighbours').
    Untagged images in `in_flight` (image.images_in_flight: made by live runs,
    not tagged yet) are never leftovers, whatever the date they carry.
    """
    now = dt.datetime.now(dt.UTC)
    extra = dict(labels or {})
    found: list[Leftover] = []
    for role in LEFTOVER_ROLES:
        for container in engine.containers({ROLE_LABEL: role, **extra}):
            age = now - _parse(container.created)
            if age >= older_than:
                found.append(Leftover("container", container.id, container.name, _age(age)))
    for image in engine.images({ROLE_LABEL: "image", **extra}):
        age = now - _parse(image.created)
        failed = [t for t in image.tags if ":failed-" in t]
        if failed and age >= older_than:
            found.extend(Leftover("failed image", t, t, _age(age)) for t in failed)
    for image in engine.dangling_images({ROLE_LABEL: "image", **extra}):
        age = now - _parse(image.created)
        if age >= older_than and image.id not in in_flight:
            found.append(Leftover("dangling image", image.id, image.short_id, _age(age)))
    if not extra:
        # A lent toolchain's filled volume outlives its image (made again for a new
        # rolebake version): its name ends with the image's short id.
        for volume in engine.volumes({ROLE_LABEL: "toolchain"}):
            if engine.image(volume.rsplit("-", 1)[-1]) is None:
                found.append(Leftover("toolchain volume", volume, volume, "image gone"))
    return found


def remove_leftovers(engine: Engine, leftovers: list[Leftover]) -> None:
    """Remove them; an image still used by a container is left alone."""
    for item in leftovers:
        if item.kind == "container":
            engine.remove_container(item.id)
        elif item.kind == "toolchain volume":
            engine.remove_volume(item.id)
        else:
            engine.remove_image(item.id)


def sweep_scratch(project: Project, *, dry_run: bool = False) -> list[Path]:
    """Remove (or with `dry_run` list) the project's scratch folders whose owner died.

    Whatever their age: a folder whose process is gone is never needed again,
    and it may hold a run's secrets (its vars, output, environment).
    """
    return sweep(project.state_dir / "tmp", dry_run=dry_run)


def _parse(created: str) -> dt.datetime:
    # Docker gives RFC 3339 with nanoseconds; Python wants at most microseconds.
    text = created.rstrip("Z")
    if "." in text:
        head, frac = text.split(".", 1)
        frac = "".join(ch for ch in frac if ch.isdigit())[:6]
        text = f"{head}.{frac}"
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return dt.datetime.now(dt.UTC)
    return parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed


def _age(delta: dt.timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} old"
    return f"{seconds}s old"


def vm_layers(project: Project, *, bases: Collection[str] | None, unused_for: dt.timedelta | None,
              dry_run: bool = False) -> list[tuple[str, str]]:
    """Remove (or with `dry_run` list) VM layer snapshots: the broken, and the long unused.

    Broken: no record (an interrupted run), a file that is not what its record says, the
    snapshot below it gone, or made on a VM base disk that is no more. With `unused_for`,
    also every snapshot no parity booted from for that long (a snapshot above it goes too:
    it cannot be used without it).

    Args:
        project: the project whose `.rolebake/vm-layers` is cleaned.
        bases: identities of the VM base disks there are now (None: do not judge).
        unused_for: also remove snapshots unused this long; None: only the broken.
        dry_run: only list them.

    Returns:
        (file name, why) for each snapshot removed (or that would be).
    """
    # Not store_for(): `clean` in a folder that is no project must not make .rolebake/ there.
    store = SnapshotStore(project.state_dir / STORE_DIR)
    found = dict(store.broken(bases))
    entries = store.entries()
    if unused_for is not None:
        now = time.time()
        for entry in entries:
            if now - entry.used >= unused_for.total_seconds():
                age = _age(dt.timedelta(seconds=now - entry.used)).replace(" old", "")
                found.setdefault(entry.path, f"last used {age} ago")
    # What sits on a snapshot that goes cannot be used without it: it goes too.
    gone = {path.name.split(".", 1)[0] for path in found}
    changed = True
    while changed:
        changed = False
        for entry in entries:
            if entry.parent in gone and entry.id not in gone:
                gone.add(entry.id)
                found.setdefault(entry.path, "the snapshot below it is removed")
                changed = True
    if not dry_run:
        for path in found:
            store.remove(path)
    return [(path.name, why) for path, why in found.items()]
