"""The engine's overlay2 store read from disk (engine/store.py): only when it checks out."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from rolebake.engine import DockerEngine
from rolebake.engine.connection import EngineAddress
from rolebake.engine.store import chain_ids

DIFFS = ("sha256:" + "a" * 64, "sha256:" + "b" * 64)


class Client:
    """The three answers the store asks the engine for."""

    def __init__(self, root: Path, info: dict[str, Any] | None = None,
                 upper: Path | None = None) -> None:
        self.info_answer = {"Driver": "overlay2", "DockerRootDir": str(root),
                            "SecurityOptions": ["name=seccomp,profile=default"],
                            "DriverStatus": [["Native Overlay Diff", "true"],
                                             ["userxattr", "false"]], **(info or {})}
        self.upper = upper
        self.api = self

    def info(self) -> dict[str, Any]:
        return self.info_answer

    def version(self) -> dict[str, Any]:
        return {"Components": [{"Name": "Engine"}]}

    def inspect_image(self, image_id: str) -> dict[str, Any]:
        del image_id
        return {"GraphDriver": {"Name": "overlay2", "Data": {"UpperDir": str(self.upper)}}}


def store_at(root: Path) -> tuple[str, Path]:
    """An engine data root holding one image of two layers; its id and its top folder."""
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": list(DIFFS)}}).encode()
    digest = hashlib.sha256(config).hexdigest()
    (root / "image/overlay2/imagedb/content/sha256").mkdir(parents=True)
    (root / "image/overlay2/imagedb/content/sha256" / digest).write_bytes(config)
    top = chain_ids(DIFFS)[-1].split(":")[1]
    (root / "image/overlay2/layerdb/sha256" / top).mkdir(parents=True)
    (root / "image/overlay2/layerdb/sha256" / top / "cache-id").write_text("cafe01")
    folder = root / "overlay2/cafe01/diff"
    folder.mkdir(parents=True)
    return "sha256:" + digest, folder


def engine(client: Client, scheme: str = "unix") -> DockerEngine:
    made = DockerEngine(client)
    made.address = EngineAddress("unix:///var/run/docker.sock" if scheme == "unix"
                                 else "tcp://10.0.0.7:2376", scheme)
    return made


def test_the_top_layer_of_a_local_overlay2_store_is_found(tmp_path: Path) -> None:
    image_id, folder = store_at(tmp_path)
    found = engine(Client(tmp_path, upper=folder)).local_layer(image_id)
    assert found is not None and found.folder == folder and found.diff_ids == DIFFS
    assert hashlib.sha256(found.config).hexdigest() == image_id.split(":")[1]


def test_the_chain_id_is_the_oci_one() -> None:
    first, second = chain_ids(DIFFS)
    assert first == DIFFS[0]
    assert second == "sha256:" + hashlib.sha256(f"{DIFFS[0]} {DIFFS[1]}".encode()).hexdigest()


@pytest.mark.parametrize("info", [
    {"SecurityOptions": ["name=seccomp,profile=default", "name=rootless"]},
    {"SecurityOptions": ["name=userns"]},
    {"DriverStatus": [["userxattr", "true"]]},
    {"Driver": "btrfs"},
])
def test_engines_whose_files_are_not_the_images_use_save(tmp_path: Path,
                                                         info: dict[str, Any]) -> None:
    image_id, folder = store_at(tmp_path)
    assert engine(Client(tmp_path, info, upper=folder)).local_layer(image_id) is None


def test_a_remote_engine_uses_save(tmp_path: Path) -> None:
    image_id, folder = store_at(tmp_path)
    assert engine(Client(tmp_path, upper=folder), scheme="tcp").local_layer(image_id) is None


def test_a_folder_other_than_the_one_the_engine_names_is_not_read(tmp_path: Path) -> None:
    # Another engine's store at the same path (Docker Desktop's VM, a container's view).
    image_id, _ = store_at(tmp_path)
    other = tmp_path / "overlay2/elsewhere/diff"
    other.mkdir(parents=True)
    assert engine(Client(tmp_path, upper=other)).local_layer(image_id) is None


def test_a_config_whose_digest_is_not_the_id_is_not_read(tmp_path: Path) -> None:
    image_id, folder = store_at(tmp_path)
    path = tmp_path / "image/overlay2/imagedb/content/sha256" / image_id.split(":")[1]
    path.write_bytes(path.read_bytes() + b" ")
    assert engine(Client(tmp_path, upper=folder)).local_layer(image_id) is None
