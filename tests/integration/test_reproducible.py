"""Reproducible images (normalise.py): two `--no-cache` builds of `base` and `web` give the
same image ids, on the shared engine and on a second, empty dockerd; `--check-reproducible`
names the files a role's packages make at random (ssl-cert's snakeoil key).

The second engine is the private dockerd of engines.py. Its containers reach the host but not
the Debian mirror (no NAT of its own), so it gets what a CI runner's warm caches would hold:
the base image and the python toolchain (save and load: the same ids), and the apt cache
volumes the shared engine's builds filled (a volume prefix of this test's own). The roles'
`cache_valid_time` then finds the lists fresh and apt installs from the cached packages.
"""

from __future__ import annotations

import contextlib
import io
import json
import uuid
from collections.abc import Iterator

import docker
import pytest

from tests.conftest import run_cli
from tests.integration.conftest import BASE_IMAGE, TestProject
from tests.integration.engines import OwnEngine, empty_dockerd
from tests.integration.tinyproject import add_role, add_spec, new_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EPOCH = "1700000000"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory,
            engine: docker.DockerClient) -> Iterator[TestProject]:
    made = new_project(tmp_path_factory.mktemp("repro") / f"repro{uuid.uuid4().hex[:8]}",
                       engine)
    try:
        yield made
    finally:
        ours = (f"rbt-{made.token}/", f"rolebake-cache/{made.root.name}/")
        for image in engine.images.list():
            for tag in image.tags:
                if tag.startswith(ours):
                    with contextlib.suppress(docker.errors.APIError):
                        engine.images.remove(tag, force=True)


@pytest.fixture(scope="module")
def apt_prefix(engine: docker.DockerClient) -> Iterator[str]:
    """An apt cache volume prefix of this module's own; its volumes go at the end."""
    prefix = f"rbt-apt-{uuid.uuid4().hex[:8]}"
    yield prefix
    for volume in engine.volumes.list():
        if volume.name.startswith(prefix + "-"):
            with contextlib.suppress(docker.errors.APIError):
                volume.remove(force=True)


def ids_of(stdout: str) -> dict[str, str]:
    return {row["layer"]: row["image_id"] for row in json.loads(stdout)["layers"]}


def test_two_no_cache_builds_give_the_same_ids_on_two_engines(
        project: TestProject, engine: docker.DockerClient, apt_prefix: str) -> None:
    env = {"SOURCE_DATE_EPOCH": EPOCH, "ROLEBAKE_APT_CACHE": apt_prefix}
    first = run_cli("build", "web", "--no-cache", "--json", cwd=project.root, env=env)
    assert first.rc == 0, first.output
    second = run_cli("build", "web", "--no-cache", "--json", cwd=project.root, env=env)
    assert second.rc == 0, second.output
    ids = ids_of(first.stdout)
    assert set(ids) == {"base", "web"}
    assert ids_of(second.stdout) == ids, (first.stderr[-3000:], second.stderr[-3000:])
    web = engine.images.get(ids["web"])
    assert web.attrs["Created"] == "2023-11-14T22:13:20Z"
    assert "rolebake.build-id" not in web.labels
    history = engine.api.history(ids["web"])
    assert {h["Created"] for h in history[:2]} == {int(EPOCH)}
    # Tags and the cache tag name the normalised id; the next build is a hit on it.
    assert project.image_id(project.tag("web")) == ids["web"]
    again = run_cli("build", "web", "--json", cwd=project.root, env=env)
    assert again.rc == 0, again.output
    assert all(row["cached"] for row in json.loads(again.stdout)["layers"])
    assert ids_of(again.stdout) == ids

    with empty_dockerd() as other:
        _warm(engine, other, apt_prefix)
        elsewhere = run_cli("build", "web", "--no-cache", "--json", cwd=project.root,
                            env={**env, **other.env, "ROLEBAKE_APT_LISTS_MAX_AGE": "86400"})
        assert elsewhere.rc == 0, elsewhere.output
        assert ids_of(elsewhere.stdout) == ids
        assert other.client.images.get(project.tag("web")).id == ids["web"]


def _warm(engine: docker.DockerClient, other: OwnEngine, apt_prefix: str) -> None:
    """Give the empty engine the base image, the toolchain and this module's apt caches."""
    toolchains = [t for image in engine.images.list("rolebake-toolchain/python")
                  for t in image.tags]
    for ref in [BASE_IMAGE, *toolchains]:
        data = b"".join(engine.images.get(ref).save(named=True))
        other.client.images.load(data)
    assert other.client.images.get(BASE_IMAGE).id == engine.images.get(BASE_IMAGE).id
    for volume in engine.volumes.list():
        if not volume.name.startswith(apt_prefix + "-"):
            continue
        other.client.volumes.create(volume.name, labels=volume.attrs.get("Labels") or {})
        source = engine.containers.create(BASE_IMAGE, "true", labels={"rolebake.role": "scan"},
                                          volumes={volume.name: {"bind": "/v", "mode": "ro"}})
        try:
            stream, _ = source.get_archive("/v/.")
            data = b"".join(stream)
        finally:
            source.remove(force=True)
        target = other.client.containers.create(BASE_IMAGE, "true",
                                                volumes={volume.name: {"bind": "/v"}})
        try:
            target.put_archive("/v", io.BytesIO(data).getvalue())
        finally:
            target.remove(force=True)


def test_check_reproducible_names_the_snakeoil_files(project: TestProject,
                                                     engine: docker.DockerClient) -> None:
    add_role(project, "snakeoil", {"tasks/main.yml": (
        "---\n- name: Install ssl-cert (its postinst makes the snakeoil key)\n"
        "  ansible.builtin.apt:\n    name: ssl-cert\n    update_cache: true\n"
        "    cache_valid_time: 3600\n")})
    add_spec(project, "snakeoil", roles=("snakeoil",), suite=None)
    before = {t for i in engine.images.list() for t in i.tags}
    result = run_cli("build", "--check-reproducible", "snakeoil", "--json", cwd=project.root,
                     env={"SOURCE_DATE_EPOCH": EPOCH})
    assert result.rc == 5, result.output
    report = json.loads(result.stdout)
    assert report["reproducible"] is False and report["source_date_epoch"] == int(EPOCH)
    (layer,) = report["layers"]
    files = {f["path"]: f for f in layer["files"]}
    for path in ("/etc/ssl/certs/ssl-cert-snakeoil.pem", "/etc/ssl/private/ssl-cert-snakeoil.key"):
        assert files[path]["package"] == "ssl-cert" and files[path]["random_keys"], files
        assert files[path]["differs"] == ["content"]
    # Nothing else differs: the rest of the layer is normalised.
    assert set(files) == {"/etc/ssl/certs/ssl-cert-snakeoil.pem",
                          "/etc/ssl/private/ssl-cert-snakeoil.key"}, files
    text = run_cli("build", "--check-reproducible", "snakeoil", cwd=project.root,
                   env={"SOURCE_DATE_EPOCH": EPOCH})
    assert text.rc == 5
    assert "random key: make-ssl-cert generate-default-snakeoil" in text.stdout
    # The throwaway tags are gone; no tag of the spec moved.
    after = {t for i in engine.images.list() for t in i.tags}
    assert not {t for t in after - before if "rolebake-check/" in t or "snakeoil" in t}
