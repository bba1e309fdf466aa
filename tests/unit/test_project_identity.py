"""Projects that share an engine: identity, default tags, cache tags, miss explanations, locks."""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from rolebake.builder import Builder, BuildOptions
from rolebake.errors import InputError
from rolebake.events import LogEvent
from rolebake.image import git_revision
from rolebake.load import plan_build
from rolebake.project_config import ProjectIdentity, name_from_folder, read_identity
from rolebake.provision.base import ProvisionContext
from rolebake.scaffold import init
from rolebake.spec import Project
from tests.unit.fakes import FakeEngine, ProvisionerControl
from tests.unit.test_builder import BASE, WEB, Recorder, make_project, run_build

pytestmark = pytest.mark.usefixtures("fake_provisioner")

WAITING = "another build of this layer is running; waiting"


def named(root: Path, name: str | None) -> Project:
    project = make_project(root, base=BASE, web=WEB)
    if name is not None:
        (root / "rolebake.yml").write_text(f"# who we are on a shared engine\nproject: {name}\n")
    return project


# Identity ---------------------------------------------------------------------------------


def test_the_name_comes_from_rolebake_yml(tmp_path: Path) -> None:
    root = tmp_path / "checkout-1234"
    root.mkdir()
    (root / "rolebake.yml").write_text("project: shop\n")
    identity = read_identity(root)
    assert (identity.name, identity.explicit, identity.source) == ("shop", True,
                                                                   root / "rolebake.yml")


@pytest.mark.parametrize(("folder", "name"), [
    ("shop", "shop"), ("My_Ansible Repo", "my-ansible-repo"), ("--x--", "x"),
    ("___", "project"), ("rolebake-cache", "rolebake-cache-project"), ("a" * 40, "a" * 32),
])
def test_without_it_the_folder_name_is_the_name(tmp_path: Path, folder: str, name: str) -> None:
    root = tmp_path / folder
    root.mkdir()
    identity = read_identity(root)
    assert (identity.name, identity.explicit) == (name, False)
    assert name_from_folder(folder) == name


def test_a_clone_in_another_folder_is_the_same_project_when_named(tmp_path: Path) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "rolebake.yml").write_text("project: shop\n")
    assert read_identity(tmp_path / "a").name == read_identity(tmp_path / "b").name == "shop"


@pytest.mark.parametrize(("text", "line", "message"), [
    ("project: Shop\n", 1, "'Shop' is not a project name"),
    ("# a comment\nproject: shop/web\n", 2, "'shop/web' is not a project name"),
    ("project: " + "a" * 33 + "\n", 1, "is not a project name: use lowercase"),
    ("project: rolebake-cache\n", 1, "the namespace of rolebake's cache tags"),
    ("project: [shop]\n", 1, "project: expected a project name"),
    ("project: shop\nprojcet: blog\n", 2, "unknown key 'projcet' (did you mean 'project'?)"),
    ("project: shop\n  bad: yaml\n", 2, "invalid YAML"),
])
def test_a_bad_rolebake_yml_is_input_error_at_its_line(tmp_path: Path, text: str, line: int,
                                                     message: str) -> None:
    (tmp_path / "rolebake.yml").write_text(text)
    with pytest.raises(InputError) as caught:
        read_identity(tmp_path)
    assert message in caught.value.message
    assert caught.value.path == tmp_path / "rolebake.yml"
    assert caught.value.line == line
    assert caught.value.exit_code == 2


def test_a_rolebake_yml_linked_out_of_the_project_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.yml"
    outside.write_text("project: shop\n")
    root = tmp_path / "project"
    root.mkdir()
    (root / "rolebake.yml").symlink_to(outside)
    with pytest.raises(InputError, match="link out of the project"):
        read_identity(root)


def test_an_empty_rolebake_yml_leaves_the_folder_name(tmp_path: Path) -> None:
    (tmp_path / "rolebake.yml").write_text("# nothing yet\n")
    assert read_identity(tmp_path).name == name_from_folder(tmp_path.name)


def test_a_bad_rolebake_yml_stops_the_plan(tmp_path: Path) -> None:
    project = named(tmp_path / "shop", "Shop")
    with pytest.raises(InputError, match="'Shop' is not a project name") as caught:
        plan_build(project, ["web"])
    assert caught.value.path == project.root / "rolebake.yml"


# What the identity scopes ----------------------------------------------------------------


def test_default_tags_cache_repositories_and_locks_carry_the_project(tmp_path: Path) -> None:
    spec = "from: debian:bookworm\nprovisioner: fake\nroles: [common]\n"
    shop = make_project(tmp_path / "shop", base=spec)
    blog = make_project(tmp_path / "blog", base=spec)
    (blog.root / "rolebake.yml").write_text("project: the-blog\n")
    shop_layer = plan_build(shop, ["base"]).layer("base")
    blog_layer = plan_build(blog, ["base"]).layer("base")
    assert shop_layer.tags == ("shop/base:latest",)
    assert blog_layer.tags == ("the-blog/base:latest",)
    assert shop_layer.cache_repository == "rolebake-cache/shop/base"
    assert blog_layer.cache_repository == "rolebake-cache/the-blog/base"
    assert (shop_layer.lock_name, blog_layer.lock_name) == ("shop.base", "the-blog.base")


def test_two_projects_build_the_same_layer_names_apart(engine: FakeEngine,
                                                       tmp_path: Path) -> None:
    shop, blog = named(tmp_path / "a" / "project", "shop"), named(tmp_path / "b" / "project",
                                                                  "blog")
    first, _, _ = run_build(engine, shop, ["web"])
    assert first.error is None
    cache_tags = {t for i in engine.images({}) for t in i.tags if t.startswith("rolebake-cache/")}
    assert {t.rsplit(":", 1)[0] for t in cache_tags} == {"rolebake-cache/shop/base",
                                                          "rolebake-cache/shop/web"}
    # The other project, with its own web role: its first build is its own, though
    # the engine holds a `web` layer (even under the same tag, as these specs say).
    (blog.roles_dir / "web" / "tasks" / "main.yml").write_text("- name: blog's web\n")
    second, _, _ = run_build(engine, blog, ["web"])
    assert second.error is None
    assert second.results["web"].reasons == ("never built",)
    assert second.results["base"].reasons == ("never built",)
    labels = engine.image(second.results["web"].image_id or "")
    assert labels is not None and labels.labels["rolebake.project"] == "blog"
    # Each project's next miss is explained against its own last build only.
    (shop.roles_dir / "common" / "tasks" / "main.yml").write_text("- name: shop v2\n")
    third, _, _ = run_build(engine, shop, ["base"])
    assert third.results["base"].reasons == ("roles/common/tasks/main.yml changed",)
    (blog.roles_dir / "web" / "tasks" / "main.yml").write_text("- name: blog v2\n")
    fourth, _, _ = run_build(engine, blog, ["web"])
    assert fourth.results["base"].cached
    assert fourth.results["web"].reasons == ("roles/web/tasks/main.yml changed",)


def test_a_layer_of_another_project_is_never_waited_for(
        engine: FakeEngine, tmp_path: Path, fake_provisioner: ProvisionerControl,
        private_lock_dir: Path) -> None:
    shop, blog = named(tmp_path / "shop", "shop"), named(tmp_path / "blog", None)
    (blog.roles_dir / "common" / "tasks" / "main.yml").write_text("- name: blog's own\n")
    entered, release = threading.Event(), threading.Event()

    def hold_shop(ctx: ProvisionContext) -> None:
        if ctx.project.root == shop.root:
            entered.set()
            assert release.wait(10)

    fake_provisioner.hooks[("base", "provision")] = hold_shop
    first: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: first.setdefault(
        "report", run_build(engine, shop, ["base"])[0]))
    thread.start()
    try:
        assert entered.wait(5)
        recorder = Recorder()
        # shop holds its `base` lock until released; blog's `base` finishes meanwhile.
        report = Builder(engine, blog, recorder, BuildOptions()).build(plan_build(blog, ["base"]))
        assert thread.is_alive()
    finally:
        release.set()
        thread.join(10)
    assert report.error is None and first["report"].error is None
    assert not any(isinstance(e, LogEvent) and e.message == WAITING for e in recorder.events)
    assert sorted(p.name.split("-")[0] for p in private_lock_dir.glob("*.lock")
                  if ".base-" in p.name) == ["blog.base", "shop.base"]


# rolebake init: the name, the tags, .gitignore ----------------------------------------------

SITE = "- hosts: webservers\n  tasks: []\n- hosts: dbservers\n  tasks: []\n"


def ansible_repo(root: Path) -> Project:
    root.mkdir(parents=True)
    (root / "site.yml").write_text(SITE)
    return Project(root)


def test_init_names_the_project_and_tags_its_images_with_it(tmp_path: Path) -> None:
    project = ansible_repo(tmp_path / "Shop_Ansible")
    playbook = init.find_playbook(project, None)
    init.write(project, init.propose(playbook), playbook, None)
    assert init.write_identity(project) == project.root / "rolebake.yml"
    assert read_identity(project.root) == ProjectIdentity("shop-ansible",
                                                          project.root / "rolebake.yml")
    # A clone in a folder of another name is the same project, with the same tags.
    clone = tmp_path / "builds" / "ci-1234"
    shutil.copytree(project.root, clone)
    for root in (project.root, clone):
        plan = plan_build(Project(root), ["webservers", "dbservers"])
        assert [layer.tags for layer in plan.layers] == [("shop-ansible/dbservers:latest",),
                                                         ("shop-ansible/webservers:latest",)]
    # Never overwritten.
    (project.root / "rolebake.yml").write_text("project: shop\n")
    assert init.write_identity(project) is None
    assert (project.root / "rolebake.yml").read_text() == "project: shop\n"


@pytest.mark.parametrize("before", [None, "", "*.retry", "*.retry\n", "/.rolebake\n",
                                    "build/\n.rolebake/\n"])
def test_init_ignores_the_state_folder_once(tmp_path: Path, before: str | None) -> None:
    project = ansible_repo(tmp_path / "shop")
    ignore = project.root / ".gitignore"
    if before is not None:
        ignore.write_text(before)
    already = before is not None and ".rolebake" in before
    assert init.ignore_state(project) == (None if already else ignore)
    text = ignore.read_text()
    assert text.startswith(before or "")
    assert len([x for x in text.splitlines() if x.strip().strip("/") == ".rolebake"]) == 1
    assert init.ignore_state(project) is None  # a second init adds nothing
    assert ignore.read_text() == text


def test_init_leaves_gitignore_alone_when_git_ignores_the_folder_already(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / ".gitignore").write_text(".rolebake/\n")
    project = ansible_repo(repo / "ansible")
    assert init.ignore_state(project) is None
    assert not (project.root / ".gitignore").exists()


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), "-c", "user.email=t@example.invalid",
                           "-c", "user.name=t", *args], check=True, capture_output=True,
                          text=True).stdout


def test_the_revision_label_ignores_rolebake_state(tmp_path: Path) -> None:
    project = ansible_repo(tmp_path / "repo")
    git(project.root, "init", "-q")
    git(project.root, "add", "site.yml")
    git(project.root, "commit", "-qm", "site")
    head = git(project.root, "rev-parse", "HEAD").strip()
    project.private_dir("logs")
    (project.state_dir / "logs" / "web-1234.log").write_text("a build's log\n")
    assert git_revision(project.root) == head  # no .gitignore at all: still clean
    (project.root / "notes.txt").write_text("an uncommitted change\n")
    assert git_revision(project.root) == f"{head}-dirty"
    # From a project in a subfolder of the repository, changes anywhere in it count.
    sub = ansible_repo(project.root / "sub")
    (project.root / "notes.txt").unlink()
    git(project.root, "add", "sub")
    git(project.root, "commit", "-qm", "sub")
    head = git(project.root, "rev-parse", "HEAD").strip()
    sub.private_dir("tmp")
    (sub.state_dir / "tmp" / "x").write_text("scratch\n")
    assert git_revision(sub.root) == head
    (project.root / "site.yml").write_text(SITE + "# changed\n")
    assert git_revision(sub.root) == f"{head}-dirty"
