"""One run's VM layers: what is skipped, how frozen overlays chain, what gets kept."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from rolebake.builder import BuildReport, LayerResult
from rolebake.errors import BuildFailed
from rolebake.parity.vmlayers_run import VMLayers
from rolebake.provision.base import TaskResult
from rolebake.vmlayers import SnapshotStore


class FakeVM:
    """Freezes the way QemuVM.checkpoint does: the old top is returned, a new one begun."""

    def __init__(self, top: Path) -> None:
        self.top = top
        top.write_bytes(b"layer 1")
        self.backing: list[str] = []

    def checkpoint(self, new_top: Path, *, backing_name: str) -> Path:
        self.backing.append(backing_name)
        new_top.write_bytes(b"next layer")
        old, self.top = self.top, new_top
        return old


def layer(name: str) -> Any:
    return SimpleNamespace(id=name)


def report(**keys: str | None) -> BuildReport:
    results = {}
    for name, key in keys.items():
        result = LayerResult(layer=name, image_id="sha256:img" if key else None, cache_key=key)
        if key is None:
            result.error = BuildFailed("failed")
        results[name] = result
    return BuildReport(results=results)


def test_frozen_layers_chain_and_are_kept_bottom_up(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "store")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    events: list[Any] = []
    run = VMLayers.plan(store, "disk-1", scratch, [("base", "sha256:b"), ("web", "sha256:w")],
                        events.append)
    assert run.found == [] and run.boot_from is None and run.skip == set()
    vm = FakeVM(run.first_overlay())
    copy = TaskResult(name="t", role="web", action="ansible.builtin.copy", status="changed",
                      args={"dest": "/etc/site"})
    apt = TaskResult(name="a", role="web", action="ansible.builtin.apt", status="ok",
                     args={"name": ["nginx"]})
    run.checkpoint(vm, layer("base"), 100.0, [])  # type: ignore[arg-type]
    run.checkpoint(vm, layer("web"), 20.0, [copy, apt])  # type: ignore[arg-type]
    run.publish(report(base="sha256:b", web="sha256:w"))
    base, web = store.entries()
    # The overlay above each frozen one names it where it is kept.
    assert vm.backing == [str(store.path_of(base.id)), str(store.path_of(web.id))]
    assert (base.parent, web.parent) == (None, base.id)
    assert web.managed == ("/etc/site",) and web.requested == ("nginx",)
    assert [(r.layer, r.source, r.kept) for r in run.rows] == [("base", "applied", True),
                                                               ("web", "applied", True)]
    # The next run: both from snapshots, nothing applied; the VM boots from web's.
    again = VMLayers.plan(store, "disk-1", scratch, [("base", "sha256:b"), ("web", "sha256:w")],
                          events.append)
    assert again.boot_from == web.path and again.skip == {"base", "web"}
    assert again.managed() == ["/etc/site"] and again.requested() == {"nginx"}
    assert [(r.layer, r.source, r.snapshot) for r in again.rows] == [
        ("base", "snapshot", base.id), ("web", "snapshot", web.id)]


def test_a_layer_the_build_did_not_finish_ends_what_is_kept(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "store")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    run = VMLayers.plan(store, "disk-1", scratch, [("base", "sha256:b"), ("web", None)],
                        lambda _e: None)
    vm = FakeVM(run.first_overlay())
    run.checkpoint(vm, layer("base"), 1.0, [])  # type: ignore[arg-type]
    run.checkpoint(vm, layer("web"), 1.0, [])  # type: ignore[arg-type]
    run.publish(report(base="sha256:b", web=None))
    assert [e.layer for e in store.entries()] == ["base"]
    assert run.rows[1].note == "not kept: its image layer was not built"
    run.cleanup()
    # web's frozen overlay was not kept and is gone; only the VM's current top is left.
    assert [p.name for p in scratch.glob("*.qcow2")] == [vm.top.name]


def test_a_failed_vm_run_keeps_the_layers_both_sides_finished(tmp_path: Path) -> None:
    """`web` failed on the VM after `base` was frozen there and built: `base` is kept."""
    from concurrent.futures import Future

    from rolebake.parity.run import _stop_build

    store = SnapshotStore(tmp_path / "store")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    run = VMLayers.plan(store, "disk-1", scratch, [("base", "sha256:b"), ("web", "sha256:w")],
                        lambda _e: None)
    vm = FakeVM(run.first_overlay())
    run.checkpoint(vm, layer("base"), 1.0, [])  # type: ignore[arg-type]
    stopped: list[bool] = []
    builder = SimpleNamespace(stop=lambda: stopped.append(True))
    build: Future[BuildReport] = Future()
    build.set_result(report(base="sha256:b", web=None))  # the stop cancelled web
    _stop_build(builder, build, run)  # type: ignore[arg-type]
    assert stopped == [True]
    assert [(e.layer, e.key) for e in store.entries()] == [("base", "sha256:b")]
    run.publish(report(base="sha256:b", web=None))  # once per run: nothing happens twice
    assert len(store.entries()) == 1 and run.rows[0].kept and run.rows[0].note == ""
