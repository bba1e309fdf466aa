"""An image's SBOM, CycloneDX JSON, put together from the parts of its chain of layers.

Every component comes from a `LayerPart` (`parts.py`), so the document depends
only on what the images hold: the same image gives the same SBOM, whether it
was just built or came from the cache. Its serial number is derived from the
image id and its timestamp is the image's creation time, for that reason.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Sequence
from typing import Any

from cyclonedx.model import HashAlgorithm, HashType, Property
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentScope, ComponentType
from cyclonedx.output.json import JsonV1Dot6
from packageurl import PackageURL

from rolebake import __version__
from rolebake.attest.parts import DebPackage, LayerPart

SCHEMA_VERSION = "1.6"
_BASE = "base"  # the layer a package of the base image is said to come from


def sbom_document(chain: Sequence[LayerPart], name: str) -> dict[str, Any]:
    """The CycloneDX 1.6 SBOM of `chain[0]`, as JSON data.

    Args:
        chain: the image's part first, then its parent's, down to the base image's.
        name: what the image is called (its layer id: `web`, `web:dev`).

    Components: every installed Debian package of the image (purl, source
    package, and the layer that installed that version: `rolebake:layer`);
    the roles, collections and requirements each layer applied; the base image;
    and, scope `excluded` (used to build, not in the image), the lent toolchain
    and the provisioner.
    """
    image = chain[0]
    bom = Bom(serial_number=uuid.uuid5(uuid.NAMESPACE_URL, f"rolebake-sbom:{image.image_id}"))
    bom.metadata.timestamp = _timestamp(image.created)
    root = Component(type=ComponentType.CONTAINER, name=name, version=image.image_id,
                     bom_ref=image.image_id, hashes=[_sha256(image.image_id)],
                     properties=[Property(name="rolebake:version", value=__version__)])
    bom.metadata.component = root
    components: list[Component] = []
    introduced = _introduced_by(chain)
    for package in image.packages:
        components.append(_deb(package, image.distro, introduced.get(
            (package.name, package.version, package.architecture), _BASE)))
    seen: set[str] = set()
    for part in chain:
        if part.layer is None:
            components.append(_base_component(part))
            continue
        for item in _applied(part):
            if str(item.bom_ref) not in seen:
                seen.add(str(item.bom_ref))
                components.append(item)
    for component in components:
        bom.components.add(component)
    bom.register_dependency(root, components)
    return dict(json.loads(JsonV1Dot6(bom).output_as_string()))


def _introduced_by(chain: Sequence[LayerPart]) -> dict[tuple[str, str, str], str]:
    """For each package version, the lowest layer of the chain that has it."""
    found: dict[tuple[str, str, str], str] = {}
    for part in reversed(chain):  # base first
        for package in part.packages:
            found.setdefault((package.name, package.version, package.architecture),
                             part.layer or _BASE)
    return found


def deb_purl(package: DebPackage, distro: str) -> str:
    """`pkg:deb/debian/nginx@1.22.1-9?arch=amd64&distro=debian-12`."""
    namespace = distro.split("-", 1)[0] if distro else "debian"
    qualifiers = {"arch": package.architecture} if package.architecture else {}
    if distro:
        qualifiers["distro"] = distro
    return str(PackageURL(type="deb", namespace=namespace, name=package.name,
                          version=package.version, qualifiers=qualifiers))


def _deb(package: DebPackage, distro: str, layer: str) -> Component:
    purl = deb_purl(package, distro)
    properties = [Property(name="rolebake:layer", value=layer),
                  Property(name="syft:package:type", value="deb")]
    if package.source != package.name or package.source_version:
        source = package.source + (f" ({package.source_version})"
                                   if package.source_version else "")
        properties.append(Property(name="debian:source", value=source))
    return Component(type=ComponentType.LIBRARY, name=package.name, version=package.version,
                     purl=PackageURL.from_string(purl), bom_ref=purl, properties=properties)


def _applied(part: LayerPart) -> list[Component]:
    layer = part.layer or _BASE
    found: list[Component] = []
    for role in part.roles:
        found.append(Component(
            type=ComponentType.APPLICATION, name=role.name, group="ansible-role",
            bom_ref=f"ansible-role:{role.path}@sha256:{role.digest}",
            hashes=[HashType(alg=HashAlgorithm.SHA_256, content=role.digest)],
            properties=[Property(name="rolebake:layer", value=layer),
                        Property(name="rolebake:path", value=role.path),
                        Property(name="rolebake:files", value=str(role.files))]))
    for tool in part.tools:
        group = "ansible-collection" if tool.kind.endswith("collection") else "ansible-role"
        properties = [Property(name="rolebake:layer", value=layer),
                      Property(name="rolebake:kind", value=tool.kind)]
        if tool.content:
            properties.append(Property(name="rolebake:content-digest", value=tool.content))
        found.append(Component(type=ComponentType.APPLICATION, name=tool.name, group=group,
                               version=tool.version, properties=properties,
                               bom_ref=f"{tool.kind}:{tool.name}@{tool.version}"
                                       f"{'#' + tool.content if tool.content else ''}"))
    for path, digest in sorted(part.files.items()):
        found.append(Component(type=ComponentType.FILE, name=path,
                               bom_ref=f"file:{path}@{digest}",
                               properties=[Property(name="rolebake:layer", value=layer),
                                           Property(name="rolebake:digest", value=digest)]))
    for what, text in (("toolchain", part.runtime), ("provisioner", part.provisioner)):
        if text:
            found.append(Component(type=ComponentType.APPLICATION, name=text,
                                   scope=ComponentScope.EXCLUDED,
                                   bom_ref=f"rolebake-{what}:{text}",
                                   properties=[Property(name="rolebake:kind", value=what),
                                               Property(name="rolebake:lent", value="true")]))
    return found


def _base_component(part: LayerPart) -> Component:
    name = part.refs[0] if part.refs else part.image_id
    return Component(type=ComponentType.CONTAINER, name=name, version=part.image_id,
                     bom_ref=f"base-image:{part.image_id}", hashes=[_sha256(part.image_id)],
                     properties=[Property(name="rolebake:kind", value="base image"),
                                 *(Property(name="rolebake:ref", value=r) for r in part.refs)])


def _sha256(image_id: str) -> HashType:
    return HashType(alg=HashAlgorithm.SHA_256, content=image_id.rsplit(":", 1)[-1])


def _timestamp(created: str) -> dt.datetime:
    """The image's creation time (the engine's RFC 3339 with nanoseconds), else the epoch."""
    text = created.rstrip("Z").split(".")[0]
    try:
        return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)
    except ValueError:
        return dt.datetime.fromtimestamp(0, dt.UTC)
