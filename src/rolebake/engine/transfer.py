"""Pulls and pushes with per-blob progress, and what the docker client knows of registries."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import docker.auth
import docker.errors

from rolebake.engine.failures import api_message
from rolebake.engine.images import Images, split_ref
from rolebake.engine.records import ImageInfo, Progress
from rolebake.errors import InputError, RegistryError

# How often a blob in transfer reports its bytes, at most.
_PROGRESS_EVERY_S = 5.0


class Transfers(Images):
    """Images moving between the engine and registries."""

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
        repository, tag = split_ref(ref)
        try:
            stream = self.client.api.pull(repository, tag=tag, stream=True, decode=True)
            _follow(stream, progress, check, f"pulling {ref}")
        except docker.errors.DockerException as exc:
            raise RegistryError(f"pulling {ref} failed: {api_message(exc)}") from None
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
        repository, tag = split_ref(ref)
        try:
            stream = self.client.api.push(repository, tag=tag, stream=True, decode=True)
            aux = _follow(stream, progress, check, f"pushing {ref}")
        except docker.errors.DockerException as exc:
            raise RegistryError(f"pushing {ref} failed: {api_message(exc)}") from None
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
