"""One image's part of an SBOM: its Debian packages and what its layer applied, read from the image.

A part is made from the committed image itself, never from the build's memory:
the packages from its dpkg database (read through a created, never started
container), the roles, collections and requirements from the cache key's inputs
on its `rolebake.inputs` label (the digests the key was made of, reused as they
are). Parts are kept by image id (`store.py`), so a cache hit reuses its layer's
part, and an image's SBOM is put together from the parts of its chain of layers.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any

from rolebake.cache import LayerInputs
from rolebake.engine import Engine, ImageInfo
from rolebake.image import CACHE_KEY_LABEL, INPUTS_LABEL, LAYER_LABEL, SPEC_LABEL
from rolebake.release import RELEASE_LABEL, Release, release_of
from rolebake.rootfs import cache_dir

DPKG_STATUS = "/var/lib/dpkg/status"
PART_FORMAT = 1


@dataclass(frozen=True)
class DebPackage:
    """One installed Debian package, as dpkg records it."""

    name: str
    version: str
    architecture: str
    source: str  # the source package's name (dpkg's Source field, else the package's)
    source_version: str = ""  # when the Source field names one ("src (1.2-3)")

    @property
    def key(self) -> tuple[str, str]:
        """What tells two packages apart in one image: name and architecture."""
        return self.name, self.architecture


def parse_dpkg_status(text: str) -> tuple[DebPackage, ...]:
    """The installed packages of a dpkg status file (`Status: install ok installed`), by name."""
    found: list[DebPackage] = []
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t") or ":" not in line:
                continue  # continuation lines (descriptions, conffiles) say nothing we keep
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
        status = fields.get("Status", "").split()
        if not fields.get("Package") or status[-1:] != ["installed"]:
            continue  # removed with its config left (rc), half-installed: not in the image
        source, _, rest = fields.get("Source", "").partition(" ")
        found.append(DebPackage(
            name=fields["Package"], version=fields.get("Version", ""),
            architecture=fields.get("Architecture", ""), source=source or fields["Package"],
            source_version=rest.strip("() ")))
    return tuple(sorted(found, key=lambda p: p.key))


@dataclass(frozen=True)
class Role:
    """A role a layer applied, with the digest of its keyed files."""

    name: str
    path: str  # project-relative folder
    digest: str  # sha256 over the cache key's file digests of the role (see `roles_of`)
    files: int


@dataclass(frozen=True)
class Tool:
    """A collection or installed requirement a layer used, as the cache key names it."""

    kind: str  # collection | requirement role | requirement collection
    name: str
    version: str
    content: str = ""  # an installed requirement's tree digest (the key's, a prefix)


def roles_of(files: Mapping[str, str]) -> tuple[Role, ...]:
    """The roles among a layer's keyed files (`.../roles/<name>/...`), each with its digest.

    The digest is sha256 over the role's entries of the cache key (`mode:sha256`
    of each file, by its path inside the role): the same digests the key hashes,
    so a role's digest changes exactly when the key's view of it does.
    """
    grouped: dict[str, dict[str, str]] = {}
    for path, digest in files.items():
        parts = PurePosixPath(path).parts
        for index in range(len(parts) - 2):
            if parts[index] == "roles" and index + 2 < len(parts):
                folder = "/".join(parts[:index + 2])
                grouped.setdefault(folder, {})["/".join(parts[index + 2:])] = digest
                break
    return tuple(Role(name=PurePosixPath(folder).name, path=folder,
                      digest=hashlib.sha256(_canonical(entries).encode()).hexdigest(),
                      files=len(entries))
                 for folder, entries in sorted(grouped.items()))


def tools_of(tools: Mapping[str, str]) -> tuple[Tool, ...]:
    """Collections and requirements among a layer's key inputs (`tools`)."""
    found: list[Tool] = []
    for name, value in sorted(tools.items()):
        if name.startswith("collection "):
            version = str(value).removesuffix(" (requirements.yml)")
            found.append(Tool("collection", name.split(" ", 1)[1], version))
        elif name.startswith("requirement "):
            _, kind, item = name.split(" ", 2)
            version, _, content = str(value).partition(" content:")
            found.append(Tool(f"requirement {kind}", item, version, content))
    return tuple(found)


@dataclass(frozen=True)
class LayerPart:
    """What one image holds and what its layer applied; the unit an SBOM is made of."""

    image_id: str
    layer: str | None  # None: an image rolebake did not build (the base)
    spec: str | None
    parent: str | None  # the parent image id (None for the base)
    refs: tuple[str, ...]  # names the image had when the part was made (the base's reference)
    created: str
    distro: str  # the purl's distro qualifier: debian-12
    packages: tuple[DebPackage, ...]
    roles: tuple[Role, ...] = ()
    tools: tuple[Tool, ...] = ()
    files: Mapping[str, str] = field(default_factory=dict)  # other keyed files: playbooks, vars
    provisioner: str = ""
    runtime: str = ""
    cache_key: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as stored."""
        data = asdict(self)
        data["format"] = PART_FORMAT
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerPart | None:
        """Read a stored part back; None when it is of another format or unreadable."""
        if data.get("format") != PART_FORMAT:
            return None
        try:
            return cls(
                image_id=data["image_id"], layer=data["layer"], spec=data["spec"],
                parent=data["parent"], refs=tuple(data["refs"]), created=data["created"],
                distro=data["distro"],
                packages=tuple(DebPackage(**p) for p in data["packages"]),
                roles=tuple(Role(**r) for r in data["roles"]),
                tools=tuple(Tool(**t) for t in data["tools"]), files=dict(data["files"]),
                provisioner=data["provisioner"], runtime=data["runtime"],
                cache_key=data["cache_key"])
        except (KeyError, TypeError):
            return None


def read_part(engine: Engine, image: ImageInfo, *, refs: Iterable[str] = (),
              labels: Mapping[str, str] | None = None) -> LayerPart:
    """Make an image's part from the image: its dpkg database and its labels.

    Args:
        engine: the engine holding the image.
        image: the image (a layer rolebake committed, or a base).
        refs: names to record besides the image's tags (the `from:` reference of a base).
        labels: for the container that reads the dpkg database (the build's id).

    The dpkg database is read through a created, never started container,
    removed right after; an image without one (not Debian) has no packages.
    """
    container_labels = labels
    labels = image.labels
    inputs = LayerInputs.from_label(labels.get(INPUTS_LABEL))
    release = Release.from_label(labels.get(RELEASE_LABEL)) or release_of(
        engine, image, cache_dir() / "releases")
    short = image.id.rsplit(":", 1)[-1][:12]
    status = engine.read_files(image.id, [DPKG_STATUS],
                               name=f"rolebake-sbom-{short}-{uuid.uuid4().hex[:8]}",
                               labels=container_labels)[DPKG_STATUS]
    packages = parse_dpkg_status(status.decode("utf-8", "replace")) if status else ()
    names = tuple(dict.fromkeys([*refs, *image.tags]))
    common: dict[str, Any] = {"image_id": image.id, "refs": names, "created": image.created,
              "distro": release.key if release else "", "packages": packages}
    if inputs is None or not labels.get(LAYER_LABEL):
        return LayerPart(layer=None, spec=None, parent=None, **common)
    values = inputs.values
    files: Mapping[str, str] = values.get("files") or {}
    roles = roles_of(files)
    in_roles = {r.path + "/" for r in roles}
    return LayerPart(
        layer=labels[LAYER_LABEL], spec=labels.get(SPEC_LABEL), parent=values.get("parent"),
        roles=roles, tools=tools_of(values.get("tools") or {}),
        files={p: d for p, d in files.items() if not any(p.startswith(r) for r in in_roles)},
        provisioner=str(values.get("provisioner") or ""),
        runtime=str(values.get("runtime") or ""),
        cache_key=labels.get(CACHE_KEY_LABEL, inputs.key), **common)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
