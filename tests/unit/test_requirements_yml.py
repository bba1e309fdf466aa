"""requirements.yml without an engine: parsing and validation at file and line, the
install key, installing from a folder, a tarball and a local git repository with the
real ansible-galaxy, and the layer key covering what was installed.
"""

from __future__ import annotations

import subprocess
import tarfile
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from rolebake.cache import explain_miss, layer_inputs
from rolebake.errors import InputError
from rolebake.events import Event, LogEvent
from rolebake.load import plan_build
from rolebake.provision import provisioner_class
from rolebake.provision.ansible_spec import settings_of
from rolebake.provision.galaxy import ensure
from rolebake.provision.requirements import installed, parse, read_requirements, tree_digest
from rolebake.spec import Project

TASKS = "- ansible.builtin.copy: {{dest: /etc/req-role-version, content: \"{version}\\n\"}}\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                   check=True, capture_output=True)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    root = tmp_path / "project"
    write(root / "images" / "img.yml", """
        from: rolebake/debian:bookworm
        roles: [reqrole]
        """)
    return Project(root.resolve())


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A role in a git repository, tagged v1 and v2."""
    folder = tmp_path / "reqrole-repo"
    folder.mkdir()
    git(folder, "init", "-q")
    write(folder / "meta" / "main.yml", "galaxy_info: {author: t}\ndependencies: []\n")
    for version in ("v1", "v2"):
        write(folder / "tasks" / "main.yml", TASKS.format(version=version))
        git(folder, "add", "-A")
        git(folder, "commit", "-q", "-m", version)
        git(folder, "tag", version)
    return folder


def pin(project: Project, text: str, name: str = "requirements.yml") -> Path:
    return write(project.root / name, text)


# Parsing --------------------------------------------------------------------------------


def test_roles_and_collections_are_read_with_their_lines(project: Project) -> None:
    path = pin(project, """
        ---
        roles:
          - src: git+https://git.example.com/team/web_base.git
            version: v1.2.0
          - name: local_role
            src: ./vendor/local_role
          - src: ./vendor/packed.tar.gz
          - geerlingguy.redis
        collections:
          - name: https://example.com/ns-coll-1.0.0.tar.gz
            type: url
          - name: git+file:///srv/ns.coll.git
            type: git
            version: v2
        """)
    found = parse(path)
    assert [(r.kind, r.name, r.source, r.version, r.line) for r in found] == [
        ("role", "web_base", "git", "v1.2.0", 3),
        ("role", "local_role", "dir", "", 5),
        ("role", "packed", "tarball", "", 7),
        ("role", "geerlingguy.redis", "galaxy", "", 8),
        ("collection", "https://example.com/ns-coll-1.0.0.tar.gz", "url", "", 10),
        ("collection", "git+file:///srv/ns.coll.git", "git", "v2", 12),
    ]


def test_the_old_list_form_and_the_comma_form(project: Project) -> None:
    path = pin(project, """
        - git+file:///srv/roles/nginx.git,v3
        - src: git+file:///srv/roles/php.git
        """, "roles/requirements.yml")
    found = parse(path)
    assert [(r.name, r.source, r.version) for r in found] == [("nginx", "git", "v3"),
                                                              ("php", "git", "")]


@pytest.mark.parametrize("text, line, message", [
    ("roles: {a: b}\n", 1, "`roles:` must be a list"),
    ("rolez: []\n", 1, "unknown key 'rolez'"),
    ("roles:\n  - src: x\n    branch: main\n", 2, "unknown key 'branch'"),
    ("roles:\n  - include: other.yml\n", 2, "`include:`"),
    ("roles:\n  - version: v1\n", 2, "needs `src:`"),
    ("roles:\n  - 42\n", 2, "a role requirement is"),
    ("roles:\n  - src: https://hg.example.com/r\n    scm: hg\n", 2, "scm 'hg'"),
    ("collections:\n  - name: ns.c\n    type: svn\n", 2, "type 'svn'"),
    ("collections:\n  - {version: 1}\n", 2, "mapping with `name:`"),
    ("just text\n", 1, "a requirements file is"),
])
def test_a_bad_requirements_file_is_input_error_at_its_line(project: Project, text: str,
                                                           line: int, message: str) -> None:
    path = pin(project, text)
    with pytest.raises(InputError) as caught:
        parse(path)
    assert message in caught.value.message
    assert f"requirements.yml:{line}:" in str(caught.value)


# Keying ---------------------------------------------------------------------------------


def test_the_key_follows_the_file_and_what_the_pin_resolves_to(project: Project,
                                                                repo: Path) -> None:
    pin(project, f"roles:\n  - {{name: reqrole, src: 'git+file://{repo}', version: v1}}\n")
    one = read_requirements(project)
    assert one is not None and one.entries[0].resolved  # the commit v1 names
    pin(project, f"roles:\n  - {{name: reqrole, src: 'git+file://{repo}', version: v2}}\n")
    two = read_requirements(project)
    assert two is not None and two.key != one.key
    assert two.entries[0].resolved != one.entries[0].resolved
    pin(project, f"roles:\n  - {{name: reqrole, src: 'git+file://{repo}', version: v1}}\n")
    again = read_requirements(project)
    assert again is not None and again.key == one.key


def test_a_folder_source_is_keyed_on_its_content(project: Project, tmp_path: Path) -> None:
    role = write(tmp_path / "vendor" / "reqrole" / "tasks" / "main.yml", TASKS.format(version="a"))
    pin(project, f"roles:\n  - {{name: reqrole, src: {role.parents[1]}}}\n")
    before = read_requirements(project)
    write(role, TASKS.format(version="b"))
    read_requirements.__globals__["_RESOLVED"].clear()  # a new process
    after = read_requirements(project)
    assert before is not None and after is not None and before.key != after.key


def test_the_install_date_is_not_content(tmp_path: Path) -> None:
    role = write(tmp_path / "r" / "tasks" / "main.yml", "- debug: msg=x\n").parents[1]
    first = tree_digest(role)
    write(role / "meta" / ".galaxy_install_info", "install_date: today\nversion: v1\n")
    assert tree_digest(role) == first
    write(role / "tasks" / "main.yml", "- debug: msg=y\n")
    assert tree_digest(role) != first


@pytest.mark.parametrize("src, message", [
    ("git+file://{tmp}/nowhere", "cannot reach file://{tmp}/nowhere"),
    ("{tmp}/none.tar.gz", "does not exist"),
    ("{tmp}", "is not a folder"),
])
def test_an_unreachable_source_names_the_requirement(project: Project, tmp_path: Path,
                                                     src: str, message: str) -> None:
    (tmp_path / "afile").write_text("x")
    source = src.format(tmp=tmp_path / "afile" if src == "{tmp}" else tmp_path)
    pin(project, f"---\nroles:\n  - name: reqrole\n    src: {source}\n")
    with pytest.raises(InputError) as caught:
        plan_build(project, ["img"], install=True)
    assert "/requirements.yml:3: requirement role reqrole: " in str(caught.value)
    assert message.format(tmp=tmp_path) in caught.value.message


def test_a_version_the_repository_does_not_have(project: Project, repo: Path) -> None:
    pin(project, f"roles:\n  - {{name: reqrole, src: 'git+file://{repo}', version: v9}}\n")
    with pytest.raises(InputError, match="'v9' is not a tag or branch"):
        read_requirements(project)


def test_a_galaxy_name_without_galaxy_fails_fast(project: Project) -> None:
    pin(project, "roles:\n  - name: rolebake_test.nothing\n    version: 1.0.0\n")
    started = time.monotonic()
    with pytest.raises(InputError) as caught:
        ensure(project)
    assert time.monotonic() - started < 60
    assert "requirement role rolebake_test.nothing: ansible-galaxy could not install it" \
        in caught.value.message
    assert installed(project) is None


# Installing and keying layers -------------------------------------------------------------


def layer_key(project: Project) -> tuple[dict[str, str], object]:
    layer = plan_build(project, ["img"]).layer("img")
    found = provisioner_class("ansible")(project, layer).inputs(None)  # type: ignore[arg-type]
    inputs = layer_inputs(project, layer, "sha256:parent", found.files, "ansible-core 9",
                          tools=found.tools, notes=found.notes)
    assert not any(".rolebake" in str(path) for path in found.files)
    return dict(found.tools), inputs


def test_a_git_pin_is_installed_and_keys_the_layer(project: Project, repo: Path) -> None:
    events: list[Event] = []
    pin(project, f"roles:\n  - {{name: reqrole, src: 'git+file://{repo}', version: v1}}\n")
    found = ensure(project, events.append)
    assert found is not None and found.installed
    assert "v1" in (found.roles_dir / "reqrole" / "tasks" / "main.yml").read_text()
    assert [e.message.split(" (")[0] for e in events if isinstance(e, LogEvent)] == [
        "installing requirements", "requirements installed: role reqrole v1"]
    assert (found.folder.stat().st_mode & 0o777) == 0o700
    tools, v1 = layer_key(project)
    assert tools["requirement role reqrole"].startswith("v1 (")

    events.clear()
    assert ensure(project, events.append) == found and events == []  # installed once

    pin(project, f"roles:\n  - {{name: reqrole, src: 'git+file://{repo}', version: v2}}\n")
    ensure(project)
    tools, v2 = layer_key(project)
    assert tools["requirement role reqrole"].startswith("v2 (")
    assert v1.key != v2.key  # type: ignore[attr-defined]
    reasons = explain_miss(v2, v1)  # type: ignore[arg-type]
    assert any(r.startswith("requirement role reqrole changed (v1 (") for r in reasons), reasons


def test_folder_and_tarball_sources_are_installed(project: Project, tmp_path: Path) -> None:
    folder = write(tmp_path / "src" / "dirrole" / "tasks" / "main.yml",
                   TASKS.format(version="dir")).parents[1]
    packed = tmp_path / "tarrole.tar.gz"
    write(tmp_path / "pack" / "tarrole" / "tasks" / "main.yml", TASKS.format(version="tar"))
    write(tmp_path / "pack" / "tarrole" / "meta" / "main.yml", "galaxy_info: {author: t}\n")
    with tarfile.open(packed, "w:gz") as tar:
        tar.add(tmp_path / "pack" / "tarrole", arcname="tarrole")
    pin(project, f"""
        roles:
          - src: {folder}
          - src: {packed}
        """)
    write(project.spec_path("img"), "from: rolebake/debian:bookworm\nroles: [dirrole, tarrole]\n")
    found = ensure(project)
    assert found is not None
    assert set(found.manifest()) == {"roles/dirrole", "roles/tarrole"}
    tools, _ = layer_key(project)
    assert {"requirement role dirrole", "requirement role tarrole"} <= set(tools)


def test_a_role_reached_only_through_include_role_is_keyed(project: Project,
                                                            repo: Path) -> None:
    write(project.root / "roles" / "local" / "tasks" / "main.yml",
          "- ansible.builtin.include_role: {name: reqrole}\n")
    write(project.spec_path("img"), "from: rolebake/debian:bookworm\nroles: [local]\n")
    pin(project, f"roles:\n  - {{name: reqrole, src: 'git+file://{repo}', version: v1}}\n")
    ensure(project)
    tools, inputs = layer_key(project)
    assert "requirement role reqrole" in tools
    assert "requirement role reqrole (requirements.yml): keyed on its installed content" \
        in inputs.notes  # type: ignore[attr-defined]


def test_a_project_without_requirements_installs_nothing(project: Project) -> None:
    assert ensure(project) is None
    assert not (project.root / ".rolebake" / "requirements").exists()
    assert yaml.safe_load(project.spec_path("img").read_text())["roles"] == ["reqrole"]


def test_credentials_in_a_url_are_never_shown(project: Project, tmp_path: Path) -> None:
    pin(project, "roles:\n  - {name: r, src: 'git+https://deploy:s3cr3t@127.0.0.1:9/r.git'}\n")
    with pytest.raises(InputError) as caught:
        read_requirements(project)
    assert "s3cr3t" not in str(caught.value) and "https://***@127.0.0.1:9/r.git" in str(
        caught.value)


# Nothing from an input runs as a command (DESIGN.md invariant 7) -----------------------------


@pytest.mark.parametrize("entry", [
    "- src: 'git+--upload-pack=touch {marker};git-upload-pack'\n  name: reqrole",
    "- src: '--upload-pack=touch {marker}'\n  name: reqrole",
    "- src: 'git+ssh://-oProxyCommand=touch {marker}/x'\n  name: reqrole",
    "- src: 'git+https://user@-oProxyCommand=touch {marker}/x'\n  name: reqrole",
    "- src: 'git@-oProxyCommand=touch {marker}:x.git'\n  name: reqrole\n  scm: git",
    "- src: 'git+file:///srv/role.git'\n  name: reqrole\n  version: '--upload-pack=touch {marker}'",
    "- 'git+--upload-pack=touch {marker};git-upload-pack,v1,reqrole'",
])
def test_a_source_that_looks_like_an_option_is_refused_at_its_line(
        project: Project, tmp_path: Path, entry: str) -> None:
    marker = tmp_path / f"marker-{time.monotonic_ns()}"
    pin(project, "roles:\n" + textwrap.indent(entry.format(marker=marker), "  ") + "\n")
    for attempt in (lambda: plan_build(project, ["img"]), lambda: ensure(project)):
        with pytest.raises(InputError) as caught:
            attempt()
        assert "requirements.yml:2: `" in str(caught.value), caught.value
        assert "looks like a command-line option" in caught.value.message
        assert "\n" not in caught.value.message
    assert not marker.exists()
    assert not (project.state_dir / "requirements").exists()


def test_a_collection_name_that_looks_like_an_option_is_refused(project: Project) -> None:
    pin(project, "collections:\n  - name: 'git+--upload-pack=x'\n    type: git\n")
    with pytest.raises(InputError, match=r"requirements.yml:2: `name:` .* command-line option"):
        plan_build(project, ["img"])


def test_plan_runs_no_git_and_installs_nothing(project: Project, repo: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    pin(project, f"roles:\n  - {{name: reqrole, src: 'git+file://{repo}', version: v1}}\n")

    def no_process(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"plan ran {args}")
    with monkeypatch.context() as patched:
        patched.setattr(subprocess, "run", no_process)
        patched.setattr(subprocess, "Popen", no_process)
        plan = plan_build(project, ["img"])  # the role it names comes from requirements.yml
        tools, inputs = layer_key(project)
    assert settings_of(plan.layer("img")).roles == ("reqrole",)
    assert not (project.state_dir / "requirements").exists()
    assert tools["requirement role reqrole"] == "v1 (not installed yet)"
    assert any("role reqrole (requirements.yml) is not installed yet" in note
               for note in inputs.notes)  # type: ignore[attr-defined]
    assert installed(project) is None

    found = ensure(project)  # the build's first step
    done = installed(project)
    assert found is not None and done is not None and done.folder == found.folder
    with monkeypatch.context() as patched:
        patched.setattr(subprocess, "run", no_process)
        tools, _ = layer_key(project)  # keyed from the record of the last install
    assert tools["requirement role reqrole"].startswith("v1 (")


def test_git_runs_in_a_neutral_folder_never_the_checkout(project: Project, repo: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # The project is a checkout whose origin is a reachable repository: a relative or
    # empty URL must not name it.
    git(project.root, "init", "-q")
    git(project.root, "remote", "add", "origin", str(repo))
    monkeypatch.chdir(project.root)
    for src in (".", "./"):
        pin(project, f"roles:\n  - {{name: reqrole, src: 'git+{src}', scm: git}}\n")
        with pytest.raises(InputError, match="cannot reach"):
            ensure(project)
    pin(project, "roles:\n  - {name: reqrole, src: 'git+', scm: git}\n")
    with pytest.raises(InputError, match=r"git URL is empty|cannot reach"):
        ensure(project)
    assert not (project.state_dir / "requirements").exists() or not any(
        (project.state_dir / "requirements").glob("*/installed.json"))


def test_git_collections_are_cloned_by_rolebake_with_a_separator(project: Project,
                                                                 tmp_path: Path) -> None:
    collection = tmp_path / "coll"
    collection.mkdir()
    git(collection, "init", "-q")
    write(collection / "galaxy.yml",
          "namespace: rbtest\nname: tools\nversion: 1.2.0\nreadme: README.md\nauthors: [t]\n")
    write(collection / "README.md", "x\n")
    git(collection, "add", "-A")
    git(collection, "commit", "-q", "-m", "one")
    git(collection, "tag", "v1")
    pin(project, f"collections:\n  - name: 'git+file://{collection}'\n    type: git\n"
                 "    version: v1\n")
    found = ensure(project)
    assert found is not None
    assert [e.name for e in found.manifest().values()] == ["rbtest.tools"]
