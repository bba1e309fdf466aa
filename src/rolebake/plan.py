"""Build plans: the DAG of layers and the inputs that make each layer's cache key.

Pure: reads spec and role files, never talks to the engine. The engine's
answers (parent image ids, what is cached) are passed in by the caller.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import secrets
import stat
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any

from rolebake import __version__
from rolebake.errors import InputError
from rolebake.spec import ImageConfig, ImageSpec, Project, load_spec


class Step(StrEnum):
    """The ordered steps of one layer's build (the pipeline as data)."""

    CACHE = "cache"
    CREATE = "create"
    BOOTSTRAP = "bootstrap"
    PROVISION = "provision"
    IDEMPOTENCE = "idempotence"
    CLEAN = "clean"
    COMMIT = "commit"
    SCAN = "scan"
    VERIFY = "verify"
    TAG = "tag"


PIPELINE: tuple[Step, ...] = tuple(Step)


class StepStatus(StrEnum):
    """The status every step reports."""

    PENDING = "pending"
    RUNNING = "running"
    OK = "ok"
    CACHED = "cached"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass(frozen=True)
class Layer:
    """One committed layer: a set of roles applied on a parent image."""

    id: str
    spec: ImageSpec
    parent: str
    parent_is_layer: bool
    roles: tuple[str, ...]
    playbook: Path | None
    vars: Mapping[str, Any]
    config: ImageConfig
    tags: tuple[str, ...]
    tests: Path | None
    variant: str | None = None

    @property
    def provisioner(self) -> str:
        """The provisioner named by the layer's spec."""
        return self.spec.provisioner

    @property
    def cache_repository(self) -> str:
        """Repository of the internal cache tags for this layer."""
        return "rolebake-cache/" + self.id.replace(":", ".")

    @property
    def sensitive_vars(self) -> tuple[str, ...]:
        """Vars whose values never reach labels, reports or logs."""
        return self.spec.sensitive_vars


@dataclass(frozen=True)
class BuildPlan:
    """Layers in build order (parents first) and the layers the user asked for."""

    layers: tuple[Layer, ...]
    targets: tuple[str, ...]

    def layer(self, layer_id: str) -> Layer:
        """The layer with that id."""
        for layer in self.layers:
            if layer.id == layer_id:
                return layer
        raise KeyError(layer_id)

    def children(self, layer_id: str) -> list[Layer]:
        """Layers built directly on `layer_id`."""
        return [x for x in self.layers if x.parent_is_layer and x.parent == layer_id]


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


def plan_build(project: Project, targets: Iterable[str] = ()) -> BuildPlan:
    """Turn image names (`web`, `web:dev`; none means all) into an ordered plan.

    Raises:
        InputError: a bad spec, an unknown image or variant, or a cycle in `from:`.
    """
    wanted = list(targets) or _all_targets(project)
    specs: dict[str, ImageSpec] = {}
    for target in wanted:
        _load_chain(project, target.split(":", 1)[0], specs, [])
    layers: dict[str, Layer] = {}
    for spec in specs.values():
        _add_layers(project, spec, specs, layers)
    for target in wanted:
        if target not in layers:
            name, _, variant = target.partition(":")
            known = ", ".join(v.name for v in specs[name].variants) or "none"
            raise InputError(f"image {name!r} has no variant {variant!r}; variants: {known}",
                             path=specs[name].path, line=specs[name].line_of("variants"))
    needed = _closure(layers, wanted)
    ordered = [layer for layer in _topological(layers) if layer.id in needed]
    return BuildPlan(layers=tuple(ordered), targets=tuple(wanted))


def _all_targets(project: Project) -> list[str]:
    names = project.spec_names()
    if not names:
        raise InputError("no image specs found", path=project.images_dir)
    targets: list[str] = []
    for name in names:
        spec = load_spec(project, name)
        targets.append(name)
        targets.extend(f"{name}:{v.name}" for v in spec.variants)
    return targets


def _load_chain(project: Project, name: str, specs: dict[str, ImageSpec], chain: list[str]) -> None:
    if name in chain:
        cycle = " -> ".join([*chain[chain.index(name):], name])
        first = specs.get(chain[chain.index(name)]) or load_spec(project, name)
        raise InputError(f"`from:` makes a cycle: {cycle}", path=first.path,
                         line=first.line_of("from"))
    if name in specs:
        return
    spec = load_spec(project, name)
    specs[name] = spec
    if spec.parent_is_spec:
        _load_chain(project, spec.parent, specs, [*chain, name])


def _add_layers(project: Project, spec: ImageSpec, specs: Mapping[str, ImageSpec],
                layers: dict[str, Layer]) -> None:
    base = Layer(
        id=spec.name,
        spec=spec,
        parent=spec.parent,
        parent_is_layer=spec.parent_is_spec,
        roles=spec.roles,
        playbook=spec.playbook,
        vars=spec.vars,
        config=spec.config,
        tags=spec.tags,
        tests=spec.tests if spec.tests.is_dir() else None,
    )
    layers[base.id] = base
    for variant in spec.variants:
        own_tests = project.root / "tests" / "images" / f"{spec.name}-{variant.name}"
        layers[f"{spec.name}:{variant.name}"] = Layer(
            id=f"{spec.name}:{variant.name}",
            spec=spec,
            parent=spec.name,
            parent_is_layer=True,
            roles=variant.roles_append,
            playbook=None,
            vars={**spec.vars, **variant.vars},
            config=variant.config,
            tags=variant.tags,
            tests=own_tests if own_tests.is_dir() else base.tests,
            variant=variant.name,
        )


def _closure(layers: Mapping[str, Layer], wanted: Iterable[str]) -> set[str]:
    needed: set[str] = set()
    stack = list(wanted)
    while stack:
        layer_id = stack.pop()
        if layer_id in needed:
            continue
        needed.add(layer_id)
        layer = layers[layer_id]
        if layer.parent_is_layer:
            stack.append(layer.parent)
    return needed


def _topological(layers: Mapping[str, Layer]) -> list[Layer]:
    ordered: list[Layer] = []
    done: set[str] = set()

    def visit(layer: Layer) -> None:
        if layer.id in done:
            return
        if layer.parent_is_layer:
            visit(layers[layer.parent])
        done.add(layer.id)
        ordered.append(layer)

    for layer_id in sorted(layers):
        visit(layers[layer_id])
    return ordered


def layer_inputs(
    project: Project,
    layer: Layer,
    parent_image_id: str,
    files: Iterable[Path],
    provisioner_version: str,
    options: Mapping[str, Any] | None = None,
) -> LayerInputs:
    """Collect the digests of everything that decides a layer's content.

    Args:
        project: the project (paths in the result are relative to its root).
        layer: the layer.
        parent_image_id: the id of the image the layer is built on.
        files: every file the provisioner reads (role trees, playbooks, cookbooks).
        provisioner_version: e.g. "ansible-core 2.19.14".
        options: the provisioner's own settings from the spec.

    Returns:
        The inputs; `.key` is the cache key.
    """
    sensitive = set(layer.sensitive_vars)
    salt = sensitive_salt(project) if sensitive & set(layer.vars) else b""
    return LayerInputs({
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
    })


@functools.cache
def rolebake_fingerprint() -> str:
    """Rolebake's version plus a digest of the scripts it runs in build containers.

    The scripts shape every image (bootstrap, clean), so changing them must
    invalidate the cache even when the version number stays the same.
    """
    scripts = resources.files("rolebake.scripts")
    digest = hashlib.sha256()
    for entry in sorted(scripts.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sh"):
            digest.update(entry.name.encode() + b"\0" + entry.read_bytes() + b"\0")
    return f"{__version__}+scripts.{digest.hexdigest()[:12]}"


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
                      ("rolebake", "rolebake version")):
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


def tree_files(root: Path) -> list[Path]:
    """Every file and link below `root`, skipping editor and VCS litter."""
    found: list[Path] = []
    for path in sorted(root.rglob("*")):
        rel_parts = path.relative_to(root).parts
        if any(part in {".git", "__pycache__", ".pytest_cache"} for part in rel_parts):
            continue
        if path.name.endswith((".pyc", ".swp", "~")) or path.name == ".DS_Store":
            continue
        if path.is_symlink() or path.is_file():
            found.append(path)
    return found


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
