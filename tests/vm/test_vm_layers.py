"""VM layer snapshots as real qcow2 files, without booting: a kill while writing one.

qemu-io writes into overlays the way the running VM does; the store publishes them as a
parity run does. A run killed while its VM writes its overlay, or while it publishes the
snapshot, must leave the snapshot below it usable: `qemu-img check` passes, its bytes are
unchanged and `lookup` still returns it.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from vm_support import require_tools

from rolebake.vmlayers import SnapshotStore

pytestmark = pytest.mark.vm

BASE = "disk-1"
PATTERN = "0xab"


def qemu_img(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=False)


def qemu_io(image: Path, command: str, fmt: str = "qcow2") -> subprocess.Popen[bytes]:
    return subprocess.Popen(["qemu-io", "-f", fmt, "-c", command, str(image)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def kept(tmp_path: Path) -> tuple[SnapshotStore, Path]:
    """A raw base disk and one published snapshot of `base` on it holding a known pattern."""
    require_tools("qemu-img", "qemu-io")
    disk = tmp_path / "disk.img"
    assert qemu_img("create", "-q", "-f", "raw", str(disk), "256M").returncode == 0
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    store = SnapshotStore(tmp_path / "store")
    part = scratch / "s-base.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(disk),
                    str(part)).returncode == 0
    writer = qemu_io(part, f"write -P {PATTERN} 0 8M")
    assert writer.wait(60) == 0, writer.stdout.read() if writer.stdout else ""
    assert store.publish(part, snapshot_id="s-base", layer="base", key="sha256:b1",
                         base=BASE, parent=None) is not None
    return store, scratch


def assert_usable(store: SnapshotStore, digest: str) -> None:
    path = store.path_of("s-base")
    check = qemu_img("check", str(path))
    assert check.returncode == 0, check.stdout + check.stderr
    assert sha(path) == digest
    assert [s.id for s in store.lookup([("base", "sha256:b1"), ("web", "sha256:w1")], BASE)] \
        == ["s-base"]
    # And a new run boots on it: its pattern reads back through a fresh overlay.
    top = path.parent.parent / "next.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(path),
                    str(top)).returncode == 0
    reader = qemu_io(top, f"read -P {PATTERN} 0 8M")
    assert reader.wait(60) == 0, reader.stdout.read() if reader.stdout else ""


def test_killed_while_the_vm_writes_the_layer_above(kept: tuple[SnapshotStore, Path]) -> None:
    store, scratch = kept
    digest = sha(store.path_of("s-base"))
    # The next layer's overlay, named as a run names it: backed by the kept snapshot.
    top = scratch / "s-web.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                    str(store.path_of("s-base")), str(top)).returncode == 0
    writer = qemu_io(top, "write -P 0xcd 0 200M")
    time.sleep(0.3)
    os.killpg(writer.pid, signal.SIGKILL)
    writer.wait(30)
    assert_usable(store, digest)
    assert store.lookup([("base", "sha256:b1"), ("web", "sha256:w1")], BASE)[-1].layer == "base"


def test_killed_while_publishing_the_layer_above(kept: tuple[SnapshotStore, Path],
                                                 tmp_path: Path) -> None:
    store, scratch = kept
    digest = sha(store.path_of("s-base"))
    top = scratch / "s-web.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                    str(store.path_of("s-base")), str(top)).returncode == 0
    writer = qemu_io(top, "write -P 0xcd 0 32M")
    assert writer.wait(60) == 0
    # A rolebake that dies (SIGKILL) at each step of publishing: fsync, rename, record.
    for step in ("fsync", "replace"):
        script = textwrap.dedent(f"""
            import os, sys, time
            from pathlib import Path
            from rolebake.vmlayers import SnapshotStore
            real = getattr(os, {step!r})
            calls = []
            def stop(*args, **kwargs):
                calls.append(args)
                # The record's temp file and rename come last: stop at the step's last use.
                if {step!r} == "fsync" or len(calls) == 2:
                    print("stopped", flush=True)
                    time.sleep(600)
                return real(*args, **kwargs)
            setattr(os, {step!r}, stop)
            SnapshotStore(Path({str(store.root)!r})).publish(
                Path({str(top)!r}), snapshot_id="s-web", layer="web", key="sha256:w1",
                base={BASE!r}, parent="s-base")
        """)
        child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                 text=True)
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "stopped"
        child.kill()
        child.wait(30)
        assert_usable(store, digest)
        # The half-published layer is never found.
        assert [s.layer for s in store.lookup([("base", "sha256:b1"), ("web", "sha256:w1")],
                                              BASE)] == ["base"]
        if not top.exists():  # renamed before the kill: put it back for the next step
            store.path_of("s-web").chmod(0o600)
            store.path_of("s-web").rename(top)
