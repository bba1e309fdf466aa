"""One parity run's VM layers: where the VM starts, the freeze after each layer, what is kept.

Before the VM boots, the layers' cache keys come from the same code `rolebake plan` runs
(`cache.preview`), and the store's deepest matching chain says which layers the VM already
has; the VM boots from that snapshot on a fresh overlay in the run's scratch folder. After
each layer it applies, `QemuVM.checkpoint` freezes that overlay and the VM goes on in a new
one on top (a live external snapshot: no reboot). Once the image build is done, each frozen
overlay whose layer the build finished (so its key is the one the build used and verified)
is published to the store, bottom up.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rolebake.builder import BuildReport
from rolebake.cache import preview
from rolebake.engine import Engine
from rolebake.errors import RolebakeError
from rolebake.events import EventSink, LogEvent
from rolebake.parity.qemu import QemuVM
from rolebake.parity.why import requested_from_tasks
from rolebake.plan import BuildPlan, Layer
from rolebake.provision.base import TaskResult, managed_paths
from rolebake.spec import Project
from rolebake.vmlayers import Snapshot, SnapshotStore, new_snapshot_id

__all__ = ["LayerOnVM", "VMLayers", "chain_keys"]


def chain_keys(engine: Engine, project: Project, plan: BuildPlan) -> list[tuple[str, str | None]]:
    """Each layer of the plan with the cache key `rolebake plan` computes for it now.

    None where it cannot be known before the build (a parent that will be rebuilt):
    the lookup stops there, as the container cache does.
    """
    return [(row.layer, row.key) for row in preview(engine, project, plan)]


@dataclass
class LayerOnVM:
    """What one layer of the chain did on the VM in this run (the timeline's row)."""

    layer: str
    source: str  # "snapshot" (the VM booted with it) | "applied"
    snapshot: str | None = None  # the snapshot booted from, or the one kept after applying
    kept: bool = False  # applied, and its snapshot was published
    seconds: float = 0.0
    key: str | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"layer": self.layer, "source": self.source, "snapshot": self.snapshot,
                "kept": self.kept, "seconds": round(self.seconds, 1), "key": self.key,
                "note": self.note}


@dataclass
class _Frozen:
    layer: Layer
    snapshot_id: str
    path: Path
    seconds: float
    tasks: list[TaskResult]


@dataclass
class VMLayers:
    """The VM layer plan of one run: boot point, frozen overlays, what was kept."""

    store: SnapshotStore
    base: str
    scratch: Path
    events: EventSink
    found: list[Snapshot] = field(default_factory=list)
    rows: list[LayerOnVM] = field(default_factory=list)
    _frozen: list[_Frozen] = field(default_factory=list)
    _top_id: str = ""
    _published: bool = False

    @classmethod
    def plan(cls, store: SnapshotStore, base: str, scratch: Path,
             chain: Sequence[tuple[str, str | None]], events: EventSink) -> VMLayers:
        """Find the deepest kept chain for these layer keys on this VM base disk."""
        found = store.lookup(chain, base)
        layers = cls(store=store, base=base, scratch=scratch, events=events, found=found)
        for snap in found:
            layers.rows.append(LayerOnVM(snap.layer, "snapshot", snapshot=snap.id,
                                         key=snap.key, seconds=0.0,
                                         note=f"applied {snap.apply_seconds:.0f} s by the run "
                                              f"that kept it"))
            events(LogEvent(snap.layer, f"the VM starts from VM layer snapshot {snap.id} "
                                        f"(key {snap.key[7:19]}): not applied again"))
        if found:
            store.touch(found)
        return layers

    @property
    def boot_from(self) -> Path | None:
        """The snapshot the VM boots from; None: the VM base disk."""
        return self.found[-1].path if self.found else None

    @property
    def skip(self) -> set[str]:
        """Layers the VM has from its snapshot."""
        return {s.layer for s in self.found}

    def first_overlay(self) -> Path:
        """The run's first overlay: it becomes the snapshot of the first layer applied."""
        self._top_id = new_snapshot_id()
        return self.scratch / f"{self._top_id}.qcow2"

    def checkpoint(self, machine: QemuVM, layer: Layer, seconds: float,
                   tasks: list[TaskResult]) -> None:
        """Freeze the overlay that holds `layer` now; the VM goes on in a new one."""
        frozen_id = self._top_id
        self._top_id = new_snapshot_id()
        started = time.monotonic()
        frozen = machine.checkpoint(self.scratch / f"{self._top_id}.qcow2",
                                    backing_name=str(self.store.path_of(frozen_id)))
        self._frozen.append(_Frozen(layer, frozen_id, frozen, seconds, tasks))
        self.rows.append(LayerOnVM(layer.id, "applied", seconds=seconds))
        self.events(LogEvent(layer.id, f"VM disk frozen after this layer in "
                                       f"{time.monotonic() - started:.1f} s"))

    def publish(self, report: BuildReport) -> None:
        """Keep each frozen layer whose image layer the build finished, bottom up.

        A layer the build did not finish (failed, stopped) ends the chain: its key is not
        known to be the one a later run computes, and every frozen layer above it is
        backed by it. Once per run: a run that fails after publishing (the build's
        error is raised after it) publishes nothing twice.
        """
        if self._published:
            return
        self._published = True
        parent = self.found[-1].id if self.found else None
        for frozen in self._frozen:
            row = next(r for r in self.rows if r.layer == frozen.layer.id)
            result = report.results.get(frozen.layer.id)
            if result is None or result.error is not None or not result.cache_key \
                    or result.image_id is None:
                row.note = "not kept: its image layer was not built"
                return
            try:
                kept = self.store.publish(
                    frozen.path, snapshot_id=frozen.snapshot_id, layer=frozen.layer.id,
                    key=result.cache_key, base=self.base, parent=parent,
                    apply_seconds=frozen.seconds, managed=managed_paths(frozen.tasks),
                    requested=sorted(requested_from_tasks(frozen.tasks)))
            except (OSError, RolebakeError) as exc:
                row.note = f"not kept: {exc}"
                self.events(LogEvent(frozen.layer.id, f"could not keep the VM layer: {exc}"))
                return
            row.key = result.cache_key
            if kept is None:
                row.note = "not kept: another run kept the same layer meanwhile"
                return
            row.kept, row.snapshot = True, kept.id
            self.events(LogEvent(frozen.layer.id, f"kept VM layer snapshot {kept.id}"))
            parent = kept.id

    def managed(self) -> list[str]:
        """Paths the layers taken from snapshots managed when they were applied."""
        return [p for snap in self.found for p in snap.managed]

    def requested(self) -> frozenset[str]:
        """Packages the layers taken from snapshots asked for when they were applied."""
        return frozenset(p for snap in self.found for p in snap.requested)

    def cleanup(self) -> None:
        """Remove what was frozen and not kept (the scratch folder goes with the run)."""
        for frozen in self._frozen:
            with contextlib.suppress(OSError):
                frozen.path.unlink(missing_ok=True)

