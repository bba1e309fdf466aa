"""Plans and cache keys: pure, no Docker (invariant 5)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rolebake.cache import LayerInputs, explain_miss, layer_inputs
from rolebake.load import plan_build
from rolebake.makefile import render_makefile
from rolebake.provision import provisioner_class
from rolebake.spec import Project
from tests.conftest import REPO


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    root = tmp_path / "project"
    monkeypatch.setenv("ROLEBAKE_CHEF_IMAGE", "example/chef-toolchain:18")
    shutil.copytree(REPO / "cookbooks", root / "cookbooks")
    shutil.copytree(REPO / "roles", root / "roles")
    shutil.copytree(REPO / "images", root / "images")
    shutil.copytree(REPO / "playbooks", root / "playbooks", symlinks=True)
    return Project(root)


def inputs(project: Project, layer_id: str, parent: str = "sha256:parent") -> LayerInputs:
    layer = plan_build(project, [layer_id]).layer(layer_id)
    provisioner = provisioner_class(layer.provisioner)(project, layer)
    return layer_inputs(project, layer, parent, provisioner.input_files(), "ansible-core 9.9")


def test_plan_orders_parents_first_and_shares_layers(project: Project) -> None:
    plan = plan_build(project, ["web:dev", "app"])
    ids = [layer.id for layer in plan.layers]
    assert ids.index("base") < ids.index("web") < ids.index("web:dev")
    assert ids.index("base") < ids.index("app")
    assert ids.count("base") == 1  # the variant and app share the base layer
    dev = plan.layer("web:dev")
    assert dev.parent == "web" and dev.settings.roles == ("devtools",)
    assert dev.settings.vars["web_port"] == 8080  # a variant's roles see the spec's vars


def test_all_targets_when_none_given(project: Project) -> None:
    assert {layer.id for layer in plan_build(project).layers} >= {"base", "web", "web:dev", "app"}


def test_same_inputs_same_key(project: Project) -> None:
    assert inputs(project, "web").key == inputs(project, "web").key


def test_key_does_not_depend_on_where_the_project_is(project: Project, tmp_path: Path) -> None:
    other = Project(tmp_path / "elsewhere")
    shutil.copytree(project.root, other.root, symlinks=True)
    assert inputs(project, "web").key == inputs(other, "web").key


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda p: (p.root / "roles/web/templates/index.html.j2").write_text("changed"),
         "roles/web/templates/index.html.j2 changed"),
        (lambda p: (p.root / "roles/web/templates/index.html.j2").chmod(0o600),
         "roles/web/templates/index.html.j2 mode changed (0644 -> 0600)"),
        (lambda p: (p.root / "roles/web/files").mkdir() or
         (p.root / "roles/web/files/extra.conf").write_text("x"),
         "roles/web/files/extra.conf added"),
        (lambda p: (p.root / "images/web.yml").write_text(
            (p.root / "images/web.yml").read_text().replace("web_port: 8080", "web_port: 8081")),
         "var web_port changed"),
        (lambda p: (p.root / "images/web.yml").write_text(
            (p.root / "images/web.yml").read_text().replace('"daemon off;"', '"daemon off; "')),
         "config.cmd changed"),
    ],
    ids=["template-bytes", "file-mode", "file-added", "var", "config"],
)
def test_each_changed_input_is_a_miss_and_is_named(project: Project, change, reason: str) -> None:
    before = inputs(project, "web")
    change(project)
    after = inputs(project, "web")
    assert after.key != before.key
    assert reason in explain_miss(after, before)


def test_role_dependency_is_part_of_the_key(project: Project) -> None:
    # app depends on python_runtime through meta/main.yml
    before = inputs(project, "app")
    assert any(f.startswith("roles/python_runtime/") for f in before.values["files"])
    tasks = project.root / "roles/python_runtime/tasks/main.yml"
    tasks.write_text(tasks.read_text() + "\n# touched\n")
    after = inputs(project, "app")
    assert after.key != before.key
    assert "roles/python_runtime/tasks/main.yml changed" in explain_miss(after, before)


def test_parent_image_is_part_of_the_key(project: Project) -> None:
    before = inputs(project, "web", parent="sha256:" + "a" * 64)
    after = inputs(project, "web", parent="sha256:" + "b" * 64)
    assert after.key != before.key
    assert explain_miss(after, before) == ("parent image changed (aaaaaaaaaaaa -> bbbbbbbbbbbb)",)


def test_unrelated_role_is_not_part_of_the_key(project: Project) -> None:
    before = inputs(project, "web")
    (project.root / "roles/devtools/tasks/main.yml").write_text("- meta: noop\n")
    assert inputs(project, "web").key == before.key


def test_provisioner_version_is_part_of_the_key(project: Project) -> None:
    layer = plan_build(project, ["web"]).layer("web")
    files = provisioner_class("ansible")(project, layer).input_files()
    a = layer_inputs(project, layer, "sha256:p", files, "ansible-core 2.19.1")
    b = layer_inputs(project, layer, "sha256:p", files, "ansible-core 2.19.2")
    assert a.key != b.key
    assert any("provisioner version changed" in r for r in explain_miss(b, a))


def test_inputs_survive_the_label_round_trip(project: Project) -> None:
    original = inputs(project, "web")
    assert LayerInputs.from_label(original.to_label()) == original
    assert LayerInputs.from_label("not json") is None
    assert explain_miss(original, None) == ("never built",)


def test_sensitive_vars_are_not_stored_in_plain(project: Project) -> None:
    spec = project.root / "images/web.yml"
    spec.write_text(spec.read_text() + "sensitive_vars: [web_port]\n")
    label = inputs(project, "web").to_label()
    assert '"web_port":"sensitive:' in label


def test_makefile_has_a_target_per_layer_with_its_parent(project: Project) -> None:
    text = render_makefile(plan_build(project))
    assert "image-web: image-base\n\t$(ROLEBAKE_BUILD) web\n" in text
    assert "image-web.dev: image-web\n\t$(ROLEBAKE_BUILD) web:dev\n" in text
    assert "image-base:\n\t$(ROLEBAKE_BUILD) base\n" in text


def test_chef_toolchain_image_id_is_part_of_the_key(project: Project) -> None:
    # A new toolchain image under the same tag is a new chef: the id is keyed, not the tag.
    from rolebake.cache import provisioner_and_inputs
    from tests.unit.fakes import FakeEngine

    layer = plan_build(project, ["web-chef"]).layer("web-chef")
    engine = FakeEngine()
    assert provisioner_and_inputs(engine, project, layer, None)[1].values["tools"] == {
        "chef toolchain image": "example/chef-toolchain:18 (not on the engine)"}
    first = engine.add_image("example/chef-toolchain:18")
    _, before = provisioner_and_inputs(engine, project, layer, None)
    assert before.values["tools"] == {"chef toolchain image": first.id}
    second = engine.add_image("example/chef-toolchain:18")  # the tag moves to a new image
    _, after = provisioner_and_inputs(engine, project, layer, None)
    assert after.key != before.key
    assert explain_miss(after, before) == (
        f"chef toolchain image changed ({first.id.rsplit(':', 1)[-1][:12]} -> "
        f"{second.id.rsplit(':', 1)[-1][:12]})",)
    assert not any(c for c in engine.calls if c.method in ("pull", "create_stopped"))
