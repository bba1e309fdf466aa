"""SBOM and provenance of real builds (issue 22): read from the images, kept, written, pushed.

The SBOM of `web` lists nginx (the version dpkg has in the image) and the `web` role
with its digest, and is valid CycloneDX; the provenance names the base image id, the spec
and every input the cache key hashed, and its subject is the image id; a cache-hit
rebuild gives the same SBOM; `--attest DIR` writes both; after `--push` both are read
back from the loopback registry under cosign's tags.
"""

from __future__ import annotations

import base64
import contextlib
import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from tests.conftest import run_cli
from tests.integration.conftest import TestProject, copy_project
from tests.integration.engines import REGISTRY
from tests.integration.tinyproject import remove_project_images

pytestmark = pytest.mark.integration


@dataclass
class Built:
    project: TestProject
    report: dict
    attest_dir: Path

    def layer(self, name: str) -> dict:
        return next(r for r in self.report["layers"] if r["layer"] == name)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory,
          engine: docker.DockerClient) -> Iterator[Built]:
    """`web` (and `base` under it) built once, with --attest."""
    import uuid

    root = tmp_path_factory.mktemp("attest") / "project"
    root.mkdir()
    token = uuid.uuid4().hex[:8]
    copy_project(root, token)
    project = TestProject(root=root, token=token, client=engine)
    attest_dir = root.parent / "attestations"
    # A var of its own: `web` is built here (its provenance is this build's), `base` may hit.
    project.edit_spec("web", vars={"web_port": 8080, "attest_nonce": uuid.uuid4().hex})
    try:
        result = run_cli("build", "web", "--json", "--attest", str(attest_dir), cwd=root)
        assert result.rc == 0, result.output
        yield Built(project, json.loads(result.stdout), attest_dir)
    finally:
        remove_project_images(engine, project)


def _cli_json(built: Built, *args: str) -> dict:
    result = run_cli(*args, cwd=built.project.root)
    assert result.rc == 0, result.output
    return json.loads(result.stdout)


def _component(sbom: dict, name: str, group: str | None = None) -> dict:
    found = [c for c in sbom["components"] if c["name"] == name
             and (group is None or c.get("group") == group)]
    assert found, f"{name} is not in the SBOM"
    return found[0]


def test_the_sbom_of_web_lists_nginx_and_the_web_role(built: Built,
                                                      engine: docker.DockerClient) -> None:
    sbom = _cli_json(built, "sbom", "web")
    image_id = built.layer("web")["image_id"]
    assert sbom["metadata"]["component"]["version"] == image_id
    # nginx's version as dpkg in the image says it, not as the build remembers it.
    # (not run(remove=True): its output can be lost when the container goes first)
    container = engine.containers.run(image_id, ["-W", "-f=${Version}", "nginx"], detach=True,
                                      entrypoint=["dpkg-query"], user="root")
    try:
        assert container.wait(timeout=60)["StatusCode"] == 0
        version = container.logs(stderr=False).decode()
    finally:
        container.remove(force=True)
    nginx = _component(sbom, "nginx")
    assert nginx["version"] == version
    # purl's rule: `+` in a version is percent-encoded
    assert nginx["purl"] == (f"pkg:deb/debian/nginx@{version.replace('+', '%2B')}"
                             "?arch=amd64&distro=debian-12")
    assert {"name": "rolebake:layer", "value": "web"} in nginx["properties"]
    role = _component(sbom, "web", group="ansible-role")
    labels = engine.images.get(image_id).labels
    inputs = json.loads(labels["rolebake.inputs"])
    assert any(p.startswith("roles/web/") for p in inputs["files"])
    assert role["hashes"][0]["alg"] == "SHA-256" and len(role["hashes"][0]["content"]) == 64
    assert _component(sbom, "common", group="ansible-role")  # from the base layer below
    base = [c for c in sbom["components"] if c["type"] == "container"]
    assert base and base[0]["version"] == _base_id(engine, built)
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(json.dumps(sbom)) is None
    # --attest wrote the same documents
    assert json.loads((built.attest_dir / "web.cdx.json").read_text()) == sbom
    assert (built.attest_dir / "base.cdx.json").is_file()


def _base_id(engine: docker.DockerClient, built: Built) -> str:
    """The debootstrap base `base` was built on (its tag may have moved since)."""
    labels = engine.images.get(built.layer("base")["image_id"]).labels
    return str(json.loads(labels["rolebake.inputs"])["parent"])


def test_the_provenance_names_the_base_the_spec_and_every_keyed_input(
        built: Built, engine: docker.DockerClient) -> None:
    statement = _cli_json(built, "provenance", built.project.tag("web"))
    image_id = built.layer("web")["image_id"]
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    assert statement["subject"][0]["digest"] == {"sha256": image_id.split(":")[1]}
    definition = statement["predicate"]["buildDefinition"]
    assert definition["externalParameters"]["spec"]["path"] == "images/web.yml"
    assert definition["externalParameters"]["spec"]["content"]["from"] == "base"
    deps = {d["name"]: d for d in definition["resolvedDependencies"]}
    assert deps["base image"]["digest"] == {"sha256": _base_id(engine, built).split(":")[1]}
    assert deps["parent image"]["digest"] == {
        "sha256": built.layer("base")["image_id"].split(":")[1]}
    inputs = json.loads(engine.images.get(image_id).labels["rolebake.inputs"])
    for path, digest in inputs["files"].items():
        assert deps[path]["digest"] == {"sha256-128": digest.split(":")[1]}
    for name in inputs["vars"]:
        assert f"var {name}" in deps
    for name in inputs["tools"]:
        assert name in deps
    assert definition["internalParameters"]["cacheKey"] == built.layer("web")["cache_key"]
    assert not built.layer("web")["cached"]
    run = statement["predicate"]["runDetails"]
    assert run["metadata"]["invocationId"] == built.report["build_id"]
    verification = run["byproducts"][0]["annotations"]
    assert verification["ok"] and verification["passed"] == verification["checks"] > 1
    assert json.loads((built.attest_dir / "web.intoto.json").read_text()) == statement


def test_a_cache_hit_rebuild_gives_the_same_sbom(built: Built) -> None:
    before = _cli_json(built, "sbom", "web")
    again = run_cli("build", "web", "--json", cwd=built.project.root)
    assert again.rc == 0, again.output
    layers = {r["layer"]: r for r in json.loads(again.stdout)["layers"]}
    assert layers["web"]["cached"] and layers["web"]["steps"]["attest"] == "ok"
    assert _cli_json(built, "sbom", "web") == before
    # Made again from the images alone (nothing kept): the same document.
    import shutil
    shutil.rmtree(built.project.root / ".rolebake" / "attest")
    third = run_cli("build", "web", "--json", cwd=built.project.root)
    assert third.rc == 0, third.output
    assert _cli_json(built, "sbom", "web") == before


def test_nothing_recorded_is_exit_2(built: Built) -> None:
    result = run_cli("sbom", "sha256:" + "0" * 64, cwd=built.project.root)
    assert result.rc == 2 and "no SBOM or provenance is recorded" in result.stderr


def _get(url: str, accept: str | None = None) -> bytes:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return bytes(response.read())


def test_push_puts_both_next_to_the_image_in_the_registry(
        built: Built, registry: str, engine: docker.DockerClient) -> None:
    repo = f"rbt-{built.project.token}/attested"
    tag = f"{registry}/{repo}:1"
    built.project.edit_spec("web", tags=[tag])
    try:
        result = run_cli("build", "web", "--push", "--json", cwd=built.project.root)
        assert result.rc == 0, result.output
        report = json.loads(result.stdout)
        web = next(r for r in report["layers"] if r["layer"] == "web")
        manifest = _get(f"http://{REGISTRY}/v2/{repo}/manifests/1",
                        "application/vnd.docker.distribution.manifest.v2+json")
        import hashlib
        digest = hashlib.sha256(manifest).hexdigest()
        found = {}
        for suffix in ("sbom", "att"):
            art = json.loads(_get(f"http://{REGISTRY}/v2/{repo}/manifests/sha256-{digest}.{suffix}",
                                  "application/vnd.oci.image.manifest.v1+json"))
            layer = art["layers"][0]
            found[suffix] = (layer["mediaType"],
                             json.loads(_get(f"http://{REGISTRY}/v2/{repo}/blobs/"
                                             f"{layer['digest']}")))
        media, sbom = found["sbom"]
        assert media == "application/vnd.cyclonedx+json"
        assert sbom["metadata"]["component"]["version"] == web["image_id"]
        media, envelope = found["att"]
        assert media == "application/vnd.dsse.envelope.v1+json" and envelope["signatures"] == []
        statement = json.loads(base64.b64decode(envelope["payload"]))
        subjects = {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}
        assert subjects["web"] == web["image_id"].split(":")[1]
        assert subjects[f"{registry}/{repo}"] == digest
        assert f"{registry}/{repo}:sha256-{digest}.sbom" in web["attested"]
    finally:
        for image in engine.images.list():
            for name in image.tags:
                if name.startswith(f"{registry}/{repo}"):
                    with contextlib.suppress(docker.errors.APIError):
                        engine.images.remove(name, force=True)


def test_a_sensitive_var_is_in_neither_document(tmp_path: Path,
                                                engine: docker.DockerClient) -> None:
    """Its value appears nowhere: stdout of `sbom`/`provenance`, the store, --attest files."""
    import uuid

    from tests.integration.tinyproject import new_project, set_vars, tiny_spec

    project = new_project(tmp_path / "project", engine)
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    try:
        spec = tiny_spec(project, "a", sensitive_vars=["api_token"])
        set_vars(project, spec, api_token=secret)
        out = tmp_path / "out"
        built = run_cli("build", spec, "--attest", str(out), cwd=project.root)
        assert built.rc == 0, built.output
        texts = [run_cli(kind, spec, cwd=project.root) for kind in ("sbom", "provenance")]
        assert all(t.rc == 0 for t in texts), [t.output for t in texts]
        statement = json.loads(texts[1].stdout)
        spec_vars = statement["predicate"]["buildDefinition"]["externalParameters"]["spec"][
            "content"]["vars"]
        assert spec_vars["api_token"] == "<sensitive>" and "tiny_nonce" in spec_vars
        deps = {d["name"]: d for d in
                statement["predicate"]["buildDefinition"]["resolvedDependencies"]}
        assert "blake2b-128-keyed" in deps["var api_token"]["digest"]
        files = [*out.glob("*.json"), *(project.root / ".rolebake" / "attest").rglob("*.json")]
        assert len(files) >= 4
        for text in [*(t.output for t in texts), *(p.read_text() for p in files)]:
            assert secret not in text
    finally:
        remove_project_images(engine, project)
