"""How an image was made: an in-toto statement with the SLSA provenance v1 predicate.

The statement is plain JSON data built from what the build recorded (the cache
key's inputs, the spec as loaded, the verification result). It is unsigned: a
signer wraps it in a DSSE envelope (`envelope`), whose `signatures` list is
where a signature goes; `cosign attest --predicate` or any DSSE signer can sign
the same payload later without changing it.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rolebake import __version__

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
# rolebake's own URIs (URNs: names, nothing to fetch): what a layer build is, who built it.
BUILD_TYPE = "urn:rolebake:build-type:layer:v1"
BUILDER_ID = "urn:rolebake:builder:local"
# The cache key's file, var and config digests are the first 128 bits of a sha256
# (the `rolebake.inputs` label's); they are given as they are, under this name.
KEY_DIGEST = "sha256-128"


@dataclass(frozen=True)
class BuildRecord:
    """What the build knew about one layer when it was verified; the statement's source."""

    image_id: str
    name: str  # the layer id
    spec: Mapping[str, Any]  # the spec as loaded, redacted (sensitive values as digests)
    spec_path: str  # project-relative
    variant: str | None
    inputs: Mapping[str, Any]  # the cache key's inputs (rolebake.inputs)
    cache_key: str
    base: tuple[str, str]  # (reference, id) of the chain's base image
    revision: str | None  # git commit, `-dirty` when the tree was not clean
    build_id: str
    started: float  # seconds since the epoch
    finished: float
    provisioner: str  # e.g. "ansible-core 2.19.15"
    options: Mapping[str, Any] = field(default_factory=dict)
    verify: Mapping[str, Any] | None = None  # VerifyResult.to_dict()
    repo_digests: Sequence[str] = ()  # `repo@sha256:...` once pushed
    # What Ansible's own process read in the project during the build (observed.py):
    # files, and folders (ending in /) it listed.
    observed: Sequence[str] = ()


def statement(record: BuildRecord) -> dict[str, Any]:
    """The in-toto v1 statement, SLSA provenance v1 predicate, for `record`'s image."""
    return {
        "_type": STATEMENT_TYPE,
        "subject": subjects(record.image_id, record.name, record.repo_digests),
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "spec": {"path": record.spec_path, "content": record.spec},
                    "layer": record.name,
                    **({"variant": record.variant} if record.variant else {}),
                    "options": dict(record.options),
                },
                "internalParameters": {
                    "cacheKey": record.cache_key,
                    "provisioner": record.inputs.get("provisioner", ""),
                    "runtime": record.inputs.get("runtime", ""),
                    "rolebake": record.inputs.get("rolebake", ""),
                    "plays": list(record.inputs.get("plays") or ()),
                    "notes": list(record.inputs.get("notes") or ()),
                },
                "resolvedDependencies": resolved_dependencies(record),
            },
            "runDetails": {
                "builder": {"id": BUILDER_ID, "version": {
                    "rolebake": __version__, "provisioner": record.provisioner}},
                "metadata": {"invocationId": record.build_id,
                             "startedOn": _time(record.started),
                             "finishedOn": _time(record.finished)},
                "byproducts": _byproducts(record.verify),
            },
        },
    }


def subjects(image_id: str, name: str, repo_digests: Sequence[str]) -> list[dict[str, Any]]:
    """The image by its id (the config digest), then each repository digest it was pushed as."""
    found = [{"name": name, "digest": {"sha256": image_id.rsplit(":", 1)[-1]},
              "annotations": {"kind": "image id (config digest)"}}]
    for ref in repo_digests:
        repository, _, digest = ref.partition("@")
        found.append({"name": repository, "digest": {"sha256": digest.rsplit(":", 1)[-1]},
                      "annotations": {"kind": "manifest digest"}})
    return found


def with_repo_digests(document: Mapping[str, Any], repo_digests: Sequence[str]) -> dict[str, Any]:
    """The statement with the image's repository digests among its subjects (after a push)."""
    data = json.loads(json.dumps(document))
    first = data["subject"][0]
    data["subject"] = subjects("sha256:" + first["digest"]["sha256"], first["name"],
                               sorted({*repo_digests, *(
                                   f"{s['name']}@sha256:{s['digest']['sha256']}"
                                   for s in data["subject"][1:])}))
    return dict(data)


def resolved_dependencies(record: BuildRecord) -> list[dict[str, Any]]:
    """The cache key's inputs with their digests, the parent and base images, the project."""
    inputs = record.inputs
    deps: list[dict[str, Any]] = []
    parent = str(inputs.get("parent") or "")
    base_ref, base_id = record.base
    if parent and parent != base_id:
        deps.append({"name": "parent image", "digest": _image_digest(parent)})
    deps.append({"name": "base image", "uri": f"docker-image:{base_ref}",
                 "digest": _image_digest(base_id), "annotations": {"reference": base_ref}})
    if record.revision:
        commit = record.revision.removesuffix("-dirty")
        deps.append({"name": "project", "digest": {"gitCommit": commit},
                     "annotations": {"clean": not record.revision.endswith("-dirty")}})
    seen = set(record.observed)
    for path, value in sorted((inputs.get("files") or {}).items()):
        mode, _, digest = str(value).partition(":")
        deps.append({"name": path, "uri": f"file:{path}", "digest": _key_digest(digest),
                     "annotations": {"kind": "file", "mode": mode,
                                     **({"observed": path in seen} if seen else {})}})
    # Read by Ansible during the build but not found by the static walk: keyed since.
    for path, value in sorted((inputs.get("observed") or {}).items()):
        kind, _, digest = str(value).partition(":")
        listing = kind == "list"
        deps.append({"name": path, "uri": f"file:{path}",
                     "digest": _key_digest("" if digest == "missing" else digest),
                     "annotations": {"kind": "observed listing" if listing else "observed file",
                                     **({"missing": True} if digest == "missing" or
                                        kind == "missing" else {}),
                                     **({} if listing or kind == "missing" else {"mode": kind})}})
    for section, kind in (("vars", "var"), ("config", "config"), ("settings", "setting")):
        for name, digest in sorted((inputs.get(section) or {}).items()):
            deps.append({"name": f"{kind} {name}", "digest": _key_digest(str(digest)),
                         "annotations": {"kind": kind}})
    for name, value in sorted((inputs.get("tools") or {}).items()):
        deps.append({"name": name,
                     "digest": {"sha256": hashlib.sha256(str(value).encode()).hexdigest()},
                     "annotations": {"kind": "tool", "value": str(value)}})
    return deps


def envelope(document: Mapping[str, Any]) -> dict[str, Any]:
    """A DSSE envelope around the statement, unsigned: `signatures` is where signing adds one."""
    payload = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    return {"payloadType": PAYLOAD_TYPE, "payload": base64.b64encode(payload).decode(),
            "signatures": []}


def _byproducts(verify: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    if verify is None:
        return []
    cases = list(verify.get("cases") or ())
    suites = sorted({str(c.get("suite")) for c in cases})
    passed = [c for c in cases if c.get("outcome") == "passed"]
    summary = {"ok": bool(verify.get("ok")), "suites": suites, "checks": len(cases),
               "passed": len(passed),
               "cases": [f"{c.get('suite')}::{c.get('name')} {c.get('outcome')}" for c in cases]}
    text = json.dumps(summary, sort_keys=True, separators=(",", ":"))
    return [{"name": "verification", "mediaType": "application/json",
             "digest": {"sha256": hashlib.sha256(text.encode()).hexdigest()},
             "annotations": summary}]


def _image_digest(image_id: str) -> dict[str, str]:
    return {"sha256": image_id.rsplit(":", 1)[-1]}


def _key_digest(digest: str) -> dict[str, str]:
    if digest.startswith("sensitive:"):
        # Keyed with the project's secret salt: a digest that cannot be checked by guessing.
        return {"blake2b-128-keyed": digest.split(":", 1)[1]}
    return {KEY_DIGEST: digest}


def _time(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z")
