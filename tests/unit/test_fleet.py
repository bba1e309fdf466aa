"""Publishing and sharing without a registry: the push step's place and rules on a fake engine,
the cache repo's names, `rolebake makefile` with a cache repo, and Podman's commit changes.

What a registry does with it is tested against a real one in tests/integration/test_registry.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from rolebake.cli import main
from rolebake.engine import commit_changes, familiar
from rolebake.errors import BuildFailed, InputError, RegistryError
from rolebake.events import HIT_STEPS, PIPELINE, Step, StepEvent
from rolebake.load import plan_build
from rolebake.makefile import render_makefile
from rolebake.registry import CacheRepo, parse_repository, plain_http
from rolebake.spec import Project
from tests.unit.fake_registry import FakeRegistryClient
from tests.unit.fakes import FakeEngine
from tests.unit.test_builder import BASE, WEB, make_project, run_build, spec_from

pytestmark = pytest.mark.usefixtures("fake_provisioner", "fake_registry")


@pytest.fixture
def fake_registry(monkeypatch: pytest.MonkeyPatch) -> type[FakeRegistryClient]:
    """Attestations pushed next to the images land in memory, not on a registry."""
    FakeRegistryClient.pushed = {}
    monkeypatch.setattr("rolebake.attest.RegistryClient", FakeRegistryClient)
    return FakeRegistryClient


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return make_project(tmp_path / "project", base=BASE, web=WEB)


def test_push_comes_last_in_the_pipeline_and_a_hit_goes_through_it() -> None:
    assert PIPELINE[-2:] == (Step.TAG, Step.PUSH)
    # A hit's SBOM and provenance are reused (kept by image id) before its tags move.
    assert HIT_STEPS == (Step.CACHE, Step.ATTEST, Step.TAG, Step.PUSH)


def test_push_sends_the_named_images_tags_after_they_moved(engine: FakeEngine,
                                                          project: Project) -> None:
    moved: list[str] = []
    engine.on("tag", lambda _image_id, ref: moved.append(ref))
    pushed_after: dict[str, list[str]] = {}
    engine.on("push", lambda ref: pushed_after.setdefault(ref, list(moved)), after=False)
    report, recorder, _ = run_build(engine, project, ["web"], push=True)
    assert report.error is None
    web, base = report.results["web"], report.results["base"]
    # web was named: each of its tags is pushed, once every tag (the cache tag too) moved.
    assert web.pushed == ("rolebake/web:latest", "rolebake/web:1.0")
    assert engine.pushed == {t: web.image_id for t in web.pushed}
    for tag in web.pushed:
        assert {"rolebake/web:latest", "rolebake/web:1.0"} <= set(pushed_after[tag])
    # base is only web's parent: its tags may name no registry, so they stay local.
    assert base.pushed == () and base.steps["push"] == "skipped"
    assert recorder.steps("web")[-2:] == [("push", "running"), ("push", "ok")]
    assert "pushed rolebake/web:latest (sha256:" in recorder.step_event(
        "web", "push", "ok").message


def test_a_cache_hit_is_pushed_too(engine: FakeEngine, project: Project) -> None:
    first, _, _ = run_build(engine, project, ["web"])
    assert first.error is None and engine.pushed == {}
    again, recorder, _ = run_build(engine, project, ["web"], push=True)
    assert again.results["web"].cached
    assert recorder.steps("web") == [("cache", "running"), ("cache", "cached"),
                                     ("attest", "running"), ("attest", "ok"),
                                     ("tag", "running"), ("tag", "ok"),
                                     ("push", "running"), ("push", "ok")]
    assert set(engine.pushed) == {"rolebake/web:latest", "rolebake/web:1.0"}


def test_a_build_that_fails_verification_pushes_nothing(engine: FakeEngine,
                                                       project: Project) -> None:
    def drop_cmd(config: dict[str, Any]) -> None:
        config["Cmd"] = []

    engine.commit_config_edit = drop_cmd  # the image then fails its metadata check
    report, recorder, _ = run_build(engine, project, ["web"], push=True)
    assert report.error is not None and report.error.exit_code == 3
    assert engine.pushed == {} and engine.called("push") == []
    assert ("push", "running") not in recorder.steps("web")


def test_no_verify_never_pushes(engine: FakeEngine, project: Project) -> None:
    report, _, _ = run_build(engine, project, ["web"], push=True, verify=False)
    assert report.error is None
    assert engine.called("push") == []
    assert report.results["web"].steps["push"] == "skipped"


def test_a_refused_push_is_exit_1_and_the_tags_stay(engine: FakeEngine,
                                                    project: Project) -> None:
    engine.fail("push", RegistryError("pushing rolebake/web:1.0 failed: denied: requested "
                                      "access to the resource is denied"),
                match=lambda ref: ref == "rolebake/web:1.0")
    report, recorder, _ = run_build(engine, project, ["web"], push=True)
    error = report.error
    assert error is not None and error.exit_code == 1
    assert error.message.endswith("denied: requested access to the resource is denied")
    web = report.results["web"]
    assert web.status.value == "failed" and web.steps["push"] == "failed"
    # Tagged before the push, and left so: the image is verified, only publishing failed.
    assert engine.tagged("rolebake/web:latest") == web.image_id
    assert engine.tagged("rolebake/web:1.0") == web.image_id
    assert engine.image(web.image_id) is not None
    failed = [e for e in recorder.events if isinstance(e, StepEvent)
              and e.step == Step.PUSH and e.status.value == "failed"]
    assert len(failed) == 1


def test_push_with_no_verify_is_refused_before_anything(tmp_path: Path) -> None:
    make_project(tmp_path / "p", base=BASE, web=WEB)
    result = CliRunner().invoke(main, ["--project", str(tmp_path / "p"), "build", "web",
                                       "--push", "--no-verify"])
    assert result.exit_code == 2
    assert "--push publishes verified images only" in result.output


@pytest.mark.parametrize("text", ["cache", "UPPER.example.com/Team", "registry.example.com/x:1",
                                  "registry.example.com/x@sha256:ab", "team/cache",
                                  "registry.example.com/"])
def test_a_cache_repo_names_a_registry_and_a_path(text: str) -> None:
    with pytest.raises(InputError, match="expected REGISTRY/PATH"):
        parse_repository(text)


def test_cache_repo_names() -> None:
    repo = parse_repository("localhost:5000/team/rolebake-cache")
    assert (repo.host, repo.path) == ("localhost:5000", "team/rolebake-cache")
    cache = CacheRepo(FakeEngine(), repo)
    key = "sha256:" + "ab" * 32
    assert cache.layer_ref("web.dev", key) == (
        f"localhost:5000/team/rolebake-cache:web.dev-{'ab' * 20}")
    assert cache.base_ref("rolebake/debian:bookworm") == (
        "localhost:5000/team/rolebake-cache:from-rolebake-debian-bookworm")
    long = cache.layer_ref("x" * 200, key)
    assert len(long.rsplit(":", 1)[1]) <= 128 and long.endswith("ab" * 20)


class _Insecure(FakeEngine):
    def registry_config(self) -> dict[str, Any]:
        return {"InsecureRegistryCIDRs": ["127.0.0.0/8", "10.9.0.0/16"],
                "IndexConfigs": {"registry.lan:5000": {"Secure": False}}}


@pytest.mark.parametrize(("host", "plain"), [
    ("127.0.0.1:5000", True), ("localhost:5000", True), ("[::1]:5000", True),
    ("10.9.1.2:443", True), ("registry.lan:5000", True), ("registry.example.com", False),
    ("10.8.1.2", False)])
def test_plain_http_only_where_the_engine_would(host: str, plain: bool) -> None:
    assert plain_http(_Insecure(), host) is plain


def test_podman_commit_changes_carry_the_config_as_written() -> None:
    inputs = json.dumps({"a": "b c", "p": "x\\y $HOME"}, separators=(",", ":"))
    changes = commit_changes({
        "Cmd": ["nginx", "-g", "daemon off;"], "Entrypoint": [],
        "Env": ["LANG=C.UTF-8", "X=a=b"], "User": "www-data", "WorkingDir": "/srv",
        "ExposedPorts": {"8080/tcp": {}}, "Volumes": {"/var/lib/app": {}},
        "Labels": {"rolebake.inputs": inputs, "empty": ""}})
    assert changes == [
        'CMD ["nginx", "-g", "daemon off;"]', "ENTRYPOINT []", 'ENV LANG="C.UTF-8"',
        'ENV X="a=b"', "USER www-data", "WORKDIR /srv", "EXPOSE 8080/tcp",
        'VOLUME ["/var/lib/app"]', f'LABEL "rolebake.inputs"="{inputs}"', 'LABEL "empty"=""']
    with pytest.raises(BuildFailed, match="line break"):
        commit_changes({"Labels": {"note": "two\nlines"}})


def test_podman_names_are_shown_as_docker_shows_them() -> None:
    assert familiar("docker.io/rolebake/web:latest") == "rolebake/web:latest"
    assert familiar("docker.io/library/debian:bookworm") == "debian:bookworm"
    assert familiar("localhost/rolebake-cache/web:ab") == "rolebake-cache/web:ab"
    assert familiar("localhost:5000/team/web:1") == "localhost:5000/team/web:1"


def test_makefile_targets_take_the_cache_repo_and_push(tmp_path: Path) -> None:
    three = make_project(tmp_path / "p", base=BASE, web=WEB,
                         app=spec_from("base", "app", "rolebake/app:latest"))
    text = render_makefile(plan_build(three), cache_repo="registry.example.com/team/cache",
                           push=True)
    assert "ROLEBAKE_CACHE_REPO ?= registry.example.com/team/cache\n" in text
    assert "ROLEBAKE_PUSH ?= 1\n" in text
    assert ("ROLEBAKE_BUILD = $(ROLEBAKE) build $(ROLEBAKE_FLAGS) $(if $(ROLEBAKE_CACHE_REPO),"
            "--cache-repo $(ROLEBAKE_CACHE_REPO)) $(if $(ROLEBAKE_PUSH),--push)\n") in text
    assert "image-app: image-base\n\t$(ROLEBAKE_BUILD) app\n" in text
    plain = render_makefile(plan_build(three))
    assert "ROLEBAKE_CACHE_REPO ?=\n" in plain and "ROLEBAKE_PUSH ?=\n" in plain


def test_a_healthcheck_on_podman_is_bad_input_before_any_container(tmp_path: Path,
                                                                   engine: FakeEngine) -> None:
    checked = make_project(tmp_path / "p", base=(
        "from: debian:bookworm\nprovisioner: fake\nroles: [common]\n"
        "config:\n  healthcheck: {test: [CMD, 'true']}\n"))
    engine.kind = "podman"
    with pytest.raises(InputError, match=r"base.yml:\d+: config.healthcheck: Podman's commit"):
        run_build(engine, checked, ["base"])
    assert engine.called("container") == []


def test_push_puts_the_sbom_and_attestation_next_to_each_tag(
        engine: FakeEngine, project: Project, fake_registry: type[FakeRegistryClient]) -> None:
    report, _, _ = run_build(engine, project, ["web"], push=True)
    assert report.error is None
    web = report.results["web"]
    assert web.image_id is not None
    digest = web.image_id.split(":")[1]  # what the fake engine's push answers
    wanted = {f"registry-1.docker.io/rolebake/web:sha256-{digest}.{suffix}"
              for suffix in ("sbom", "att")}
    assert set(fake_registry.pushed) == wanted
    att = fake_registry.pushed[f"registry-1.docker.io/rolebake/web:sha256-{digest}.att"]
    assert att.media_type == "application/vnd.dsse.envelope.v1+json"
    assert json.loads(att.data)["signatures"] == []
    assert f"rolebake/web:sha256-{digest}.sbom" in web.attested
