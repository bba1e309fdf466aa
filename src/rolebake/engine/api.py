"""`Engine`: what the rest of rolebake may ask of a container engine, as a protocol.

`DockerEngine` (engine/__init__.py) is the one implementation over the docker
SDK; the unit tests' in-memory engine (tests/unit/fakes.py) is another, which
implements this protocol instead of subclassing the real class, so mypy checks
that it keeps up with every method the code calls. Callers annotate `Engine`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from rolebake.engine.commands import ExecStream
from rolebake.engine.records import (
    ContainerHandle,
    ContainerInfo,
    ExecResult,
    ImageInfo,
    Progress,
)
from rolebake.engine.session import ContainerSession, SessionResult
from rolebake.engine.store import LocalLayer


class Engine(Protocol):
    """A container engine: images, containers, commands, files, volumes, registries."""

    def answers(self, wait_s: float = 0.0) -> bool:
        """Whether the engine answers, waiting up to `wait_s` for it to come back."""
        ...

    def commit(
        self,
        container: ContainerHandle,
        config: Mapping[str, Any],
    ) -> str:
        """Commit a container's filesystem with the given image config; returns the image id."""
        ...

    def container(
        self,
        image_id: str,
        *,
        name: str,
        labels: Mapping[str, str],
        keep_alive: bool = True,
        mounts: Sequence[Mapping[str, Any]] = (),
        tmpfs: Mapping[str, str] | None = None,
        volumes_from: Sequence[str] = (),
        ports: Mapping[str, Any] | None = None,
        environment: Mapping[str, str] | None = None,
        init: bool = True,
        hostname: str | None = None,
        remove_in_background: bool = False,
    ) -> contextlib.AbstractContextManager[ContainerHandle]:
        """Run a container for the length of a `with` block and always remove it."""
        ...

    def settle(self) -> list[str]:
        """Wait for container removals left to the background; the failures, said."""
        ...

    def container_ip(self, container: ContainerHandle) -> str | None:
        """The container's address on the default bridge, if it has one."""
        ...

    def container_state(self, container: ContainerHandle) -> Mapping[str, Any]:
        """The State block of a container (running, health, exit code)."""
        ...

    def containers(self, labels: Mapping[str, str | None]) -> list[ContainerInfo]:
        """Every container, running or not, carrying all the labels given."""
        ...

    def copy_out(self, container: ContainerHandle, path: str, dest: Path) -> None:
        """Copy one file out of a container to `dest` on this machine, streaming."""
        ...

    def create_stopped(self, image_id: str, *, name: str, labels: Mapping[str, str],
                       mounts: Sequence[Mapping[str, Any]] = ()) -> str:
        """Create, without starting, a container (a volume source, as kitchen-dokken does)."""
        ...

    def dangling_images(self, labels: Mapping[str, str | None]) -> list[ImageInfo]:
        """Untagged images carrying the labels (the remains of interrupted builds)."""
        ...

    def diff(self, container: ContainerHandle) -> list[tuple[str, str]]:
        """What a container changed in its image's filesystem (`docker diff`): (A|C|D, path)."""
        ...

    def ensure_volume(self, name: str, labels: Mapping[str, str]) -> None:
        """Create a named volume unless it exists (creating an existing one is a no-op)."""
        ...

    def exec(
        self,
        container: ContainerHandle,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        user: str = "root",
    ) -> ExecResult:
        """Run a command in a container and wait for it."""
        ...

    def exec_demuxed(self, container: ContainerHandle, argv: Sequence[str], *,
                     user: str = "root") -> SessionResult:
        """Run a command and wait for it, its stdout and stderr apart (no stdin)."""
        ...

    def exec_stream(self, container: ContainerHandle, argv: Sequence[str], *,
                    env: Mapping[str, str] | None = None) -> ExecStream:
        """Start a long-lived command in a container, talking to it over its stdin and stdout."""
        ...

    def fetch(self, ref: str, progress: Progress | None = None,
              check: Callable[[], None] = ...) -> ImageInfo:
        """Pull `ref` from its registry, one progress line per blob."""
        ...

    def history(self, image_id: str) -> list[dict[str, Any]]:
        """`docker history` of an image."""
        ...

    def load(self, archive: Path) -> None:
        """`docker load` an image archive from a file (layers the engine has are skipped)."""
        ...

    def local_layer(self, image_id: str) -> LocalLayer | None:
        """An image's config and top layer folder from the engine's store on this host, or None."""
        ...

    def identity(self) -> str:
        """A digest naming this engine's image store, the same from any checkout on the host."""
        ...

    def image(self, ref: str) -> ImageInfo | None:
        """Look an image up by id or reference; None when the engine does not have it."""
        ...

    def images(self, labels: Mapping[str, str | None]) -> list[ImageInfo]:
        """Images carrying every label given (value None: any value), newest first."""
        ...

    def import_rootfs(self, tarball: Path, ref: str, changes: Sequence[str]) -> ImageInfo:
        """Make an image from a root filesystem tarball (`docker import`), tagged `ref`."""
        ...

    def kill(self, ref: str) -> None:
        """Kill a container (to stop a blocking exec from another thread)."""
        ...

    @property
    def kind(self) -> str:
        """`podman` or `docker`: which engine answers."""
        ...

    def logs(self, container: ContainerHandle, tail: int = 30) -> str:
        """The last lines a container printed."""
        ...

    def open_file(self, container_id: str, path: str) -> tuple[int, Iterator[bytes]] | None:
        """Stream one file of a (possibly stopped) container: its size and its bytes."""
        ...

    def pull(self, ref: str, progress: Progress | None = None) -> ImageInfo:
        """Pull a base image reference as usual (where a registry is reachable)."""
        ...

    def push(self, ref: str, progress: Progress | None = None,
             check: Callable[[], None] = ...) -> str:
        """Push one tag to its registry, one progress line per blob; returns the digest."""
        ...

    def put_file(self, container: ContainerHandle, path: str, data: bytes,
                 mode: int = 0o644) -> None:
        """Write one file into a container."""
        ...

    def read_files(self, image_id: str, paths: Sequence[str], *, name: str,
                   labels: Mapping[str, str] | None = None) -> dict[str, bytes | None]:
        """Read small files from an image without running it (None: not there, or not a file).

        `labels` go on the created, never started container (a build's id).
        """
        ...

    def registry_config(self) -> Mapping[str, Any]:
        """The engine's registry settings (insecure registries, mirrors); empty on Podman."""
        ...

    def registry_credentials(self, registry: str) -> dict[str, str]:
        """What the docker client's config holds for `registry` (`docker login`, helpers)."""
        ...

    def remove_container(self, ref: str) -> None:
        """Force-remove a container, ignoring one that is already gone."""
        ...

    def remove_image(self, ref: str, *, force: bool = False) -> bool:
        """Remove an image or one tag of it; False when it was not there or is in use."""
        ...

    def remove_volume(self, name: str) -> bool:
        """Remove a volume; False when it is gone already or still in use."""
        ...

    def restarted(self) -> bool:
        """Whether the engine stopped (and maybe came back) since `watch` began."""
        ...

    def save(self, image_id: str) -> Iterator[bytes]:
        """Stream `docker save` of one image (used to scan layers for secrets)."""
        ...

    def session(self, container: ContainerHandle, python: str, *,
                env: Mapping[str, str] | None = None,
                ) -> contextlib.AbstractContextManager[ContainerSession]:
        """A session: rolebake's agent started with `python` in the container."""
        ...

    def shell(self, container: ContainerHandle, script: str, *args: str,
              env: Mapping[str, str] | None = None) -> ExecResult:
        """Run a POSIX shell script inside a container; the script is one argv item."""
        ...

    def tag(self, image_id: str, ref: str) -> None:
        """Point `ref` at an image."""
        ...

    def version(self) -> str:
        """The engine's version, for provenance."""
        ...

    def volume_at(self, container_id: str, destination: str) -> str | None:
        """The name of the volume a container has mounted at `destination`, if any."""
        ...

    def volumes(self, labels: Mapping[str, str | None]) -> list[str]:
        """Names of the volumes carrying every label given."""
        ...

    def watch(self) -> contextlib.AbstractContextManager[None]:
        """Notice, for a `with` block, when the engine stops or restarts (see `restarted`)."""
        ...
