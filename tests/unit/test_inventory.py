"""An image as a host of the inventory: groups, host patterns, plays, the run's inventory, keys."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from rolebake.cache import explain_miss, layer_inputs
from rolebake.errors import InputError
from rolebake.load import plan_build
from rolebake.provision import ansible_inventory as inv
from rolebake.provision import provisioner_class
from rolebake.scaffold import init
from rolebake.spec import Project
from tests.conftest import run_cli
from tests.unit.example_copy import example_copy  # noqa: F401 (the `project` fixture)

CONNECTION = {"ansible_connection": "rolebake_agent", "ansible_host": "cid",
              "ansible_python_interpreter": "/mnt/rolebake-python/bin/python3"}




def spec(project: Project, name: str, **changes: object):
    found = plan_build(project, [name]).layer(name).spec
    return replace(found, settings=replace(found.settings, **changes))


def inputs(project: Project, layer_id: str):
    layer = plan_build(project, [layer_id]).layer(layer_id)
    found = provisioner_class("ansible")(project, layer).inputs(None)  # type: ignore[arg-type]
    return layer_inputs(project, layer, "sha256:parent", found.files, "ansible-core 9",
                        tools=found.tools, notes=found.notes, plays=found.plays)


# Reading inventories (Ansible's InventoryManager) -----------------------------------------

def test_ini_inventory_groups_children_and_hosts(tmp_path: Path) -> None:
    (tmp_path / "hosts.ini").write_text(
        "bastion\n[web]\nweb[1:3] ansible_host=10.0.0.5\n[dc1:children]\nweb\n"
        "[prod:children]\ndc1\n[dc1:vars]\nx=1\n")
    project = Project(tmp_path)
    found = inv.read_inventory(project, tmp_path / "hosts.ini")
    assert found.hosts == {"bastion", "web1", "web2", "web3"}  # Ansible expands the range
    assert found.groups == {"all", "ungrouped", "web", "dc1", "prod"}
    assert found.files == (tmp_path / "hosts.ini",)


def test_yaml_inventory_and_folder_of_inventories(tmp_path: Path) -> None:
    folder = tmp_path / "inventory"
    (folder / "group_vars").mkdir(parents=True)
    (folder / "group_vars" / "web.yml").write_text("a: 1\n")
    (folder / "prod.yml").write_text(yaml.safe_dump(
        {"all": {"children": {"prod": {"children": {"web": {"hosts": {"web1": None}}}}}}}))
    (folder / "z-dc.ini").write_text("[dc1:children]\nweb\n")  # after prod.yml
    (folder / "README.md").write_text("not an inventory [\n")  # ignored, as Ansible does
    found = inv.read_inventory(Project(tmp_path), folder)
    assert found.files == (folder / "prod.yml", folder / "z-dc.ini")
    assert found.groups >= {"prod", "web", "dc1"}
    assert found.vars_dirs == (folder,)


def test_an_inventory_ansible_cannot_parse_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "hosts.ini").write_text("[web:children]\nnowhere\n")
    with pytest.raises(InputError, match="undefined group 'nowhere'") as caught:
        inv.read_inventory(Project(tmp_path), tmp_path / "hosts.ini")
    assert caught.value.path == tmp_path / "hosts.ini"


def test_inventory_plugin_config_is_refused_unless_enabled(tmp_path: Path) -> None:
    (tmp_path / "aws.yml").write_text("plugin: amazon.aws.aws_ec2\n")
    with pytest.raises(InputError, match="Ansible cannot read the inventory"):
        inv.read_inventory(Project(tmp_path), tmp_path / "aws.yml")


def test_a_script_runs_only_when_the_cfg_enables_the_script_plugin(tmp_path: Path) -> None:
    script = tmp_path / "hosts.py"
    script.write_text("#!/bin/sh\necho '{\"db\": {\"hosts\": [\"db1\"]}}'\n")
    script.chmod(0o755)
    with pytest.raises(InputError, match="enables the `script` inventory plugin"):
        inv.read_inventory(Project(tmp_path), script)
    (tmp_path / "ansible.cfg").write_text("[inventory]\nenable_plugins = script, ini\n")
    found = inv.read_inventory(Project(tmp_path), script)
    assert "db1" in found.hosts and "db" in found.groups and found.files == (script,)


def test_the_hosts_settings_do_not_reach_the_questions(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # A stray ANSIBLE_* of the host changes neither the run nor what rolebake asks.
    (tmp_path / "hosts.ini").write_text("[web]\nweb1\n")
    monkeypatch.setenv("ANSIBLE_INVENTORY_ENABLED", "toml")
    monkeypatch.setenv("ANSIBLE_INVENTORY_IGNORE", ".ini")
    found = inv.read_inventory(Project(tmp_path), tmp_path / "hosts.ini")
    assert "web1" in found.hosts
    from ansible import constants

    assert constants.config.__class__.__name__ == "ConfigManager"  # put back afterwards


# Host patterns (Ansible's get_hosts) -----------------------------------------------------------

@pytest.mark.parametrize(("pattern", "expected"), [
    ("all", True), ("web", True), ("app", False), ("web,app", True), ("app:web", True),
    ("web:&prod", True), ("web:&dc2", False), ("web:!prod", False), ("!app", True),
    ("we*", True), ("~^pro", True), ("web[0]", False), ("web[-1]", True),
    ("web[0:2]", True), ("rolebake-web", True), (["app", "web"], True), ("{{ target }}", None),
])
def test_play_patterns_against_the_target(tmp_path: Path, pattern: object,
                                          expected: bool | None) -> None:
    (tmp_path / "hosts.ini").write_text(
        "[web]\nweb1\n[app]\napp1\n[dc2]\napp1\n[prod:children]\nweb\n")
    project = Project(tmp_path)
    inventory = inv.read_inventory(project, tmp_path / "hosts.ini")
    member = inv.Membership("rolebake-web", ("all", "prod", "web"), inventory, False,
                            declared=("web",), project=project)
    # web[0] is the inventory's own web1: the image is added after what the inventory
    # says, as the run's generated inventory comes after the project's.
    assert inv.matches(pattern, member) is expected


# Membership and plays -----------------------------------------------------------------------

def test_membership_from_the_example_inventory(project: Project) -> None:
    member = inv.membership(project, spec(project, "web"))
    assert member is not None
    assert (member.host, member.groups) == ("rolebake-web", ("all", "web"))
    assert member.inventory.path == project.root / "playbooks" / "inventory.ini"
    named = inv.membership(project, spec(project, "web", host="web-dev1.example.internal"))
    assert named is not None and named.groups == ("all", "dev", "web")  # the inventory's groups
    base = inv.membership(project, spec(project, "base"))
    assert base is not None and base.groups == ("all", "ungrouped")


def test_host_named_like_a_group_is_refused(project: Project) -> None:
    with pytest.raises(InputError, match="also a group"):
        inv.membership(project, spec(project, "web", host="app"))


def test_plan_lists_the_plays_of_each_layer(project: Project) -> None:
    assert inputs(project, "base").plays == (
        "applies play 'Apply the base configuration to every host' (hosts: all)",)
    assert inputs(project, "web").plays == (
        "skips play 'Apply the base configuration to every host' (hosts: all): "
        "a parent layer applied it",
        "applies play 'Configure web servers' (hosts: web)")


def test_without_groups_every_play_applies(project: Project) -> None:
    playbook = project.root / "playbooks" / "site.yml"
    selection = inv.select_plays(playbook, None, [])
    assert len(selection.applied) == 4 and not selection.skipped


# The run's inventory ------------------------------------------------------------------------

def test_run_puts_the_target_in_its_groups_next_to_the_project_inventory(
        project: Project) -> None:
    web = spec(project, "web")
    run = inv.prepare(project, web, web.settings.playbook, CONNECTION)
    assert run.host == "rolebake-web"
    assert run.sources == (project.root / "playbooks" / "inventory.ini",)
    assert run.generated == {"all": {"hosts": {"rolebake-web": CONNECTION},
                                     "children": {"web": {"hosts": {"rolebake-web": {}}}}}}
    # base applied the `all` play: web's run imports the playbook and skips it by name.
    assert run.extravars == {inv.SKIP_VAR: ["Apply the base configuration to every host"]}
    assert run.wrapper == [{"name": "rolebake: the plays a parent layer did not apply",
                            "import_playbook": str(web.settings.playbook.resolve()),
                            "when": f"ansible_play_name not in {inv.SKIP_VAR}"}]


def test_connection_vars_are_the_targets_alone_never_extra_vars(project: Project) -> None:
    web = spec(project, "web", host="web1.example.internal")
    run = inv.prepare(project, web, web.settings.playbook,
                      {**CONNECTION, "rolebake_secrets_dir": "/x"})
    assert run.extravars[inv.SKIP_VAR]
    assert not any(k.startswith("ansible_") for k in run.extravars)  # every host would get them
    assert run.target_vars == {**CONNECTION, "rolebake_secrets_dir": "/x"}
    assert run.host == "web1.example.internal"


def test_a_spec_without_groups_joins_every_group_its_playbook_names(project: Project) -> None:
    web = spec(project, "web", groups=None)
    run = inv.prepare(project, web, web.settings.playbook, CONNECTION)
    assert run.host == "rolebake-web" and run.sources == () and run.wrapper is None
    assert set(run.generated["all"]["children"]) == {"web", "app", "dev"}


def test_inventory_from_ansible_cfg(project: Project) -> None:
    (project.root / "inventory").mkdir()
    (project.root / "inventory" / "hosts").write_text("[frontend]\n[web:children]\nfrontend\n")
    (project.root / "ansible.cfg").write_text("[defaults]\ninventory = inventory/hosts\n")
    member = inv.membership(project, spec(project, "web", groups=("frontend",)))
    assert member is not None and member.groups == ("all", "frontend", "web")
    (project.root / "ansible.cfg").write_text("[defaults]\ninventory = ../elsewhere\n")
    with pytest.raises(InputError, match="outside the project"):
        inv.membership(project, spec(project, "web"))


# The cache key ------------------------------------------------------------------------------

def test_group_vars_of_the_targets_groups_are_keyed(project: Project) -> None:
    group_vars = project.root / "playbooks" / "group_vars"
    before = inputs(project, "web")
    assert "playbooks/group_vars/web.yml" in before.values["files"]
    assert "playbooks/inventory.ini" in before.values["files"]
    (group_vars / "app.yml").write_text("app_port: 9000\n")  # not a group of web
    assert inputs(project, "web").key == before.key
    (group_vars / "web.yml").write_text("web_site_title: other\n")
    after = inputs(project, "web")
    assert "playbooks/group_vars/web.yml changed" in explain_miss(after, before)
    (group_vars / "all.yml").write_text("x: 1\n")  # a new file is a change too
    added = inputs(project, "web")
    assert added.key != after.key
    assert "playbooks/group_vars/all.yml added" in explain_miss(added, after)


def test_roles_of_plays_that_do_not_apply_are_not_keyed(project: Project) -> None:
    files = inputs(project, "web").values["files"]
    assert any(f.startswith("roles/web/") for f in files)
    assert not any(f.startswith(("roles/app/", "roles/devtools/", "roles/common/"))
                   for f in files)


def test_inventory_change_is_a_miss(project: Project) -> None:
    before = inputs(project, "web")
    hosts = project.root / "playbooks" / "inventory.ini"
    hosts.write_text(hosts.read_text() + "\n[frontend:children]\nweb\n")
    after = inputs(project, "web")
    assert "playbooks/inventory.ini changed" in explain_miss(after, before)
    assert any("inventory host changed" in r for r in explain_miss(after, before))


# rolebake init ------------------------------------------------------------------------------

def test_init_proposes_a_base_of_the_all_plays_and_one_image_per_group(
        project: Project) -> None:
    playbook = init.find_playbook(project, None)
    proposals = init.propose(playbook)
    assert [(p.name, p.parent, p.group) for p in proposals] == [
        ("base", "rolebake/debian:bookworm", "all"), ("web", "base", "web"),
        ("app", "base", "app"), ("dev", "base", "dev")]


def test_init_refuses_to_overwrite_and_writes_nothing(project: Project) -> None:
    playbook = init.find_playbook(project, None)
    proposals = init.propose(playbook)
    with pytest.raises(InputError, match=r"images/base\.yml, .*images/web\.yml") as caught:
        init.write(project, proposals, playbook, None)
    assert caught.value.exit_code == 2
    assert not (project.root / "tests" / "images" / "dev").exists()


def test_init_specs_load(project: Project) -> None:
    shutil.rmtree(project.images_dir)
    playbook = init.find_playbook(project, None)
    written = init.write(project, init.propose(playbook), playbook, None)
    assert project.root / "tests/images/web/test_web.py" in written
    plan = plan_build(project, ["web", "app", "dev"])
    assert plan.layers[0].id == "base"


def test_a_role_on_the_cfg_roles_path_is_found_and_keyed(project: Project) -> None:
    shutil.copytree(project.roles_dir / "devtools", project.root / "galaxy" / "vendored")
    (project.root / "ansible.cfg").write_text("[defaults]\nroles_path = galaxy\n")
    (project.images_dir / "tools.yml").write_text("from: base\nroles: [vendored]\n")
    files = inputs(project, "tools").values["files"]
    assert "galaxy/vendored/tasks/main.yml" in files and "ansible.cfg" in files


# The image's host name is the build container's hostname ----------------------------------------

def test_the_build_container_takes_the_images_host_name(project: Project) -> None:
    plan = plan_build(project, ["web"])

    def hostname(spec_changes: dict[str, object]) -> str | None:
        layer = replace(plan.layer("web"), spec=spec(project, "web", **spec_changes))
        provisioner = provisioner_class("ansible")(project, layer)
        with provisioner.toolchain(None) as options:  # type: ignore[arg-type]
            return options.hostname

    assert hostname({}) == "rolebake-web"
    assert hostname({"host": "web1.example.internal"}) == "web1.example.internal"
    assert hostname({"host": "a" * 65}) is None  # the kernel's limit: the engine's name stays


def test_asking_ansible_prints_nothing_of_ansibles_own(project: Project) -> None:
    # Ansible's Display patches the streams it finds; rolebake's redacting ones must
    # not earn two warnings in every plan.
    planned = run_cli("plan", "web", cwd=project.root)
    assert planned.rc == 0, planned.output
    assert "applies play 'Configure web servers' (hosts: web)" in planned.stdout
    assert "WARNING" not in planned.stderr and "WARNING" not in planned.stdout


def test_a_vaulted_group_vars_file_needs_no_password_to_plan(tmp_path: Path) -> None:
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "web.yml").write_text(
        "$ANSIBLE_VAULT;1.1;AES256\n3131313866623438633339366164396338343233306137613836\n")
    (tmp_path / "ansible.cfg").write_text("[defaults]\nrun_vars_plugins = start\n")
    (tmp_path / "hosts.ini").write_text("[web]\nweb1\n")
    project = Project(tmp_path)
    inventory = inv.read_inventory(project, tmp_path / "hosts.ini")
    member = inv.Membership("rolebake-web", ("all", "web"), inventory, False,
                            declared=("web",), project=project)
    assert inv.matches("web", member) is True
