"""The container engine, wrapped once: the only module that imports `docker`.

Everything else speaks in rolebake's own records (ContainerHandle, ImageInfo,
ExecResult). Containers made here are always removed by a context manager
(DESIGN.md invariant 1).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import socket
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.auth
import docker.errors
import docker.utils.socket
import requests.exceptions

from rolebake.errors import (
    BuildFailed,
    EngineUnavailable,
    InputError,
    InternalError,
    RegistryError,
    RolebakeError,
)

LABEL_PREFIX = "rolebake."
ROLE_LABEL = "rolebake.role"  # build | verify | image: what a container or image is for
BUILD_ID_LABEL = "rolebake.build-id"
LEFTOVER_ROLES = ("build", "verify", "scan")

# Receives one line per step of a pull or push (a blob done, some progress, the digest).
Progress = Callable[[str], None]
# How often a blob in transfer reports its bytes, at most.
_PROGRESS_EVERY_S = 5.0


@dataclass(frozen=True)
class ContainerHandle:
    """A container rolebake created."""

    id: str
    name: str

    @property
    def short_id(self) -> str:
        """The first 12 hex digits of the id."""
        return self.id[:12]


@dataclass(frozen=True)
class ExecResult:
    """What one command run inside a container returned."""

    rc: int
    output: str

    def tail(self, lines: int = 15) -> str:
        """The last lines of the output, for error messages."""
        return "\n".join(self.output.rstrip().splitlines()[-lines:])


@dataclass(frozen=True)
class ImageInfo:
    """An image the engine holds."""

    id: str
    tags: tuple[str, ...]
    labels: Mapping[str, str]
    created: str
    config: Mapping[str, Any] = field(default_factory=dict)
    size: int = 0

    @property
    def short_id(self) -> str:
        """The id without its algorithm, first 12 hex digits."""
        return self.id.split(":")[-1][:12]


@dataclass(frozen=True)
class ContainerInfo:
    """A container the engine holds, as `rolebake clean` and the tests see it."""

    id: str
    name: str
    labels: Mapping[str, str]
    created: str
    status: str


class Engine:
    """rolebake's view of a Docker engine."""

    def __init__(self, client: Any) -> None:
        """Wrap a docker SDK client (a fake one in unit tests)."""
        self.client = client
        self._went_away = threading.Event()

    @functools.cached_property
    def kind(self) -> str:
        """`podman` or `docker`: which engine answers, for the few things they do differently."""
        components = self.client.version().get("Components") or []
        names = " ".join(str(c.get("Name", "")) for c in components).lower()
        return "podman" if "podman" in names else "docker"

    @classmethod
    def connect(cls, timeout: int = 600) -> Engine:
        """Connect to the engine DOCKER_HOST names (or the default socket) and check it answers.

        Raises:
            EngineUnavailable: no engine answers.
        """
        where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        try:
            client = docker.from_env(timeout=timeout)
            client.ping()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise EngineUnavailable(
                f"no container engine answers at {where}",
                details=str(exc),
                hint="start one with `make engine`, or point DOCKER_HOST at a running engine",
            ) from None
        return cls(client)

    def version(self) -> str:
        """The engine's version, for provenance."""
        return str(self.client.version().get("Version", "unknown"))

    def identity(self) -> str:
        """A digest naming this engine's image store, the same from any checkout on the host.

        The daemon's ID alone is not enough (dockerd versions before 23 derive it
        from a key file that every engine started on a host shares), so its host
        name and data root go in too. DOCKER_HOST does not: two ways to reach one
        engine (a socket, tcp://localhost) must share its locks.
        """
        info = self.client.info()
        parts = (str(info.get("ID", "")), str(info.get("Name", "")),
                 str(info.get("DockerRootDir", "")))
        return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()[:32]

    # The engine going away -------------------------------------------------------------

    @contextlib.contextmanager
    def watch(self) -> Iterator[None]:
        """Notice, for a `with` block, when the engine stops or restarts (see `restarted`).

        A daemon closes every events stream when it shuts down, and only then:
        one quiet stream (daemon events only) held open is the witness.
        """
        self._went_away.clear()
        try:
            stream = self.client.api.events(decode=True, filters={"type": "daemon"})
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            self._went_away.set()
            yield
            return
        closing = threading.Event()

        def read() -> None:
            with contextlib.suppress(Exception):
                for _event in stream:
                    pass
            if not closing.is_set():
                self._went_away.set()

        reader = threading.Thread(target=read, name="rolebake-engine-watch", daemon=True)
        reader.start()
        try:
            yield
        finally:
            closing.set()
            with contextlib.suppress(Exception):
                stream.close()

    def restarted(self) -> bool:
        """Whether the engine stopped (and maybe came back) since `watch` began."""
        # Once the old daemon has exited its stream has ended: give the reader a moment.
        return self._went_away.wait(0.2)

    def answers(self, wait_s: float = 0.0) -> bool:
        """Whether the engine answers, waiting up to `wait_s` for it to come back."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                # On a new connection: a daemon that is shutting down still answers on
                # the ones it had, after its socket is gone.
                self.client.api.close()
                if self.client.ping():
                    return True
            except (docker.errors.DockerException, requests.exceptions.RequestException):
                self._went_away.set()  # it did not answer: whatever comes back has restarted
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)

    # Images ---------------------------------------------------------------------------

    def image(self, ref: str) -> ImageInfo | None:
        """Look an image up by id or reference; None when the engine does not have it."""
        try:
            image = self.client.images.get(ref)
        except docker.errors.ImageNotFound:
            return None
        except docker.errors.APIError as exc:
            if exc.status_code in (400, 404):
                return None
            raise
        return _image_info(image)

    def pull(self, ref: str, progress: Progress | None = None) -> ImageInfo:
        """Pull a base image reference as usual (where a registry is reachable).

        Raises:
            InputError: it could not be pulled (a `from:` naming nothing is bad input).
        """
        try:
            return self.fetch(ref, progress)
        except RegistryError as exc:
            raise InputError(
                f"base image {ref!r} is not on this engine and could not be pulled: "
                f"{exc.message}",
                hint="make one with `rolebake base debian:bookworm`, or fix `from:`",
            ) from None

    def fetch(self, ref: str, progress: Progress | None = None,
              check: Callable[[], None] = lambda: None) -> ImageInfo:
        """Pull `ref` from its registry, one progress line per blob.

        Args:
            ref: `registry/path:tag`.
            progress: receives the progress lines.
            check: called between progress records; raising there stops the pull.

        Raises:
            RegistryError: the registry or the engine refused, with the registry's message.
        """
        repository, tag = _split_ref(ref)
        try:
            stream = self.client.api.pull(repository, tag=tag, stream=True, decode=True)
            _follow(stream, progress, check, f"pulling {ref}")
        except docker.errors.DockerException as exc:
            raise RegistryError(f"pulling {ref} failed: {_api_message(exc)}") from None
        found = self.image(ref)
        if found is None:
            raise RegistryError(f"pulling {ref} left no image on the engine")
        return found

    def push(self, ref: str, progress: Progress | None = None,
             check: Callable[[], None] = lambda: None) -> str:
        """Push one tag to its registry, one progress line per blob; returns the digest.

        Credentials come from the docker client's config (`docker login`), read by
        the SDK; rolebake never sees more of them than the SDK hands the engine.

        Raises:
            RegistryError: the registry or the engine refused, with the registry's message.
        """
        repository, tag = _split_ref(ref)
        try:
            stream = self.client.api.push(repository, tag=tag, stream=True, decode=True)
            aux = _follow(stream, progress, check, f"pushing {ref}")
        except docker.errors.DockerException as exc:
            raise RegistryError(f"pushing {ref} failed: {_api_message(exc)}") from None
        return str(aux.get("Digest") or "")

    def registry_credentials(self, registry: str) -> dict[str, str]:
        """What the docker client's config holds for `registry` (`docker login`, helpers).

        Returns:
            `username` and `password`, or `identitytoken`, or nothing. Never logged.
        """
        try:
            found = docker.auth.resolve_authconfig(docker.auth.load_config(), registry) or {}
        except docker.errors.DockerException as exc:
            raise RegistryError(f"could not read the docker client's credentials for {registry} "
                                f"({type(exc).__name__})") from None
        lowered = {str(k).lower(): v for k, v in found.items() if isinstance(v, str) and v}
        return {k: lowered[k] for k in ("username", "password", "identitytoken") if k in lowered}

    def registry_config(self) -> Mapping[str, Any]:
        """The engine's registry settings (insecure registries, mirrors); empty on Podman."""
        return dict(self.client.info().get("RegistryConfig") or {})

    def images(self, labels: Mapping[str, str | None]) -> list[ImageInfo]:
        """Images carrying every label given (value None: any value), newest first."""
        filters = [k if v is None else f"{k}={v}" for k, v in labels.items()]
        found = [_image_info(i) for i in self.client.images.list(filters={"label": filters})]
        return sorted(found, key=lambda i: i.created, reverse=True)

    def dangling_images(self, labels: Mapping[str, str | None]) -> list[ImageInfo]:
        """Untagged images carrying the labels (the remains of interrupted builds)."""
        filters = [k if v is None else f"{k}={v}" for k, v in labels.items()]
        found = self.client.images.list(filters={"label": filters, "dangling": True})
        return [_image_info(i) for i in found]

    def tag(self, image_id: str, ref: str) -> None:
        """Point `ref` at an image."""
        repository, _, tag = ref.rpartition(":") if _has_tag(ref) else (ref, "", "latest")
        try:
            ok = self.client.api.tag(image_id, repository, tag or "latest", force=True)
        except docker.errors.APIError as exc:
            raise InputError(f"the engine refused tag {ref!r}: {_api_message(exc)}") from None
        if not ok:
            raise InputError(f"the engine refused tag {ref!r}")

    def remove_image(self, ref: str, *, force: bool = False) -> bool:
        """Remove an image or one tag of it; False when it was not there or is in use."""
        try:
            self.client.images.remove(ref, force=force, noprune=False)
        except docker.errors.ImageNotFound:
            return False
        except docker.errors.APIError as exc:
            if exc.status_code in (404, 409):
                return False
            raise
        return True

    def import_rootfs(self, tarball: Path, ref: str, changes: Sequence[str]) -> ImageInfo:
        """Make an image from a root filesystem tarball (`docker import`)."""
        repository, _, tag = ref.rpartition(":")
        # From a file: the SDK then sends a Content-Length, which every engine accepts.
        self.client.api.import_image_from_file(
            str(tarball), repository=repository, tag=tag, changes=list(changes)
        )
        found = self.image(ref)
        if found is None:
            raise BuildFailed(f"importing {tarball} did not produce {ref}")
        return found

    def save(self, image_id: str) -> Iterator[bytes]:
        """Stream `docker save` of one image (used to scan layers for secrets)."""
        image = self.client.images.get(image_id)
        yield from image.save(named=False)

    def history(self, image_id: str) -> list[dict[str, Any]]:
        """`docker history` of an image."""
        return list(self.client.api.history(image_id))

    # Containers -----------------------------------------------------------------------

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
    ) -> Iterator[ContainerHandle]:
        """Run a container for the length of a `with` block and always remove it.

        With `keep_alive` the image's own command is replaced by a sleeping
        entrypoint, so a build container stays up whatever the image runs.
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
        }
        if keep_alive:
            # An entrypoint (not a cmd) keeps the commit from inheriting it: the
            # daemon only copies the container's Cmd into an image when the
            # committed config names no entrypoint and no cmd.
            kwargs["entrypoint"] = ["sleep", "infinity"]
            kwargs["command"] = []
        handle: ContainerHandle | None = None
        try:
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
            self.remove_container(handle.id)

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
                        f"could not remove container {ref}: {_api_message(exc)}") from None
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

    def volume_at(self, container_id: str, destination: str) -> str | None:
        """The name of the volume a container has mounted at `destination`, if any."""
        mounts = self.client.api.inspect_container(container_id).get("Mounts") or []
        for mount in mounts:
            if mount.get("Type") == "volume" and mount.get("Destination") == destination:
                return str(mount["Name"])
        return None

    def diff(self, container: ContainerHandle) -> list[tuple[str, str]]:
        """What a container changed in its image's filesystem (`docker diff`): (A|C|D, path).

        Mounts (volumes, tmpfs, binds) are not part of it, and neither is
        anything below them: this is what a commit would put in the layer.
        """
        kinds = {0: "C", 1: "A", 2: "D"}
        changes = self.client.api.diff(container.id) or []
        return [(kinds.get(int(c.get("Kind", -1)), "?"), str(c.get("Path"))) for c in changes]

    def read_files(self, image_id: str, paths: Sequence[str], *,
                   name: str) -> dict[str, bytes | None]:
        """Read small files from an image without running it (None: not there, or not a file).

        A container is created, never started, read from and removed. A symlink
        is followed inside the image (/etc/os-release -> ../usr/lib/os-release).
        """
        found: dict[str, bytes | None] = {}
        container = self.create_stopped(image_id, name=name, labels={ROLE_LABEL: "scan"})
        try:
            for path in paths:
                found[path] = self._read_in(container, path)
        finally:
            self.remove_container(container)
        return found

    def _read_in(self, container: str, path: str, depth: int = 0) -> bytes | None:
        try:
            stream, stat = self.client.api.get_archive(container, path)
            data = b"".join(stream)
        except docker.errors.NotFound:
            return None
        target = str(stat.get("linkTarget") or "")
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            member = next(iter(tar.getmembers()), None)
            if member is not None and member.issym() and depth < 5:
                link = member.linkname
                parent = path.rsplit("/", 1)[0] or "/"
                resolved = target if target.startswith("/") else os.path.normpath(
                    f"{parent}/{link}")
                return self._read_in(container, resolved, depth + 1)
            if member is None or not member.isfile():
                return None
            handle = tar.extractfile(member)
            return handle.read() if handle is not None else None

    def copy_out(self, container: ContainerHandle, path: str, dest: Path) -> None:
        """Copy one file out of a container to `dest` on this machine, streaming."""
        found = self.open_file(container.id, path)
        if found is None:
            raise BuildFailed(f"{path} is not a file in container {container.name}")
        with dest.open("wb") as out:
            for chunk in found[1]:
                out.write(chunk)

    def open_file(self, container_id: str, path: str) -> tuple[int, Iterator[bytes]] | None:
        """Stream one file of a (possibly stopped) container: its size and its bytes.

        Returns:
            None when there is no such file.
        """
        try:
            stream, _ = self.client.api.get_archive(container_id, path)
        except docker.errors.NotFound:
            return None
        # Closed by the generator below, once the bytes are read.
        tar = tarfile.open(fileobj=_ChunkReader(stream), mode="r|")  # noqa: SIM115
        member = tar.next()
        handle = tar.extractfile(member) if member is not None and member.isfile() else None
        if member is None or handle is None:
            tar.close()
            return None

        def chunks() -> Iterator[bytes]:
            try:
                yield from iter(lambda: handle.read(1 << 16), b"")
            finally:
                tar.close()

        return member.size, chunks()

    # Volumes ---------------------------------------------------------------------------

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

    def exec(
        self,
        container: ContainerHandle,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        user: str = "root",
    ) -> ExecResult:
        """Run a command in a container and wait for it."""
        try:
            rc, output = self.client.containers.get(container.id).exec_run(
                list(argv), environment=dict(env or {}), user=user, demux=False
            )
        except docker.errors.APIError as exc:
            raise engine_failure(f"could not run {argv[0]} in container {container.name}",
                                 exc) from None
        return ExecResult(rc=int(rc if rc is not None else -1),
                          output=(output or b"").decode("utf-8", "replace"))

    def exec_stream(self, container: ContainerHandle, argv: Sequence[str], *,
                    env: Mapping[str, str] | None = None) -> ExecStream:
        """Start a long-lived command in a container, talking to it over its stdin and stdout."""
        try:
            created = self.client.api.exec_create(container.id, list(argv), stdin=True,
                                                  stdout=True, stderr=True, user="root",
                                                  environment=dict(env or {}))
            sock = self.client.api.exec_start(created["Id"], socket=True)
        except docker.errors.APIError as exc:
            raise BuildFailed(f"could not start {argv[0]} in container {container.name}: "
                              f"{_api_message(exc)}") from None
        return ExecStream(sock)

    def shell(self, container: ContainerHandle, script: str, *args: str,
              env: Mapping[str, str] | None = None) -> ExecResult:
        """Run a POSIX shell script inside a container; the script is one argv item."""
        return self.exec(container, ["/bin/sh", "-c", script, "rolebake", *args], env=env)

    def put_file(self, container: ContainerHandle, path: str, data: bytes,
                 mode: int = 0o644) -> None:
        """Write one file into a container."""
        directory, _, filename = path.rpartition("/")
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo(filename)
            info.size = len(data)
            info.mode = mode
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
        self.client.api.put_archive(container.id, directory or "/", buffer.getvalue())

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

    def commit(
        self,
        container: ContainerHandle,
        config: Mapping[str, Any],
    ) -> str:
        """Commit a container's filesystem with the given image config; returns the image id.

        The image is not tagged here: tags move only after verification.
        """
        try:
            if self.kind == "podman":
                # Podman's Docker-compatible commit ignores the config in the body; it
                # takes Dockerfile instructions, and HEALTHCHECK is not among them.
                result = self.client.api.commit(container.id, changes=commit_changes(config),
                                                pause=True)
            else:
                result = self.client.api.commit(container.id, conf=dict(config), pause=True)
        except docker.errors.APIError as exc:
            raise engine_failure("commit failed", exc) from None
        image_id = str(result["Id"])
        # Podman answers with the bare hex digits; everywhere else an id is `sha256:<hex>`.
        return image_id if ":" in image_id else f"sha256:{image_id}"


def commit_changes(config: Mapping[str, Any]) -> list[str]:
    """An image config as the Dockerfile instructions Podman's commit takes.

    Podman keeps a quoted ENV or LABEL value as it is between the quotes (no
    escapes), takes USER and WORKDIR as written, and reads each line break as
    the end of an instruction, so values may hold anything but a line break.

    Raises:
        BuildFailed: a value holds a line break.
    """
    def quoted(what: str, value: str) -> str:
        if "\n" in value or "\r" in value:
            raise BuildFailed(f"{what} holds a line break, which Podman's commit cannot take")
        return f'"{value}"'

    changes = [f"CMD {json.dumps(list(config.get('Cmd') or []))}",
               f"ENTRYPOINT {json.dumps(list(config.get('Entrypoint') or []))}"]
    for item in config.get("Env") or []:
        name, _, value = str(item).partition("=")
        changes.append(f"ENV {name}={quoted(f'env {name}', value)}")
    for key, instruction in (("User", "USER"), ("WorkingDir", "WORKDIR")):
        if config.get(key):  # taken as written: quotes here would be part of the value
            changes.append(f"{instruction} {quoted(key, str(config[key]))[1:-1]}")
    changes += [f"EXPOSE {port}" for port in config.get("ExposedPorts") or {}]
    if config.get("Volumes"):
        changes.append(f"VOLUME {json.dumps(sorted(config['Volumes']))}")
    for name, value in (config.get("Labels") or {}).items():
        changes.append(f"LABEL {quoted('label', name)}={quoted(f'label {name}', str(value))}")
    return changes


def as_error(exc: Exception) -> RolebakeError:
    """Any exception as a rolebake error: itself, the engine's failure, or an internal error.

    Callers outside this module cannot name the SDK's exceptions; they ask here.
    The original exception is the cause, for `--debug`.
    """
    if isinstance(exc, RolebakeError):
        return exc
    error: RolebakeError
    if isinstance(exc, requests.exceptions.ConnectionError) or (
            isinstance(exc, docker.errors.DockerException)
            and not isinstance(exc, docker.errors.APIError)):
        where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        error = EngineUnavailable(f"the container engine at {where} stopped answering",
                                  details=str(exc))
    elif isinstance(exc, docker.errors.APIError):
        error = engine_failure("the engine failed", exc)
    else:
        error = InternalError(exc)
    error.__cause__ = exc
    return error


def engine_failure(what: str, exc: Exception) -> BuildFailed:
    """`what: <the engine's own message>` as a build failure, with a hint for a full disk."""
    message = _api_message(exc)
    return BuildFailed(f"{what}: {message}", hint=disk_full_hint(message))


def disk_full_hint(text: str) -> str:
    """A hint when `text` (an engine's or a task's error) says the disk is full, else ''.

    A build container's files live on the engine's disk, so a task that finds
    no space has found the engine's disk full.
    """
    if "no space left on device" not in text.lower():
        return ""
    return ("the engine's disk is full: free space where it keeps its data "
            "(`docker system df`, `rolebake clean`), then build again")


class ExecStream:
    """A running exec's stdin (write) and stdout (read); its stderr is kept for errors."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buffer = bytearray()
        self.stderr = bytearray()

    def write(self, data: bytes) -> None:
        """Send bytes to the command's stdin."""
        getattr(self._sock, "_sock", self._sock).sendall(data)

    def readline(self) -> bytes:
        """One line of stdout, with its newline; EOFError when the command ended."""
        while b"\n" not in self._buffer:
            self._fill()
        end = self._buffer.index(b"\n") + 1
        line = bytes(self._buffer[:end])
        del self._buffer[:end]
        return line

    def read(self, size: int) -> bytes:
        """Exactly `size` bytes of stdout; EOFError when the command ended first."""
        while len(self._buffer) < size:
            self._fill()
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def close(self) -> None:
        """Close stdin (the command sees end of input) and the connection."""
        raw = getattr(self._sock, "_sock", self._sock)
        with contextlib.suppress(OSError):
            raw.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):
            self._sock.close()

    def _fill(self) -> None:
        # Without a tty the engine frames the output: 1 byte stream, 3 zero, 4 size.
        kind, size = docker.utils.socket.next_frame_header(self._sock)
        if size <= 0:
            raise EOFError("the command in the container ended")
        data = docker.utils.socket.read_exactly(self._sock, size)
        (self.stderr if kind == docker.utils.socket.STDERR else self._buffer).extend(data)


class _ChunkReader(io.RawIOBase):
    """A file object over the chunks the SDK streams, for tarfile's stream mode."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size


def _has_tag(ref: str) -> bool:
    return ":" in ref.rsplit("/", 1)[-1]


def _split_ref(ref: str) -> tuple[str, str]:
    """`registry/path:tag` -> (`registry/path`, `tag`); no tag means `latest`."""
    if _has_tag(ref):
        repository, _, tag = ref.rpartition(":")
        return repository, tag
    return ref, "latest"


def familiar(ref: str) -> str:
    """A reference as Docker shows it: Podman reports `docker.io/x/y` and `localhost/y`."""
    for prefix in ("docker.io/library/", "docker.io/", "localhost/"):
        if ref.startswith(prefix):
            return ref[len(prefix):]
    return ref


def _follow(stream: Iterable[Mapping[str, Any]], progress: Progress | None,
            check: Callable[[], None], what: str) -> dict[str, Any]:
    """Read a pull or push stream to its end: errors raise, progress is reported per blob.

    Returns:
        The stream's `aux` record (a push's digest), merged.
    """
    aux: dict[str, Any] = {}
    last: dict[str, tuple[str, float]] = {}
    for item in stream:
        check()
        if item.get("error") or item.get("errorDetail"):
            message = (item.get("errorDetail") or {}).get("message") or item.get("error")
            raise RegistryError(f"{what} failed: {str(message).strip()}")
        aux.update(item.get("aux") or {})
        blob, status = str(item.get("id") or ""), str(item.get("status") or "")
        if progress is None or not blob or not status:
            continue
        detail = item.get("progressDetail") or {}
        now = time.monotonic()
        before, at = last.get(blob, ("", 0.0))
        if detail.get("total"):
            # Bytes moving: a line now and then, not one per chunk.
            if status == before and now - at < _PROGRESS_EVERY_S:
                continue
            progress(f"{blob}: {status.lower()} {_mb(detail.get('current'))}/"
                     f"{_mb(detail.get('total'))} MB")
        elif status != before and status not in _QUIET_STATUSES:
            progress(f"{blob}: {status.lower()}")
        last[blob] = (status, now)
    return aux


# Statuses that say only that a blob waits its turn.
_QUIET_STATUSES = frozenset({"Preparing", "Waiting", "Pulling fs layer", "Verifying Checksum"})


def _mb(value: Any) -> str:
    return f"{(value or 0) / 1e6:.1f}"


def _image_info(image: Any) -> ImageInfo:
    attrs = image.attrs
    config = attrs.get("Config") or {}
    return ImageInfo(
        id=image.id,
        tags=tuple(familiar(t) for t in image.tags),
        labels=dict(config.get("Labels") or {}),
        created=attrs.get("Created", ""),
        config=config,
        size=int(attrs.get("Size") or 0),
    )


def _api_message(exc: Exception) -> str:
    explanation = getattr(exc, "explanation", None)
    return str(explanation or exc).strip()
