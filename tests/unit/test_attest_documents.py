"""SBOM and provenance builders from recorded inputs, the store, and the attest step (fake engine).

The real images, the schema check of a real build and the registry round trip are in
tests/integration/test_attest.py.
"""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from rolebake import redact
from rolebake.attest import (
    BuildRecord,
    LayerPart,
    Store,
    envelope,
    parse_dpkg_status,
    recorded,
    sbom_document,
    statement,
)
from rolebake.attest.parts import Role, Tool, roles_of, tools_of
from rolebake.attest.provenance import with_repo_digests
from rolebake.errors import InputError
from rolebake.spec import Project
from tests.unit.fakes import FakeEngine
from tests.unit.test_builder import BASE, WEB, make_project, run_build

STATUS = """\
Package: nginx
Status: install ok installed
Architecture: amd64
Source: nginx (1.22.1-9)
Version: 1.22.1-9+b1
Description: small, powerful
 a continuation line: Package: not-a-package

Package: libc6
Status: install ok installed
Architecture: amd64
Source: glibc
Version: 2.36-9+deb12u4

Package: removed-one
Status: deinstall ok config-files
Architecture: all
Version: 1.0
"""

# The cache key's inputs of a `web` layer, as its rolebake.inputs label records them.
INPUTS = {
    "parent": "sha256:" + "b" * 64,
    "files": {"roles/web/tasks/main.yml": "0644:" + "1" * 32,
              "roles/web/templates/site.conf.j2": "0644:" + "2" * 32,
              "playbooks/site.yml": "0644:" + "3" * 32},
    "vars": {"web_port": "4" * 32, "db_password": "sensitive:" + "5" * 32},
    "config": {"cmd": "6" * 32},
    "settings": {"playbook": "7" * 32},
    "provisioner": "ansible ansible-core 2.19.15",
    "runtime": "python toolchain debian-12 (0.1.0+maker.1+format.2)",
    "rolebake": "0.1.0+scripts.abc",
    "tools": {"collection community.docker": "4.8.5",
              "requirement role geerlingguy.nginx": "3.2.0 content:" + "8" * 24},
    "notes": [],
}


def web_chain() -> list[LayerPart]:
    packages = parse_dpkg_status(STATUS)
    base = LayerPart(image_id="sha256:" + "a" * 64, layer=None, spec=None, parent=None,
                     refs=("rolebake/debian:bookworm",), created="2026-12-07T17:45:59Z",
                     distro="debian-12", packages=packages[:1])  # libc6 only
    web = LayerPart(image_id="sha256:" + "c" * 64, layer="web", spec="web",
                    parent=base.image_id, refs=(), created="2026-12-07T18:16:49.5Z",
                    distro="debian-12", packages=packages,
                    roles=roles_of(INPUTS["files"]), tools=tools_of(INPUTS["tools"]),
                    files={"playbooks/site.yml": INPUTS["files"]["playbooks/site.yml"]},
                    provisioner=INPUTS["provisioner"], runtime=INPUTS["runtime"],
                    cache_key="sha256:" + "d" * 64)
    return [web, base]


def record(**changes: object) -> BuildRecord:
    values: dict[str, object] = {
        "image_id": "sha256:" + "c" * 64, "name": "web",
        "spec": {"from": "base", "vars": {"web_port": 8080, "db_password": "<sensitive>"}},
        "spec_path": "images/web.yml", "variant": None, "inputs": INPUTS,
        "cache_key": "sha256:" + "d" * 64,
        "base": ("rolebake/debian:bookworm", "sha256:" + "a" * 64),
        "revision": "0123456789abcdef0123456789abcdef01234567-dirty", "build_id": "b1",
        "started": 1_800_000_000.0, "finished": 1_800_000_060.0,
        "provisioner": "ansible-core 2.19.15",
        "verify": {"ok": True, "cases": [
            {"suite": "metadata", "name": "cmd", "outcome": "passed"},
            {"suite": "test_web.py", "name": "test_nginx", "outcome": "passed"}]}}
    values.update(changes)
    return BuildRecord(**values)  # type: ignore[arg-type]


def test_dpkg_status_keeps_installed_packages_with_their_source() -> None:
    packages = {p.name: p for p in parse_dpkg_status(STATUS)}
    assert set(packages) == {"nginx", "libc6"}  # config-files only: not in the image
    assert packages["nginx"].version == "1.22.1-9+b1"
    assert (packages["nginx"].source, packages["nginx"].source_version) == ("nginx", "1.22.1-9")
    assert packages["libc6"].source == "glibc" and packages["libc6"].architecture == "amd64"


def test_a_roles_digest_is_over_the_keys_file_digests() -> None:
    (role,) = roles_of(INPUTS["files"])
    assert (role.name, role.path, role.files) == ("web", "roles/web", 2)
    changed = roles_of({**INPUTS["files"], "roles/web/tasks/main.yml": "0644:" + "9" * 32})
    assert changed[0].digest != role.digest
    # a file outside the role does not move its digest
    assert roles_of({**INPUTS["files"], "playbooks/site.yml": "0644:" + "0" * 32}) == (role,)
    nested = roles_of({"playbooks/roles/x/tasks/main.yml": "0644:" + "1" * 32})
    assert nested == (Role("x", "playbooks/roles/x", nested[0].digest, 1),)


def test_collections_and_requirements_come_from_the_keys_tools() -> None:
    assert tools_of(INPUTS["tools"]) == (
        Tool("collection", "community.docker", "4.8.5"),
        Tool("requirement role", "geerlingguy.nginx", "3.2.0", "8" * 24))


def test_the_sbom_lists_packages_roles_base_and_toolchain_and_is_valid_cyclonedx() -> None:
    document = sbom_document(web_chain(), "web")
    text = json.dumps(document)
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    by_name = {c["name"]: c for c in document["components"]}
    nginx = by_name["nginx"]
    assert nginx["purl"] == "pkg:deb/debian/nginx@1.22.1-9%2Bb1?arch=amd64&distro=debian-12"
    assert {"name": "rolebake:layer", "value": "web"} in nginx["properties"]
    assert {"name": "debian:source", "value": "nginx (1.22.1-9)"} in nginx["properties"]
    assert {"name": "rolebake:layer", "value": "base"} in by_name["libc6"]["properties"]
    web = by_name["web"]
    assert web["group"] == "ansible-role"
    assert web["hashes"] == [{"alg": "SHA-256", "content": roles_of(INPUTS["files"])[0].digest}]
    assert by_name["community.docker"]["version"] == "4.8.5"
    assert by_name["geerlingguy.nginx"]["version"] == "3.2.0"
    assert by_name["rolebake/debian:bookworm"]["version"] == "sha256:" + "a" * 64
    assert by_name[INPUTS["runtime"]]["scope"] == "excluded"  # lent, not in the image
    assert document["metadata"]["component"]["version"] == "sha256:" + "c" * 64
    assert document["metadata"]["timestamp"].startswith("2026-12-07T18:16:49")
    # the same parts give the same document, serial number included
    assert sbom_document(web_chain(), "web") == document


def test_the_provenance_holds_the_spec_base_revision_and_every_keyed_input() -> None:
    made = statement(record())
    assert made["_type"] == "https://in-toto.io/Statement/v1"
    assert made["predicateType"] == "https://slsa.dev/provenance/v1"
    assert made["subject"] == [{"name": "web", "digest": {"sha256": "c" * 64},
                                "annotations": {"kind": "image id (config digest)"}}]
    definition = made["predicate"]["buildDefinition"]
    assert definition["externalParameters"]["spec"]["content"]["from"] == "base"
    deps = {d["name"]: d for d in definition["resolvedDependencies"]}
    assert deps["base image"]["digest"] == {"sha256": "a" * 64}
    assert deps["parent image"]["digest"] == {"sha256": "b" * 64}
    assert deps["project"] == {"name": "project",
                               "digest": {"gitCommit": "0123456789abcdef0123456789abcdef01234567"},
                               "annotations": {"clean": False}}
    for path, value in INPUTS["files"].items():
        assert deps[path]["digest"] == {"sha256-128": value.split(":")[1]}
    assert deps["var db_password"]["digest"] == {"blake2b-128-keyed": "5" * 32}
    assert deps["var web_port"]["digest"] == {"sha256-128": "4" * 32}
    assert {"collection community.docker", "requirement role geerlingguy.nginx",
            "config cmd", "setting playbook"} <= set(deps)
    run = made["predicate"]["runDetails"]
    assert run["metadata"] == {"invocationId": "b1", "startedOn": "2027-01-15T08:00:00Z",
                               "finishedOn": "2027-01-15T08:01:00Z"}
    assert run["builder"]["version"]["provisioner"] == "ansible-core 2.19.15"
    (verification,) = run["byproducts"]
    assert verification["annotations"]["passed"] == verification["annotations"]["checks"] == 2
    assert verification["annotations"]["suites"] == ["metadata", "test_web.py"]


def test_a_push_adds_the_repository_digest_as_a_subject_and_dsse_wraps_it_unsigned() -> None:
    made = with_repo_digests(statement(record()), ["127.0.0.1:5000/team/web@sha256:" + "e" * 64])
    assert made["subject"][1] == {"name": "127.0.0.1:5000/team/web",
                                  "digest": {"sha256": "e" * 64},
                                  "annotations": {"kind": "manifest digest"}}
    again = with_repo_digests(made, ["127.0.0.1:5000/team/web@sha256:" + "e" * 64])
    assert again == made  # pushing the same digest again adds nothing
    wrapped = envelope(made)
    assert wrapped["payloadType"] == "application/vnd.in-toto+json"
    assert wrapped["signatures"] == []
    assert json.loads(base64.b64decode(wrapped["payload"])) == made


def test_the_store_is_private_and_redacts_before_writing(tmp_path: Path) -> None:
    project = Project(tmp_path)
    store = Store(project)
    image_id = "sha256:" + "c" * 64
    redact.install(redact.Redactor(["hunter2-secret"]))
    try:
        store.save_provenance(image_id, {"spec": {"note": 'said "hunter2-secret"'}})
    finally:
        redact.install(redact.Redactor())
    path = tmp_path / ".rolebake" / "attest" / ("c" * 64) / "provenance.intoto.json"
    assert "hunter2" not in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert store.ids() == [image_id]
    store.save_part(web_chain()[0])
    assert store.part(image_id) == web_chain()[0]


def test_an_image_is_found_by_id_prefix_or_tag_and_nothing_recorded_is_exit_2(
        tmp_path: Path) -> None:
    store = Store(Project(tmp_path))
    image_id = "sha256:" + "c" * 64
    store.save_sbom(image_id, {})
    assert recorded(store, "cccccccc") == image_id
    assert recorded(store, "team/web:1", image_id_of=lambda ref: image_id) == image_id
    with pytest.raises(InputError) as caught:
        recorded(store, "web", refs=("team/web:1",), image_id_of=lambda ref: None)
    assert caught.value.exit_code == 2 and "no SBOM or provenance" in caught.value.message


@pytest.mark.usefixtures("fake_provisioner")
def test_a_build_records_each_layer_and_a_hit_reuses_it(engine: FakeEngine,
                                                        tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", base=BASE, web=WEB)
    base_image = engine.image("debian:bookworm")
    assert base_image is not None
    engine.images_by_id[base_image.id].files["/var/lib/dpkg/status"] = STATUS.encode()
    out = tmp_path / "out"
    report, _, _ = run_build(engine, project, ["web"], attest_dir=out)
    assert report.error is None
    web_id = report.results["web"].image_id
    assert web_id is not None
    store = Store(project)
    sbom = store.sbom(web_id)
    assert sbom is not None and json.loads((out / "web.cdx.json").read_text()) == sbom
    names = {c["name"] for c in sbom["components"]}
    assert {"nginx", "libc6", "web", "common", "debian:bookworm"} <= names
    provenance = store.provenance(web_id)
    assert provenance is not None
    assert provenance["subject"][0]["digest"] == {"sha256": web_id.split(":")[1]}
    deps = {d["name"]: d for d in provenance["predicate"]["buildDefinition"][
        "resolvedDependencies"]}
    assert deps["base image"]["digest"] == {"sha256": base_image.id.split(":")[1]}
    reads = len(engine.called("read_files"))
    again, _, _ = run_build(engine, project, ["web"])
    assert again.results["web"].cached and store.sbom(web_id) == sbom
    assert len(engine.called("read_files")) == reads  # a hit reads nothing from the image
    # Nothing kept (a layer from the cache repo): the SBOM is made again from the images,
    # the same; the provenance from the image's labels, which say which build made it.
    import shutil
    shutil.rmtree(project.root / ".rolebake" / "attest")
    third, _, _ = run_build(engine, project, ["web"])
    assert third.results["web"].cached and store.sbom(web_id) == sbom
    remade = store.provenance(web_id)
    assert remade is not None
    assert remade["predicate"]["runDetails"]["metadata"]["invocationId"] == \
        provenance["predicate"]["runDetails"]["metadata"]["invocationId"]
    assert "made from its labels" in remade["predicate"]["buildDefinition"][
        "externalParameters"]["options"]["note"]


@pytest.mark.usefixtures("fake_provisioner")
def test_no_verify_records_nothing(engine: FakeEngine, tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", base=BASE, web=WEB)
    report, _, _ = run_build(engine, project, ["web"], verify=False)
    assert report.error is None and report.results["web"].steps["attest"] == "skipped"
    assert Store(project).ids() == []


def test_the_cli_prints_what_is_recorded_and_exit_2_when_nothing_is(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from rolebake.cli import main

    (tmp_path / "images").mkdir()
    image_id = "sha256:" + "c" * 64
    Store(Project(tmp_path)).save_sbom(image_id, {"bomFormat": "CycloneDX"})
    runner = CliRunner()
    shown = runner.invoke(main, ["--project", str(tmp_path), "sbom", "cccccc"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout) == {"bomFormat": "CycloneDX"}
    none = runner.invoke(main, ["--project", str(tmp_path), "provenance", image_id])
    assert none.exit_code == 2 and "no provenance is recorded" in none.output
    missing = runner.invoke(main, ["--project", str(tmp_path), "sbom", "sha256:" + "0" * 64])
    assert missing.exit_code == 2 and "no SBOM or provenance is recorded" in missing.output


def test_the_provenance_lists_what_ansible_read() -> None:
    inputs = {**INPUTS, "observed": {"files/extra.txt": "0640:" + "9" * 32,
                                     "files/drop.d/": "list:" + "a" * 32,
                                     "files/gone.txt": "missing:" + "b" * 32}}
    deps = statement(record(inputs=inputs, observed=(
        "roles/web/tasks/main.yml", "files/extra.txt", "files/drop.d/")))[
        "predicate"]["buildDefinition"]["resolvedDependencies"]
    found = {d["name"]: d for d in deps}
    assert found["roles/web/tasks/main.yml"]["annotations"]["observed"] is True
    assert found["playbooks/site.yml"]["annotations"]["observed"] is False
    assert found["files/extra.txt"]["annotations"] == {"kind": "observed file", "mode": "0640"}
    assert found["files/extra.txt"]["digest"] == {"sha256-128": "9" * 32}
    assert found["files/drop.d/"]["annotations"] == {"kind": "observed listing"}
    assert found["files/gone.txt"]["annotations"]["missing"] is True
    # Without a record of reads (a hit pulled from elsewhere), keyed files say nothing.
    plain = statement(record())["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert all("observed" not in d.get("annotations", {}) for d in plain)
