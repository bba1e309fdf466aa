"""Containers: run for a `with` block and always removed, found by label, inspected, killed."""

from __future__ import annotations

import contextlib
import functools
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import docker
import docker.errors
import requests.exceptions

from rolebake.engine.connection import Connection
from rolebake.engine.failures import api_message, engine_failure
from rolebake.engine.records import ContainerHandle, ContainerInfo
from rolebake.errors import BuildFailed, EngineUnavailable

# What Docker and Podman say when the init binary `init=True` asks for is missing.
_NO_INIT = re.compile(r"docker-init|catatonit|container-init|init binary", re.I)


class Containers(Connection):
    """The engine's containers."""

    @contextlib.contextmanager
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
    ) -> Iterator[ContainerHandle]:
        """Run a container for the length of a `with` block and always remove it.

        With `keep_alive` the image's own command is replaced by a sleeping
        entrypoint, so a build container stays up whatever the image runs. With
        `init` the engine's own init (`docker run --init`, Podman's `--init`) is
        PID 1 and reaps: a daemon a role restarts is gone when it exits, as on a
        server, instead of a zombie its restart waits for.
        `hostname` (default: the engine's, the container's short id) is what
        the container's processes see as their host's name.
        With `remove_in_background`, a block that ends without an error leaves
        the removal to a thread (see `settle`): the engine deletes the
        container's whole writable layer, seconds for a layer that installed
        packages, and nothing after the block needs it gone. A block that
        ends in an error removes it before the error goes on, as always.
        """
        kwargs: dict[str, Any] = {
            "name": name,
            "labels": dict(labels),
            "detach": True,
            "mounts": [docker.types.Mount(**m) for m in mounts],
            "tmpfs": dict(tmpfs or {}),
            "volumes_from": list(volumes_from),
            "ports": dict(ports or {}),
            "environment": dict(environment or {}),
            "init": init,
        }
        if hostname is not None:
            kwargs["hostname"] = hostname
        if keep_alive:
            # An entrypoint (not a cmd) keeps the commit from inheriting it: the
            # daemon only copies the container's Cmd into an image when the
            # committed config names no entrypoint and no cmd.
            kwargs["entrypoint"] = ["sleep", "infinity"]
            kwargs["command"] = []
        handle: ContainerHandle | None = None
        try:
            try:
                created = self.client.containers.create(image_id, **kwargs)
                handle = ContainerHandle(id=created.id, name=name)
                created.start()
            except docker.errors.APIError as exc:
                if not (init and _NO_INIT.search(api_message(exc))):
                    raise
                # An engine without its init binary (Podman without catatonit): the
                # container goes without, as before; a restart may then wait for its
                # zombie, and the build names a task that took long.
                self._remove_after_error(handle.id if handle else name)
                handle = None
                kwargs["init"] = False
                created = self.client.containers.create(image_id, **kwargs)
                handle = ContainerHandle(id=created.id, name=name)
                created.start()
            yield handle
        except docker.errors.APIError as exc:
            self._remove_after_error(handle.id if handle else name)
            raise engine_failure(f"the engine failed on container {name}", exc) from None
        except BaseException:
            self._remove_after_error(handle.id if handle else name)
            raise
        else:
            if remove_in_background:
                self._removals.start(self, handle.id)
            else:
                self.remove_container(handle.id)

    @functools.cached_property
    def _removals(self) -> _Removals:
        return _Removals()

    def settle(self) -> list[str]:
        """Wait for the removals left to the background; what could not be removed, said.

        The threads are not daemons either: the process does not end before they do.
        """
        return self._removals.wait()

    def _remove_after_error(self, ref: str) -> None:
        # Created may have failed half-way; the container is found by name then. A
        # container the engine cannot remove now (it stopped) must not hide the error
        # that brought us here: it is left for `rolebake clean`.
        with contextlib.suppress(BuildFailed, EngineUnavailable,
                                 docker.errors.DockerException,
                                 requests.exceptions.RequestException):
            self.remove_container(ref)

    def remove_container(self, ref: str) -> None:
        """Force-remove a container, ignoring one that is already gone."""
        for attempt in range(5):
            try:
                self.client.api.remove_container(ref, force=True, v=True)
                return
            except docker.errors.NotFound:
                return
            except docker.errors.APIError as exc:
                # "removal already in progress" and busy mounts clear within a second.
                if attempt == 4:
                    raise BuildFailed(
                        f"could not remove container {ref}: {api_message(exc)}") from None
                time.sleep(0.5)
            except requests.exceptions.RequestException as exc:
                if attempt == 4:
                    raise EngineUnavailable(
                        f"could not remove container {ref}: the engine does not answer",
                        details=str(exc),
                        hint="`rolebake clean` removes it once the engine is back") from None
                time.sleep(0.5)

    def kill(self, ref: str) -> None:
        """Kill a container (to stop a blocking exec from another thread)."""
        with contextlib.suppress(docker.errors.DockerException):
            self.client.api.kill(ref)

    def containers(self, labels: Mapping[str, str | None]) -> list[ContainerInfo]:
        """Every container, running or not, carrying all the labels given."""
        filters = [k if v is None else f"{k}={v}" for k, v in labels.items()]
        found = self.client.containers.list(all=True, filters={"label": filters})
        return [
            ContainerInfo(
                id=c.id,
                name=c.name,
                labels=c.labels,
                created=c.attrs.get("Created", ""),
                status=c.status,
            )
            for c in found
        ]

    def create_stopped(self, image_id: str, *, name: str, labels: Mapping[str, str],
                       mounts: Sequence[Mapping[str, Any]] = ()) -> str:
        """Create, without starting, a container (a volume source, as kitchen-dokken does)."""
        created = self.client.containers.create(
            image_id, name=name, labels=dict(labels), entrypoint=["/bin/true"], command=[],
            mounts=[docker.types.Mount(**m) for m in mounts],
        )
        return str(created.id)

    def diff(self, container: ContainerHandle) -> list[tuple[str, str]]:
        """What a container changed in its image's filesystem (`docker diff`): (A|C|D, path).

        Mounts (volumes, tmpfs, binds) are not part of it, and neither is
        anything below them: this is what a commit would put in the layer.
        """
        kinds = {0: "C", 1: "A", 2: "D"}
        changes = self.client.api.diff(container.id) or []
        return [(kinds.get(int(c.get("Kind", -1)), "?"), str(c.get("Path"))) for c in changes]

    def container_state(self, container: ContainerHandle) -> Mapping[str, Any]:
        """The State block of a container (running, health, exit code).

        `Health` is there only when the image has a HEALTHCHECK: Podman reports an
        empty one (`{"Status": ""}`) for every container, Docker none.
        """
        state = dict(self.client.api.inspect_container(container.id).get("State", {}))
        if not (state.get("Health") or {}).get("Status"):
            state.pop("Health", None)
        return state

    def container_ip(self, container: ContainerHandle) -> str | None:
        """The container's address on the default bridge, if it has one."""
        settings = self.client.api.inspect_container(container.id).get("NetworkSettings", {})
        for network in (settings.get("Networks") or {}).values():
            if network.get("IPAddress"):
                return str(network["IPAddress"])
        return settings.get("IPAddress") or None

    def logs(self, container: ContainerHandle, tail: int = 30) -> str:
        """The last lines a container printed."""
        with contextlib.suppress(docker.errors.DockerException):
            raw = self.client.api.logs(container.id, tail=tail)
            return bytes(raw).decode("utf-8", "replace")
        return ""


class _Removals:
    """Container removals running on threads of their own, and what failed among them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._failed: list[str] = []

    def start(self, containers: Containers, ref: str) -> None:
        def remove() -> None:
            try:
                containers.remove_container(ref)
            except (BuildFailed, EngineUnavailable) as exc:
                with self._lock:
                    self._failed.append(f"{exc.message} (`rolebake clean` removes it)")

        thread = threading.Thread(target=remove, name=f"rolebake-remove-{ref[:12]}")
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def wait(self) -> list[str]:
        with self._lock:
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join()
        with self._lock:
            failed, self._failed = self._failed, []
        return failed
