"""Images on the engine: lookups, tags, removal, import, save, and commit (Podman's dialect too)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import docker.errors

from rolebake.engine.connection import Connection
from rolebake.engine.failures import api_message, engine_failure
from rolebake.engine.records import ContainerHandle, ImageInfo
from rolebake.errors import BuildFailed, InputError


class Images(Connection):
    """The engine's images."""

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
            raise InputError(f"the engine refused tag {ref!r}: {api_message(exc)}") from None
        if not ok:
            raise InputError(f"the engine refused tag {ref!r}")

    def remove_image(self, ref: str, *, force: bool = False) -> bool:
        """Remove an image or one tag of it; False when it was not there or is in use."""
        try:
            # noprune: only this image goes. The engine would otherwise also delete
            # its untagged parents, and a layer's parent is untagged while it is being
            # verified (pipelined layers) or kept by id (a child's normalised image
            # was loaded, so the engine does not see it as the parent's child).
            self.client.images.remove(ref, force=force, noprune=True)
        except docker.errors.ImageNotFound:
            return False
        except docker.errors.APIError as exc:
            if exc.status_code in (404, 409):
                return False
            raise
        return True

    def import_rootfs(self, tarball: Path, ref: str, changes: Sequence[str]) -> ImageInfo:
        """Make an image from a root filesystem tarball (`docker import`), tagged `ref`.

        The import is untagged and the tag is set afterwards: Podman's compatible
        API ignores the tag of an import and tags the image `:latest` instead.
        """
        # From a file: the SDK then sends a Content-Length, which every engine accepts.
        answer = self.client.api.import_image_from_file(str(tarball), changes=list(changes))
        image_id = _imported_id(answer)
        if image_id is None or self.image(image_id) is None:
            raise BuildFailed(f"importing {tarball} did not produce an image",
                              details=str(answer)[-2000:])
        self.tag(image_id, ref)
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

    def load(self, archive: Path) -> None:
        """`docker load` an image archive (a `docker save` layout) from a file.

        Layers whose chain the engine has already are not read: an archive may
        hold only the layers the engine lacks (see normalise.py).
        """
        try:
            with archive.open("rb") as data:
                for answer in self.client.api.load_image(data):
                    if isinstance(answer, dict) and answer.get("error"):
                        raise BuildFailed("loading the normalised image failed",
                                          details=str(answer["error"]))
        except docker.errors.APIError as exc:
            raise engine_failure("loading the normalised image failed", exc) from None

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
                result = self.client.api.commit(container.id, conf=dict(config),
                                                pause=not self._idle(container))
        except docker.errors.APIError as exc:
            raise engine_failure("commit failed", exc) from None
        image_id = str(result["Id"])
        # Podman answers with the bare hex digits; everywhere else an id is `sha256:<hex>`.
        return image_id if ":" in image_id else f"sha256:{image_id}"

    def _idle(self, container: ContainerHandle) -> bool:
        """Whether only the engine's init and the keep-alive `sleep infinity` run in it.

        Then nothing can write during the commit, and it need not freeze the
        container (pausing and resuming a cgroup: a tenth of a second of a commit
        measured at 0.2-0.3 s); anything else running (the build was not
        cleaned) keeps the pause. One `top` call decides.
        """
        try:
            top = self.client.api.top(container.id)
            column = list(top.get("Titles") or []).index("CMD")
            commands = [str(row[column]) for row in top.get("Processes") or []]
        except (docker.errors.APIError, ValueError, IndexError, TypeError):
            return False
        return bool(commands) and all(_keep_alive(command) for command in commands)


def _keep_alive(command: str) -> bool:
    # `sleep infinity`, under the engine's init (docker-init, tini or catatonit) or not.
    init, sep, rest = command.partition(" -- ")
    if sep:
        return Path(init.split()[0]).name in _INITS and rest == KEEP_ALIVE
    return command == KEEP_ALIVE


KEEP_ALIVE = "sleep infinity"  # the build container's entrypoint (containers.py)
_INITS = {"docker-init", "tini", "catatonit"}


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


def _has_tag(ref: str) -> bool:
    return ":" in ref.rsplit("/", 1)[-1]


def split_ref(ref: str) -> tuple[str, str]:
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


def _imported_id(answer: object) -> str | None:
    """The image id in an import's answer: JSON lines, the id in the last `status`."""
    found = None
    for line in str(answer).splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            for key in ("id", "status"):
                value = record.get(key)
                if isinstance(value, str) and value.startswith("sha256:"):
                    found = value
    return found
