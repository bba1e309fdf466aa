"""The chef-solo provisioner without Docker or Chef: what it writes, mounts, parses and reports."""

from __future__ import annotations

import json
import shutil
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import docker.types
import pytest

from rolebake.engine import BUILD_ID_LABEL, ROLE_LABEL, ContainerHandle, ExecResult, ImageInfo
from rolebake.errors import BuildFailed, InputError
from rolebake.events import LogEvent, TaskEvent
from rolebake.load import load_spec, plan_build
from rolebake.provision.base import ProvisionContext
from rolebake.provision.chef import (
    ChefOptions,
    ChefSoloProvisioner,
    DocOutputParser,
    chef_argv,
    container_options,
    failure_from_output,
    node_json,
    parse_chef_output,
    solo_rb,
    toolchain_dir,
)
from rolebake.provision.chef import provisioner as chef_provisioner
from rolebake.provision.chef.render import COOKBOOKS_DIR, TOOLCHAIN_MOUNT
from rolebake.provision.target import ContainerTarget
from rolebake.spec import Project

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "chef"
TOOLCHAIN = "example.org/chef-toolchain:18"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def make_project(root: Path, spec: str, *, cookbooks: bool = True) -> Project:
    (root / "images").mkdir(parents=True)
    if cookbooks:
        shutil.copytree(REPO / "cookbooks", root / "cookbooks")
    (root / "images" / "web-chef.yml").write_text(textwrap.dedent(spec).lstrip())
    return Project(root)


SPEC = """
    from: rolebake/debian:bookworm
    provisioner: chef-solo
    chef:
      image: example.org/chef-toolchain:18
      run_list: ["role[web]"]
      attributes:
        web:
          service_actions: [enable]
    tags: ["rolebake/web-chef:latest"]
    """


@pytest.fixture(autouse=True)
def _no_toolchain_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROLEBAKE_CHEF_IMAGE", raising=False)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return make_project(tmp_path / "p", SPEC)


# What rolebake writes ---------------------------------------------------------------------


def test_solo_rb_keeps_every_chef_path_in_the_workspace() -> None:
    text = solo_rb()
    assert "cookbook_path ['/mnt/rolebake-chef/cookbooks']" in text
    assert "role_path '/mnt/rolebake-chef/roles'" in text
    assert "file_cache_path '/mnt/rolebake-chef/state/cache'" in text
    assert "file_backup_path '/mnt/rolebake-chef/state/backup'" in text
    assert "node_path '/mnt/rolebake-chef/state/nodes'" in text
    assert "node_name 'rolebake-build'" in text
    assert not any(line.startswith("environment ") for line in text.splitlines())
    # chef's default state folders are never named, so chef never writes there
    assert "/var/chef" not in text and "/etc/chef" not in text


def test_solo_rb_environment_and_quoting() -> None:
    text = solo_rb(environment="production", workspace="/w/it's")
    assert "environment 'production'" in text
    assert "cookbook_path ['/w/it\\'s/cookbooks']" in text
    assert '"' not in text  # single quotes only: nothing interpolates


def test_node_json_has_run_list_and_attributes() -> None:
    data = json.loads(node_json(["role[web]"], {"web": {"port": 8081}, "team": "ops"}))
    assert data == {"run_list": ["role[web]"], "web": {"port": 8081}, "team": "ops"}


def test_chef_argv_forces_the_doc_formatter() -> None:
    argv = chef_argv("/opt/cinc/bin/cinc-solo")
    assert argv[0] == "/opt/cinc/bin/cinc-solo"
    assert argv[argv.index("--config") + 1] == "/mnt/rolebake-chef/config/solo.rb"
    assert argv[argv.index("--json-attributes") + 1] == "/mnt/rolebake-chef/config/node.json"
    assert argv[argv.index("--format") + 1] == "doc"
    assert "--force-formatter" in argv and "--no-color" in argv


@pytest.mark.parametrize(("volumes", "expected"), [
    ({"/opt/chef": {}}, "/opt/chef"),
    ({"/opt/cinc": {}}, "/opt/cinc"),
    ({"/data": {}}, None),
    (None, None),
])
def test_toolchain_dir_from_image_volumes(volumes: Any, expected: str | None) -> None:
    assert toolchain_dir(volumes) == expected


def test_container_options_mounts(tmp_path: Path) -> None:
    web, base = tmp_path / "cookbooks" / "web", tmp_path / "cookbooks" / "base"
    roles, config = tmp_path / "cookbooks" / "roles", tmp_path / "config"
    for folder in (web, base, roles, config):
        folder.mkdir(parents=True)
    lent = {"target": TOOLCHAIN_MOUNT, "source": "vol1", "type": "volume", "read_only": True}
    options = container_options(cookbooks={"web": web, "base": base}, roles_dir=roles,
                                environments_dir=tmp_path / "none", config_dir=config,
                                toolchain_mount=lent)
    assert options.volumes_from == ()
    tmpfs, *binds, toolchain = options.mounts
    # the workspace is a tmpfs on a folder every Debian image has: nothing is committed,
    # and the toolchain volume's mount point is made on it, not in the layer
    assert tmpfs == {"target": "/mnt", "source": None, "type": "tmpfs"}
    assert toolchain == lent and TOOLCHAIN_MOUNT.startswith("/mnt/")
    assert {m["target"]: m["source"] for m in binds} == {
        "/mnt/rolebake-chef/config": str(config),
        f"{COOKBOOKS_DIR}/web": str(web),
        f"{COOKBOOKS_DIR}/base": str(base),
        "/mnt/rolebake-chef/roles": str(roles),
    }
    assert all(m["type"] == "bind" and m["read_only"] for m in binds)
    for mount in options.mounts:  # what engine.container() does with them
        docker.types.Mount(**mount)


def test_container_options_without_toolchain_image(tmp_path: Path) -> None:
    options = container_options(cookbooks={}, roles_dir=None, environments_dir=None,
                                config_dir=tmp_path, toolchain_mount=None)
    assert [m["type"] for m in options.mounts] == ["tmpfs", "bind"]


# Spec parsing -----------------------------------------------------------------------------


def test_valid_spec_options(project: Project) -> None:
    spec = load_spec(project, "web-chef")
    assert spec.provisioner == "chef-solo"
    assert spec.settings.to_dict() == {
        "run_list": ["role[web]"],
        "attributes": {"web": {"service_actions": ["enable"]}},
        "image": TOOLCHAIN, "image_from": "chef.image", "path": None,
        "cookbooks": "cookbooks", "roles": "cookbooks/roles",
        "environments": "cookbooks/environments", "environment": None,
    }
    json.dumps(spec.settings.to_dict())  # plain data: it is hashed into the cache key


def test_image_defaults_to_the_environment_variable(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLEBAKE_CHEF_IMAGE", "cincproject/cinc:18")
    project = make_project(tmp_path / "p", SPEC.replace(f"image: {TOOLCHAIN}", ""))
    options = load_spec(project, "web-chef").settings.to_dict()
    assert options["image"] == "cincproject/cinc:18"
    assert options["image_from"] == "ROLEBAKE_CHEF_IMAGE"


def test_example_spec_loads_with_a_toolchain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLEBAKE_CHEF_IMAGE", "cincproject/cinc:18")
    spec = load_spec(Project(REPO), "web-chef")
    assert spec.settings.to_dict()["run_list"] == ["role[web]"]
    assert spec.config.cmd == ("nginx", "-g", "daemon off;")


def test_no_toolchain_is_one_line_exit_2(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", SPEC.replace(f"image: {TOOLCHAIN}", ""))
    load_spec(project, "web-chef")  # plan, makefile and other images still work
    layer = plan_build(project, ["web-chef"]).layer("web-chef")
    with pytest.raises(InputError) as caught:
        # The pipeline's preflight runs before any container; no engine call is needed.
        ChefSoloProvisioner(project, layer).preflight(engine=None)  # type: ignore[arg-type]
    error = caught.value
    assert error.exit_code == 2
    assert "\n" not in error.message and not error.hint and not error.details
    assert "web-chef.yml:3:" in error.message  # the `chef:` line
    assert "ROLEBAKE_CHEF_IMAGE" in error.message and "chef.path" in error.message


def test_path_instead_of_image(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", SPEC.replace(f"image: {TOOLCHAIN}",
                                                        "path: /opt/cinc/bin/cinc-solo"))
    options = load_spec(project, "web-chef").settings.to_dict()
    assert options["path"] == "/opt/cinc/bin/cinc-solo" and options["image"] is None


BAD_SPECS = [
    # (spec text, line, words in the message)
    ("""
     from: rolebake/debian:bookworm
     provisioner: chef-solo
     """, 2, "needs a `chef:` section"),
    ("""
     from: rolebake/debian:bookworm
     provisioner: chef-solo
     roles: [web]
     chef: {image: x/y, run_list: ["role[web]"]}
     """, 3, "`roles:` is a key of the ansible provisioner, not of chef-solo: Chef roles go in"),
    ("""
     from: rolebake/debian:bookworm
     provisioner: chef-solo
     chef: {image: x/y, run_list: ["role[web]"]}
     playbook: playbooks/site.yml
     """, 4, "`playbook:` is a key of the ansible provisioner"),
    ("""
     from: rolebake/debian:bookworm
     provisioner: chef-solo
     vars: {web_port: 8080}
     chef: {image: x/y, run_list: ["role[web]"]}
     """, 3, "chef.attributes"),
    ("""
     from: rolebake/debian:bookworm
     provisioner: chef-solo
     chef:
       image: x/y
       run_lsit: ["role[web]"]
     """, 5, "did you mean 'run_list'"),
    ("""
     from: rolebake/debian:bookworm
     provisioner: chef-solo
     chef:
       image: x/y
     """, 4, "missing `run_list:`"),
    ("""
     from: rolebake/debian:bookworm
     provisioner: chef-solo
     chef:
       image: x/y
       run_list:
         - role[web]
         - recipe[web
     """, 7, "chef.run_list[1]: 'recipe[web' is not a run-list item"),
    ("""
     from: rolebake/debian:bookworm
     provisioner: chef-solo
     chef:
       image: x/y
       run_list:
         - recipe[nginx]
     """, 6, "cookbook 'nginx' not found in cookbooks/ (known: web)"),
    ("""
     from: rolebake/debian:bookworm
     provisioner: chef-solo
     chef:
       image: x/y
       run_list: ["web::server"]
     """, 5, "recipe web::server not found: cookbooks/web/recipes/server.rb does not exist"),
    ("""
     from: rolebake/debian:bookworm
     provisioner: chef-solo
     chef:
       image: x/y
       run_list: ["role[db]"]
     """, 5, "role 'db' not found in cookbooks/roles/ (known: web)"),
    ("""
     from: rolebake/debian:bookworm
     provisioner: chef-solo
     chef:
       image: "Not An Image!"
       run_list: ["role[web]"]
     """, 4, "is not an image reference"),
    ("""
     from: rolebake/debian:bookworm
     provisioner: chef-solo
     chef:
       image: x/y
       path: /opt/cinc/bin/cinc-solo
       run_list: ["role[web]"]
     """, 5, "not both"),
    ("""
     from: rolebake/debian:bookworm
     provisioner: chef-solo
     chef:
       path: bin/chef-solo
       run_list: ["role[web]"]
     """, 4, "must be an absolute path"),
    ("""
     from: rolebake/debian:bookworm
     provisioner: chef-solo
     chef:
       image: x/y
       cookbooks: ../elsewhere
       run_list: ["role[web]"]
     """, 5, "is outside the project"),
    ("""
     from: rolebake/debian:bookworm
     provisioner: chef-solo
     chef:
       image: x/y
       run_list: ["role[web]"]
       attributes: [port, 8080]
     """, 6, "chef.attributes: expected a mapping"),
    ("""
     from: rolebake/debian:bookworm
     provisioner: chef-solo
     chef:
       image: x/y
       run_list: ["role[web]"]
       attributes:
         run_list: ["recipe[web]"]
     """, 7, "the run list is `chef.run_list`"),
    ("""
     from: rolebake/debian:bookworm
     provisioner: chef-solo
     chef:
       image: x/y
       run_list: ["role[web]"]
       environment: staging
     """, 6, "environment 'staging' not found"),
    ("""
     from: rolebake/debian:bookworm
     provisioner: chef-solo
     chef:
       image: x/y
       run_list: ["role[web]"]
     variants:
       dev: {roles_append: [devtools]}
     """, 7, "role 'devtools' not found"),
]


@pytest.mark.parametrize(("text", "line", "words"), BAD_SPECS,
                         ids=[words for _, _, words in BAD_SPECS])
def test_bad_chef_spec_is_exit_2_with_file_and_line(tmp_path: Path, text: str, line: int,
                                                    words: str) -> None:
    project = make_project(tmp_path / "p", text)
    with pytest.raises(InputError) as caught:
        load_spec(project, "web-chef")
    assert caught.value.exit_code == 2
    assert caught.value.path is not None
    assert caught.value.line == line, caught.value.message
    assert words in caught.value.message


def test_bad_toolchain_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLEBAKE_CHEF_IMAGE", "Not An Image")
    project = make_project(tmp_path / "p", SPEC.replace(f"image: {TOOLCHAIN}", ""))
    with pytest.raises(InputError, match="ROLEBAKE_CHEF_IMAGE='Not An Image' is not an image"):
        load_spec(project, "web-chef")


def test_role_naming_a_missing_cookbook_points_into_the_role(project: Project) -> None:
    role = project.root / "cookbooks" / "roles" / "web.json"
    data = json.loads(role.read_text())
    data["run_list"].append("recipe[nginx_tuning]")
    role.write_text(json.dumps(data, indent=2))
    with pytest.raises(InputError) as caught:
        load_spec(project, "web-chef")
    assert caught.value.path == role
    assert caught.value.line == role.read_text().splitlines().index(
        '    "recipe[nginx_tuning]"') + 1


def test_missing_dependency_points_at_metadata(project: Project) -> None:
    metadata = project.root / "cookbooks" / "web" / "metadata.rb"
    metadata.write_text(metadata.read_text() + "depends 'nginx_tuning', '~> 1.0'\n")
    with pytest.raises(InputError, match="cookbook 'nginx_tuning' not found") as caught:
        load_spec(project, "web-chef")
    assert caught.value.path == metadata
    assert caught.value.line == len(metadata.read_text().splitlines())


# Inputs and the cache key ----------------------------------------------------------------


def write_cookbook(root: Path, name: str, *, depends: tuple[str, ...] = (),
                   json_metadata: bool = False, recipes: tuple[str, ...] = ("default",)) -> None:
    folder = root / "cookbooks" / name
    (folder / "recipes").mkdir(parents=True)
    for recipe in recipes:
        (folder / "recipes" / f"{recipe}.rb").write_text(f"log '{name}::{recipe}'\n")
    if json_metadata:
        (folder / "metadata.json").write_text(json.dumps(
            {"name": name, "version": "1.0.0", "dependencies": dict.fromkeys(depends, ">= 0")}))
    else:
        (folder / "metadata.rb").write_text(
            f"name '{name}'\nversion '1.0.0'\n" + "".join(f"depends '{d}'\n" for d in depends))


def test_input_files_cover_dependencies_roles_and_environment(tmp_path: Path) -> None:
    root = tmp_path / "p"
    project = make_project(root, """
        from: rolebake/debian:bookworm
        provisioner: chef-solo
        chef:
          image: x/y
          run_list: ["role[app]", "recipe[extra::tools]"]
          environment: production
        """, cookbooks=False)
    write_cookbook(root, "app", depends=("runtime",))
    write_cookbook(root, "runtime", depends=("base",), json_metadata=True)
    write_cookbook(root, "base")
    write_cookbook(root, "extra", recipes=("default", "tools"))
    write_cookbook(root, "unused")
    (root / "cookbooks" / "app" / "templates").mkdir()
    (root / "cookbooks" / "app" / "templates" / "app.conf.erb").write_text("x\n")
    roles = root / "cookbooks" / "roles"
    roles.mkdir()
    (roles / "app.json").write_text(json.dumps({
        "name": "app", "run_list": ["role[common]"],
        "env_run_lists": {"production": ["role[common]", "recipe[app]"]}}))
    (roles / "common.rb").write_text('name "common"\nrun_list "recipe[base]"\n')
    (roles / "unused.json").write_text("{}")
    envs = root / "cookbooks" / "environments"
    envs.mkdir()
    (envs / "production.json").write_text('{"name": "production"}')

    plan = plan_build(project, ["web-chef"])
    provisioner = ChefSoloProvisioner(project, plan.layer("web-chef"))
    files = {str(p.relative_to(root)) for p in provisioner.input_files()}
    assert files == {
        "cookbooks/app/metadata.rb", "cookbooks/app/recipes/default.rb",
        "cookbooks/app/templates/app.conf.erb",
        "cookbooks/runtime/metadata.json", "cookbooks/runtime/recipes/default.rb",
        "cookbooks/base/metadata.rb", "cookbooks/base/recipes/default.rb",
        "cookbooks/extra/metadata.rb", "cookbooks/extra/recipes/default.rb",
        "cookbooks/extra/recipes/tools.rb",
        "cookbooks/roles/app.json", "cookbooks/roles/common.rb",
        "cookbooks/environments/production.json",
    }


def test_example_input_files(project: Project) -> None:
    provisioner = ChefSoloProvisioner(project, plan_build(project, ["web-chef"]).layer("web-chef"))
    files = {str(p.relative_to(project.root)) for p in provisioner.input_files()}
    assert files == {
        "cookbooks/roles/web.json", "cookbooks/web/metadata.rb",
        "cookbooks/web/attributes/default.rb", "cookbooks/web/recipes/default.rb",
        "cookbooks/web/templates/index.html.erb", "cookbooks/web/templates/site.conf.erb",
    }


def test_variant_layer_runs_its_roles(tmp_path: Path) -> None:
    root = tmp_path / "p"
    spec = textwrap.dedent(SPEC) + "variants:\n  dev: {roles_append: [devtools]}\n"
    project = make_project(root, spec)
    (root / "cookbooks" / "roles" / "devtools.json").write_text(
        json.dumps({"name": "devtools", "run_list": ["recipe[web]"]}))
    layer = plan_build(project, ["web-chef:dev"]).layer("web-chef:dev")
    assert ChefSoloProvisioner(project, layer).run_list() == ["role[devtools]"]


# Reading chef's output ---------------------------------------------------------------------


def test_parse_first_converge() -> None:
    results = parse_chef_output(fixture("web-converge.txt").splitlines())
    assert [(r.name, r.action, r.status) for r in results] == [
        ("execute[apt-get update]", "run", "changed"),
        ("apt_package[nginx]", "install", "changed"),
        ("directory[/var/www/site]", "create", "changed"),
        ("template[/var/www/site/index.html]", "create", "changed"),
        ("template[/etc/nginx/sites-available/site.conf]", "create", "changed"),
        ("link[/etc/nginx/sites-enabled/site.conf]", "create", "changed"),
        ("file[/etc/nginx/sites-enabled/default]", "delete", "changed"),
        ("service[nginx]", "enable", "ok"),
        ("service[nginx]", "reload", "ok"),
    ]
    # the same count chef printed: "7/9 resources updated"
    assert sum(r.status == "changed" for r in results) == 7
    assert {r.role for r in results} == {"web::default"}
    assert results[1].result["updates"] == ["install version 1.22.1-9+deb12u1 of package nginx"]


def test_parse_second_run() -> None:
    results = parse_chef_output(fixture("web-idempotent.txt").splitlines())
    assert len(results) == 8
    assert [r.status for r in results].count("ok") == 7
    skipped = results[0]
    assert skipped.status == "skipped"
    assert skipped.result["reason"] == "skipped due to not_if"
    assert not any(r.status == "changed" for r in results)


def test_parse_failure() -> None:
    results = parse_chef_output(fixture("web-package-failed.txt").splitlines())
    assert [(r.name, r.status) for r in results] == [
        ("execute[apt-get update]", "skipped"),
        ("apt_package[nginx]", "failed"),
    ]
    assert results[1].role == "web::default" and results[1].action == "install"


def test_parse_nested_resources() -> None:
    text = """\
        Recipe: web::default
          * apt_update[update] action periodic
            * directory[/var/lib/apt/periodic] action create (up to date)
            * execute[apt-get -q update] action run
              - execute ["apt-get", "-q", "update"]

            - force update new lists of packages
          * apt_package[nginx] action install (up to date)
        Recipe: web::tls
          * file[/etc/ssl/site.pem] action create (skipped due to only_if)
        """
    results = parse_chef_output(textwrap.dedent(text).splitlines())
    statuses = {(r.name, r.role): r.status for r in results}
    assert statuses == {
        ("directory[/var/lib/apt/periodic]", "web::default"): "ok",
        ("execute[apt-get -q update]", "web::default"): "changed",
        ("apt_update[update]", "web::default"): "changed",
        ("apt_package[nginx]", "web::default"): "ok",
        ("file[/etc/ssl/site.pem]", "web::tls"): "skipped",
    }
    nested = next(r for r in results if r.name == "execute[apt-get -q update]")
    assert nested.result["within"] == "apt_update[update]"
    parent = next(r for r in results if r.name == "apt_update[update]")
    assert parent.result["updates"] == ["force update new lists of packages"]


def test_streaming_events_and_partial_lines() -> None:
    parser = DocOutputParser()
    events = []
    for line in ["Chef Infra Client, version 18.5.0", "Recipe: web::default"]:
        events += parser.feed(line)
    # The doc formatter ends a resource's line only when the resource is done.
    events += parser.peek("  * apt_package[nginx] action install")
    events += parser.peek("  * apt_package[nginx] action install")  # polled again: once only
    for line in ["  * apt_package[nginx] action install",
                 "    - install version 1.22.1-9+deb12u1 of package nginx",
                 "  * service[nginx] action enable (up to date)",
                 "  * service[nginx] action start"]:
        events += parser.feed(line)
    events += parser.finish()
    assert [(e.status, e.task.name) for e in events] == [
        ("started", "apt_package[nginx]"),
        ("changed", "apt_package[nginx]"),
        ("started", "service[nginx]"),
        ("ok", "service[nginx]"),
        ("started", "service[nginx]"),
        ("ok", "service[nginx]"),
    ]
    assert parser.version == "Chef Infra Client 18.5.0"


def test_cinc_version_is_read() -> None:
    parser = DocOutputParser()
    for line in fixture("web-idempotent.txt").splitlines():
        parser.feed(line)
    assert parser.version == "Cinc Client 18.4.12"


# Failure reports ---------------------------------------------------------------------------

HOST_PATHS = {f"{COOKBOOKS_DIR}/web": REPO / "cookbooks" / "web"}


def test_resource_failure_names_resource_recipe_and_error(tmp_path: Path) -> None:
    log = tmp_path / "build.log"
    error = failure_from_output(fixture("web-package-failed.txt"), host_paths=HOST_PATHS,
                                root=REPO, log_path=log, rc=1)
    assert isinstance(error, BuildFailed) and error.exit_code == 1
    assert error.message == (
        "chef resource apt_package[nginx] (recipe web::default, "
        "cookbooks/web/recipes/default.rb:23) failed to install: "
        "Chef::Exceptions::Package: No candidate version available for nginx")
    assert error.details.splitlines()[:3] == [
        "Chef::Exceptions::Package", "-------------------------",
        "No candidate version available for nginx"]
    assert str(log) in error.hint


def test_failure_as_the_issue_quotes_it() -> None:
    text = textwrap.dedent("""\
        Recipe: web::default
          * package[nginx] action install

            ================================================================================
            Error executing action `install` on resource 'package[nginx]'
            ================================================================================

            Mixlib::ShellOut::ShellCommandFailed
            ------------------------------------
            Expected process to exit with [0], but received '100'
            ---- Begin output of ["apt-get", "-q", "-y", "install", "nginx"] ----
            STDOUT: Reading package lists...
            Building dependency tree...
            STDERR: E: Unable to locate package nginx
            ---- End output of ["apt-get", "-q", "-y", "install", "nginx"] ----
            Ran ["apt-get", "-q", "-y", "install", "nginx"] returned 100

            Resource Declaration:
            ---------------------
            # In /mnt/rolebake-chef/cookbooks/web/recipes/default.rb
        """)
    error = failure_from_output(text)
    assert isinstance(error, BuildFailed)
    assert "chef resource package[nginx] (recipe web::default) failed to install" in error.message
    assert "Mixlib::ShellOut::ShellCommandFailed: Expected process to exit with [0], but " \
           "received '100' (STDERR: E: Unable to locate package nginx)" in error.message
    assert parse_chef_output(text.splitlines())[-1].status == "failed"


def test_compile_error_is_an_input_error_at_the_recipe_line() -> None:
    error = failure_from_output(fixture("web-compile-error.txt"), host_paths=HOST_PATHS)
    assert isinstance(error, InputError) and error.exit_code == 2
    assert error.path == str(REPO / "cookbooks" / "web" / "recipes" / "default.rb")
    assert error.line == 23
    assert "recipe compile error: NoMethodError: undefined method `pakage'" in error.message


def test_unresolvable_run_list_is_an_input_error() -> None:
    error = failure_from_output(fixture("web-missing-cookbook.txt"))
    assert isinstance(error, InputError)
    assert "No such cookbook: nginx_tuning" in error.message


def test_unrecognised_failure_keeps_the_tail() -> None:
    text = "\n".join(f"line {i}" for i in range(40)) + "\nSegmentation fault\n"
    error = failure_from_output(text, rc=139)
    assert isinstance(error, BuildFailed)
    assert error.message == "chef-solo failed (exit 139)"
    assert error.details.splitlines()[-1] == "Segmentation fault"
    assert len(error.details.splitlines()) == 20


# The lifecycle against a fake engine -------------------------------------------------------


class FakeEngine:
    """Just enough of rolebake.engine.Engine: records calls, plays recorded chef output."""

    def __init__(self, *, images: dict[str, ImageInfo] | None = None,
                 chef_output: str = "", chef_rc: int = 0, existing: str = "") -> None:
        self.images = images or {}
        self.chef_output = chef_output
        self.chef_rc = chef_rc
        self.existing = existing
        self.created: list[tuple[str, str, dict[str, str]]] = []
        self.removed: list[str] = []
        self.shells: list[tuple[str, tuple[str, ...], dict[str, str]]] = []
        self.pulled: list[str] = []
        self.filled: list[tuple[str, str]] = []  # (volume, where the image's files came from)
        self.volume_labels: dict[str, dict[str, str]] = {}
        self.lock = threading.Lock()

    def image(self, ref: str) -> ImageInfo | None:
        return self.images.get(ref)

    def pull(self, ref: str) -> ImageInfo:
        self.pulled.append(ref)
        raise InputError(f"base image {ref!r} is not on this engine and could not be pulled")

    def create_stopped(self, image_id: str, *, name: str, labels: dict[str, str],
                       mounts: Any = ()) -> str:
        self.created.append((image_id, name, dict(labels)))
        self.filled.extend((m["source"], m["target"]) for m in mounts)
        return "toolchain-container-id"

    def volumes(self, labels: dict[str, str]) -> list[str]:
        return [name for name, _ in self.filled]

    def ensure_volume(self, name: str, labels: dict[str, str]) -> None:
        self.volume_labels[name] = dict(labels)

    def remove_volume(self, name: str) -> bool:
        return self.volume_labels.pop(name, None) is not None

    def remove_container(self, ref: str) -> None:
        self.removed.append(ref)

    def shell(self, container: ContainerHandle, script: str, *args: str,
              env: dict[str, str] | None = None) -> ExecResult:
        with self.lock:
            self.shells.append((script, args, dict(env or {})))
        if script.startswith('out="$1"'):
            time.sleep(0.2)  # let the poller see the output arrive
            return ExecResult(self.chef_rc, self.chef_output)
        if script.startswith("tail"):
            lines = self.chef_output.split("\n")
            start = int(args[0]) - 1
            # Half the output has arrived, the last line of it unfinished.
            half = "\n".join(lines[: len(lines) // 2])
            return ExecResult(0, "\n".join(half.split("\n")[start:]) if start < len(
                half.split("\n")) else "")
        if "--version" in script:
            return ExecResult(0, "Cinc Client: 18.4.12\n")
        if args[:1] == ("link",):
            return ExecResult(0, "absent\n")
        if "[ -e" in script:
            return ExecResult(0, self.existing)
        return ExecResult(0, "")


def toolchain_image(volume: str = "/opt/cinc") -> ImageInfo:
    return ImageInfo(id="sha256:" + "1" * 64, tags=(TOOLCHAIN,), labels={}, created="",
                     config={"Volumes": {volume: {}}})


def provisioner_for(project: Project) -> ChefSoloProvisioner:
    return ChefSoloProvisioner(project, plan_build(project, ["web-chef"]).layer("web-chef"))


def test_toolchain_image_missing_is_input_error_before_any_container(project: Project) -> None:
    engine = FakeEngine()
    provisioner = provisioner_for(project)
    with pytest.raises(InputError) as caught, provisioner.toolchain(engine):
        pytest.fail("the toolchain must not be set up")
    assert caught.value.exit_code == 2
    assert "\n" not in caught.value.message
    assert f"chef toolchain image '{TOOLCHAIN}' (`chef.image: {TOOLCHAIN}`) is not on the " \
           "engine" in caught.value.message
    assert engine.pulled == [TOOLCHAIN]
    assert engine.created == [] and engine.removed == []


def test_toolchain_image_without_volume_is_input_error(project: Project) -> None:
    engine = FakeEngine(images={TOOLCHAIN: toolchain_image("/srv")})
    with pytest.raises(InputError, match="declares no VOLUME /opt/chef or /opt/cinc"), \
            provisioner_for(project).toolchain(engine):
        pytest.fail("the toolchain must not be set up")
    assert engine.created == []


def test_toolchain_lends_the_volume_and_is_always_removed(project: Project) -> None:
    engine = FakeEngine(images={TOOLCHAIN: toolchain_image()})
    provisioner = provisioner_for(project)
    volume = "rolebake-toolchain-chef-" + "1" * 12
    with pytest.raises(RuntimeError), provisioner.toolchain(engine) as options:
        lent = next(m for m in options.mounts if m["type"] == "volume")
        assert lent == {"target": TOOLCHAIN_MOUNT, "source": volume, "type": "volume",
                        "read_only": True}
        config = Path(next(m["source"] for m in options.mounts
                           if m["target"] == "/mnt/rolebake-chef/config"))
        assert json.loads((config / "node.json").read_text())["run_list"] == ["role[web]"]
        assert "cookbook_path" in (config / "solo.rb").read_text()
        targets = {m["target"] for m in options.mounts}
        assert f"{COOKBOOKS_DIR}/web" in targets and "/mnt/rolebake-chef/roles" in targets
        raise RuntimeError("the build failed")
    image_id, name, labels = engine.created[0]
    assert image_id == toolchain_image().id  # pinned by id, not by a tag that may move
    assert labels[ROLE_LABEL] == "build"
    assert name.startswith("rolebake-fill-chef-")
    # the volume is filled from the image once, by a container that is removed at once
    assert engine.filled == [(volume, "/opt/cinc")]
    assert engine.volume_labels[volume]["rolebake.toolchain.image"] == image_id
    assert engine.removed == ["toolchain-container-id"]
    # a second layer reuses the volume: nothing is created
    with provisioner_for(project).toolchain(engine):
        pass
    assert len(engine.created) == 1
    assert not config.exists()
    assert provisioner.binary == "/opt/cinc/bin/cinc-solo"


def test_toolchain_container_carries_the_build_id(project: Project) -> None:
    engine = FakeEngine(images={TOOLCHAIN: toolchain_image()})
    with provisioner_for(project).toolchain(engine, labels={BUILD_ID_LABEL: "3f2a9c81d0e4"}):
        pass
    (_image_id, _name, labels), = engine.created
    # `rolebake clean --label rolebake.build-id=...` finds it if the build dies.
    assert labels[BUILD_ID_LABEL] == "3f2a9c81d0e4" and labels[ROLE_LABEL] == "build"


def context(project: Project, engine: FakeEngine, tmp_path: Path,
            events: list[Any]) -> ProvisionContext:
    return ProvisionContext(project=project, layer=plan_build(project, ["web-chef"]).layer(
        "web-chef"), target=ContainerTarget(engine, ContainerHandle("cid", "build")),
        events=events.append, cancel=threading.Event(), log_path=tmp_path / "logs" / "b.log")


def test_provision_streams_resources_and_returns_results(project: Project, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chef_provisioner, "POLL_SECONDS", 0.02)
    engine = FakeEngine(images={TOOLCHAIN: toolchain_image()},
                        chef_output=fixture("web-converge.txt"),
                        existing="/etc/chef\n")
    events: list[Any] = []
    provisioner = provisioner_for(project)
    ctx = context(project, engine, tmp_path, events)
    with provisioner.toolchain(engine):
        provisioner.bootstrap(ctx)
        result = provisioner.provision(ctx)
        provisioner.clean(ctx)
    assert result.counts() == {"changed": 7, "ok": 2}
    tasks = [e for e in events if isinstance(e, TaskEvent)]
    finished = [e for e in tasks if e.status != "started"]
    assert [e.task for e in finished] == [t.name for t in result.tasks]
    assert finished[-1].changed == 7 and finished[-1].ok == 9 and finished[-1].failed == 0
    # the run is in the build log, whole
    assert fixture("web-converge.txt").strip() in (tmp_path / "logs" / "b.log").read_text()
    assert any(isinstance(e, LogEvent) and "Cinc Client: 18.4.12" in e.message for e in events)
    run = next(s for s in engine.shells if s[0].startswith('out="$1"'))
    assert run[1][1:] == tuple(chef_argv("/opt/cinc/bin/cinc-solo"))
    assert run[2]["CHEF_LICENSE"] == "accept-no-persist"
    assert any(s[0].startswith("tail") for s in engine.shells), "output was polled"
    # clean removes chef's state folders, but not one the parent image already had
    cleaned = engine.shells[-1][1]
    assert "/var/chef" in cleaned and "/var/cache/chef" in cleaned
    assert "/etc/chef" not in cleaned
    assert "/var/lib/apt/periodic/update-success-stamp" in cleaned


def test_provision_failure_raises_with_the_log(project: Project, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chef_provisioner, "POLL_SECONDS", 0.02)
    engine = FakeEngine(images={TOOLCHAIN: toolchain_image()},
                        chef_output=fixture("web-package-failed.txt"), chef_rc=1)
    events: list[Any] = []
    provisioner = provisioner_for(project)
    ctx = context(project, engine, tmp_path, events)
    with provisioner.toolchain(engine):
        provisioner.bootstrap(ctx)
        with pytest.raises(BuildFailed) as caught:
            provisioner.provision(ctx)
    assert caught.value.message.startswith(
        "chef resource apt_package[nginx] (recipe web::default, "
        "cookbooks/web/recipes/default.rb:23) failed to install")
    assert str(ctx.log_path) in caught.value.hint
    assert "Error executing action `install`" in ctx.log_path.read_text()
    failed = [e for e in events if isinstance(e, TaskEvent) and e.status == "failed"]
    assert [(e.task, e.role, e.failed) for e in failed] == [
        ("apt_package[nginx]", "web::default", 1)]


def test_idempotence_pass_reports_changes(project: Project, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chef_provisioner, "POLL_SECONDS", 0.02)
    engine = FakeEngine(images={TOOLCHAIN: toolchain_image()},
                        chef_output=fixture("web-idempotent.txt"))
    provisioner = provisioner_for(project)
    ctx = context(project, engine, tmp_path, [])
    with provisioner.toolchain(engine):
        provisioner.bootstrap(ctx)
        assert provisioner.provision(ctx, idempotence=True).changed == ()
        engine.chef_output = fixture("web-converge.txt")
        assert len(provisioner.provision(ctx, idempotence=True).changed) == 7
    assert "===== chef-solo idempotence check =====" in ctx.log_path.read_text()


def test_chef_path_that_is_not_there_is_an_input_error(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", SPEC.replace(f"image: {TOOLCHAIN}",
                                                        "path: /opt/cinc/bin/cinc-solo"))

    class NoChef(FakeEngine):
        def shell(self, container: ContainerHandle, script: str, *args: str,
                  env: dict[str, str] | None = None) -> ExecResult:
            if "--version" in script:
                return ExecResult(1, "")
            return super().shell(container, script, *args, env=env)

    engine = NoChef()
    provisioner = provisioner_for(project)
    with provisioner.toolchain(engine) as options:
        assert options.volumes_from == ()
        with pytest.raises(InputError, match=r"chef\.path /opt/cinc/bin/cinc-solo is not an "
                                             r"executable chef-solo in the parent image"):
            provisioner.bootstrap(context(project, engine, tmp_path, []))
    assert engine.created == [] and engine.removed == []


def test_options_round_trip() -> None:
    options = ChefOptions(run_list=("role[web]",), attributes={"a": 1}, image="x/y",
                          image_from="chef.image")
    assert ChefOptions.from_dict(options.to_dict()) == options


def test_preflight_checks_the_toolchain_without_making_anything(project: Project) -> None:
    engine = FakeEngine()
    with pytest.raises(InputError, match="is not on the engine"):
        provisioner_for(project).preflight(engine)
    engine = FakeEngine(images={TOOLCHAIN: toolchain_image()})
    provisioner_for(project).preflight(engine)
    assert engine.created == [] and engine.shells == []
