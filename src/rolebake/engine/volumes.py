"""Named volumes: made once, lent to containers, found by label, removed."""

from __future__ import annotations

from collections.abc import Mapping

import docker.errors

from rolebake.engine.connection import Connection


class Volumes(Connection):
    """The engine's named volumes."""

    def ensure_volume(self, name: str, labels: Mapping[str, str]) -> None:
        """Create a named volume unless it exists (creating an existing one is a no-op)."""
        self.client.api.create_volume(name=name, labels=dict(labels))

    def volumes(self, labels: Mapping[str, str | None]) -> list[str]:
        """Names of the volumes carrying every label given."""
        filters = [k if v is None else f"{k}={v}" for k, v in labels.items()]
        found = self.client.api.volumes(filters={"label": filters}) or {}
        return sorted(str(v["Name"]) for v in found.get("Volumes") or [])

    def remove_volume(self, name: str) -> bool:
        """Remove a volume; False when it is gone already or still in use."""
        try:
            self.client.api.remove_volume(name)
        except docker.errors.NotFound:
            return False
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                return False
            raise
        return True

    def volume_at(self, container_id: str, destination: str) -> str | None:
        """The name of the volume a container has mounted at `destination`, if any."""
        mounts = self.client.api.inspect_container(container_id).get("Mounts") or []
        for mount in mounts:
            if mount.get("Type") == "volume" and mount.get("Destination") == destination:
                return str(mount["Name"])
        return None
