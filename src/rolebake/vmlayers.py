"""VM layers: the parity VM's disk after each layer, kept as qcow2 snapshots like image layers.

After the VM has applied the roles of layer L, the overlay that received them is frozen
(`QemuVM.checkpoint`) and, once the container build of L has passed (so its cache key is the
one the build used and verified), published here: a qcow2 file backed by the snapshot of the
layer below (or by the VM base disk), keyed by L's cache key and the VM base disk's identity.
A later parity boots from the deepest snapshot whose key still matches and applies only the
layers above it.

The store is a folder of the project's private state (`.rolebake/vm-layers`): `<id>.qcow2`
and its record `<id>.json`. The record is the commit point: a snapshot file is complete,
fsynced and renamed into place before its record is written (to a temp name, fsynced,
renamed), so a run killed anywhere leaves either nothing, or a file without a record that
`lookup` never returns and `rolebake clean` removes. Published files are read-only; each run
writes only to a fresh overlay of its own on top. A record names the snapshot below it by
its random id, so a parent removed and made again under the same key never carries a child
made on the old one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rolebake.locks import exclusive
from rolebake.spec import Project

__all__ = ["SNAPSHOT_FORMAT", "STORE_DIR", "Snapshot", "SnapshotStore", "new_snapshot_id",
           "store_for"]

#: The store's folder below the project's `.rolebake/`.
STORE_DIR = "vm-layers"

#: Bump when what a snapshot holds changes meaning (records of another format are stale).
SNAPSHOT_FORMAT = 1
_RECORD = ".json"
_DISK = ".qcow2"
# A snapshot file without a record younger than this may be one being published right now.
_UNRECORDED_GRACE_S = 600


def store_for(project: Project) -> SnapshotStore:
    """The project's VM layer store (`.rolebake/vm-layers`, private like the rest)."""
    return SnapshotStore(project.private_dir(STORE_DIR).resolve())


def new_snapshot_id() -> str:
    """A fresh snapshot id (also its file name): random, never derived from the key."""
    return uuid.uuid4().hex[:16]


@dataclass(frozen=True)
class Snapshot:
    """One published VM layer.

    Attributes:
        id: Random id, the file name stem.
        layer: The layer whose roles it holds (on top of `parent`).
        key: The layer's cache key (the container build's).
        base: Identity of the VM base disk under the whole chain.
        parent: Id of the snapshot below, or None when it sits on the base disk.
        path: The qcow2 file.
        created: When it was published (epoch seconds).
        used: When a run last booted from it or from a snapshot above it.
        size: Bytes of the qcow2 file (a record for another size is broken).
        apply_seconds: How long applying the layer to the VM took.
        managed: Paths the layer's tasks managed on the VM (compared by later runs too).
        requested: Packages the layer's apt tasks named (why-chains of later runs).
    """

    id: str
    layer: str
    key: str
    base: str
    parent: str | None
    path: Path
    created: float
    used: float
    size: int
    apply_seconds: float = 0.0
    managed: tuple[str, ...] = ()
    requested: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON form (for reports)."""
        return {"id": self.id, "layer": self.layer, "key": self.key, "parent": self.parent,
                "created": round(self.created), "size": self.size,
                "apply_seconds": round(self.apply_seconds, 1)}


class SnapshotStore:
    """The snapshots of one project, in one folder."""

    def __init__(self, root: Path) -> None:
        """Use `root` (made 0700 when missing) as the store."""
        self.root = root

    # -- reading

    def entries(self) -> list[Snapshot]:
        """Every snapshot with a readable record, oldest first (validity not checked)."""
        found: list[Snapshot] = []
        if not self.root.is_dir():
            return found
        for record in sorted(self.root.glob(f"*{_RECORD}")):
            entry = self._read(record)
            if entry is not None:
                found.append(entry)
        return sorted(found, key=lambda e: e.created)

    def broken(self, bases: Collection[str] | None = None) -> list[tuple[Path, str]]:
        """Files no lookup will use again, and why: unrecorded, damaged, orphaned, stale base.

        Args:
            bases: The identities of the VM base disks there are now; a snapshot made on
                any other is stale. None: do not judge the base.
        """
        out: list[tuple[Path, str]] = []
        if not self.root.is_dir():
            return out
        entries = {e.id: e for e in self.entries()}
        recorded = {e.path for e in entries.values()}
        now = time.time()
        for disk in sorted(self.root.glob(f"*{_DISK}")):
            if disk not in recorded:
                with contextlib.suppress(FileNotFoundError):
                    if now - disk.stat().st_mtime > _UNRECORDED_GRACE_S:
                        out.append((disk, "no record (its run was interrupted)"))
        for tmp in sorted(self.root.glob(f".*{_RECORD}.tmp")):
            with contextlib.suppress(FileNotFoundError):
                if now - tmp.stat().st_mtime > _UNRECORDED_GRACE_S:
                    out.append((tmp, "a record its run did not finish"))
        for entry in entries.values():
            why = self._why_invalid(entry, entries, None)
            if not why and bases is not None and entry.base not in bases:
                why = "made on a VM base disk that is gone"
            if why:
                out.append((entry.path, why))
        return out

    def lookup(self, chain: Sequence[tuple[str, str | None]], base: str) -> list[Snapshot]:
        """The snapshots for the longest prefix of `chain` that the store has, valid.

        Args:
            chain: The layers from the bottom up, each with its cache key now (None: not
                known before the build, which ends the prefix).
            base: The VM base disk identity.

        Returns:
            One snapshot per layer of the prefix, bottom first (empty: boot the base disk).
        """
        entries = {e.id: e for e in self.entries()}
        found: list[Snapshot] = []
        for layer, key in chain:
            if key is None:
                break
            parent = found[-1].id if found else None
            candidates = [e for e in entries.values()
                          if e.layer == layer and e.key == key and e.base == base
                          and e.parent == parent and not self._why_invalid(e, entries, base)]
            if not candidates:
                break
            found.append(max(candidates, key=lambda e: e.created))
        return found

    def touch(self, snapshots: Sequence[Snapshot]) -> None:
        """Record that a run booted from these (what `clean --vm-layers` ages by)."""
        now = time.time()
        for entry in snapshots:
            with contextlib.suppress(OSError):
                os.utime(self._record_path(entry.id), (now, now))

    # -- writing

    def publish(self, disk: Path, *, snapshot_id: str, layer: str, key: str, base: str,
                parent: str | None, apply_seconds: float = 0.0,
                managed: Sequence[str] = (), requested: Sequence[str] = ()) -> Snapshot | None:
        """Move a frozen overlay into the store as the snapshot of `layer` (under its key's lock).

        The file is fsynced, made read-only and renamed into the store (same file system as
        the project's scratch folders), then the record is written to a temp name, fsynced
        and renamed: the record's rename is the moment the snapshot exists.

        Args:
            disk: The frozen overlay (its backing file is the store path of `parent`, or
                the VM base disk). Must be on the store's file system.
            snapshot_id: Its id (the name the overlay above it names as its backing file).
            layer: The layer whose roles it holds.
            key: That layer's cache key.
            base: The VM base disk identity.
            parent: The snapshot below, or None.
            apply_seconds: How long the layer took to apply (shown by later runs).
            managed: Paths its tasks managed (names only: never a task's arguments).
            requested: Packages its apt tasks named.

        Returns:
            The snapshot, or None when a valid one for the same layer, key and parent was
            published meanwhile by another run (ours is then left where it is, to be removed
            with the run's scratch folder).
        """
        self._ensure_root()
        with exclusive(self.root / f".{_digest(base, key, parent or '')}.lock"):
            entries = {e.id: e for e in self.entries()}
            for other in entries.values():
                if other.layer == layer and other.key == key and other.base == base \
                        and other.parent == parent \
                        and not self._why_invalid(other, entries, base):
                    return None
            _fsync_file(disk)
            disk.chmod(0o400)
            final = self.path_of(snapshot_id)
            os.replace(disk, final)
            _fsync_dir(self.root)
            now = time.time()
            entry = Snapshot(id=snapshot_id, layer=layer, key=key, base=base, parent=parent,
                             path=final, created=now, used=now, size=final.stat().st_size,
                             apply_seconds=apply_seconds, managed=tuple(managed),
                             requested=tuple(sorted(requested)))
            record = {"format": SNAPSHOT_FORMAT, "id": snapshot_id, "layer": layer,
                      "key": key, "base": base, "parent": parent, "created": now,
                      "size": entry.size, "apply_seconds": round(apply_seconds, 1),
                      "managed": list(entry.managed), "requested": list(entry.requested)}
            tmp = self.root / f".{snapshot_id}{_RECORD}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(record, indent=1, sort_keys=True) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self._record_path(snapshot_id))
            _fsync_dir(self.root)
            return entry

    def remove(self, path: Path) -> None:
        """Remove a snapshot (record first, so it stops being found at once) and its file."""
        stem = path.name.lstrip(".").split(".", 1)[0]
        self._record_path(stem).unlink(missing_ok=True)
        path.unlink(missing_ok=True)

    def path_of(self, snapshot_id: str) -> Path:
        """Where the snapshot with this id lives (or will)."""
        return self.root / f"{snapshot_id}{_DISK}"

    # -- internals

    def _ensure_root(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _record_path(self, snapshot_id: str) -> Path:
        return self.root / f"{snapshot_id}{_RECORD}"

    def _read(self, record: Path) -> Snapshot | None:
        try:
            data = json.loads(record.read_text(encoding="utf-8"))
            if data.get("format") != SNAPSHOT_FORMAT:
                return None
            snapshot_id = str(data["id"])
            if record.name != f"{snapshot_id}{_RECORD}":
                return None
            return Snapshot(id=snapshot_id, layer=str(data["layer"]), key=str(data["key"]),
                            base=str(data["base"]),
                            parent=str(data["parent"]) if data.get("parent") else None,
                            path=self.path_of(snapshot_id), created=float(data["created"]),
                            used=record.stat().st_mtime, size=int(data["size"]),
                            apply_seconds=float(data.get("apply_seconds") or 0.0),
                            managed=tuple(str(p) for p in data.get("managed") or ()),
                            requested=tuple(str(p) for p in data.get("requested") or ()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def _why_invalid(self, entry: Snapshot, entries: dict[str, Snapshot],
                     base: str | None) -> str:
        """'' when the whole chain under `entry` is there and sound; else why not."""
        seen: set[str] = set()
        current: Snapshot | None = entry
        while current is not None:
            if current.id in seen:
                return "its chain loops"
            seen.add(current.id)
            if base is not None and current.base != base:
                return "made on another VM base disk"
            try:
                if current.path.stat().st_size != current.size:
                    return "its file is not the size recorded"
            except FileNotFoundError:
                return "its file is gone"
            if current.parent is None:
                return ""
            parent = entries.get(current.parent)
            if parent is None:
                return f"the snapshot below it ({current.parent}) is gone"
            current = parent
        return ""


def backing_of(disk: Path) -> str | None:
    """The backing file a qcow2 file names (as written in its header), via `qemu-img info`."""
    done = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(disk)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return None
    info = json.loads(done.stdout)
    value = info.get("backing-filename")
    return str(value) if value else None


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()[:32]


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    _fsync(path, os.O_NOFOLLOW)


def _fsync_dir(path: Path) -> None:
    _fsync(path, os.O_DIRECTORY)
