"""The layer cache: what goes into a layer's key, whether it is a hit, and why it missed.

A layer is a hit only when its internal cache tag
`rolebake-cache/<project>/<layer>:<key>` exists; that tag is set in the tag
step, after verification, so the image of a failed, interrupted, unverified or
leaking build is never reused. The inputs of every image are stored on it
(`rolebake.inputs`), so a miss is explained, against the same project's builds
only (`rolebake.project`). With a cache repo (`--cache-repo`), a local miss
looks there second: a verified layer some other engine pushed is pulled and
counts as a hit ("from the cache repo"); the push step puts this engine's
verified layers there.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rolebake import __version__, scripts
from rolebake.engine import ROLE_LABEL, Engine, ImageInfo, Progress
from rolebake.errors import InputError
from rolebake.image import CACHE_KEY_LABEL, INPUTS_LABEL, LAYER_LABEL, PROJECT_LABEL
from rolebake.plan import BuildPlan, Layer
from rolebake.provision import observed, provisioner_class
from rolebake.provision.base import Provisioner
from rolebake.registry import CacheRepo, RemoteImage
from rolebake.release import RELEASE_LABEL, release_of
from rolebake.rootfs import cache_dir
from rolebake.spec import Project

# Where a hit came from.
LOCAL = "local"
FROM_REPO = "cache repo"


@dataclass(frozen=True)
class LayerInputs:
    """Everything that decides a layer's content, as digests; the cache key hashes them."""

    values: Mapping[str, Any]
    # What the last build of the layer read in the project (observed.py), for `plan`;
    # only the part the static walk misses is in `values` ("observed"), and so keyed.
    recorded: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """The cache key: sha256 of every input."""
        return "sha256:" + _sha(_canonical(self.values))

    @property
    def notes(self) -> tuple[str, ...]:
        """Why the key covers more than the layer needs (a name known only at run time)."""
        return tuple(self.values.get("notes") or ())

    @property
    def plays(self) -> tuple[str, ...]:
        """The plays of the layer's playbook that apply."""
        return tuple(self.values.get("plays") or ())

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
    source: str = LOCAL  # of a hit: LOCAL or FROM_REPO


def layer_inputs(
    project: Project,
    layer: Layer,
    parent_image_id: str,
    files: Iterable[Path],
    provisioner_version: str,
    *,
    tools: Mapping[str, str] | None = None,
    notes: Iterable[str] = (),
    runtime: str = "",
    plays: Iterable[str] = (),
) -> LayerInputs:
    """Collect the digests of everything that decides a layer's content.

    Args:
        project: the project (paths in the result are relative to its root).
        layer: the layer.
        parent_image_id: the id of the image the layer is built on.
        files: every file the provisioner reads (role trees, playbooks, cookbooks),
            by the path it reads them at; a link's target bytes are hashed.
        provisioner_version: e.g. "ansible-core 2.19.14".
        tools: inputs that are not project files (a collection's version, a
            toolchain image's id), by name.
        notes: why the key covers more than the layer needs; kept with the inputs.
        runtime: how the provisioner runs in the build container (the lent python
            toolchain of a release, or the apt bootstrap); "" when it has no say.
        plays: the plays of the layer's playbook that apply (listed by `plan`).

    Returns:
        The inputs; `.key` is the cache key.

    Raises:
        InputError: a file outside the project (its host path would reach a label).
    """
    settings = layer.settings
    sensitive = set(settings.sensitive)
    salt = sensitive_salt(project) if sensitive & set(settings.variables) else b""
    values: dict[str, Any] = {
        "parent": parent_image_id,
        "files": {_label_path(project, p): file_digest(p) for p in sorted(set(files))},
        "vars": {k: _digest_value(v, salt=salt + b"\0" + k.encode() if k in sensitive else b"")
                 for k, v in sorted(settings.variables.items())},
        "config": {k: _digest_value(v) for k, v in layer.config.to_dict().items()},
        # The provisioner's other settings (roles, playbook, run list...), each by digest:
        # they may hold values (Chef attributes) that must not show in a label.
        "settings": {k: _digest_value(_label_paths(project, v))
                     for k, v in sorted(settings.key_form().items())},
        "provisioner": f"{layer.provisioner} {provisioner_version}",
        "tools": dict(sorted((tools or {}).items())),
        "rolebake": rolebake_fingerprint(),
        "notes": list(notes),
    }
    if runtime:
        values["runtime"] = runtime
    if plays:
        values["plays"] = list(plays)
    return LayerInputs(values)


def _label_paths(project: Project, value: Any) -> Any:
    """`value` with every path in it relative to the project (a host path is refused)."""
    if isinstance(value, Path):
        return _label_path(project, value)
    if isinstance(value, Mapping):
        return {k: _label_paths(project, v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_label_paths(project, v) for v in value]
    return value


def _label_path(project: Project, path: Path) -> str:
    """A project-relative path for the inputs label; never a host path."""
    shown = project.logical(path)
    if os.path.isabs(shown):
        raise InputError(f"{shown} is outside the project; rolebake reads nothing from "
                         "outside it")
    return shown


MAX_FILE_REASONS = 12  # changed files named one by one in a miss; the rest are counted


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
    files = _dict_changes(now.get("files", {}), before.get("files", {}), "", "file")
    if len(files) > MAX_FILE_REASONS:
        # A layer that just became keyed on a whole tree adds every file of it.
        files = [*files[:MAX_FILE_REASONS - 1],
                 f"... and {len(files) - MAX_FILE_REASONS + 1} more files"]
    reasons.extend(files)
    reasons.extend(f"{change} (recorded by the last build)" for change in _dict_changes(
        now.get("observed", {}), before.get("observed", {}), "", "file"))
    reasons.extend(note for note in now.get("notes", []) if note not in before.get("notes", []))
    reasons.extend(_dict_changes(now.get("vars", {}), before.get("vars", {}), "var ", "var"))
    reasons.extend(_dict_changes(now.get("config", {}), before.get("config", {}), "config.",
                                 "config"))
    reasons.extend(_dict_changes(now.get("settings", {}), before.get("settings", {}),
                                 f"{_layer_provisioner(now)} ", "setting"))
    reasons.extend(_tool_changes(now.get("tools", {}), before.get("tools", {})))
    for key, what in (("provisioner", "provisioner version"),
                      ("runtime", "provisioner runtime"), ("plays", "plays applied"),
                      ("rolebake", "rolebake version")):
        if now.get(key) != before.get(key):
            reasons.append(f"{what} changed ({_show(before.get(key))} -> {_show(now.get(key))})")
    return tuple(reasons) or ("inputs changed",)


def _layer_provisioner(values: Mapping[str, Any]) -> str:
    """The provisioner's name in a layer's inputs (`ansible` of "ansible ansible-core 2.19")."""
    return str(values.get("provisioner") or "provisioner").split(" ", 1)[0]


def _tool_changes(now: Mapping[str, Any], before: Mapping[str, Any]) -> list[str]:
    changes: list[str] = []
    for name in sorted(set(now) | set(before)):
        if now.get(name) != before.get(name):
            changes.append(f"{name} changed ({_short(before.get(name, 'none'))} -> "
                           f"{_short(now.get(name, 'none'))})")
    return changes


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
    """`mode:sha256` of the bytes a provisioner reads at `path`, links followed.

    A link (checked to stay inside the project where it was found) counts as
    its target's mode and bytes: retargeting it or changing the target's
    content is a change. A dangling link is `missing:` its text, so the
    target appearing later is a change too.
    """
    try:
        info = path.stat()
    except OSError:
        return f"missing:{_sha(os.readlink(path) if path.is_symlink() else '')[:32]}"
    mode = f"{stat.S_IMODE(info.st_mode):04o}"
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
    path = project.private_dir() / "sensitive-salt"
    if not path.exists():
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".salt-")  # mode 0600
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
    """The layer cache: in the engine (cached when the cache tag exists), then the cache repo.

    The cache repo is a registry repository shared by many engines (`--cache-repo`).
    """

    def __init__(self, engine: Engine, repo: CacheRepo | None = None) -> None:
        """Use the images `engine` holds, and those `repo` holds after them."""
        self.engine = engine
        self.repo = repo
        self._remote: dict[str, RemoteImage] = {}  # image id -> what the repo said of it

    def image(self, ref: str) -> ImageInfo | None:
        """An image on the engine, or one the cache repo was found to hold (not pulled).

        `plan` computes the keys above a layer that only the cache repo has; the
        image's labels (its release among them) come from the registry.
        """
        found = self.engine.image(ref)
        if found is not None:
            return found
        remote = self._remote.get(ref)
        if remote is None and self.repo is not None:
            remote = self._remote.get(self.base(ref) or "")
        if remote is None:
            return None
        return ImageInfo(id=remote.image_id, tags=(remote.ref,), labels=remote.labels,
                         created="")

    @staticmethod
    def tag_for(layer: Layer, key: str) -> str:
        """The internal tag that marks a verified build of `layer` with `key`."""
        return f"{layer.cache_repository}:{key.rsplit(':', maxsplit=1)[-1][:40]}"

    def decide(self, layer: Layer, inputs: LayerInputs, *, pull: bool = False,
               progress: Progress | None = None,
               check: Callable[[], None] = lambda: None) -> CacheDecision:
        """HIT with the image id, or MISS with the inputs that changed since the last build.

        Args:
            layer: the layer.
            inputs: its inputs (the key).
            pull: pull a hit found in the cache repo (a build does; `plan` does not, and
                takes the image id from the registry instead).
            progress: receives the pull's progress lines.
            check: raises when the build was cancelled (stops a pull).

        Raises:
            RegistryError: the cache repo could not be read, or the pull failed.
        """
        key = inputs.key
        found = self.engine.image(self.tag_for(layer, key))
        if found is not None and found.labels.get(CACHE_KEY_LABEL) == key:
            return CacheDecision(hit=True, key=key, image_id=found.id)
        remote = self._in_repo(layer, key)
        if remote is not None:
            self._remote[remote.image_id] = remote
            image_id = remote.image_id
            if pull:
                assert self.repo is not None
                # Named by the local cache tag: the next build finds it here first.
                image_id = self.repo.pull(remote, self.tag_for(layer, key), progress, check).id
            return CacheDecision(hit=True, key=key, image_id=image_id, source=FROM_REPO)
        if self.engine.images({CACHE_KEY_LABEL: key, ROLE_LABEL: "image",
                               PROJECT_LABEL: layer.spec.project}):
            # Same inputs, but that image never passed verification: it is not reused.
            return CacheDecision(hit=False, key=key, reasons=(
                "inputs unchanged, but the last image was never verified (--no-verify, "
                "failed checks or an interrupted build); it is not reused",))
        return CacheDecision(hit=False, key=key, reasons=explain_miss(inputs, self.previous(layer)))

    def _in_repo(self, layer: Layer, key: str) -> RemoteImage | None:
        """A verified build of the layer in the cache repo, by the same label rule as locally."""
        if self.repo is None:
            return None
        remote = self.repo.find(self.repo.layer_ref(layer.file_stem, key))
        if remote is None or remote.labels.get(CACHE_KEY_LABEL) != key \
                or remote.labels.get(ROLE_LABEL) != "image":
            return None
        return remote

    def base(self, ref: str, *, pull: bool = False, progress: Progress | None = None,
             check: Callable[[], None] = lambda: None) -> str | None:
        """The id of the base image `ref`: on the engine, else in the cache repo; else None.

        With `pull`, a base found only in the cache repo is pulled and named `ref`, so
        every engine builds on the same base id instead of making its own.
        """
        found = self.engine.image(ref)
        if found is not None:
            return found.id
        if self.repo is None:
            return None
        remote = self.repo.find(self.repo.base_ref(ref))
        if remote is None:
            return None
        self._remote[remote.image_id] = remote
        return self.repo.pull(remote, ref, progress, check).id if pull else remote.image_id

    def publish(self, layer: Layer, key: str, image_id: str, parent: ImageInfo,
                progress: Progress | None = None,
                check: Callable[[], None] = lambda: None) -> str:
        """Put a verified layer in the cache repo, and the base it starts on, unless there.

        The first verified build of a key stays: another engine may already build on it.

        Returns:
            What was done, in words.
        """
        assert self.repo is not None
        if not layer.parent_is_layer:
            base_ref = self.repo.base_ref(layer.parent)
            if self.repo.find(base_ref) is None:
                self.repo.push(parent.id, base_ref, progress, check)
        ref = self.repo.layer_ref(layer.file_stem, key)
        there = self.repo.find(ref)
        if there is not None:
            same = "this image" if there.image_id == image_id else "another verified build"
            return f"the cache repo has {same} already"
        self.repo.push(image_id, ref, progress, check)
        return f"pushed to the cache repo as {ref}"

    def previous(self, layer: Layer) -> LayerInputs | None:
        """Inputs of the last build of this layer, to explain a miss.

        The image the layer's own tag names comes first; otherwise the most recent
        verified build of a layer of that name on the engine. Either must be of
        this project: another project's `web` on a shared engine is no history of
        this one's, even when the two share a tag. An image is this project's when
        it was built here (`rolebake.project`) or carries one of its cache tags (a
        layer another project pushed to the cache repo, pulled as this one's hit).
        """
        def ours(image: ImageInfo) -> bool:
            return image.labels.get(PROJECT_LABEL) == layer.spec.project or any(
                t.startswith(layer.cache_repository + ":") for t in image.tags)

        for tag in layer.tags:
            tagged = self.engine.image(tag)
            if tagged is not None and tagged.labels.get(LAYER_LABEL) == layer.id \
                    and ours(tagged):
                return LayerInputs.from_label(tagged.labels.get(INPUTS_LABEL))
        for image in self.engine.images({LAYER_LABEL: layer.id, ROLE_LABEL: "image"}):
            if any(t.startswith(layer.cache_repository + ":") for t in image.tags):
                return LayerInputs.from_label(image.labels.get(INPUTS_LABEL))
        return None


def provisioner_and_inputs(engine: Engine, project: Project, layer: Layer,
                           parent: ImageInfo | None) -> tuple[Provisioner, LayerInputs]:
    """The layer's provisioner and the inputs that make its cache key (build and plan alike).

    `parent` is None when it is not known yet (a parent that must be built
    first): the inputs then say what they can (files, notes) for `plan`.
    """
    provisioner = provisioner_class(layer.provisioner)(project, layer)
    runtime = ""
    if parent is not None:
        # A parent found only in the cache repo carries its release as a label.
        local = engine.image(parent.id) is not None
        release = (release_of(engine, parent, cache_dir() / "releases")
                   if local or RELEASE_LABEL in parent.labels else None)
        runtime = provisioner.runtime(engine, parent, release)
    found = provisioner.inputs(engine)
    inputs = layer_inputs(project, layer, parent.id if parent else "", found.files,
                          provisioner.version(), tools=found.tools, notes=found.notes,
                          runtime=runtime, plays=found.plays)
    return provisioner, with_recorded(project, inputs, observed.load(project, layer))


def with_recorded(project: Project, inputs: LayerInputs,
                  recorded: observed.Recorded) -> LayerInputs:
    """Fold a build's recorded reads into the key: those the static walk does not key.

    So after one build, a change to any file it read (or a file added to a folder
    it listed) moves the key, even where the static walk cannot see it.
    """
    values = {k: v for k, v in inputs.values.items() if k != "observed"}
    extra = observed.extra_inputs(project, recorded, values.get("files") or {}, file_digest)
    if extra:
        values["observed"] = extra
    return LayerInputs(values, recorded=(*recorded.files,
                                         *(p.rstrip("/") + "/" for p in recorded.lists)))


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
    notes: tuple[str, ...] = ()  # why the key covers more than the layer needs
    source: str | None = None  # of a hit: LOCAL or FROM_REPO
    plays: tuple[str, ...] = ()  # the plays of the layer's playbook that apply
    static_inputs: tuple[str, ...] = ()  # project files the static walk keys
    recorded_inputs: tuple[str, ...] = ()  # what the last build read (files, folders/)

    @property
    def status(self) -> str:
        """HIT or MISS."""
        return "HIT" if self.hit else "MISS"

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"layer": self.layer, "parent": self.parent, "depth": self.depth,
                "status": self.status, "image": self.image, "cache_key": self.key,
                "reasons": list(self.reasons), "notes": list(self.notes),
                "tags": list(self.tags), "source": self.source, "plays": list(self.plays),
                "static_inputs": list(self.static_inputs),
                "recorded_inputs": list(self.recorded_inputs)}


def preview(engine: Engine, project: Project, plan: BuildPlan,
            repo: CacheRepo | None = None) -> list[PlanRow]:
    """Say, for every layer, whether a build now would reuse it, and from where.

    Touches no container and pulls nothing: a hit in the cache repo is read there.
    """
    rows: list[PlanRow] = []
    images: dict[str, str | None] = {}
    depths: dict[str, int] = {}
    cache = Cache(engine, repo)
    for layer in plan.layers:
        depth = depths[layer.parent] + 1 if layer.parent_is_layer else 0
        depths[layer.id] = depth
        parent_ref = images.get(layer.parent) if layer.parent_is_layer else layer.parent
        parent = cache.image(parent_ref) if parent_ref else None
        if parent is None:
            reason = (f"parent {layer.parent} will be rebuilt first" if layer.parent_is_layer
                      else f"base image {layer.parent} is not on the engine"
                      + (" nor in the cache repo" if repo is not None else ""))
            _, inputs = provisioner_and_inputs(engine, project, layer, None)
            rows.append(PlanRow(layer.id, layer.parent, depth, False, None, None, (reason,),
                                layer.tags, inputs.notes, plays=inputs.plays,
                                static_inputs=tuple(inputs.values.get("files") or ()),
                                recorded_inputs=inputs.recorded))
            images[layer.id] = None
            continue
        _, inputs = provisioner_and_inputs(engine, project, layer, parent)
        decision = cache.decide(layer, inputs)
        images[layer.id] = decision.image_id
        rows.append(PlanRow(layer.id, layer.parent, depth, decision.hit, decision.image_id,
                            decision.key, decision.reasons, layer.tags, inputs.notes,
                            decision.source if decision.hit else None, inputs.plays,
                            tuple(inputs.values.get("files") or ()), inputs.recorded))
    return rows
