"""The engine's image store read from this host's disk, when it is here to read.

`docker save` is the only API that hands out a layer, and it streams every
layer of the image: normalising a layer of 4 KiB on a 150 MB parent read the
150 MB (1.5-2.4 s a layer, bench/README.md). When the engine runs on this host
with the overlay2 driver and its data root is readable (a local rootful
dockerd, as in CI), the committed image's config and its top layer's folder
are right there. `local_layer` hands them out only after checking they are
that image's: the config file's digest is the image id, and the layer store
maps the config's chain of diff ids to the very folder the engine's inspect
names. Anything else (a remote or ssh engine, Docker Desktop's VM, rootless
or userns-remapped, another storage driver, Podman, no permission) answers
None and the caller uses `save`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker.errors

from rolebake.engine.connection import Connection


@dataclass(frozen=True)
class LocalLayer:
    """An image's config (its exact bytes) and its top layer's overlay2 folder."""

    config: bytes
    diff_ids: tuple[str, ...]
    folder: Path  # the upper dir: the layer's files, whiteouts as overlay writes them


def chain_ids(diff_ids: tuple[str, ...]) -> list[str]:
    """The OCI chain id of each layer prefix: the key of the engine's layer store."""
    chain: list[str] = []
    for diff_id in diff_ids:
        chain.append(diff_id if not chain else
                     "sha256:" + hashlib.sha256(f"{chain[-1]} {diff_id}".encode()).hexdigest())
    return chain


class Store(Connection):
    """The engine's overlay2 store on this host's disk (read only, checked)."""

    @functools.cached_property
    def _overlay2_root(self) -> Path | None:
        """The engine's data root, when it uses overlay2 and this host can read it."""
        if self.address.scheme != "unix" or self.kind != "docker":
            return None
        try:
            info = self.client.info()
        except docker.errors.APIError:
            return None
        root = Path(str(info.get("DockerRootDir") or ""))
        if info.get("Driver") != "overlay2" or not root.is_absolute():
            return None
        # Rootless and userns-remap engines keep their files under shifted ids (and
        # rootless overlay marks whiteouts with user.* xattrs): only the engine's own
        # tar gives the ids the image has.
        security = " ".join(str(o) for o in info.get("SecurityOptions") or [])
        status = {str(k): str(v) for k, v in info.get("DriverStatus") or []}
        if "name=rootless" in security or "name=userns" in security \
                or status.get("userxattr", "false") != "false":
            return None
        return root if (root / "image" / "overlay2" / "layerdb").is_dir() else None

    def local_layer(self, image_id: str) -> LocalLayer | None:
        """The image's config and top layer folder from the engine's store, or None.

        None whenever the store is not this host's to read or anything does not
        check out; then `save` is the way to the layer.
        """
        root = self._overlay2_root
        if root is None:
            return None
        algorithm, _, digest = image_id.partition(":")
        if algorithm != "sha256" or not digest:
            return None
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError,
                                 docker.errors.APIError):
            config = (root / "image" / "overlay2" / "imagedb" / "content" / "sha256"
                      / digest).read_bytes()
            if hashlib.sha256(config).hexdigest() != digest:
                return None
            body: dict[str, Any] = json.loads(config)
            diff_ids = tuple(str(d) for d in body["rootfs"]["diff_ids"])
            top = chain_ids(diff_ids)[-1].partition(":")[2]
            cache_id = (root / "image" / "overlay2" / "layerdb" / "sha256" / top
                        / "cache-id").read_text(encoding="ascii").strip()
            folder = root / "overlay2" / cache_id / "diff"
            graph = self.client.api.inspect_image(image_id).get("GraphDriver") or {}
            named = Path(str((graph.get("Data") or {}).get("UpperDir") or ""))
            if graph.get("Name") != "overlay2" or named != folder or not folder.is_dir():
                return None
            return LocalLayer(config, diff_ids, folder)
        return None
