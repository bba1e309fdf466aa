"""The engine's failures as rolebake errors: callers outside the engine cannot name the SDK's."""

from __future__ import annotations

import os

import docker.errors
import requests.exceptions

from rolebake.errors import BuildFailed, EngineUnavailable, InternalError, RolebakeError


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
    message = api_message(exc)
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


def api_message(exc: Exception) -> str:
    """The engine's own message in an SDK exception."""
    explanation = getattr(exc, "explanation", None)
    return str(explanation or exc).strip()
