"""Where an image's SBOM, provenance and layer part live: `.rolebake/attest/<image id>/`.

Folders 0700, files 0600 (the project's private state), keyed by image id: an
id names an image's content, so what is kept for it stays true for as long as
the image exists, and a cache hit finds its layer's part here.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

from rolebake import redact
from rolebake.attest.parts import LayerPart
from rolebake.spec import Project
from rolebake.state import write_private

PART = "layer.json"
SBOM = "sbom.cdx.json"
PROVENANCE = "provenance.intoto.json"
_HEX = re.compile(r"^[0-9a-f]{64}$")


class Store:
    """The attestations of one project's images."""

    def __init__(self, project: Project) -> None:
        """Keep them below `project`'s private state folder."""
        self.project = project

    @property
    def root(self) -> Path:
        """`.rolebake/attest` (not made until something is written)."""
        return self.project.state_dir / "attest"

    def part(self, image_id: str) -> LayerPart | None:
        """The stored part of `image_id`, or None."""
        data = self._read(image_id, PART)
        return LayerPart.from_dict(data) if data is not None else None

    def sbom(self, image_id: str) -> dict[str, Any] | None:
        """The stored SBOM of `image_id`, or None."""
        return self._read(image_id, SBOM)

    def provenance(self, image_id: str) -> dict[str, Any] | None:
        """The stored provenance statement of `image_id`, or None."""
        return self._read(image_id, PROVENANCE)

    def save_part(self, part: LayerPart) -> None:
        """Keep a layer part."""
        self._write(part.image_id, PART, part.to_dict())

    def save_sbom(self, image_id: str, document: dict[str, Any]) -> None:
        """Keep an SBOM."""
        self._write(image_id, SBOM, document)

    def save_provenance(self, image_id: str, document: dict[str, Any]) -> None:
        """Keep a provenance statement."""
        self._write(image_id, PROVENANCE, document)

    def ids(self) -> list[str]:
        """Every image id something is kept for."""
        if not self.root.is_dir():
            return []
        return sorted(f"sha256:{p.name}" for p in self.root.iterdir() if _HEX.match(p.name))

    def _folder(self, image_id: str) -> Path:
        digest = image_id.rsplit(":", 1)[-1]
        if not _HEX.match(digest):
            raise ValueError(f"not an image id: {image_id!r}")
        return self.root / digest

    def _read(self, image_id: str, name: str) -> dict[str, Any] | None:
        try:
            data = json.loads((self._folder(image_id) / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _write(self, image_id: str, name: str, document: dict[str, Any]) -> None:
        folder = self.project.private_dir("attest", self._folder(image_id).name)
        # Redacted before serialising (DESIGN.md invariant 6): JSON escaping would hide a
        # value from a redactor run over the text.
        text = json.dumps(redact.data(document), indent=2, sort_keys=True) + "\n"
        # One scratch name per writer: two layers of one build may write their base's part.
        scratch = folder / f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        write_private(scratch, text)
        os.replace(scratch, folder / name)  # a reader never sees half a document
