"""The layer cache: what goes into a layer's key, whether it is a hit, and why it missed.

A layer is a hit only when its internal cache tag `rolebake-cache/<layer>:<key>`
exists; that tag is set in the tag step, after verification, so the image of a
failed, interrupted, unverified or leaking build is never reused. The inputs
of every image are stored on it (`rolebake.inputs`), so a miss is explained.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rolebake import __version__, scripts
from rolebake.engine import ROLE_LABEL, Engine, ImageInfo
from rolebake.image import CACHE_KEY_LABEL, INPUTS_LABEL, LAYER_LABEL
from rolebake.plan import BuildPlan, Layer
from rolebake.provision import provisioner_class
from rolebake.provision.base import Provisioner
from rolebake.release import release_of
from rolebake.rootfs import cache_dir
from rolebake.spec import Project


@dataclass(frozen=True)
class LayerInputs:
    """Everything that decides a layer's content, as digests; the cache key hashes them."""

    values: Mapping[str, Any]

    @property
    def key(self) -> str:
        """The cache key: sha256 of every input."""
        return "sha256:" + _sha(_canonical(self.values))

    def to_label(self) -> str:
        """Compact JSON stored on the image, so a later miss can be explained."""
        return _canonical(self.values)

    @classmethod
    def from_label(cls, text: str | None) -> LayerInputs | None:
        """Read inputs back from an image label; None when absent or unreadable."""
        if not text:
            return None
        try:
            values = json.loads(text)
        except ValueError:
            return None
        return cls(values) if isinstance(values, dict) else None


@dataclass(frozen=True)
class CacheDecision:
    """Whether a layer can be reused, and why not when it cannot."""

    hit: bool
    key: str | None
    image_id: str | None = None
    reasons: tuple[str, ...] = field(default_factory=tuple)


def layer_inputs(
    project: Project,
    layer: Layer,
    parent_image_id: str,
    files: Iterable[Path],
    provisioner_version: str,
    options: Mapping[str, Any] | None = None,
    runtime: str = "",
) -> LayerInputs:
    """Collect the digests of everything that decides a layer's content.

    Args:
        project: the project (paths in the result are relative to its root).
        layer: the layer.
        parent_image_id: the id of the image the layer is built on.
        files: every file the provisioner reads (role trees, playbooks, cookbooks).
        provisioner_version: e.g. "ansible-core 2.19.14".
        options: the provisioner's own settings from the spec.
        runtime: how the provisioner runs in the build container (the lent python
            toolchain of a release, or the apt bootstrap); "" when it has no say.

    Returns:
        The inputs; `.key` is the cache key.
    """
    sensitive = set(layer.sensitive_vars)
    salt = sensitive_salt(project) if sensitive & set(layer.vars) else b""
    values: dict[str, Any] = {
        "parent": parent_image_id,
        "files": {project.relative(p): file_digest(p) for p in sorted(set(files))},
        "vars": {k: _digest_value(v, salt=salt + b"\0" + k.encode() if k in sensitive else b"")
                 for k, v in sorted(layer.vars.items())},
        "config": {k: _digest_value(v) for k, v in layer.config.to_dict().items()},
        "roles": list(layer.roles),
        "playbook": project.relative(layer.playbook) if layer.playbook else None,
        "provisioner": f"{layer.provisioner} {provisioner_version}",
        "options": _digest_value(options or {}),
        "rolebake": rolebake_fingerprint(),
    }
    if runtime:
        values["runtime"] = runtime
    return LayerInputs(values)


def rolebake_fingerprint() -> str:
    """Rolebake's version plus a digest of the scripts it runs in build containers.

    The scripts shape every image (bootstrap, clean), so changing them must
    invalidate the cache even when the version number stays the same.
    """
    return f"{__version__}+scripts.{scripts.digest()}"


def explain_miss(current: LayerInputs, previous: LayerInputs | None) -> tuple[str, ...]:
    """Say in words which inputs differ from the last build of the same layer."""
    if previous is None:
        return ("never built",)
    now, before = current.values, previous.values
    reasons: list[str] = []
    if now.get("parent") != before.get("parent"):
        reasons.append(
            f"parent image changed ({_short(before.get('parent'))} -> {_short(now.get('parent'))})"
        )
    reasons.extend(_dict_changes(now.get("files", {}), before.get("files", {}), "", "file"))
    reasons.extend(_dict_changes(now.get("vars", {}), before.get("vars", {}), "var ", "var"))
    reasons.extend(_dict_changes(now.get("config", {}), before.get("config", {}), "config.",
                                 "config"))
    for key, what in (("roles", "role list"), ("playbook", "playbook"),
                      ("provisioner", "provisioner version"), ("options", "provisioner settings"),
                      ("runtime", "provisioner runtime"), ("rolebake", "rolebake version")):
        if now.get(key) != before.get(key):
            reasons.append(f"{what} changed ({_show(before.get(key))} -> {_show(now.get(key))})")
    return tuple(reasons) or ("inputs changed",)


def _dict_changes(now: Mapping[str, Any], before: Mapping[str, Any], prefix: str,
                  kind: str) -> list[str]:
    changes: list[str] = []
    for name in sorted(set(now) | set(before)):
        if name not in before:
            changes.append(f"{prefix}{name} added")
        elif name not in now:
            changes.append(f"{prefix}{name} removed")
        elif now[name] != before[name]:
            if kind == "file":
                mode_now, _, sha_now = str(now[name]).partition(":")
                mode_before, _, sha_before = str(before[name]).partition(":")
                if sha_now == sha_before:
                    changes.append(f"{name} mode changed ({mode_before} -> {mode_now})")
                    continue
            changes.append(f"{prefix}{name} changed")
    return changes


def file_digest(path: Path) -> str:
    """`mode:sha256` of a file, or of a link's target text (links are not followed)."""
    info = path.lstat()
    mode = f"{stat.S_IMODE(info.st_mode):04o}"
    if stat.S_ISLNK(info.st_mode):
        return f"link:{_sha(str(path.readlink()))[:32]}"
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 16), b""):
            digest.update(chunk)
    return f"{mode}:{digest.hexdigest()[:32]}"


SALT_ENV = "ROLEBAKE_SENSITIVE_SALT"


def sensitive_salt(project: Project) -> bytes:
    """The secret key for digests of sensitive vars.

    $ROLEBAKE_SENSITIVE_SALT, else a random one kept in the project's state
    folder (.rolebake/sensitive-salt, mode 0600, out of git like the logs).

    The digest sits in an image label; keyed with anything public (the var's
    name, the other inputs) a guessable secret could be found by trying
    guesses against it. A checkout with a new salt misses the cache for layers
    with sensitive vars once; CI fleets sharing a cache share the salt by env.
    """
    if os.environ.get(SALT_ENV):
        return os.environ[SALT_ENV].encode("utf-8")
    path = project.state_dir / "sensitive-salt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".salt-")
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_hex(32).encode("ascii"))
        try:
            os.link(tmp, path)  # atomic: two builds started at once agree on one salt
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    return path.read_bytes()


def _digest_value(value: Any, salt: bytes = b"") -> str:
    # A keyed digest for sensitive vars still changes with the value (so the
    # cache stays correct) but cannot be checked against guesses without the key.
    text = _canonical(value)
    if salt:
        key = hashlib.sha256(salt).digest()
        return "sensitive:" + hashlib.blake2b(text.encode(), key=key, digest_size=16).hexdigest()
    return _sha(text)[:32]


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _short(value: Any) -> str:
    text = str(value)
    return text.rsplit(":", maxsplit=1)[-1][:12] if text.startswith("sha256:") else text


def _show(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


class Cache:
    """The layer cache, kept in the engine: a layer is cached when its cache tag exists."""

    def __init__(self, engine: Engine) -> None:
        """Use the images `engine` holds."""
        self.engine = engine

    @staticmethod
    def tag_for(layer: Layer, key: str) -> str:
        """The internal tag that marks a verified build of `layer` with `key`."""
        return f"{layer.cache_repository}:{key.rsplit(':', maxsplit=1)[-1][:40]}"

    def decide(self, layer: Layer, inputs: LayerInputs) -> CacheDecision:
        """HIT with the image id, or MISS with the inputs that changed since the last build."""
        key = inputs.key
        found = self.engine.image(self.tag_for(layer, key))
        if found is not None and found.labels.get(CACHE_KEY_LABEL) == key:
            return CacheDecision(hit=True, key=key, image_id=found.id)
        if self.engine.images({CACHE_KEY_LABEL: key, ROLE_LABEL: "image"}):
            # Same inputs, but that image never passed verification: it is not reused.
            return CacheDecision(hit=False, key=key, reasons=(
                "inputs unchanged, but the last image was never verified (--no-verify, "
                "failed checks or an interrupted build); it is not reused",))
        return CacheDecision(hit=False, key=key, reasons=explain_miss(inputs, self.previous(layer)))

    def previous(self, layer: Layer) -> LayerInputs | None:
        """Inputs of the last build of this layer, to explain a miss.

        The image the layer's own tag names comes first; otherwise the most recent
        verified build of a layer of that name on the engine.
        """
        for tag in layer.tags:
            tagged = self.engine.image(tag)
            if tagged is not None and tagged.labels.get(LAYER_LABEL) == layer.id:
                return LayerInputs.from_label(tagged.labels.get(INPUTS_LABEL))
        for image in self.engine.images({LAYER_LABEL: layer.id, ROLE_LABEL: "image"}):
            if any(t.startswith(layer.cache_repository + ":") for t in image.tags):
                return LayerInputs.from_label(image.labels.get(INPUTS_LABEL))
        return None


def provisioner_and_inputs(engine: Engine, project: Project, layer: Layer,
                           parent: ImageInfo) -> tuple[Provisioner, LayerInputs]:
    """The layer's provisioner and the inputs that make its cache key (build and plan alike)."""
    provisioner = provisioner_class(layer.provisioner)(project, layer)
    release = release_of(engine, parent, cache_dir() / "releases")
    runtime = provisioner.runtime(engine, parent, release)
    inputs = layer_inputs(project, layer, parent.id, provisioner.input_files(),
                          provisioner.version(), layer.spec.provisioner_options, runtime)
    return provisioner, inputs


@dataclass(frozen=True)
class PlanRow:
    """One layer of `rolebake plan`: would it be reused, and if not, why."""

    layer: str
    parent: str
    depth: int
    hit: bool
    image: str | None
    key: str | None
    reasons: tuple[str, ...]
    tags: tuple[str, ...]

    @property
    def status(self) -> str:
        """HIT or MISS."""
        return "HIT" if self.hit else "MISS"

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"layer": self.layer, "parent": self.parent, "depth": self.depth,
                "status": self.status, "image": self.image, "cache_key": self.key,
                "reasons": list(self.reasons), "tags": list(self.tags)}


def preview(engine: Engine, project: Project, plan: BuildPlan) -> list[PlanRow]:
    """Say, for every layer, whether a build now would reuse it. Starts no container.

    A base image rolebake did not make may be read (never run) for its release.
    """
    rows: list[PlanRow] = []
    images: dict[str, str | None] = {}
    depths: dict[str, int] = {}
    cache = Cache(engine)
    for layer in plan.layers:
        depth = depths[layer.parent] + 1 if layer.parent_is_layer else 0
        depths[layer.id] = depth
        parent_id = images.get(layer.parent) if layer.parent_is_layer else layer.parent
        parent = engine.image(parent_id) if parent_id else None
        if parent is None:
            reason = (f"parent {layer.parent} will be rebuilt first" if layer.parent_is_layer
                      else f"base image {layer.parent} is not on the engine")
            rows.append(PlanRow(layer.id, layer.parent, depth, False, None, None, (reason,),
                                layer.tags))
            images[layer.id] = None
            continue
        _, inputs = provisioner_and_inputs(engine, project, layer, parent)
        decision = cache.decide(layer, inputs)
        images[layer.id] = decision.image_id
        rows.append(PlanRow(layer.id, layer.parent, depth, decision.hit, decision.image_id,
                            decision.key, decision.reasons, layer.tags))
    return rows
