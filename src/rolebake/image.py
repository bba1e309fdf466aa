"""The committed image: its config, its provenance labels, its tags (all or none), keep-failed.

Tags move only through `move_tags`, which puts every tag back as it was when
anything (a refused tag, a signal) stops it half-way (DESIGN.md invariant 1).
"""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rolebake import __version__
from rolebake.engine import BUILD_ID_LABEL, LABEL_PREFIX, ROLE_LABEL, Engine
from rolebake.spec import ImageConfig

LAYER_LABEL = "rolebake.layer"
SPEC_LABEL = "rolebake.spec"
CACHE_KEY_LABEL = "rolebake.cache-key"
INPUTS_LABEL = "rolebake.inputs"


def commit_config(parent: Mapping[str, Any], config: ImageConfig,
                  labels: Mapping[str, str]) -> dict[str, Any]:
    """The image config to commit: the parent's config with the spec's settings over it.

    Cmd and Entrypoint are always given explicitly: left empty, the daemon would
    fill them from the build container (whose entrypoint only sleeps).
    """
    entrypoint = list(config.entrypoint) if config.entrypoint is not None else list(
        parent.get("Entrypoint") or [])
    if config.cmd is not None:
        cmd = list(config.cmd)
    elif config.entrypoint is not None:
        cmd = []  # as a Dockerfile ENTRYPOINT does, a new entrypoint drops the inherited cmd
    else:
        cmd = list(parent.get("Cmd") or [])
    env = dict(e.split("=", 1) for e in parent.get("Env") or [] if "=" in e)
    env.update(config.env)
    ports: dict[str, dict[str, Any]] = {p: {} for p in parent.get("ExposedPorts") or {}}
    ports.update({p: {} for p in config.expose})
    volumes: dict[str, dict[str, Any]] = {v: {} for v in parent.get("Volumes") or {}}
    volumes.update({v: {} for v in config.volumes})
    all_labels = {k: v for k, v in (parent.get("Labels") or {}).items()
                  if not k.startswith(LABEL_PREFIX)}
    all_labels.update(config.labels)
    all_labels.update(labels)
    result: dict[str, Any] = {
        "Cmd": cmd,
        "Entrypoint": entrypoint,
        "Env": [f"{k}={v}" for k, v in env.items()],
        "User": config.user if config.user is not None else parent.get("User", ""),
        "WorkingDir": config.workdir if config.workdir is not None else parent.get(
            "WorkingDir", ""),
        "ExposedPorts": ports,
        "Volumes": volumes,
        "Labels": all_labels,
    }
    health = config.healthcheck
    if health is not None:
        result["Healthcheck"] = {
            "Test": list(health.test),
            **({"Interval": _ns(health.interval_s)} if health.interval_s else {}),
            **({"Timeout": _ns(health.timeout_s)} if health.timeout_s else {}),
            **({"Retries": health.retries} if health.retries is not None else {}),
            **({"StartPeriod": _ns(health.start_period_s)} if health.start_period_s else {}),
        }
    elif parent.get("Healthcheck"):
        result["Healthcheck"] = parent["Healthcheck"]
    return result


def provenance_labels(*, build_id: str, spec: str, layer: str, cache_key: str, inputs: str,
                      provisioner: str, revision: str | None) -> dict[str, str]:
    """The labels every image rolebake commits carries (DESIGN.md, "Image spec").

    `rolebake.role=image` overrides the build container's `build`: Docker's
    commit merges container labels into the image, and containers users start
    from it must not look like leftovers.
    """
    labels = {
        ROLE_LABEL: "image",
        BUILD_ID_LABEL: build_id,
        SPEC_LABEL: spec,
        LAYER_LABEL: layer,
        CACHE_KEY_LABEL: cache_key,
        INPUTS_LABEL: inputs,
        "rolebake.version": __version__,
        "rolebake.provisioner": provisioner,
        "org.opencontainers.image.created": dt.datetime.now(dt.UTC).isoformat(
            timespec="seconds"),
    }
    if revision:
        labels["rolebake.git-revision"] = revision
        labels["org.opencontainers.image.revision"] = revision
    return labels


def provenance(labels: Mapping[str, str]) -> dict[str, str]:
    """An image's provenance, from its labels (the bulky inputs digest left out)."""
    return {k: v for k, v in labels.items() if k.startswith(LABEL_PREFIX) and k != INPUTS_LABEL}


def move_tags(engine: Engine, image_id: str, refs: Sequence[str],
              check: Callable[[], None] = lambda: None) -> None:
    """Point every ref at `image_id`; all of them or none.

    Args:
        engine: the engine holding the image.
        image_id: the image the refs should name.
        refs: the tags, the internal cache tag last.
        check: raises when the build was cancelled; called after the last tag
            moved, so a cancel that arrives during the move rolls it back too.

    Raises:
        InputError: the engine refused a tag (every moved tag is put back first).
    """
    previous = {ref: _image_id(engine, ref) for ref in refs}
    moved: list[str] = []
    try:
        for ref in refs:
            engine.tag(image_id, ref)
            moved.append(ref)
        check()
    except BaseException:
        for ref in moved:
            before = previous[ref]
            if before is not None:
                engine.tag(before, ref)
            else:
                engine.remove_image(ref)
        raise


def keep_failed(engine: Engine, image_id: str, tags: Sequence[str]) -> str:
    """Keep an image that failed its checks as `<repository>:failed-<id>`; returns that tag."""
    repository = "rolebake/failed"
    if tags:
        # `localhost:5000/web` names a repository with a port, not a tag.
        name, sep, tag = tags[0].rpartition(":")
        repository = name if sep and "/" not in tag else tags[0]
    failed = f"{repository}:failed-{image_id.rsplit(':', maxsplit=1)[-1][:12]}"
    engine.tag(image_id, failed)
    return failed


def git_revision(root: Path) -> str | None:
    """The repository's commit (with `-dirty` for uncommitted changes), or None."""
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain"],
                               capture_output=True, text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("-dirty" if dirty.strip() else "")


def _image_id(engine: Engine, ref: str) -> str | None:
    found = engine.image(ref)
    return found.id if found is not None else None


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)
