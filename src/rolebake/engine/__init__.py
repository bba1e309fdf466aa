"""The container engine, wrapped once: the only package that imports `docker`.

Everything else speaks in rolebake's own records (ContainerHandle, ImageInfo,
ExecResult) and imports them from here. Containers made here are always
removed by a context manager (DESIGN.md invariant 1).

`Engine` (api.py) is the protocol every caller annotates: what rolebake may
ask of an engine. `DockerEngine` implements it, one object put together from
one module per concern, each a class over the same SDK client (as docker-py's
own `APIClient` is):

- `connection`: connecting, which engine answers (Docker or Podman), its
  identity, and noticing when it stops or restarts;
- `images`: lookups, tags, removal, import, save, and commit (with Podman's
  commit dialect);
- `transfer`: pulls and pushes with per-blob progress, registry credentials;
- `containers`: containers for a `with` block, always removed; listing,
  state, health and logs;
- `commands`: commands run in a container, waited for or streamed;
- `session`: one agent per container, every command and file through it
  (chunked files, a timeout per command that kills its process group,
  commands side by side);
- `files`: files into and out of containers, and read from images;
- `store`: the engine's overlay2 store read from this host's disk, when it is
  local and checks out (an image's config and top layer without `save`);
- `volumes`: named volumes, and which one a container has mounted where;
- `records` (what callers hold) and `failures` (the SDK's exceptions as
  rolebake errors).
"""

from __future__ import annotations

# First: the docker SDK without its ssh transport (sdk.py).
from rolebake.engine import sdk  # noqa: F401
from rolebake.engine.api import Engine
from rolebake.engine.commands import Commands, ExecStream
from rolebake.engine.connection import Connection, EngineAddress, engine_address
from rolebake.engine.containers import Containers
from rolebake.engine.failures import as_error, disk_full_hint, engine_failure
from rolebake.engine.files import Files
from rolebake.engine.images import Images, commit_changes, familiar
from rolebake.engine.records import (
    BUILD_ID_LABEL,
    LABEL_PREFIX,
    LEFTOVER_ROLES,
    ROLE_LABEL,
    ContainerHandle,
    ContainerInfo,
    ExecResult,
    ImageInfo,
    Progress,
)
from rolebake.engine.session import (
    Channel,
    ContainerSession,
    SessionError,
    SessionResult,
    Stream,
)
from rolebake.engine.store import LocalLayer, Store
from rolebake.engine.transfer import Transfers
from rolebake.engine.volumes import Volumes

__all__ = [
    "BUILD_ID_LABEL",
    "LABEL_PREFIX",
    "LEFTOVER_ROLES",
    "ROLE_LABEL",
    "Channel",
    "ContainerHandle",
    "ContainerInfo",
    "ContainerSession",
    "DockerEngine",
    "Engine",
    "EngineAddress",
    "ExecResult",
    "ExecStream",
    "ImageInfo",
    "LocalLayer",
    "Progress",
    "SessionError",
    "SessionResult",
    "Stream",
    "as_error",
    "commit_changes",
    "disk_full_hint",
    "engine_address",
    "engine_failure",
    "familiar",
]


class DockerEngine(Transfers, Images, Store, Files, Containers, Commands, Volumes,
                   Connection):
    """rolebake's view of a Docker (or Podman) engine: the `Engine` protocol over the SDK."""
