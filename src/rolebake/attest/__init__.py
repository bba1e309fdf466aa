"""What is in an image and how it was made: its SBOM and its provenance, kept and published.

- `parts`: one image's part (its Debian packages, what its layer applied), read
  from the committed image; kept by image id, so a cache hit reuses it.
- `sbom`: the CycloneDX SBOM of an image, from the parts of its chain of layers.
- `provenance`: the in-toto statement with the SLSA provenance v1 predicate.
- `store`: `.rolebake/attest/<image id>/` (0700/0600).

`Attestor` is what the build's attest step and the CLI use.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rolebake import redact
from rolebake.attest.parts import DebPackage, LayerPart, parse_dpkg_status, read_part
from rolebake.attest.provenance import (
    PREDICATE_TYPE,
    BuildRecord,
    envelope,
    statement,
    with_repo_digests,
)
from rolebake.attest.store import Store
from rolebake.engine import BUILD_ID_LABEL, Engine, ImageInfo
from rolebake.errors import InputError
from rolebake.image import CACHE_KEY_LABEL, INPUTS_LABEL, LAYER_LABEL
from rolebake.plan import Layer
from rolebake.registry import Artifact, RegistryClient, artifact_tag, split_registry
from rolebake.spec import Project
from rolebake.state import write_private
from rolebake.yamlfile import Vaulted, load_yaml, plain

__all__ = ["Attestor", "BuildRecord", "DebPackage", "LayerPart", "Published", "Store",
           "build_record", "deb_purl", "envelope", "parse_dpkg_status", "recorded",
           "sbom_document", "spec_content", "statement"]

# cyclonedx takes a tenth of a second to import, and a build whose layers are all
# cached (or whose SBOMs are stored) never makes an SBOM: `sbom` is imported when
# one is made (docs/architecture.md, "The no-op path imports only what it runs").
_LAZY = {"deb_purl", "sbom_document"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from rolebake.attest import sbom

        return getattr(sbom, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


SBOM_MEDIA_TYPE = "application/vnd.cyclonedx+json"
DSSE_MEDIA_TYPE = "application/vnd.dsse.envelope.v1+json"
_MAX_CHAIN = 64  # layers; a parent loop in labels (hand-made images) stops here


@dataclass(frozen=True)
class Published:
    """Where a push put an image's SBOM and attestation."""

    sbom: str
    attestation: str


class Attestor:
    """Makes, keeps and publishes the SBOM and provenance of the images of one project."""

    def __init__(self, engine: Engine, project: Project, *, build_id: str | None = None) -> None:
        """Read images from `engine`; keep what is made in `project`'s private state.

        `build_id` labels the containers that read images (an interrupted build kills
        and `rolebake clean` finds its containers by it).
        """
        self.engine = engine
        self.project = project
        self.store = Store(project)
        self._labels = {BUILD_ID_LABEL: build_id} if build_id else {}

    # Making -------------------------------------------------------------------------

    def chain(self, image: ImageInfo, *, base_ref: str | None = None) -> list[LayerPart]:
        """The parts of `image` and of each image below it, down to the base; made if missing.

        Args:
            image: the image.
            base_ref: the `from:` reference of the chain's base, recorded in its part.
        """
        parts: list[LayerPart] = []
        current: ImageInfo | None = image
        while current is not None and len(parts) < _MAX_CHAIN:
            part = self.store.part(current.id)
            if part is None:
                part = read_part(self.engine, current, labels=self._labels, refs=(
                    [base_ref] if base_ref and not current.labels.get(LAYER_LABEL) else []))
                self.store.save_part(part)
            parts.append(part)
            if part.layer is None or not part.parent:
                break
            current = self.engine.image(part.parent)
        return parts

    def sbom(self, image: ImageInfo, *, base_ref: str | None = None) -> dict[str, Any]:
        """The image's SBOM: the stored one, else made from its chain and kept."""
        found = self.store.sbom(image.id)
        if found is not None:
            return found
        chain = self.chain(image, base_ref=base_ref)
        from rolebake.attest.sbom import sbom_document  # cyclonedx: see __getattr__

        document = sbom_document(chain, chain[0].layer or (image.tags or (image.id,))[0])
        self.store.save_sbom(image.id, document)
        return self.store.sbom(image.id) or document

    def layer(self, image: ImageInfo, layer: Layer, *, record: BuildRecord | None,
              base_ref: str | None, attest_dir: Path | None = None) -> tuple[str, str]:
        """Make and keep a verified layer's SBOM and provenance; also into `attest_dir`.

        Args:
            image: the layer's image, committed and verified (or a cache hit).
            layer: its layer.
            record: what this build knew (None for a cache hit: the stored
                provenance is reused, else one is made from the image's labels).
            base_ref: the `from:` reference of the chain's base.
            attest_dir: `--attest DIR`.

        Returns:
            The SBOM and provenance as stored (redacted JSON text).
        """
        self.sbom(image, base_ref=base_ref)
        provenance = self.store.provenance(image.id) if record is None else None
        if provenance is None:
            base = self.chain(image, base_ref=base_ref)[-1]
            where = (base_ref or (base.refs[0] if base.refs else ""), base.image_id)
            made = (replace(record, base=where) if record is not None
                    else self._record_from_labels(image, layer, where))
            self.store.save_provenance(image.id, statement(made))
            provenance = self.store.provenance(image.id)
        texts = (_text(self.store.sbom(image.id)), _text(provenance))
        if attest_dir is not None:
            self.write(attest_dir, layer.file_stem, *texts)
        return texts

    def _record_from_labels(self, image: ImageInfo, layer: Layer,
                            base: tuple[str, str]) -> BuildRecord:
        """A cache hit with no stored provenance (pulled from the cache repo): from its labels."""
        labels = image.labels
        inputs = json.loads(labels.get(INPUTS_LABEL) or "{}")
        created = _epoch(image.created)
        return BuildRecord(
            image_id=image.id, name=layer.id, spec=spec_content(self.project, layer),
            spec_path=self.project.relative(layer.spec.path), variant=layer.variant,
            inputs=inputs, cache_key=labels.get(CACHE_KEY_LABEL, ""),
            base=base, revision=labels.get("rolebake.git-revision"),
            build_id=labels.get(BUILD_ID_LABEL, ""), started=created, finished=created,
            provisioner=str(labels.get("rolebake.provisioner", "")),
            options={"note": "verified when it was built (it carries a cache tag); "
                             "this statement was made from its labels"})

    @staticmethod
    def write(folder: Path, stem: str, sbom_text: str, provenance_text: str) -> None:
        """`--attest DIR`: `<stem>.cdx.json` and `<stem>.intoto.json` in `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        write_private(folder / f"{stem}.cdx.json", sbom_text)
        write_private(folder / f"{stem}.intoto.json", provenance_text)

    # Publishing ---------------------------------------------------------------------

    def publish(self, image_id: str, tag: str, digest: str) -> Published:
        """Push the SBOM and attestation next to `tag` (pushed with manifest `digest`).

        The provenance's subjects gain the repository digest first. The tags are
        cosign's (`sha256-<digest>.sbom`, `.att`), so tools that look there find them.

        Raises:
            RegistryError: the registry does not answer or refuses.
        """
        repository = tag.rsplit(":", 1)[0] if ":" in tag.rsplit("/", 1)[-1] else tag
        sbom = self.store.sbom(image_id)
        provenance = self.store.provenance(image_id)
        if sbom is None or provenance is None:
            raise InputError(f"no SBOM or provenance is recorded for {image_id[:19]}")
        provenance = with_repo_digests(provenance, [f"{repository}@{digest}"])
        self.store.save_provenance(image_id, provenance)
        provenance = self.store.provenance(image_id) or provenance
        host, path = split_registry(repository)
        client = RegistryClient(self.engine, host)
        sbom_tag = artifact_tag(digest, "sbom")
        att_tag = artifact_tag(digest, "att")
        client.push_artifact(path, sbom_tag, Artifact(
            SBOM_MEDIA_TYPE, _text(sbom).encode(),
            annotations={"org.opencontainers.image.description": f"SBOM of {digest}"}))
        client.push_artifact(path, att_tag, Artifact(
            DSSE_MEDIA_TYPE, json.dumps(envelope(provenance)).encode(),
            layer_annotations={"predicateType": PREDICATE_TYPE,
                               # cosign's place for the signature: empty, unsigned
                               "dev.cosignproject.cosign/signature": ""},
            annotations={"org.opencontainers.image.description": f"provenance of {digest}"}))
        return Published(f"{repository}:{sbom_tag}", f"{repository}:{att_tag}")


def recorded(store: Store, name: str, *, refs: Sequence[str] = (),
             image_id_of: Callable[[str], str | None] = lambda _ref: None) -> str:
    """The image id `name` stands for, among the images something is recorded for.

    Args:
        store: the project's store.
        name: an image id (or a prefix of six or more hex digits), a tag, or a layer.
        refs: the tags of the layer `name` names, when it names one.
        image_id_of: the engine's id for a tag (None when it has none).

    Raises:
        InputError: nothing is recorded for it (exit 2).
    """
    hexes = [i.split(":", 1)[1] for i in store.ids()]
    wanted = name.removeprefix("sha256:")
    name_is_ref = True
    if len(wanted) >= 6 and all(c in "0123456789abcdef" for c in wanted):
        found = [h for h in hexes if h.startswith(wanted)]
        if len(found) == 1:
            return f"sha256:{found[0]}"
        if len(wanted) == 64:  # a whole id: no tag can name another image
            refs, name_is_ref = (), False
    for ref in [*refs, *([name] if name_is_ref else [])]:
        image_id = image_id_of(ref)
        if image_id is not None and image_id.split(":", 1)[-1] in hexes:
            return image_id
    raise InputError(f"no SBOM or provenance is recorded for {name}",
                     hint="`rolebake build` records them for every verified image it builds")


def spec_content(project: Project, layer: Layer) -> dict[str, Any]:
    """The spec file as loaded, sensitive vars and vaulted values as their digests only."""
    data = plain(load_yaml(layer.spec.path))
    if not isinstance(data, dict):
        return {}
    sensitive = set(layer.settings.sensitive)

    def hide(value: Any, key: str | None = None) -> Any:
        if isinstance(value, Vaulted):
            return "<vaulted>"
        if isinstance(value, Mapping):
            return {k: ("<sensitive>" if key == "vars" and k in sensitive else hide(v, str(k)))
                    for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [hide(v) for v in value]
        return value

    return dict(redact.data(hide(data)))


def build_record(project: Project, layer: Layer, *, image_id: str, inputs: Mapping[str, Any],
                 cache_key: str, revision: str | None, build_id: str, started: float,
                 provisioner: str, options: Mapping[str, Any],
                 verify: Mapping[str, Any] | None,
                 observed: Sequence[str] = ()) -> BuildRecord:
    """What a build knew about a verified layer (the base is filled in from its chain)."""
    return BuildRecord(
        image_id=image_id, name=layer.id, spec=spec_content(project, layer),
        spec_path=project.relative(layer.spec.path), variant=layer.variant, inputs=inputs,
        cache_key=cache_key, base=("", ""), revision=revision, build_id=build_id,
        started=started, finished=time.time(), provisioner=provisioner, options=options,
        verify=verify, observed=tuple(observed))


def _text(document: Mapping[str, Any] | None) -> str:
    return json.dumps(document or {}, indent=2, sort_keys=True) + "\n"


def _epoch(created: str) -> float:
    try:
        return dt.datetime.fromisoformat(created.rstrip("Z").split(".")[0]).replace(
            tzinfo=dt.UTC).timestamp()
    except ValueError:
        return 0.0
