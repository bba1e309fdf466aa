"""The VM layer store: keying, the deepest matching chain, invalidation, publishing, cleaning.

Plain files stand for the qcow2 snapshots here (the store never parses them); the same
store with real qemu-img files, a kill during a write and a check of the survivors is in
tests/vm/test_vm_layers.py.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

from rolebake.cleanup import vm_layers
from rolebake.spec import Project
from rolebake.vmlayers import STORE_DIR, SnapshotStore, store_for

BASE = "disk-1"


def overlay(tmp: Path, name: str, data: bytes = b"qcow2") -> Path:
    path = tmp / "scratch" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return path


def keep(store: SnapshotStore, tmp: Path, sid: str, layer: str, key: str,
         parent: str | None, base: str = BASE) -> None:
    kept = store.publish(overlay(tmp, f"{sid}.qcow2"), snapshot_id=sid, layer=layer, key=key,
                         base=base, parent=parent, apply_seconds=12.0, managed=["/etc/x"],
                         requested=["nginx"])
    assert kept is not None and kept.id == sid


def test_deepest_chain_whose_keys_match(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "store")
    keep(store, tmp_path, "s-base", "base", "sha256:b1", None)
    keep(store, tmp_path, "s-web", "web", "sha256:w1", "s-base")
    # Same keys: both layers come from snapshots, and what their tasks named comes along.
    found = store.lookup([("base", "sha256:b1"), ("web", "sha256:w1")], BASE)
    assert [s.id for s in found] == ["s-base", "s-web"]
    assert found[1].managed == ("/etc/x",) and found[1].requested == ("nginx",)
    # A change in the top layer (a template of web): only base's snapshot matches.
    found = store.lookup([("base", "sha256:b1"), ("web", "sha256:w2")], BASE)
    assert [s.id for s in found] == ["s-base"]
    # A change in the base layer: nothing (web's key is not even known before the build).
    assert store.lookup([("base", "sha256:b2"), ("web", None)], BASE) == []
    # Another VM base disk (rebuilt): nothing.
    assert store.lookup([("base", "sha256:b1"), ("web", "sha256:w1")], "disk-2") == []


def test_a_child_of_a_removed_and_remade_parent_is_never_used(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "store")
    keep(store, tmp_path, "s-base", "base", "sha256:b1", None)
    keep(store, tmp_path, "s-web", "web", "sha256:w1", "s-base")
    store.remove(store.path_of("s-base"))
    # Made again under the same key: another file, another id.
    keep(store, tmp_path, "s-base2", "base", "sha256:b1", None)
    found = store.lookup([("base", "sha256:b1"), ("web", "sha256:w1")], BASE)
    assert [s.id for s in found] == ["s-base2"]
    assert (store.path_of("s-web"), "the snapshot below it (s-base) is gone") in store.broken()


def test_a_damaged_or_unrecorded_file_is_not_used(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "store")
    keep(store, tmp_path, "s-base", "base", "sha256:b1", None)
    path = store.path_of("s-base")
    path.chmod(0o600)
    path.write_bytes(b"truncated")  # not the size recorded
    assert store.lookup([("base", "sha256:b1")], BASE) == []
    # A file whose record was never written (its run died) is never found, and goes
    # once it is older than a publish could take.
    orphan = store.root / "s-dead.qcow2"
    orphan.write_bytes(b"partial")
    assert store.lookup([("base", "sha256:b1")], BASE) == []
    assert orphan not in [p for p, _ in store.broken()]
    old = time.time() - 3600
    os.utime(orphan, (old, old))
    assert (orphan, "no record (its run was interrupted)") in store.broken()
    unfinished = store.root / ".s-dead.json.tmp"
    unfinished.write_text("{")
    os.utime(unfinished, (old, old))
    assert (unfinished, "a record its run did not finish") in store.broken()
    store.remove(unfinished)
    assert not unfinished.exists()


def test_publish_is_read_only_atomic_and_once_per_key(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "store")
    keep(store, tmp_path, "s-base", "base", "sha256:b1", None)
    path = store.path_of("s-base")
    assert path.stat().st_mode & 0o777 == 0o400
    assert sorted(p.name for p in store.root.iterdir() if not p.name.startswith(".")) == \
        ["s-base.json", "s-base.qcow2"]
    assert not list(store.root.glob("*.tmp"))
    # A second run that froze the same layer on the same key keeps nothing.
    second = overlay(tmp_path, "s-other.qcow2")
    assert store.publish(second, snapshot_id="s-other", layer="base", key="sha256:b1",
                         base=BASE, parent=None) is None
    assert second.exists() and not store.path_of("s-other").exists()


def test_clean_removes_broken_and_unused_with_what_sits_on_them(tmp_path: Path) -> None:
    project = Project(tmp_path / "project")
    project.root.mkdir()
    store = store_for(project)
    assert store.root == (project.state_dir / STORE_DIR).resolve()
    keep(store, tmp_path, "s-base", "base", "sha256:b1", None)
    keep(store, tmp_path, "s-web", "web", "sha256:w1", "s-base")
    keep(store, tmp_path, "s-gone", "base", "sha256:b9", None, base="disk-old")
    # Only the broken by default: one made on a VM base disk that is gone.
    listed = vm_layers(project, bases={BASE}, unused_for=None, dry_run=True)
    assert listed == [("s-gone.qcow2", "made on a VM base disk that is gone")]
    assert store.path_of("s-gone").exists()
    assert vm_layers(project, bases={BASE}, unused_for=None) == listed
    assert not store.path_of("s-gone").exists()
    # --vm-layers: unused for the age given; what sits on a removed snapshot goes too.
    old = time.time() - 7200
    os.utime(store.root / "s-base.json", (old, old))
    removed = dict(vm_layers(project, bases={BASE}, unused_for=dt.timedelta(hours=1)))
    assert removed == {"s-base.qcow2": "last used 2h ago",
                       "s-web.qcow2": "the snapshot below it is removed"}
    assert store.entries() == []


def test_clean_outside_a_project_makes_nothing(tmp_path: Path) -> None:
    assert vm_layers(Project(tmp_path), bases=None, unused_for=None) == []
    assert not (tmp_path / ".rolebake").exists()
