"""Normalising reads a committed layer from the engine's store on this host (engine/store.py)
and gets the very bytes `docker save` gives: every kind of entry a role's layer holds
(files, a setuid bit, hard links, symlinks, a fifo, a device, a deleted file, a folder
emptied and made again, an xattr-less and a capability-bearing binary).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from rolebake.engine import DockerEngine
from rolebake.normalise import top_layer
from tests.integration.conftest import BASE_IMAGE

pytestmark = pytest.mark.integration

# Run in a container of the base image, as a role's tasks would change it.
CHANGES = r"""
set -e
mkdir -p /opt/app/bin /opt/app/empty
printf 'hello\n' > /opt/app/greeting
ln /opt/app/greeting /opt/app/greeting.hard
ln /opt/app/greeting /opt/app/another.hard
ln -s ../greeting /opt/app/bin/link
cp /bin/true /opt/app/bin/suid && chmod 4755 /opt/app/bin/suid
cp /bin/true /opt/app/bin/capable
mkfifo /opt/app/pipe
mknod /opt/app/null c 1 3
chown 123:456 /opt/app/greeting
rm /etc/issue.net
rm -rf /etc/apt/apt.conf.d && mkdir /etc/apt/apt.conf.d && echo x > /etc/apt/apt.conf.d/90x
echo noise >> /var/log/dpkg.log
"""
# security.capability (vfs v2: cap_net_raw, cap_audit_control, cap_setfcap), as
# `setcap` writes it; its bytes over 0x7f are not UTF-8.
CAPABILITY = bytes.fromhex("01000002" "002000c0" "00000000" "00000000" "00000000")


@pytest.fixture
def committed(engine: docker.DockerClient) -> Iterator[str]:
    label = {"rolebake.test": f"store-{uuid.uuid4().hex[:8]}"}
    container = engine.containers.run(BASE_IMAGE, ["sh", "-c", CHANGES], detach=True,
                                      labels=label)
    image_id = ""
    try:
        assert container.wait(timeout=120)["StatusCode"] == 0, container.logs()
        upper = Path(container.attrs["GraphDriver"]["Data"]["UpperDir"])
        os.setxattr(upper / "opt/app/bin/capable", "security.capability", CAPABILITY)
        image_id = str(container.commit().id)
        yield image_id
    finally:
        container.remove(force=True)
        if image_id:
            with contextlib.suppress(docker.errors.APIError):
                engine.images.remove(image_id, force=True)


def test_the_store_and_save_give_the_same_normalised_layer(committed: str,
                                                            tmp_path: Path) -> None:
    rolebake_engine = DockerEngine.connect(timeout=120)
    assert rolebake_engine.local_layer(committed) is not None, "this host's store is readable"
    (tmp_path / "store").mkdir()
    (tmp_path / "save").mkdir()
    from_store = top_layer(rolebake_engine, committed, tmp_path / "store", 1700000000)
    from_save = top_layer(rolebake_engine, committed, tmp_path / "save", 1700000000,
                          store=False)
    assert (from_store.read_from, from_save.read_from) == ("store", "save")
    assert from_store.config == from_save.config
    assert from_store.dropped == from_save.dropped == ["/var/log/dpkg.log"]
    assert from_store.layer.read_bytes() == from_save.layer.read_bytes()
    assert from_store.diff_id == from_save.diff_id


def test_an_image_the_store_does_not_hold_is_read_through_save(
        engine: docker.DockerClient) -> None:
    rolebake_engine = DockerEngine.connect(timeout=120)
    assert rolebake_engine.local_layer("sha256:" + "0" * 64) is None
    base = engine.images.get(BASE_IMAGE).id
    found = rolebake_engine.local_layer(base)
    assert found is not None and found.folder.is_dir()
